"""XPrompt on a stand-in problem whose log-likelihoods are a fixed table, so that the optimum of
Eq. 3 is known by enumerating every k-subset, and every extra (joint effect, per-token drop,
marginal contributions, scores) is recomputed here from the table (searched without gradient
guidance, both ablations); the swap law softmax(g) over the support is checked by its frequencies."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from genattr.algorithms import xprompt as X

F = 6
TOKENS = torch.tensor(
    [[0.3, -1.2, 0.8, 0.05, -0.4, 1.1], [-0.6, 0.9, -0.2, 0.7, 0.35, -0.15]], dtype=torch.float64
).T  # feature i present adds TOKENS[i] to the two target tokens' log-probabilities


class TableProblem:
    n_features = F
    features = [type("Feature", (), {"text": f"w{i}"})() for i in range(F)]

    def __init__(self, seed=0):
        self.seed, self.rows = seed, 0

    def generator(self):
        return torch.Generator().manual_seed(self.seed)

    def all_kept(self, rows=1):
        return torch.ones(rows, F, dtype=torch.bool)

    def token_log_probs(self, keep):
        self.rows += len(keep)
        z = keep.double()
        pair = 0.5 * (z[:, 0] * z[:, 3]) - 0.3 * (z[:, 1] * z[:, 2])  # interactions, on the first token
        lp = -3.0 + z @ TOKENS
        lp[:, 0] += pair
        return lp.float()


def _value(removed) -> float:
    keep = torch.ones(1, F, dtype=torch.bool)
    keep[0, list(removed)] = False
    return float(TableProblem().token_log_probs(keep).double().sum())


def _tokens(removed) -> torch.Tensor:
    keep = torch.ones(1, F, dtype=torch.bool)
    keep[0, list(removed)] = False
    return TableProblem().token_log_probs(keep).double()[0]


@pytest.mark.parametrize("k", [1, 2, 3])
def test_search_finds_the_enumerated_optimum_and_every_extra_matches_the_table(k):
    problem = TableProblem(seed=k)
    out = X.XPrompt(k=k, n_iter=300, random_init=True, uniform_sampling=True).attribute(problem)
    best = min(itertools.combinations(range(F), k), key=_value)
    e = out.extras
    assert e["chosen"] == sorted(best) and e["chosen_text"] == [f"w{i}" for i in sorted(best)]
    full, masked = _value(()), _value(best)
    assert e["log_likelihood_full"] == pytest.approx(full, abs=1e-5)
    assert e["log_likelihood_masked"] == pytest.approx(masked, abs=1e-5)
    assert e["log_likelihood_drop"] == pytest.approx(full - masked, abs=1e-5)
    assert e["probability_ratio"] == pytest.approx(math.exp(masked - full), rel=1e-5)
    assert e["probability_drop"] == pytest.approx(math.exp(full) - math.exp(masked), rel=1e-5)
    np.testing.assert_allclose(e["token_drop"], (_tokens(()) - _tokens(best)).numpy(), atol=1e-5)
    c = np.array([_value(set(best) - {i}) - masked for i in sorted(best)])
    np.testing.assert_allclose(e["contributions"], c, atol=1e-5)
    pos = np.maximum(c, 0)
    share = k * pos / pos.sum() if pos.sum() > 0 else np.ones(k)
    expected = np.zeros(F)
    expected[sorted(best)] = (1 + share) / 2
    np.testing.assert_allclose(out.scores, expected, atol=1e-5)
    assert float(out.scores.sum()) == pytest.approx(k, abs=1e-5)
    assert e["gradient"] is None
    trace = e["trace"]
    assert len(trace) == 301 and trace[-1] == pytest.approx(masked, abs=1e-5)
    assert all(b <= a for a, b in zip(trace[:-1], trace[1:], strict=True))
    d = out.diagnostics
    assert d["gradient_passes"] == 0 and d["stopped_early"] and d["iterations"] < 300
    assert d["evaluations"] <= math.comb(F, k) + 1 + k
    assert problem.rows == d["evaluations"]  # every mask scored once


def test_draw_follows_softmax_over_the_support():
    w = torch.tensor([0.0, 1.0, 2.0, -1.0, 3.0], dtype=torch.float64)
    support = torch.tensor([True, True, True, True, False])
    gen = torch.Generator().manual_seed(0)
    n = 6000
    counts = np.bincount([X._draw(w, support, gen) for _ in range(n)], minlength=5)
    p = torch.softmax(w[:4], 0).numpy()
    assert counts[4] == 0
    assert np.all(np.abs(counts[:4] - n * p) < 5 * np.sqrt(n * p * (1 - p)))


def test_bits_and_indices_are_inverse():
    assert X._bits([0, 3, 5]) == 0b101001 and X._indices(0b101001) == [0, 3, 5]
    assert X._bits([]) == 0 and X._indices(0) == []
    for subset in itertools.combinations(range(7), 3):
        assert X._indices(X._bits(subset)) == list(subset)


def test_fresh_swaps_are_distinct_unscored_and_run_out():
    problem = TableProblem()
    scorer = X._Scorer(problem)
    removed = torch.tensor([True, False, False, True, False, False])
    key = X._bits([0, 3])
    scorer([key, key ^ X._bits([1, 0])])  # the swap (1, 0) is scored
    assert scorer.scored_swaps(key) == [(1, 0)]
    w = torch.zeros(F, dtype=torch.float64)
    swaps = X._fresh_swaps(w, removed, scorer, 100, torch.Generator().manual_seed(0))
    assert len(swaps) == 4 * 2 - 1 == len(set(swaps)) and (1, 0) not in swaps
    assert all(not removed[kept] and removed[back] for kept, back in swaps)
    scorer([key ^ X._bits(s) for s in swaps[1:]])
    assert X._fresh_swaps(w, removed, scorer, 3, torch.Generator().manual_seed(0)) == [
        swaps[0]
    ]  # the last one
    scorer([key ^ X._bits(swaps[0])])
    assert X._fresh_swaps(w, removed, scorer, 3, torch.Generator().manual_seed(0)) == []
    assert sorted(scorer.scored_swaps(key)) == sorted([(1, 0), *swaps])
    tokens = scorer.tokens([key, 0])
    torch.testing.assert_close(tokens[0], _tokens([0, 3]), atol=1e-6, rtol=0)
    torch.testing.assert_close(scorer([0]), _tokens([]).sum()[None], atol=1e-5, rtol=0)


def test_fresh_swaps_follow_the_product_of_the_two_softmaxes_and_the_seed():
    scorer = X._Scorer(TableProblem())
    w = torch.tensor([1.5, 0.0, -1.0, 0.5, 2.0, 0.0], dtype=torch.float64)
    removed = torch.tensor([False, False, False, True, True, False])  # kept 0, 1, 2, 5; removed 3, 4
    gen = torch.Generator().manual_seed(1)
    n = 6000
    counts = {}
    for _ in range(n):
        ((kept, back),) = X._fresh_swaps(w, removed, scorer, 1, gen)
        counts[kept, back] = counts.get((kept, back), 0) + 1
    pairs = [(k, b) for k in (0, 1, 2, 5) for b in (3, 4)]
    p = torch.tensor([float(w[k] + w[b]) for k, b in pairs]).softmax(0).numpy()
    observed = np.array([counts.get(pair, 0) for pair in pairs])
    assert np.all(np.abs(observed - n * p) < 5 * np.sqrt(n * p * (1 - p)))
    draws = [X._fresh_swaps(w, removed, scorer, 4, torch.Generator().manual_seed(s)) for s in (3, 3, 4)]
    assert draws[0] == draws[1] != draws[2]
