"""``genattr.explain``: one call from a prompt to an :class:`~genattr.Attribution`.

The call is wiring only: prompt -> features (:mod:`genattr.text`) -> masker (:mod:`genattr.masking`)
-> target -> :class:`~genattr.problem.Problem` -> the method's ``attribute`` -> the result.
"""

from __future__ import annotations

import secrets
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, overload

import numpy as np

from . import registry
from ._version import __version__
from .defaults import (
    DEFAULT_LEVEL,
    DEFAULT_MASK,
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_METHOD,
    DEFAULT_OBJECTIVE,
    DEFAULT_SEED,
    SEED_LIMIT,
)
from .errors import GenattrDeprecationWarning, InputError, InvalidParameterError, NumericalError
from .hierarchy import explain_hierarchical
from .masking import Masker
from .model import Batch, LanguageModel, load
from .objectives import OBJECTIVES, gradient_objectives
from .problem import Problem
from .progress import Progress, checked, reporting
from .result import Attribution, output_token_columns, undefined_entries
from .settings import Settings
from .steps import step_scores
from .text.prompt import Prompt
from .text.segment import Feature
from .text.target import Target, explained_tokens, output_token_features, resolve_target

if TYPE_CHECKING:
    import torch


def _as_prompt(lm: LanguageModel, prompt) -> Prompt:
    if isinstance(prompt, Prompt):
        return prompt
    if isinstance(prompt, str):
        return Prompt.from_text(lm.tokenizer, prompt)
    if isinstance(prompt, Sequence) and all(isinstance(m, Mapping) for m in prompt):
        return Prompt.from_messages(lm.tokenizer, prompt)
    raise InputError(f"prompt must be a string or a list of chat messages, not {type(prompt).__name__}.")


@overload
def _to_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray: ...


@overload
def _to_numpy(x: None) -> None: ...


def _to_numpy(x: np.ndarray | torch.Tensor | None) -> np.ndarray | None:
    if x is None:
        return None
    return np.asarray(x.detach().cpu().double() if hasattr(x, "detach") else x, dtype=np.float64)


def _seed(seed) -> int:
    """The seed of a call: ``seed`` itself when it is in [0, 2**64) (what torch's generators
    take), or for None a fresh one from the operating system's randomness; a stochastic
    method's result records the seed it ran with, so a None run can be repeated."""
    if seed is None:
        return secrets.randbelow(SEED_LIMIT)
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise InputError(f"seed must be an integer or None, got {seed!r}.")
    if not 0 <= seed < SEED_LIMIT:
        raise InvalidParameterError(
            f"seed must be in [0, 2**64), got {seed}; use a smaller non-negative integer."
        )
    return int(seed)


def _method_params(params: Mapping[str, object] | None, keywords: dict) -> dict:
    """The method's parameters, from the ``params`` mapping and the extra keywords of a call."""
    if params is not None and not isinstance(params, Mapping):
        raise InputError(
            f"params must be a mapping of parameter names to values, not {type(params).__name__}."
        )
    params = dict(params or {})
    twice = sorted(set(params) & set(keywords))
    if twice:
        raise InvalidParameterError(
            f"parameters {twice} are given both in params= and as keywords; give each once."
        )
    return {**params, **keywords}


def _mask_token(mask_token: int | str | None, baseline: int | str | None) -> int | str | None:
    """The call's mask token, given as ``mask_token`` or under its deprecated name ``baseline``."""
    if baseline is None:
        return mask_token
    if mask_token is not None:
        raise InvalidParameterError(
            f"mask_token={mask_token!r} and baseline={baseline!r} are given; baseline is the former "
            "name of mask_token: give mask_token only."
        )
    warnings.warn(
        "explain(baseline=...) is deprecated and will be removed in the next release; "
        "pass mask_token=... (the token that stands in for a removed feature) instead.",
        GenattrDeprecationWarning,
        stacklevel=3,
    )
    return baseline


