"""Hierarchical attribution: score coarse units, then refine the most important ones.

``genattr.explain(lm, prompt, level="sentence>word", refine_top=3)`` runs the method twice:

1. at the coarse level (``sentence``): one score s_c per coarse feature c;
2. at the fine level (``word``), with only the fine features inside the ``refine_top`` coarse
   features of highest score as features; the rest of the prompt is context (kept, never
   masked, not scored), as for ``level="spans"``.

The result holds the unrefined coarse features with their coarse scores and, in place of each
refined one, its fine features with their fine scores, in prompt order. For a method that
removes features, a long context then costs O(C + k w) coalitions instead of O(W), C coarse
units, k refined ones of about w words each, W words in all (the coarse-to-fine search of
TextGenSHAP and of MExGen/AttriBoT).

The two passes' scores are on their own scales: a fine score is measured with every other
coarse unit present, a coarse score with the whole unit removed, so a word's score is not
comparable with an unrefined sentence's (nor do a unit's word scores sum to its sentence score,
except for additive methods). ``extras["hierarchy"]`` keeps the coarse pass (its scores, the
coarse features' character spans, the indices of the refined ones, each pass's method extras
under ``coarse_extras`` and ``fine_extras``); ``diagnostics`` the sum of
both passes' work and, under ``coarse`` and ``fine``, each pass's own.

Coarse features are ranked by score, highest first, ties by position (:meth:`Attribution.top`);
for a method whose scores are magnitudes (GiLOT's distances, attention) that is ranking by
magnitude.

References
----------
Enouen, Nakhost, Ebrahimi, Arik, Liu and Pfister, "TextGenSHAP: Scalable Post-hoc Explanations
in Text Generation with Long Documents", 2023 (hierarchical Shapley values, Sec. 4);
Monteiro Paes et al., "Multi-Level Explanations for Generative Language Models" (MExGen), 2024;
Liu et al., "AttriBoT: A Bag of Tricks for Efficiently Approximating Leave-One-Out Context
Attribution", 2024 (hierarchical attribution).

Examples
--------
>>> import genattr
>>> from genattr.testing import tiny_lm
>>> res = genattr.explain(tiny_lm(), "The doctor came. The nurse sang. A dog barked.",
...                       target=" and", level="sentence>word", refine_top=1)
>>> res.level, len(res.extras["hierarchy"]["coarse"]), len(res.extras["hierarchy"]["refined"])
('sentence>word', 3, 1)
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence

import numpy as np

from . import registry
from .defaults import DEFAULT_METHOD, DEFAULT_SEED
from .errors import GenattrWarning, InputError, InvalidParameterError
from .model import LanguageModel, load
from .result import Attribution
from .text.prompt import Prompt
from .text.segment import LEVELS, Feature, content_span

DEFAULT_REFINE_TOP = 3
"""How many coarse features a ``"coarse>fine"`` level refines when ``refine_top`` is not given."""

SEPARATOR = ">"


def stages(level: str) -> tuple[str, str]:
    """The coarse and fine level names of ``"coarse>fine"``, each a registered level.

    Raises
    ------
    genattr.errors.InvalidParameterError
        When ``level`` does not have exactly two stages.
    genattr.errors.UnknownLevelError
        When a stage is not a registered level.
    """
    parts = level.split(SEPARATOR)
    if len(parts) != 2:
        raise InvalidParameterError(
            f"level {level!r} must have two stages, 'coarse>fine' (for example 'sentence>word')."
        )
    for part in parts:
        LEVELS.get(part)
    return parts[0], parts[1]


def _check(level: str, refine_top: int | None, excluded: dict[str, object]) -> int:
    """The number of coarse features to refine, after checking the call's hierarchical options."""
    if SEPARATOR not in level:
        raise InvalidParameterError(
            f"refine_top={refine_top!r} needs a level 'coarse>fine' (for example 'sentence>word'), not "
            f"{level!r}; give such a level, or drop refine_top."
        )
    given = sorted(name for name, value in excluded.items() if value is not None)
    if given:
        raise InvalidParameterError(
            f"a hierarchical level ({level!r}) explains the whole target against the prompt's features; "
            f"drop {', '.join(given)}, or use a single level."
        )
    if refine_top is None:
        return DEFAULT_REFINE_TOP
    if not isinstance(refine_top, (int, np.integer)) or isinstance(refine_top, bool) or refine_top < 1:
        raise InvalidParameterError(f"refine_top must be an integer >= 1, got {refine_top!r}.")
    return int(refine_top)


