"""Perturbation estimators and methods on a game known in closed form (a stand-in problem whose
coalition values are a fixed table with interactions), against oracles computed here from the
coalitions each method asked for: leave-one-out differences, per-permutation Shapley credits and
their standard error, the exact Shapley formula by permutations, and KernelSHAP as an equality-
constrained least-squares problem solved through its KKT system; and the sampling laws."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from genattr.algorithms.perturbation import LeaveOneOut, ShapleyExact, coalition_masks, shapley_from_table
from genattr.algorithms.shapley import KernelShap, ShapleySampling
from genattr.errors import InvalidParameterError, TooManyFeaturesError

from .test_lime_oracle import TableProblem


def _permutation_shapley(problem: TableProblem) -> np.ndarray:
    F = problem.n_features
    out = np.zeros((F, 3))
    perms = list(itertools.permutations(range(F)))
    for perm in perms:
        keep = torch.zeros(F + 1, F, dtype=torch.bool)
        for k in range(1, F + 1):
            keep[k, list(perm[:k])] = True
        v = problem.evaluate(keep).numpy()
        for k, i in enumerate(perm):
            out[i] += v[k + 1] - v[k]
    return out / len(perms)


def test_coalition_masks_row_s_keeps_the_bits_of_s():
    masks = coalition_masks(3)
    assert masks.tolist() == [[bool(s >> i & 1) for i in range(3)] for s in range(8)]


def test_leave_one_out_on_the_table_game():
    problem = TableProblem(4)
    out = LeaveOneOut().attribute(problem)
    v = lambda keep: problem.evaluate(torch.tensor([keep]))[0].numpy()  # noqa: E731
    full = v([True] * 4)
    expected = np.stack([full - v([j != i for j in range(4)]) for i in range(4)])
    np.testing.assert_allclose(out.scores, expected[:, 0], rtol=1e-12)
    np.testing.assert_allclose(out.token_scores, expected[:, 1:].T, rtol=1e-12)
    assert out.extras == {}


def test_leave_one_out_groups_share_the_group_score():
    problem = TableProblem(5)
    out = LeaveOneOut(groups=[[0, 3], [4]]).attribute(problem)
    v = lambda keep: float(problem.evaluate(torch.tensor([keep]))[0, 0])  # noqa: E731
    full = v([True] * 5)
    group = full - v([False, True, True, False, True])
    assert float(out.scores[0]) == float(out.scores[3]) == pytest.approx(group, rel=1e-12)
    assert float(out.scores[4]) == pytest.approx(full - v([True] * 4 + [False]), rel=1e-12)
    assert float(out.scores[1]) == pytest.approx(full - v([True, False, True, True, True]), rel=1e-12)
    assert out.extras == {"groups": [[0, 3], [4], [1], [2]]}
    with pytest.raises(InvalidParameterError, match=r"outside 0..4"):
        LeaveOneOut(groups=[[5]]).attribute(problem)
    with pytest.raises(InvalidParameterError, match=r"outside 0..4"):
        LeaveOneOut(groups=[[-1, 2]]).attribute(problem)


@pytest.mark.parametrize("groups", [[[]], [[0, "1"]], [3], [[0], [0, 1]], [[1, 1]]])
def test_malformed_groups_are_refused(groups):
    with pytest.raises(InvalidParameterError, match="groups"):
        LeaveOneOut(groups=groups)


def test_shapley_exact_equals_the_permutation_formula_and_refuses_thirteen_features():
    problem = TableProblem(4)
    out = ShapleyExact().attribute(problem)
    oracle = _permutation_shapley(problem)
    np.testing.assert_allclose(out.scores, oracle[:, 0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(out.token_scores, oracle[:, 1:].T, rtol=1e-10, atol=1e-12)
    table = problem.evaluate(coalition_masks(4))
    np.testing.assert_allclose(shapley_from_table(table, 4).numpy(), oracle, rtol=1e-10, atol=1e-12)
    twelve = TableProblem(12)
    out = ShapleyExact().attribute(twelve)  # the largest allowed
    ends = twelve.evaluate(torch.stack([torch.zeros(12, dtype=torch.bool), torch.ones(12, dtype=torch.bool)]))
    assert float(out.scores.sum()) == pytest.approx(float(ends[1, 0] - ends[0, 0]), rel=1e-9)
    with pytest.raises(TooManyFeaturesError, match="at most 12"):
        ShapleyExact().attribute(TableProblem(13))


def _scored_orders(problem: TableProblem) -> tuple[np.ndarray, np.ndarray]:
    """The permutations Shapley sampling scored (read from its calls: the ends first, then each
    permutation's F - 1 inner prefixes) and each one's credits [p, F, 3], one by one."""
    F = problem.n_features
    ends, *blocks = problem.seen
    assert ends.tolist() == [[False] * F, [True] * F]
    inner = torch.cat(blocks).view(-1, F - 1, F)
    chains = torch.cat([ends[:1].expand(len(inner), 1, F), inner, ends[1:].expand(len(inner), 1, F)], 1)
    values = problem.evaluate(chains.reshape(-1, F)).numpy().reshape(len(inner), F + 1, 3)
    orders = np.zeros((len(inner), F), dtype=int)
    credits = np.zeros((len(inner), F, 3))
    for s in range(len(inner)):
        for k in range(1, F + 1):
            (added,) = (chains[s, k] & ~chains[s, k - 1]).nonzero().flatten().tolist()  # one feature per step
            orders[s, k - 1] = added
            credits[s, added] = values[s, k] - values[s, k - 1]
    return orders, credits


def test_shapley_sampling_averages_the_credits_of_the_permutations_it_scored():
    problem = TableProblem(5, seed=2)
    n = 6
    out = ShapleySampling(n_samples=n, paired=False).attribute(problem)
    orders, credits = _scored_orders(problem)
    assert len(orders) == n and len({tuple(o) for o in orders}) > 1  # the permutations differ
    np.testing.assert_allclose(out.scores, credits[:, :, 0].mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out.token_scores, credits[:, :, 1:].mean(0).T, rtol=1e-12, atol=1e-12)
    stderr = credits[:, :, 0].std(0, ddof=1) / math.sqrt(n)
    np.testing.assert_allclose(out.diagnostics["stderr"], stderr, rtol=1e-10)
    assert out.diagnostics["evaluations"] == 2 + n * 4 and out.diagnostics["samples"] == n
    pair = TableProblem(5, seed=2)
    two = ShapleySampling(n_samples=2, paired=False).attribute(pair)
    c = _scored_orders(pair)[1][:, :, 0]
    np.testing.assert_allclose(two.diagnostics["stderr"], np.abs(c[0] - c[1]) / 2, rtol=1e-10)  # std/sqrt(2)
    single = ShapleySampling(n_samples=1, paired=False).attribute(TableProblem(5))
    assert all(math.isnan(x) for x in single.diagnostics["stderr"])


def test_paired_shapley_sampling_averages_each_permutation_with_its_reverse():
    """Oracle: the scored orders come as pi and reversed pi; a unit's credit is their mean, the
    scores the mean over units, the standard error that of the units' credits."""
    problem = TableProblem(5, seed=3)
    out = ShapleySampling(n_samples=8).attribute(problem)
    orders, credits = _scored_orders(problem)
    assert len(orders) == 8
    np.testing.assert_array_equal(orders[4:], orders[:4, ::-1])  # one block: pi_1..pi_4, then their reverses
    units = (credits[:4] + credits[4:]) / 2
    np.testing.assert_allclose(out.scores, units[:, :, 0].mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out.token_scores, units[:, :, 1:].mean(0).T, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out.diagnostics["stderr"], units[:, :, 0].std(0, ddof=1) / 2, rtol=1e-10)
    assert out.diagnostics["evaluations"] == 2 + 8 * 4 and out.diagnostics["samples"] == 8
    with pytest.raises(InvalidParameterError, match="must be even"):
        ShapleySampling(n_samples=7).attribute(TableProblem(5))


def test_shapley_sampling_converges_to_the_exact_values():
    problem = TableProblem(4, seed=1)
    exact = _permutation_shapley(problem)[:, 0]
    errors = [
        np.abs(ShapleySampling(n_samples=n).attribute(TableProblem(4, seed=1)).scores.numpy() - exact).max()
        for n in (2, 400)
    ]
    assert errors[1] < 0.25 * errors[0] and errors[1] < 0.1


def _constrained_least_squares(Z, y, w, total):
    """argmin_phi sum_z w_z (y_z - z . phi)^2 subject to sum phi = total, by its KKT system."""
    F = Z.shape[1]
    A = np.zeros((F + 1, F + 1))
    A[:F, :F] = 2 * Z.T @ (w[:, None] * Z)
    A[:F, F] = A[F, :F] = 1.0
    rhs = np.concatenate([2 * Z.T @ (w * y), [total]])
    return np.linalg.solve(A, rhs)[:F]


def test_kernel_shap_with_every_coalition_is_exact_shapley():
    problem = TableProblem(4)
    out = KernelShap(n_samples=14).attribute(problem)
    np.testing.assert_allclose(out.scores, _permutation_shapley(problem)[:, 0], rtol=1e-8, atol=1e-10)
    assert out.diagnostics == {
        "stderr": [0.0] * 4,
        "evaluations": 16,
        "samples": 14,
        "stopped": "exact",
    }
    sampled = KernelShap(n_samples=13).attribute(TableProblem(4))
    two = TableProblem(2)
    np.testing.assert_allclose(
        KernelShap().attribute(two).scores, _permutation_shapley(two)[:, 0], rtol=1e-10
    )
    assert (sampled.diagnostics["samples"], sampled.diagnostics["evaluations"]) == (13, 15)


def test_kernel_shap_sampled_is_the_constrained_least_squares_fit_on_its_coalitions():
    F = 6
    problem = TableProblem(F, seed=4)
    out = KernelShap(n_samples=31, sampling="kernel").attribute(problem)  # unit weights
    keep = torch.cat(problem.seen)
    assert not bool(keep[0].any()) and bool(keep[1].all())
    inner = keep[2:]
    assert len(inner) == 31
    assert torch.equal(inner[1::2], ~inner[0:30:2])  # complementary pairs, each coalition then its complement
    sizes = inner.sum(1)
    assert int(sizes.min()) >= 1 and int(sizes.max()) <= F - 1
    v = problem.evaluate(keep).numpy()
    for col in range(3):
        phi = _constrained_least_squares(
            inner.numpy().astype(float), v[2:, col] - v[0, col], np.ones(31), v[1, col] - v[0, col]
        )
        got = out.scores if col == 0 else out.token_scores[col - 1]
        np.testing.assert_allclose(got, phi, rtol=1e-7, atol=1e-9)


def test_kernel_shap_samples_sizes_from_the_shapley_kernel_in_complementary_pairs():
    F, n = 12, 4000  # fewer than the 2^12 - 2 proper coalitions: sampled
    problem = TableProblem(F)
    KernelShap(n_samples=n, sampling="kernel").attribute(problem)
    inner = torch.cat(problem.seen)[2:]
    assert len(inner) == n
    rows = {tuple(r) for r in inner.tolist()}
    assert all(tuple(not x for x in r) in rows for r in rows)  # every coalition with its complement
    sizes = inner.sum(1).numpy()
    p = np.array([(F - 1) / (s * (F - s)) for s in range(1, F)])
    p /= p.sum()
    counts = np.bincount(sizes, minlength=F)[1:]
    sd = np.sqrt(n / 2 * p * (1 - p)) * np.sqrt(2)  # pairs: each draw counted twice (s and F - s)
    assert np.all(np.abs(counts - n * p) < 5 * sd)
    share = inner[sizes == 3].double().mean(0)  # within a size, members uniform
    assert float((share - 3 / F).abs().max()) < 0.06


def test_kernel_shap_of_one_feature_is_the_whole_difference():
    problem = TableProblem(1)
    out = KernelShap().attribute(problem)
    v = problem.evaluate(torch.tensor([[False], [True]])).numpy()
    np.testing.assert_allclose(out.scores, [v[1, 0] - v[0, 0]], rtol=1e-12)
    np.testing.assert_allclose(out.token_scores, (v[1, 1:] - v[0, 1:])[:, None], rtol=1e-12)