def _check_contrast(
    method: str, method_cls: type[registry.Method], contrast, objective: str, part: bool
) -> None:
    """A foil is for the methods flagged ``contrast``, whole responses, and, for gradients, ``log_prob``."""
    if contrast is None:
        return
    if not method_cls.info().contrastive:
        raise InvalidParameterError(
            f"{method} does not explain a target against a foil (`genattr methods` flags those that do: "
            "contrast); drop contrast, or pick one of those methods."
        )
    if method_cls.needs_gradients and objective != "log_prob":
        raise InvalidParameterError(
            f"{method} differentiates log p(target) - log p(foil); with a foil use objective='log_prob', "
            "or a perturbation method for the probability difference."
        )
    if part:
        raise InvalidParameterError(
            "a foil contrasts whole responses: drop attribute_target, target_token and target_span with contrast."
        )


def _steps(
    lm: LanguageModel, prompt: Prompt, target: Target, foil: Target | None, second, extras: dict
) -> dict[str, list[float]]:
    """The result's per-step scores (:func:`genattr.steps.step_scores`, not counted in the
    method's cost), with ``contrast`` against an aligned foil or under the ``second`` prompt."""
    inputs = Batch.from_ids(prompt.input_ids)
    aligned = foil.ids if foil is not None and len(foil) == len(target) else None
    steps = step_scores(lm, inputs, target.ids, aligned)
    if second is not None:
        other = _as_prompt(lm, second)
        under = lm.target_log_probs(Batch.from_ids(other.input_ids), target.ids)[0].double()
        steps["contrast"] = [a - b for a, b in zip(steps["log_prob"], under.tolist(), strict=True)]
        extras["contrast"] = {"prompt": other.text, "level": "token"}
    return steps


def _problem(
    lm: LanguageModel,
    prompt: Prompt,
    features: list[Feature],
    target: Target | None,
    span: tuple[int, int],
    outputs: bool,
    masker: Masker,
    objective: str,
    seed: int,
    foil: Target | None,
    token_scores: bool,
) -> Problem:
    """The problem of a call: the prompt's features (and, with ``outputs``, one feature per output
    token before the last explained one), the target up to the last token explained, the tokens
    before ``span`` teacher-forced as context; ``foil`` for a contrastive explanation;
    ``token_scores``, whether the per-token matrix is wanted."""
    if target is None:
        return Problem(lm, prompt, features, None, masker, objective, seed, token_scores=token_scores)
    first, stop = span
    forced = target.ids[: stop - 1]
    if outputs:
        features = [*features, *output_token_features(prompt, target, len(features), stop - 1)]
    masker = Masker(lm, prompt, features, masker.strategy, masker.baseline_id, continuation=forced)
    kept = Target(target.ids[:stop], target.text, target.tokens[:stop], target.generated)
    return Problem(
        lm, prompt, features, kept, masker, objective, seed, first, foil=foil, token_scores=token_scores
    )


