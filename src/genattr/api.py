"""``genattr.explain``: one call from a prompt to an :class:`~genattr.Attribution`."""

from __future__ import annotations

import secrets
import time
import warnings
from collections.abc import Mapping, Sequence

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
from .masking import Masker
from .model import LanguageModel, load
from .objectives import OBJECTIVES, gradient_objectives
from .problem import Problem
from .progress import Progress, checked, reporting
from .result import Attribution
from .settings import Settings
from .text.prompt import Prompt
from .text.target import resolve_target


def _as_prompt(lm: LanguageModel, prompt) -> Prompt:
    if isinstance(prompt, Prompt):
        return prompt
    if isinstance(prompt, str):
        return Prompt.from_text(lm.tokenizer, prompt)
    if isinstance(prompt, Sequence) and all(isinstance(m, Mapping) for m in prompt):
        return Prompt.from_messages(lm.tokenizer, prompt)
    raise InputError(f"prompt must be a string or a list of chat messages, not {type(prompt).__name__}.")


def _to_numpy(x) -> np.ndarray | None:
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
    baseline: int | str | None = None,
    **method_params,
) -> Attribution:
    """Explain what ``lm`` wrote after ``prompt`` in terms of the prompt's features.

    ``prompt`` is text or a list of chat messages; ``target`` is the continuation to explain
    (text or token ids), or None for the model's own greedy output (``max_new_tokens`` at most).
    ``level`` is how the prompt is cut into features (``token``, ``word``, ``sentence``,
    ``regex`` with ``pattern``, ``spans`` with ``spans``); ``mask`` how a feature is removed
    (``attention``, ``replace``, ``delete``; see :mod:`genattr.masking`) and ``mask_token`` the
    token that stands in for it (a token id, or ``pad``, ``unk``, ``eos``, ``bos``, ``mask``; by
    default pad, else unk, else eos). ``baseline`` is its former name, deprecated: it warns
    (:class:`~genattr.errors.GenattrDeprecationWarning`) and goes in the next release.
    ``objective`` is ``log_prob`` (default), ``prob`` or one registered with
    :func:`genattr.objectives.register_objective` (see :mod:`genattr.objectives`).
    ``seed`` (an integer in [0, 2**64)) drives every random draw of a stochastic method; None
    draws a fresh seed, recorded in the result's ``seed``.
    Other keywords are the method's parameters (``n_samples``, ``n_steps``, ...), validated by it
    and recorded in the result's ``params``; ``params`` may give them as a mapping instead, which
    also reaches a parameter named like one of the settings above. The settings, as they took
    effect, are recorded apart in the result's ``settings`` (:class:`~genattr.settings.Settings`).
    ``progress``, a callable ``(done, total)``, hears of every chunk of rows the model scores during
    the call (see :mod:`genattr.progress`; :func:`genattr.progress.progress_bar` gives a display).

    >>> lm = genattr.load("path/to/model")                                    # doctest: +SKIP
    >>> res = genattr.explain(lm, "The capital of France is", target=" Paris",
    ...                       method="shapley_sampling", n_samples=50, seed=1)  # doctest: +SKIP
    >>> res.top(3)                                                            # doctest: +SKIP
    """
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
        problem = Problem(lm, prompt_obj, features, resolved, masker, objective, seed)
        output = algorithm.attribute(problem)
    scores, token_scores = _to_numpy(output.scores), _to_numpy(output.token_scores)
    if not np.isfinite(scores).all() or (token_scores is not None and not np.isfinite(token_scores).all()):
        raise NumericalError(
            f"{method} produced non-finite scores; check the model's outputs and the method's "
            "parameters (diagnostics may say more)."
        )
    diagnostics = {
        **lm.usage.since(usage),
        "seconds": round(time.perf_counter() - started, 6),
        **output.diagnostics,
    }
    settings = Settings(
        level=level,
        mask=mask,
        mask_token=masker.baseline_id,
        objective=objective,
        max_new_tokens=max_new_tokens if target is None else None,
        pattern=pattern if level == "regex" else None,
        spans=spans if level == "spans" else None,
        seed=seed if method_cls.stochastic else None,
    )
    return Attribution(
        method=method,
        prompt=prompt_obj,
        features=features,
        scores=scores,
        target=output.target or resolved,
        token_scores=token_scores,
        settings=settings,
        params=dict(algorithm.values),
        diagnostics={"model": lm.name, **diagnostics},
        version=__version__,
        extras=output.extras,
    )