def inside(
    prompt: Prompt, coarse: Sequence[Feature], chosen: Sequence[int], fine: Sequence[Feature]
) -> list[Feature]:
    """The ``fine`` features whose tokens lie inside the ``chosen`` coarse features, in order.

    A whitespace-only token outside every coarse feature does not count: the word and sentence
    levels join such a token to the feature after it, where user spans (``"spans>sentence"``
    over paragraphs) leave it out; it goes with its fine feature.

    Raises
    ------
    genattr.errors.InputError
        When a fine feature holds tokens of a chosen coarse feature and other tokens with text
        outside it (the fine level is not finer than the coarse one there).
    """
    owner = dict.fromkeys(range(len(prompt)), -1)
    for c in coarse:
        owner.update(dict.fromkeys(c.positions, c.index))
    blank = {t for t in owner if owner[t] == -1 and content_span(prompt.text, *prompt.offsets[t]) is None}
    picked = set(chosen)
    kept = []
    for f in fine:
        owners = {owner[t] for t in f.positions if t not in blank}
        if not owners & picked:
            continue
        if len(owners) != 1:
            raise InputError(
                f"fine feature {f.text!r} straddles coarse features; the second stage of a "
                "'coarse>fine' level must cut inside the first (for example 'sentence>word')."
            )
        kept.append(f)
    return kept


def _span(prompt: Prompt, f: Feature) -> tuple[int, int]:
    """The characters of ``f`` with those of all its tokens, so that ``level="spans"`` finds the
    same tokens (a whitespace-only token of a word is inside its span)."""
    starts = [prompt.offsets[t][0] for t in f.positions]
    ends = [prompt.offsets[t][1] for t in f.positions]
    return min(f.start, *starts), max(f.end, *ends)


def _work(coarse: Attribution, fine: Attribution) -> dict:
    """Both passes' work summed, and each pass's diagnostics."""
    total = {
        key: round(coarse.diagnostics[key] + fine.diagnostics[key], 6)
        for key in ("forward_passes", "tokens_processed", "model_seconds", "seconds")
    }
    return {
        "model": coarse.diagnostics["model"],
        **total,
        "coarse": coarse.diagnostics,
        "fine": fine.diagnostics,
    }


def _combined(
    coarse: Attribution, fine: Attribution, refined: list[int], fine_features: list[Feature]
) -> tuple:
    """Features, scores and token_scores of the unrefined coarse features and the fine ones, in
    prompt order (columns of ``token_scores`` too; None unless both passes have them)."""
    unrefined = [c for c in coarse.features if c.index not in refined]
    pieces = unrefined + fine_features
    order = sorted(range(len(pieces)), key=lambda i: pieces[i].positions[0])
    kept = [c.index for c in unrefined]

    def columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.concatenate([a[..., kept], b], -1)[..., order]

    features = [dataclasses.replace(pieces[j], index=i) for i, j in enumerate(order)]
    scores = columns(coarse.scores, fine.scores)
    a, b = coarse.token_scores, fine.token_scores
    matrix = None if a is None or b is None else columns(a, b)
    return features, scores, matrix


def _second_prompt(coarse: Attribution) -> dict:
    """The coarse pass's record of ``contrast_prompt``, which concerns the step scores only."""
    return {"contrast": coarse.extras["contrast"]} if "contrast" in coarse.extras else {}