def explain(
    lm: LanguageModel | str,
    prompt: str | Sequence[Mapping[str, str]] | Prompt,
    target: str | Sequence[int] | None = None,
    *,
    method: str = DEFAULT_METHOD,
    level: str = DEFAULT_LEVEL,
    mask: str = DEFAULT_MASK,
    mask_token: int | str | None = None,
    seed: int | None = DEFAULT_SEED,
    objective: str = DEFAULT_OBJECTIVE,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    pattern=None,
    spans=None,
    params: Mapping[str, object] | None = None,
    progress: Progress | None = None,
    attribute_target: bool | None = None,
    target_token: int | str | None = None,
    target_span: str | tuple[int, int] | None = None,
    contrast: str | Sequence[int] | None = None,
    contrast_prompt: str | Sequence[Mapping[str, str]] | Prompt | None = None,
    token_scores: bool = True,
    baseline: int | str | None = None,
    refine_top: int | None = None,
    **method_params,
) -> Attribution:
    """Explain what ``lm`` wrote after ``prompt`` in terms of the prompt's features.

    The prompt is cut into F features (``level``); the method scores each feature by how the
    model's output changes when features are removed (``mask``), or by gradients or attention,
    for a continuation y = (y_1..y_n). The methods that remove features read a coalition S of
    kept features through the ``objective``, by default the target's log-likelihood

        v(S) = sum_{t=1..n} log p(y_t | y_<t, x_S),

    x_S the prompt with the features outside S removed (see :class:`~genattr.problem.Problem`).
    What a score means depends on the method: ``genattr.methods()`` and the README say what each
    one computes, and each method's class docstring gives its formula and its paper.

    Parameters
    ----------
    lm : LanguageModel or str
        The model (:func:`genattr.load`), or a path, hub id or catalog name to load.
    prompt : str or list of dict or Prompt
        Text, chat messages ``[{"role": ..., "content": ...}, ...]`` (rendered with the
        tokenizer's chat template; only the messages' text is masked), or a built :class:`~genattr.Prompt`.
    target : str or sequence of int, optional
        The continuation to explain, as text (tokenised without special tokens, leading space
        included: ``" Paris"``) or token ids. None explains the model's own greedy continuation
        of at most ``max_new_tokens`` tokens. Methods that need no target (GiLOT) require None.
    method : str
        A registered method name (``genattr.methods()``); default ``"leave_one_out"``.
    level : str
        How the prompt is cut into features: ``"token"``, ``"word"`` (default), ``"sentence"``,
        ``"regex"`` (with ``pattern``), ``"spans"`` (with ``spans``) or one registered with
        :func:`genattr.register_level`; ``"coarse>fine"`` (``"sentence>word"``) scores the coarse
        features, then the fine ones inside the ``refine_top`` best (:mod:`genattr.hierarchy`).
    mask : str
        How a feature is removed: ``"attention"`` (default: replaced by the mask token and
        hidden from attention), ``"replace"``, ``"delete"`` or one registered with
        :func:`genattr.register_mask` (see :mod:`genattr.masking`).
    mask_token : int or str, optional
        The token that stands in for a removed one: a token id or ``"pad"``, ``"unk"``, ``"eos"``,
        ``"bos"``, ``"mask"``; by default the pad token, else unk, else eos.
    seed : int or None
        An integer in [0, 2**64) that drives every random draw of a stochastic method (default 0);
        None draws a fresh seed, recorded in the result's ``seed``.
    objective : str
        What a coalition is scored by: ``"log_prob"`` (default, v(S) above), ``"prob"``
        (exp v(S)) or one registered with :func:`genattr.register_objective`.
    max_new_tokens : int
        Length limit of the greedy continuation explained when ``target`` is None (default 20).
    pattern : str or re.Pattern, optional
        The regular expression whose matches are the features, for ``level="regex"``.
    spans : sequence of (int, int), optional
        Character spans ``(start, end)`` of the prompt text that are the features, for ``level="spans"``.
    params : mapping, optional
        The method's parameters as a mapping; also reaches a parameter named like one of the
        settings above.
    progress : callable, optional
        ``progress(done, total)`` hears of every chunk of rows the model scores during the call
        (see :mod:`genattr.progress`; :func:`genattr.progress.progress_bar` gives a display).
    attribute_target : bool, optional
        Attribute each target token y_t to the earlier target tokens y_<t too, as to the prompt's
        features: one more column per target token, after the prompt's (the output tokens are
        masked like prompt tokens by the perturbation methods, moved along the path with them by
        the gradient methods, read off the attention by the attention methods). The entries of
        token y_s for rows t <= s are undefined (NaN), and so is the last token's sequence score.
        Default: True with ``target_token``, else False. Methods flagged ``output-tokens`` only.
    target_token : int or str, optional
        Explain one output token, a word of interest (AIEG's setting): its index in the target
        (negative from the end) or a substring of the response that is one token (its first
        occurrence); the earlier output tokens are teacher-forced and, by default, features.
    target_span : str or (int, int), optional
        Explain only a part of the response (ContextCite's use): a substring (first occurrence) or
        a character span (start, end) of the response, on token boundaries; the tokens before it
        are teacher-forced context (features only with ``attribute_target``).
    contrast : str or sequence of int, optional
        A foil: explain why the model wrote the target rather than this continuation. The objective
        becomes O(target) - O(foil) (``log_prob``: log p(y | x_S) - log p(f | x_S); ``prob``: the
        probability difference, perturbation methods only), per target token when the foil has as
        many tokens as the target, else for the sequence only (``token_scores`` None);
        ``extras["contrast"]`` says which. Methods flagged ``contrast`` only.
    contrast_prompt : str or list of dict or Prompt, optional
        A second prompt, under which the same target is scored (Inseq's contrastive sources): the
        step score ``contrast`` becomes log p(y_t | x, y_<t) - log p(y_t | x', y_<t). Its term is
        the same for every coalition of the first prompt's features, so it moves no attribution
        score (differences and gradients of v(S) - const are those of v(S)); it is recorded in
        ``step_scores`` and ``extras["contrast"]``.
    token_scores : bool
        Whether to give the per-token matrix (default True). False asks for the sequence scores
        only (``token_scores`` None in the result), and the gradient methods whose sequence score
        is the gradient of the sequence's objective (saliency, input x gradient, integrated
        gradients, clipped IG, SmoothGrad, GradientSHAP) then take one plain backward pass per chunk
        of path points instead of one batched over the target's tokens.
    baseline : int or str, optional
        Deprecated former name of ``mask_token``: it warns
        (:class:`~genattr.errors.GenattrDeprecationWarning`) and goes in the next release.
    refine_top : int, optional
        With a level ``"coarse>fine"``: how many coarse features, the highest-scoring, are refined
        into fine ones (default 3; more than there are refines all).
    **method_params
        The method's parameters (``n_samples``, ``n_steps``, ...), validated by the method.

    Returns
    -------
    Attribution
        ``scores`` [F] (one per feature), ``token_scores`` [n, F] for the methods that give a row
        per target token (else None), the ``target`` explained, the method's ``params``, the
        call's ``settings`` as they took effect (:class:`~genattr.settings.Settings`) and
        ``diagnostics`` (forward passes, tokens processed, time, the method's own checks).

    Raises
    ------
    genattr.errors.UnknownMethodError
        For a method name that is not registered (the message lists the choices); likewise
        :class:`~genattr.errors.UnknownLevelError`, :class:`~genattr.errors.UnknownMaskError` and
        :class:`~genattr.errors.UnknownObjectiveError` for the level, mask and objective.
    genattr.errors.InvalidParameterError
        For a method parameter out of its range, a target given to a method that takes none, a
        gradient method asked for an objective it cannot differentiate, or a bad ``seed``.
    genattr.errors.InputError
        For a prompt, target or ``max_new_tokens`` that cannot be used; its subclasses
        :class:`~genattr.errors.ContextLengthError` when prompt and target exceed the context
        window, :class:`~genattr.errors.NoMaskableFeaturesError` when no feature is found.
    genattr.errors.NumericalError
        When the model or the method produced NaN or infinite values.

    See Also
    --------
    genattr.load : load a model.
    genattr.Attribution.aggregate : the same result at a coarser level.
    genattr.evaluate.faithfulness : how faithful a result is to the model.

    Examples
    --------
    >>> import genattr
    >>> from genattr.testing import tiny_lm
    >>> lm = tiny_lm()  # a random model built in memory; genattr.load("path/or/hub-id") for a real one
    >>> res = genattr.explain(lm, "The doctor opens the door", target=" and the nurse",
    ...                       method="shapley_sampling", n_samples=20, seed=1)
    >>> [f.text for f in res.features], res.token_scores.shape
    (['The', 'doctor', 'opens', 'the', 'door'], (3, 5))
    >>> res.params["n_samples"], res.settings.seed, res.settings.level
    (20, 1, 'word')

    Without a target, the model's greedy continuation is explained:

    >>> res = genattr.explain(lm, "The doctor opens the door", max_new_tokens=4)
    >>> res.target.generated, len(res.target.ids) <= 4
    (True, True)
    """
    if refine_top is not None or (isinstance(level, str) and ">" in level):
        return explain_hierarchical(
            explain, lm, prompt, target, method=method, level=level, refine_top=refine_top, mask=mask,
            mask_token=mask_token, seed=seed, objective=objective, max_new_tokens=max_new_tokens,
            pattern=pattern, spans=spans, params=params, progress=progress, attribute_target=attribute_target,
            target_token=target_token, target_span=target_span, contrast=contrast,
            contrast_prompt=contrast_prompt, token_scores=token_scores, baseline=baseline, **method_params,
        )  # fmt: skip
    method_cls = registry.get(method)
    if target is not None and not method_cls.needs_target:
        raise InvalidParameterError(
            f"{method} takes no target: it explains the model's own likely outputs; pass target=None."
        )
    if not OBJECTIVES.get(objective).gradients and method_cls.needs_gradients:
        raise InvalidParameterError(
            f"{method} needs gradients, which genattr computes for the objectives "
            f"{', '.join(gradient_objectives())} only, not {objective!r}; use one of them, or a method "
            "without gradients (see `genattr methods`)."
        )
    algorithm = method_cls(**_method_params(params, method_params))
    picked = target_token is not None or target_span is not None
    if picked and not method_cls.needs_target:
        raise InvalidParameterError(
            f"{method} explains the model's own likely outputs, not a part of a target; drop "
            "target_token and target_span."
        )
    outputs = target_token is not None if attribute_target is None else bool(attribute_target)
    if outputs and not method_cls.info().output_tokens:
        raise InvalidParameterError(
            f"{method} cannot attribute to output tokens (`genattr methods` flags those that can: "
            "output-tokens); drop attribute_target, or pick one of those methods."
        )
    _check_contrast(method, method_cls, contrast, objective, outputs or picked)
    if contrast is not None and contrast_prompt is not None:
        raise InvalidParameterError("give a foil (contrast) or a second prompt (contrast_prompt), not both.")
    progress = checked(progress)
    mask_token = _mask_token(mask_token, baseline)
    if isinstance(lm, str):
        lm = load(lm)
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be at least 1, got {max_new_tokens}.")
    seed = _seed(seed)
    started, usage = time.perf_counter(), lm.usage.copy()
    prompt_obj = _as_prompt(lm, prompt)
    features = prompt_obj.features(level, pattern=pattern, spans=spans)
    lm.check_length(len(prompt_obj), "the prompt")
    masker = Masker(lm, prompt_obj, features, mask, mask_token)
    with reporting(progress):
        resolved = resolve_target(lm, prompt_obj, target, max_new_tokens) if method_cls.needs_target else None
        span = explained_tokens(lm.tokenizer, resolved, target_token, target_span) if resolved else (0, 0)
        foil = None if contrast is None else resolve_target(lm, prompt_obj, contrast)
        problem = _problem(
            lm,
            prompt_obj,
            features,
            resolved,
            span,
            outputs,
            masker,
            objective,
            seed,
            foil,
            bool(token_scores),
        )
        output = algorithm.attribute(problem)
    explained = output.target or resolved
    if explained is None:
        raise InvalidParameterError(
            f"{method} declares needs_target = False but returned no target; a method that takes no "
            "target sets Output.target to the output it explains."
        )
    scores, matrix = _to_numpy(output.scores), _to_numpy(output.token_scores) if token_scores else None
    extras = dict(output.extras)
    if problem.foil is not None:
        aligned = problem.n_outputs == len(explained)
        extras["contrast"] = {"foil": problem.foil.text, "level": "token" if aligned else "sequence"}
        matrix = matrix if aligned else None
    if outputs:
        scores, matrix = output_token_columns(scores, matrix, len(features), len(explained), span)
    defined = ~undefined_entries(scores.shape[0], len(features), span)
    rows = None if matrix is None else ~undefined_entries(matrix.shape[1], len(features), span, rows=True)
    if not np.isfinite(scores[defined]).all() or (matrix is not None and not np.isfinite(matrix[rows]).all()):
        raise NumericalError(
            f"{method} produced non-finite scores; check the model's outputs and the method's "
            "parameters (diagnostics may say more)."
        )
    diagnostics = {
        **lm.usage.since(usage),
        "seconds": round(time.perf_counter() - started, 6),
        **output.diagnostics,
    }
    steps = _steps(lm, prompt_obj, explained, problem.foil, contrast_prompt, extras)
    settings = Settings(
        level=level,
        mask=mask,
        mask_token=masker.baseline_id,
        objective=objective,
        max_new_tokens=max_new_tokens if target is None else None,
        pattern=pattern if level == "regex" else None,
        spans=spans if level == "spans" else None,
        seed=seed if method_cls.stochastic else None,
        attribute_target=outputs,
        target_span=span if picked else None,
        contrast=None if problem.foil is None else problem.foil.ids,
        token_scores=bool(token_scores),
    )
    return Attribution(
        method=method,
        prompt=prompt_obj,
        features=features,
        scores=scores,
        target=explained,
        token_scores=matrix,
        settings=settings,
        params=dict(algorithm.values),
        diagnostics={"model": lm.name, **diagnostics},
        version=__version__,
        extras=extras,
        step_scores=steps,
    )
