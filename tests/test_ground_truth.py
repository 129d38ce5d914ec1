"""Ground-truth metrics: average precision (plausibility) against scikit-learn and by hand, and the
metric list kept in step with the benchmark's table."""

from __future__ import annotations

import math

import numpy as np
import pytest

from genattr.errors import InputError
from genattr.evaluate import ground_truth
from genattr.evaluate.ground_truth import METRICS, average_precision, metrics
from genattr.evaluate.tables import TABLE_ROWS


def test_average_precision_matches_scikit_learn_without_ties():
    sklearn = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(300):
        n = int(rng.integers(2, 30))
        scores = rng.normal(size=n)
        truth = {int(i) for i in np.flatnonzero(rng.random(n) < rng.uniform(0.1, 0.6))}
        if not truth or len(set(scores)) < n:
            continue
        labels = np.isin(np.arange(n), sorted(truth))
        expected = sklearn.average_precision_score(labels, scores)
        assert math.isclose(average_precision(scores, truth), expected, rel_tol=1e-12, abs_tol=1e-12)
        checked += 1
    assert checked > 250


@pytest.mark.parametrize(
    "scores, truth, expected",
    [
        ([0.1, 2.0, 0.5, 1.5], {1, 3}, 1.0),  # G on top
        ([2.0, 0.1, 1.5, 0.5], {1, 3}, (1 / 3 + 2 / 4) / 2),  # G at ranks 3 and 4
        ([0.9, 0.1, 0.5, 0.7], {0, 2}, (1 / 1 + 2 / 3) / 2),  # ranks 1 and 3
        ([4.0, 3.0, 2.0, 1.0], {3}, 1 / 4),  # the one relevant feature last
        ([1.0, 1.0, 1.0, 0.0], {0}, 1.0),  # a tie broken by position: feature 0 first
        ([1.0, 1.0, 1.0, 0.0], {2}, 1 / 3),
        ([0.0, 0.0, 0.0, 0.0], {1, 3}, (1 / 2 + 2 / 4) / 2),
        ([3.0, 2.0, 1.0], {0, 1, 2}, 1.0),  # G is everything
    ],
)
def test_average_precision_by_hand(scores, truth, expected):
    assert math.isclose(average_precision(scores, truth), expected, rel_tol=1e-12)


def test_ties_are_ranked_by_position_not_pooled():
    sklearn = pytest.importorskip("sklearn.metrics")
    scores, truth = [1.0, 1.0, 1.0, 0.0], {0}
    pooled = sklearn.average_precision_score([True, False, False, False], scores)
    assert math.isclose(pooled, 1 / 3) and average_precision(scores, truth) == 1.0


def test_average_precision_is_one_of_the_metrics_and_the_benchmark_table_rows():
    result = metrics([0.9, 0.1, 0.5, 0.7], {0, 2})
    assert list(result) == list(METRICS) and math.isclose(result["average_precision"], 5 / 6)
    assert [key for key, _, _ in TABLE_ROWS["ground_truth"]] == list(METRICS)
    records = [{"method": "m", "task": "t", **metrics(s, {0})} for s in ([1.0, 0.0], [0.0, 1.0])]
    assert ground_truth.summarize(records)[("m", "t")]["average_precision"] == pytest.approx(0.75, abs=1e-12)
    with pytest.raises(InputError, match="ground-truth set is empty"):
        average_precision([1.0, 2.0], set())
    with pytest.raises(InputError, match="fall outside"):
        average_precision([1.0, 2.0], {2})
