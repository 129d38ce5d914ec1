"""Hand-built results for the viewer's tests (no model): word features, any scores."""

from __future__ import annotations

import re

import numpy as np

from genattr import Attribution, Feature, Prompt, Settings, Target
from genattr.result import undefined_entries

HOSTILE = (
    "</script><script>window.__pwned=1</script>",
    "<img src=x onerror=window.__pwned=1>",
    "<!--<script>window.__pwned=1</script>-->",
    '"><svg onload=window.__pwned=1>',
    "\u2028\u2029&amp;",
)


def result(
    prompt: str,
    tokens: tuple[str, ...],
    *,
    seed: int = 0,
    method: str = "demo",
    attribute_target: bool = False,
    dtype=np.float64,
    steps: bool = True,
    **kwargs,
) -> Attribution:
    """A result whose features are the whitespace-separated words of ``prompt``, with random
    scores (of ``dtype``, stored as float64), one row per target token, and (``attribute_target``)
    a column per output token, NaN exactly where the entry is undefined."""
    spans = [m.span() for m in re.finditer(r"\S+", prompt)]
    p = Prompt(
        prompt,
        tuple(range(len(spans))),
        tuple(spans),
        tuple(prompt[s:e] for s, e in spans),
        (True,) * len(spans),
    )
    features = [Feature(i, prompt[s:e], s, e, (i,)) for i, (s, e) in enumerate(spans)]
    n, F = len(tokens), len(features)
    columns = F + (n if attribute_target else 0)
    rng = np.random.default_rng(seed)
    matrix = rng.normal(size=(n, columns)).astype(dtype).astype(np.float64)
    scores = matrix.sum(axis=0)
    if attribute_target:
        matrix[undefined_entries(columns, F, (0, n), rows=True)] = np.nan
        scores[undefined_entries(columns, F, (0, n))] = np.nan
    target = Target(tuple(range(n)), "".join(tokens), tokens, True)
    step_scores = (
        {"prob": rng.uniform(size=n).tolist(), "entropy": rng.uniform(0, 5, size=n).tolist()} if steps else {}
    )
    settings = kwargs.pop("settings", Settings(attribute_target=attribute_target, seed=seed))
    return Attribution(
        method, p, features, scores, target, matrix, settings=settings, step_scores=step_scores, **kwargs
    )


def long_results(dtype=np.float64, *, n_features: int = 2000, n_tokens: int = 64) -> list[Attribution]:
    """Three results (three methods) of one 2,000-word prompt explaining 64 output tokens."""
    prompt = " ".join(f"w{i}" for i in range(n_features))
    tokens = tuple(f" t{k}" for k in range(n_tokens))
    return [result(prompt, tokens, seed=s, method=f"m{s}", dtype=dtype) for s in range(3)]


def hostile() -> Attribution:
    """Every string a result file can hold, set to markup that would run a script if parsed."""
    prompt = "say " + " ".join(h.replace(" ", "_") for h in HOSTILE)
    tokens = tuple(" " + h for h in HOSTILE)
    return result(
        prompt,
        tokens,
        method=HOSTILE[0],
        attribute_target=True,
        params={HOSTILE[1]: HOSTILE[2]},
        diagnostics={"model": HOSTILE[3], "forward_passes": 3},
        extras={"note": HOSTILE[0]},
        settings=Settings(level="regex", pattern=HOSTILE[1], seed=2**64 - 1, attribute_target=True),
    )
