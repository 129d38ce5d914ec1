"""Agreement of an attribution with a known ground-truth set G of features (the zoo's tasks).

For scores s over F features and G (feature indices), with the ranking by descending score
(ties broken by position, so results are deterministic):

* ``recall_at_k``   |top-|G| ∩ G| / |G|: the share of G among the |G| best features;
* ``auroc``         P(s_g > s_o) + P(s_g = s_o) / 2 for g in G, o outside G (Mann-Whitney);
* ``pointing_game`` 1 if the best feature is in G, else 0;
* ``joint_success`` 1 if the top-|G| set equals G, else 0;
* ``average_precision`` (1/|G|) sum_{g in G} |{g' in G : r(g') <= r(g)}| / r(g), r the 1-based
  rank: the mean over G of the precision at each g's rank, the plausibility measure of the
  review "Feature-attribution based explanations for fine-tuned LLMs" (Section VI.A).

>>> metrics([0.1, 2.0, 0.5, 1.5], {1, 3})
{'recall_at_k': 1.0, 'auroc': 1.0, 'pointing_game': 1.0, 'joint_success': 1.0, 'average_precision': 1.0}
>>> metrics([2.0, 0.1, 1.5, 0.5], {1, 3})["average_precision"]  # G at ranks 3 and 4: (1/3 + 2/4) / 2
0.41666...
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence

import numpy as np

from ..errors import InputError

METRICS = ("recall_at_k", "auroc", "pointing_game", "joint_success", "average_precision")


def _check(scores: Sequence[float], truth: Collection[int]) -> tuple[np.ndarray, set[int]]:
    s = np.asarray(getattr(scores, "scores", scores), dtype=np.float64)
    g = {int(i) for i in truth}
    if not g:
        raise InputError("the ground-truth set is empty; give at least one feature index.")
    if any(not 0 <= i < len(s) for i in g):
        raise InputError(f"ground-truth indices {sorted(g)} fall outside the {len(s)} features.")
    return s, g


def ranking(scores: Sequence[float] | np.ndarray) -> list[int]:
    """Feature indices by descending score, ties by position."""
    s = np.asarray(scores, dtype=np.float64)
    return sorted(range(len(s)), key=lambda i: (-s[i], i))


def recall_at_k(scores, truth: Collection[int]) -> float:
    s, g = _check(scores, truth)
    return len(set(ranking(s)[: len(g)]) & g) / len(g)


def auroc(scores, truth: Collection[int]) -> float:
    s, g = _check(scores, truth)
    inside = s[sorted(g)]
    outside = s[[i for i in range(len(s)) if i not in g]]
    if len(outside) == 0:
        return math.nan
    wins = (inside[:, None] > outside[None, :]).sum() + 0.5 * (inside[:, None] == outside[None, :]).sum()
    return float(wins / (len(inside) * len(outside)))


def pointing_game(scores, truth: Collection[int]) -> float:
    s, g = _check(scores, truth)
    return float(ranking(s)[0] in g)


def joint_success(scores, truth: Collection[int]) -> float:
    s, g = _check(scores, truth)
    return float(set(ranking(s)[: len(g)]) == g)


def average_precision(scores, truth: Collection[int]) -> float:
    """Average precision of the ranking (ties by position) against G: the mean over g in G of
    the precision of the top-r(g) features, r(g) g's 1-based rank,

        AP = (1/|G|) sum_{g in G} |{g' in G : r(g') <= r(g)}| / r(g);

    1 when G holds the |G| best features. Without ties it is scikit-learn's
    ``average_precision_score``; tied features are ranked by position here, not pooled. The
    plausibility measure of "Feature-attribution based explanations for fine-tuned LLMs" (a
    review), Section VI.A.

    >>> average_precision([0.9, 0.1, 0.5, 0.7], {0, 2})  # ranks 1 and 3: (1/1 + 2/3) / 2
    0.83333...
    """
    s, g = _check(scores, truth)
    hits, total = 0, 0.0
    for rank, i in enumerate(ranking(s), start=1):
        if i in g:
            hits += 1
            total += hits / rank
    return total / len(g)


def metrics(scores, truth: Collection[int]) -> dict[str, float]:
    """All five metrics for one attribution (an :class:`~genattr.Attribution` or a score vector)."""
    return {name: globals()[name](scores, truth) for name in METRICS}


def summarize(records: Iterable[dict]) -> dict[tuple[str, str], dict[str, float]]:
    """Mean of each metric per (method, task) over records holding ``method``, ``task`` and the metrics."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["method"], r["task"])].append(r)
    return {
        key: {m: float(np.nanmean([r[m] for r in rows])) for m in METRICS} | {"n": len(rows)}
        for key, rows in groups.items()
    }


def markdown_table(records: Iterable[dict], metric: str = "recall_at_k") -> str:
    """A table of one metric's mean: methods as rows, tasks as columns."""
    summary = summarize(records)
    methods = sorted({m for m, _ in summary})
    tasks = sorted({t for _, t in summary})
    lines = [f"| {metric} | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for m in methods:
        cells = [f"{summary[(m, t)][metric]:.2f}" if (m, t) in summary else "-" for t in tasks]
        lines.append(f"| `{m}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)