def explain_hierarchical(
    explain: Callable[..., Attribution],
    lm: LanguageModel | str,
    prompt,
    target=None,
    *,
    level: str,
    refine_top: int | None = None,
    method: str = DEFAULT_METHOD,
    pattern=None,
    spans=None,
    seed: int | None = DEFAULT_SEED,
    mask_token: int | str | None = None,
    baseline: int | str | None = None,
    attribute_target: bool | None = None,
    target_token: int | str | None = None,
    target_span: str | tuple[int, int] | None = None,
    contrast=None,
    **options,
) -> Attribution:
    """:func:`genattr.explain` at a level ``"coarse>fine"``: the coarse pass, then the fine pass on
    the fine features inside the ``refine_top`` best coarse ones (see the module docstring), each
    a call of ``explain`` (:func:`genattr.explain`, which calls this function for such a level)
    at one level.

    ``pattern`` and ``spans`` reach both stages (``level="spans>word"`` refines the user's spans);
    the other keywords are :func:`genattr.explain`'s, passed to both passes. ``refine_top`` (default
    :data:`DEFAULT_REFINE_TOP`) larger than the number of coarse features refines them all.

    Raises
    ------
    genattr.errors.InvalidParameterError
        For ``refine_top`` without a ``"coarse>fine"`` level, below 1 or not an integer; for a
        level of other than two stages; with ``attribute_target``, ``target_token``,
        ``target_span`` or ``contrast``.
    """
    excluded = {
        "attribute_target": attribute_target,
        "target_token": target_token,
        "target_span": target_span,
        "contrast": contrast,
    }
    top = _check(level, refine_top, excluded)
    coarse_level, fine_level = stages(level)
    lm = load(lm) if isinstance(lm, str) else lm
    coarse = explain(
        lm, prompt, target, method=method, level=coarse_level, pattern=pattern, spans=spans, seed=seed,
        mask_token=mask_token, baseline=baseline, **options,
    )  # fmt: skip
    p = coarse.prompt
    refined = sorted(f.index for f, _ in coarse.top(top))
    fine_level_features = p.features(fine_level, pattern=pattern, spans=spans)
    fine_features = inside(p, coarse.features, refined, fine_level_features)
    fine = explain(
        lm, p, coarse.target.ids if registry.get(method).needs_target else None, method=method,
        level="spans", spans=[_span(p, f) for f in fine_features],
        seed=coarse.settings.seed if coarse.settings.seed is not None else seed,
        mask_token=coarse.settings.mask_token, **options,
    )  # fmt: skip
    if [f.positions for f in fine.features] != [f.positions for f in fine_features]:
        raise InputError(
            f"the {fine_level!r} features inside the refined {coarse_level!r} features cannot be scored "
            "as character spans of this prompt; use another fine level."
        )
    features, scores, matrix = _combined(coarse, fine, refined, fine_features)
    if matrix is not None and fine.target.ids != coarse.target.ids:
        warnings.warn(
            f"the fine pass explained another output ({fine.target.text!r}) than the coarse pass "
            f"({coarse.target.text!r}); the result's token_scores are None.",
            GenattrWarning,
            stacklevel=3,
        )
        matrix = None
    reads = {LEVELS[name].needs for name in (coarse_level, fine_level)}
    hierarchy = {
        "coarse": coarse.scores.tolist(),
        "coarse_features": [[c.start, c.end] for c in coarse.features],
        "refined": refined,
        "coarse_extras": coarse.extras,
        "fine_extras": fine.extras,
    }
    return dataclasses.replace(
        coarse,
        features=features,
        scores=scores,
        token_scores=matrix,
        settings=dataclasses.replace(
            coarse.settings,
            level=level,
            pattern=pattern if "pattern" in reads else None,
            spans=spans if "spans" in reads else None,
        ),
        diagnostics=_work(coarse, fine),
        extras={"hierarchy": hierarchy, **_second_prompt(coarse)},
    )
