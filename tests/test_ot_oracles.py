"""Optimal-transport building blocks against values known by hand: log 0, plans with a known
marginal error, cost matrices of parallel and antipodal embeddings, the padding of compressed
supports, the iteration bookkeeping of the iterative solvers, the chunking of large problems,
and the entropy against SciPy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import entropy as scipy_entropy

from genattr.algorithms.gilot import ot
from genattr.errors import InvalidParameterError


def _pair(n=6, seed=0, B=2):
    g = torch.Generator().manual_seed(seed)
    unit = ot.unit_embeddings(torch.randn(n, 4, generator=g, dtype=torch.float64))
    C = ot.cosine_cost(unit, torch.arange(n).expand(B, -1)).double()
    p = torch.rand(B, n, generator=g, dtype=torch.float64) + 0.1
    q = torch.rand(B, n, generator=g, dtype=torch.float64) + 0.1
    return p / p.sum(1, keepdim=True), q / q.sum(1, keepdim=True), C


def test_safe_log_is_minus_infinity_exactly_at_zero():
    x = torch.tensor([0.0, 1e-300, 0.25, 1.0, 3.0], dtype=torch.float64)
    out = ot._safe_log(x)
    assert out[0] == -math.inf
    np.testing.assert_allclose(out[1:].numpy(), np.log(x[1:].numpy()), rtol=1e-12)
    assert ot._safe_log(torch.tensor([0.0, 0.5])).dtype == torch.float32


def test_marginal_error_is_the_l1_violation_of_both_marginals():
    plan = torch.tensor([[[0.2, 0.1], [0.3, 0.1]]], dtype=torch.float64)  # rows 0.3, 0.4; columns 0.5, 0.2
    p = torch.tensor([[0.5, 0.5]], dtype=torch.float64)
    q = torch.tensor([[0.6, 0.4]], dtype=torch.float64)
    expected = (0.2 + 0.1) + (0.1 + 0.2)
    assert float(ot._marginal_error(plan, p, q)[0]) == pytest.approx(expected, abs=1e-15)


def test_results_concatenate_and_report_the_most_iterations():
    a = ot.OTResult(torch.tensor([1.0]), torch.tensor([0.1]), torch.tensor([True]), 3)
    b = ot.OTResult(torch.tensor([2.0, 3.0]), torch.tensor([0.2, 0.3]), torch.tensor([False, True]), 7)
    both = ot.OTResult.cat([a, b])
    assert both.cost.tolist() == [1.0, 2.0, 3.0] and both.marginal_error.tolist() == pytest.approx(
        [0.1, 0.2, 0.3]
    )
    assert both.converged.tolist() == [True, False, True] and both.iterations == 7
    assert ot.OTResult.cat([b, a]).iterations == 7


@pytest.mark.parametrize(
    "shapes",
    [
        ((2, 3), (2, 3), (2, 3, 4)),
        ((2, 3), (2, 4), (1, 3, 4)),
        ((3,), (2, 3), (2, 3, 3)),
        ((2, 3), (3,), (2, 3, 3)),
    ],
)
def test_every_shape_mismatch_is_refused(shapes):
    p, q, C = (torch.full(s, 0.1) for s in shapes)
    with pytest.raises(InvalidParameterError, match="costs"):
        ot.exact(p, q, C)


def test_a_negative_mass_in_either_distribution_is_refused():
    p, q, C = _pair()
    for a, b in ((-p, q), (p, -q)):
        with pytest.raises(InvalidParameterError, match="non-negative"):
            ot.ipot(a, b, C)
    ot.exact(p.clamp(min=0), q, C)  # zero masses are fine


def test_ipot_checks_every_check_every_steps_and_at_the_last():
    p, q, C = _pair()
    stopped = ot.ipot(p, q, C, beta=1.0, inner_iter=5, tol=1e-5, max_iter=1000, check_every=7)
    assert bool(stopped.converged.all()) and stopped.iterations % 7 == 0 and stopped.iterations < 1000
    capped = ot.ipot(p, q, C, beta=1.0, inner_iter=1, tol=0.0, max_iter=15, check_every=10)
    assert capped.iterations == 15 and not bool(capped.converged.any())
    once = ot.ipot(p, q, C, max_iter=1)  # stopped before any convergence check could pass
    assert once.iterations == 1 and once.converged.tolist() == [False, False]
    tight = ot.ipot(p, q, C, beta=1.0, inner_iter=5, tol=1e-5, max_iter=1000, check_every=1)
    assert tight.iterations <= stopped.iterations
    exact = ot.exact(p, q, C).cost
    torch.testing.assert_close(stopped.cost, exact, rtol=1e-3, atol=0)
    assert float(stopped.marginal_error.max()) < 1e-4


def test_ipot_defaults_converge_to_the_exact_cost():
    p, q, C = _pair(seed=4)
    res = ot.ipot(p, q, C)
    assert bool(res.converged.all()) and res.iterations < 2000
    torch.testing.assert_close(res.cost, ot.exact(p, q, C).cost, rtol=1e-5, atol=0)


def test_sinkhorn_defaults_and_iteration_count():
    p, q, C = _pair(seed=5)
    res = ot.sinkhorn(p, q, C)
    gap = res.cost - ot.exact(p, q, C).cost
    assert bool(res.converged.all()) and res.iterations < 2000
    assert bool((gap > 0).all()) and bool(
        (gap <= 0.05 * torch.minimum(ot.entropy(p), ot.entropy(q)) + 1e-5).all()
    )
    one = ot.sinkhorn(p, q, C, tol=0.0, max_iter=1)
    assert one.iterations == 1 and not bool(one.converged.any())
    assert float(one.marginal_error.max()) > 1e-3


def test_exact_drops_slots_empty_on_both_sides_only():
    C = torch.tensor([[[0.0, 1.0, 2.0], [1.0, 0.0, 1.0], [2.0, 1.0, 0.0]]], dtype=torch.float64)
    p = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    q = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)
    res = ot.exact(p, q, C)
    assert float(res.cost[0]) == 2.0 and bool(res.converged[0]) and float(res.marginal_error[0]) == 0.0
    half = ot.exact(
        torch.tensor([[2.0, 0.0, 2.0]], dtype=torch.float64),
        torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64),
        C,
    )
    assert float(half.cost[0]) == pytest.approx(1.0, abs=1e-12)  # masses renormalised to one
    empty = ot.exact(p[:0], q[:0], C[:0])
    assert empty.cost.shape == (0,) and empty.cost.dtype == torch.float64


def test_solve_passes_options_and_accepts_batches_of_one():
    p, q, C = _pair(B=3)
    ones = ot.solve(p, q, C, "sinkhorn", batch_size=1, reg=0.5, tol=0.0, max_iter=50)
    whole = ot.sinkhorn(p, q, C, reg=0.5, tol=0.0, max_iter=50)
    torch.testing.assert_close(ones.cost, whole.cost, rtol=1e-10, atol=0)
    assert ones.iterations == whole.iterations == 50  # every iteration counted, none more
    default = ot.solve(p, q, C)  # ipot
    torch.testing.assert_close(default.cost, ot.ipot(p, q, C).cost)


def test_unit_embeddings_scale_rows_to_length_one_and_keep_zero_rows():
    E = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1e-14, 0.0]], dtype=torch.float64)
    unit = ot.unit_embeddings(E)
    assert unit.dtype == torch.float32
    torch.testing.assert_close(unit[0], torch.tensor([0.6, 0.8]))
    assert unit[1].tolist() == [0.0, 0.0]
    assert float(unit[2, 0]) == pytest.approx(1e-2, rel=1e-5)  # clamped at 1e-12: 1e-14 / 1e-12


def test_cosine_cost_of_parallel_orthogonal_and_antipodal_embeddings():
    unit = ot.unit_embeddings(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [2.0, 0.0]]))
    C = ot.cosine_cost(unit, torch.tensor([[0, 1, 2, 3, 0]]))
    expected = torch.tensor(
        [
            [0.0, 1.0, 2.0, 0.0, 0.0],
            [1.0, 0.0, 1.0, 1.0, 1.0],
            [2.0, 1.0, 0.0, 2.0, 2.0],
            [0.0, 1.0, 2.0, 0.0, 0.0],
            [0.0, 1.0, 2.0, 0.0, 0.0],
        ]
    )
    torch.testing.assert_close(C[0], expected, atol=1e-7, rtol=0)
    assert float(C.max()) <= 2.0 and float(C.min()) >= 0.0


def test_compression_pads_the_narrower_problems_with_zero_mass_repeats():
    p = torch.tensor([[0.5, 0.3, 0.1, 0.1, 0.0], [0.05, 0.05, 0.1, 0.3, 0.5]])
    q = torch.tensor([[0.4, 0.4, 0.1, 0.1, 0.0], [0.5, 0.3, 0.1, 0.05, 0.05]])
    support, a, b = ot.compress(p, q, 2)
    assert support.shape == (2, 4)
    assert (
        support[0, :2].tolist() == [0, 1]
        and a[0, 2:].tolist() == [0.0, 0.0]
        and b[0, 2:].tolist() == [0.0, 0.0]
    )
    assert set(support[0].tolist()) == {0, 1}
    assert sorted(support[1].tolist()) == [0, 1, 3, 4]
    torch.testing.assert_close(a[0, :2], torch.tensor([0.5, 0.3]) / 0.8)
    torch.testing.assert_close(b[1], q[1, support[1]] / q[1, support[1]].sum())
    full, fa, fb = ot.compress(3 * p, 2 * q, 5)  # unnormalised: renormalised on the whole vocabulary
    assert full.tolist() == [list(range(5))] * 2
    torch.testing.assert_close(fa, p / p.sum(1, keepdim=True))
    torch.testing.assert_close(fb, q / q.sum(1, keepdim=True))


def test_vocabulary_ot_chunks_by_the_cost_matrix_budget(monkeypatch):
    g = torch.Generator().manual_seed(6)
    V = 10
    unit = ot.unit_embeddings(torch.randn(V, 3, generator=g))
    p = torch.randn(5, V, generator=g).softmax(1)
    q = torch.randn(5, V, generator=g).softmax(1)
    whole = ot.vocabulary_ot(p, q, unit, top_k=3, solver="exact")
    calls = []
    solve = ot.solve
    monkeypatch.setattr(
        ot, "solve", lambda a, b, C, *args, **kw: calls.append(len(a)) or solve(a, b, C, *args, **kw)
    )
    monkeypatch.setattr(ot, "MAX_COST_ENTRIES", 2 * 36)  # two 6 x 6 problems at a time
    chunked = ot.vocabulary_ot(p, q, unit, top_k=3, solver="exact", batch_size=4)
    assert calls == [2, 2, 1]
    torch.testing.assert_close(chunked.cost, whole.cost)
    calls.clear()
    monkeypatch.setattr(ot, "MAX_COST_ENTRIES", 36)  # exactly one 6 x 6 problem: one at a time
    one_by_one = ot.vocabulary_ot(p, q, unit, top_k=3, solver="exact", batch_size=4)
    assert calls == [1] * 5
    torch.testing.assert_close(one_by_one.cost, whole.cost)
    monkeypatch.setattr(ot, "MAX_COST_ENTRIES", 35)  # not even one
    with pytest.raises(InvalidParameterError, match="top_k"):
        ot.vocabulary_ot(p, q, unit, top_k=3, solver="exact")
    with pytest.raises(InvalidParameterError, match=r"\[B, V\]"):
        ot.vocabulary_ot(p, q[:, :5], unit)
    with pytest.raises(InvalidParameterError, match=r"\[B, V\]"):
        ot.vocabulary_ot(p[0], q[0], unit)


def test_vocabulary_ot_solves_in_the_requested_dtype():
    g = torch.Generator().manual_seed(7)
    unit = ot.unit_embeddings(torch.randn(8, 3, generator=g))
    p = torch.randn(2, 8, generator=g).softmax(1)
    q = torch.randn(2, 8, generator=g).softmax(1)
    default = ot.vocabulary_ot(p, q, unit, top_k=2)  # IPOT in float64
    assert default.cost.dtype == torch.float64 and default.iterations > 1
    torch.testing.assert_close(
        default.cost, ot.vocabulary_ot(p, q, unit, top_k=2, solver="exact").cost, rtol=1e-5, atol=0
    )
    assert (
        ot.vocabulary_ot(p, q, unit, top_k=2, solver="exact", dtype=torch.float32).cost.dtype == torch.float32
    )


def test_entropy_equals_scipy():
    p = torch.tensor([[0.5, 0.25, 0.25, 0.0], [1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    np.testing.assert_allclose(
        ot.entropy(p).numpy(), [scipy_entropy(r) for r in p.numpy()], rtol=1e-12, atol=0
    )


def test_exact_reports_the_marginal_error_of_the_plan_it_got(monkeypatch):
    p, q, C = _pair(n=3, B=1)
    emd = ot.pot.emd

    def off_plan(a, b, M, **kw):  # the optimal plan with mass moved off both marginals
        plan, log = emd(a, b, M, **kw)
        plan = plan.copy()
        plan[0, 0] += 0.01
        plan[1, 2] += 0.02
        return plan, log

    monkeypatch.setattr(ot.pot, "emd", off_plan)
    res = ot.exact(p, q, C)
    assert float(res.marginal_error[0]) == pytest.approx(2 * (0.01 + 0.02), abs=1e-12)


def test_vocabulary_ot_compresses_to_the_top_100_by_default():
    g = torch.Generator().manual_seed(8)
    V = 300
    unit = ot.unit_embeddings(torch.randn(V, 4, generator=g))
    p = (0.5 * torch.randn(1, V, generator=g)).softmax(1)
    q = (0.5 * torch.randn(1, V, generator=g)).softmax(1)
    costs = {k: float(ot.vocabulary_ot(p, q, unit, top_k=k, solver="exact").cost[0]) for k in (100, 101)}
    assert abs(costs[100] - costs[101]) > 1e-6
    assert float(ot.vocabulary_ot(p, q, unit, solver="exact").cost[0]) == pytest.approx(costs[100], abs=1e-9)


def test_compression_to_the_single_most_likely_token():
    p = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    q = torch.tensor([[0.1, 0.7, 0.2], [0.1, 0.3, 0.6]])
    support, a, b = ot.compress(p, q, 1)
    assert support.tolist() == [[0, 1], [2, 2]]
    torch.testing.assert_close(a, torch.tensor([[2 / 3, 1 / 3], [1.0, 0.0]]))
    torch.testing.assert_close(b, torch.tensor([[0.125, 0.875], [1.0, 0.0]]))
