"""Optimal transport against independent references for the details the coarser oracles leave
open: IPOT step by step against Xie et al.'s Algorithm 1 written in NumPy, the scale invariance of
its stopping rule and per-problem convergence in a batch, the convergence flags against the
solvers' own stopping rules, documented defaults and chunk sizes, the clamping of the cosine cost
against rounding, the order of a compressed support, options and dtypes through
:func:`vocabulary_ot`, and the refusal of solver settings that have no meaning."""

from __future__ import annotations

import math

import numpy as np
import ot as pot
import pytest
import torch
from scipy.stats import entropy as scipy_entropy

from genattr.algorithms.gilot import ot
from genattr.errors import InvalidParameterError


def _pair(n=6, seed=0, B=2, scale=None):
    g = torch.Generator().manual_seed(seed)
    unit = ot.unit_embeddings(torch.randn(n, 4, generator=g, dtype=torch.float64))
    C = ot.cosine_cost(unit, torch.arange(n).expand(B, -1)).double()
    p = torch.rand(B, n, generator=g, dtype=torch.float64) + 0.1
    q = torch.rand(B, n, generator=g, dtype=torch.float64) + 0.1
    if scale is not None:
        C = C * torch.tensor(scale, dtype=torch.float64)[:, None, None]
    return p / p.sum(1, keepdim=True), q / q.sum(1, keepdim=True), C


def _ipot_numpy(a, b, M, beta, inner_iter, steps):
    """Algorithm 1 of Xie et al. (2020) with ``inner_iter`` Sinkhorn sweeps per step, on the problem
    with its zero-mass slots removed: G = exp(-M / beta), T = 1 1^T, y = 1, then each step Q = G * T,
    (x = a / Q y, y = b / Q^T x) repeated, T = diag(x) Q diag(y), y carried over. Returns <T, M>."""
    a, b, M = a[a > 0], b[b > 0], M[np.ix_(a > 0, b > 0)]
    G = np.exp(-M / beta)
    T = np.ones_like(M)
    y = np.ones(len(b))
    for _ in range(steps):
        Q = G * T
        for _ in range(inner_iter):
            x = a / (Q @ y)
            y = b / (Q.T @ x)
        T = x[:, None] * Q * y[None, :]
    return float((T * M).sum())


@pytest.mark.parametrize("beta,inner_iter,steps", [(0.5, 1, 1), (2.0, 3, 4), (1.0, 2, 3)])
def test_ipot_follows_algorithm_1_step_by_step(beta, inner_iter, steps):
    p, q, C = _pair(n=5, B=2)
    p[0, 1] = 0.0  # a zero mass on each side: its row / column carries nothing
    q[1, 3] = 0.0
    p, q = p / p.sum(1, keepdim=True), q / q.sum(1, keepdim=True)
    res = ot.ipot(p, q, C, beta=beta, inner_iter=inner_iter, tol=0.0, max_iter=steps)
    expected = [
        _ipot_numpy(a, b, M, beta, inner_iter, steps)
        for a, b, M in zip(p.numpy(), q.numpy(), C.numpy(), strict=True)
    ]
    np.testing.assert_allclose(res.cost.numpy(), expected, rtol=1e-12, atol=0)
    assert res.iterations == steps and res.converged.dtype == torch.bool and not bool(res.converged.any())


def test_ipot_stopping_rule_is_invariant_to_the_scale_of_the_costs():
    """<P, s C> with beta s gives the same iterates, so the relative change of cost stops it at the same step."""
    p, q, C = _pair(n=3, seed=3)
    base = ot.ipot(p, q, C, beta=0.5)
    assert bool(base.converged.all()) and base.iterations < 2000
    for s in (1e-4, 1e3):
        scaled = ot.ipot(p, q, s * C, beta=0.5 * s)
        assert scaled.iterations == base.iterations and bool(scaled.converged.all())
        torch.testing.assert_close(scaled.cost, s * base.cost, rtol=1e-9, atol=0)


def test_each_problem_of_a_batch_meets_the_tolerance_on_its_own():
    """A batch stops when its slowest problem would have stopped alone, whatever the scale of the
    others' costs; copies of one problem stop where it stops alone."""
    p, q, C = _pair(n=3, seed=1, B=3, scale=[1.0, 0.2, 3.0])
    alone = [ot.ipot(p[i : i + 1], q[i : i + 1], C[i : i + 1], beta=0.5) for i in range(3)]
    assert len({r.iterations for r in alone}) == 3  # problems that stop at different steps
    batch = ot.ipot(p, q, C, beta=0.5)
    assert batch.iterations == max(r.iterations for r in alone) and bool(batch.converged.all())
    slowest = max(range(3), key=lambda i: alone[i].iterations)
    torch.testing.assert_close(batch.cost[slowest], alone[slowest].cost[0], rtol=1e-12, atol=0)
    p, q, C = _pair(n=6, seed=1, B=1)  # one sweep per step: the marginal violation decides the stop
    alone = ot.ipot(p, q, C, inner_iter=1, tol=1e-4)
    copies = ot.ipot(p.expand(64, -1), q.expand(64, -1), C.expand(64, -1, -1), inner_iter=1, tol=1e-4)
    assert copies.iterations == alone.iterations and bool(copies.converged.all())
    torch.testing.assert_close(copies.cost, alone.cost.expand(64), rtol=1e-12, atol=0)


def test_ipot_and_sinkhorn_defaults_are_the_documented_ones():
    p, q, C = _pair(seed=2)
    default = ot.ipot(p, q, C)
    documented = ot.ipot(p, q, C, beta=1.0, inner_iter=5, tol=1e-7, max_iter=2000, check_every=10)
    assert default.iterations == documented.iterations and default.iterations % 10 == 0
    torch.testing.assert_close(default.cost, documented.cost, rtol=0, atol=0)
    p, q, C = _pair(n=2, B=1)
    assert ot.ipot(p, q, C, inner_iter=1, tol=0.0).iterations == 2000
    assert ot.sinkhorn(p, q, C, tol=0.0).iterations == 2000


def test_sinkhorn_reports_convergence_as_its_stopping_rule_decides():
    """POT stops when the row violation is strictly under tol: tol 0 never stops, even on a problem
    solved exactly at the first sweep (one token each side), and the flag says so."""
    p = torch.ones(2, 1, dtype=torch.float64)
    C = torch.tensor([[[0.0]], [[0.5]]], dtype=torch.float64)
    never = ot.sinkhorn(p, p, C, tol=0.0, max_iter=30)
    assert never.iterations == 30 and never.converged.tolist() == [False, False]
    assert never.marginal_error.tolist() == [0.0, 0.0] and never.cost.tolist() == [0.0, 0.5]
    first = ot.sinkhorn(p, p, C, tol=1e-9, max_iter=30)
    assert first.iterations == 1 and first.converged.tolist() == [True, True]


def test_marginal_error_is_per_problem():
    plan = torch.tensor([[[0.2, 0.1], [0.3, 0.1]], [[0.5, 0.0], [0.0, 0.5]]], dtype=torch.float64)
    p = torch.tensor([[0.5, 0.5], [0.5, 0.5]], dtype=torch.float64)
    q = torch.tensor([[0.6, 0.4], [0.5, 0.5]], dtype=torch.float64)
    np.testing.assert_allclose(ot._marginal_error(plan, p, q).numpy(), [0.6, 0.0], rtol=0, atol=1e-15)


def test_exact_solves_the_program_on_the_occupied_slots_only(monkeypatch):
    """Slots empty on both sides are dropped, a slot with mass on one side only is kept."""
    C = torch.tensor(
        [[[0.0, 1.0, 2.0, 3.0], [1.0, 0.0, 1.0, 2.0], [2.0, 1.0, 0.0, 1.0], [3.0, 2.0, 1.0, 0.0]]],
        dtype=torch.float64,
    )
    shapes = []
    emd = ot.pot.emd
    monkeypatch.setattr(ot.pot, "emd", lambda a, b, M, **kw: shapes.append(M.shape) or emd(a, b, M, **kw))
    res = ot.exact(
        torch.tensor([[0.5, 0.5, 0.0, 0.0]], dtype=torch.float64),
        torch.tensor([[0.0, 0.5, 0.5, 0.0]], dtype=torch.float64),
        C,
    )
    assert shapes == [(3, 3)] and float(res.cost[0]) == pytest.approx(1.0, abs=1e-12)
    assert res.iterations == 1


def test_exact_renormalises_both_distributions():
    C = torch.tensor([[[0.0, 1.0, 2.0], [1.0, 0.0, 1.0], [2.0, 1.0, 0.0]]], dtype=torch.float64)
    p = torch.tensor([[4.0, 0.0, 0.0]], dtype=torch.float64)
    q = torch.tensor([[2.0, 0.0, 2.0]], dtype=torch.float64)
    res = ot.exact(p, q, C)  # half the mass stays, half moves two steps
    assert float(res.cost[0]) == pytest.approx(1.0, abs=1e-12) and bool(res.converged[0])
    assert float(res.marginal_error[0]) == pytest.approx(0.0, abs=1e-12)


def test_exact_spreads_the_problems_over_the_torch_threads(monkeypatch):
    workers = []
    pool = ot.ThreadPoolExecutor
    monkeypatch.setattr(ot, "ThreadPoolExecutor", lambda n: workers.append(n) or pool(n))
    threads = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        for B in (1, 3, 6, 0):
            p, q, C = _pair(n=5, B=B)
            res = ot.exact(p, q, C)
            np.testing.assert_allclose(
                res.cost.numpy(),
                [pot.emd2(a, b, M) for a, b, M in zip(p.numpy(), q.numpy(), C.numpy(), strict=True)],
                rtol=0,
                atol=1e-12,
            )
    finally:
        torch.set_num_threads(threads)
    assert workers == [1, 3, 4, 1]  # one per problem, at most the torch threads, at least one
    assert res.converged.dtype == torch.bool and res.cost.shape == (0,)


def test_solve_and_vocabulary_ot_chunk_32_problems_by_default(monkeypatch):
    g = torch.Generator().manual_seed(9)
    V = 6
    unit = ot.unit_embeddings(torch.randn(V, 3, generator=g))
    p = torch.randn(40, V, generator=g).softmax(1)
    q = torch.randn(40, V, generator=g).softmax(1)
    chunks = []
    exact = ot.exact
    monkeypatch.setattr(ot, "exact", lambda a, b, C: chunks.append(len(a)) or exact(a, b, C))
    whole = ot.vocabulary_ot(p, q, unit, top_k=2, solver="exact")
    assert chunks == [32, 8]
    chunks.clear()
    wide = ot.vocabulary_ot(p, q, unit, top_k=2, solver="exact", batch_size=40)
    assert chunks == [40]  # the chunk built is the chunk solved
    torch.testing.assert_close(wide.cost, whole.cost, rtol=0, atol=0)
    chunks.clear()
    dense = p.double(), q.double(), ot.cosine_cost(unit, torch.arange(V).expand(40, -1)).double()
    ot.solve(*dense, "exact")
    assert chunks == [32, 8]


def test_vocabulary_ot_passes_the_solver_options_and_solves_in_the_requested_dtype():
    g = torch.Generator().manual_seed(10)
    unit = ot.unit_embeddings(torch.randn(8, 3, generator=g))
    p = torch.randn(3, 8, generator=g, dtype=torch.float64).softmax(1)
    q = torch.randn(3, 8, generator=g, dtype=torch.float64).softmax(1)
    support, a, b = ot.compress(p, q, 2)
    C = ot.cosine_cost(unit, support).double()
    for reg in (0.5, 0.01):
        res = ot.vocabulary_ot(p, q, unit, top_k=2, solver="sinkhorn", reg=reg, tol=1e-10, max_iter=5000)
        torch.testing.assert_close(res.cost, ot.sinkhorn(a, b, C, reg=reg, tol=1e-10, max_iter=5000).cost)
    assert float((res.cost - ot.exact(a, b, C).cost).abs().max()) < 0.01 * math.log(4)
    for solver, options in (("sinkhorn", {"max_iter": 50}), ("ipot", {"max_iter": 20}), ("exact", {})):
        single = ot.vocabulary_ot(p, q, unit, top_k=2, solver=solver, dtype=torch.float32, **options)
        assert single.cost.dtype == torch.float32 and single.marginal_error.dtype == torch.float32
        reference = ot.solve(a.float(), b.float(), C.float(), solver, **options)
        torch.testing.assert_close(single.cost, reference.cost, rtol=0, atol=0)


def _raw_cosine_cost(unit, support):
    e = unit[support]
    return 1.0 - e @ e.transpose(1, 2)


def test_cosine_cost_is_clamped_to_0_and_2_against_rounding():
    """Distinct tokens with parallel or antipodal float32 embeddings round to 1 - cos slightly outside
    [0, 2]; the cost is clamped there, exactly."""
    g = torch.Generator().manual_seed(11)
    base = torch.randn(50, 7, generator=g)
    unit = ot.unit_embeddings(torch.cat([base, 3 * base, -base]))
    support = torch.stack([torch.arange(50), torch.arange(50, 100), torch.arange(100, 150)], 1)  # [50, 3]
    raw = _raw_cosine_cost(unit, support)
    assert float(raw[:, 0, 1].min()) < 0.0 and float(raw[:, 0, 2].max()) > 2.0  # rounding does occur
    C = ot.cosine_cost(unit, support)
    assert float(C.min()) == 0.0 and float(C.max()) == 2.0
    expected = raw.clamp(0.0, 2.0) * (1 - torch.eye(3))  # a token against itself: exactly 0
    torch.testing.assert_close(C, expected, rtol=0, atol=0)
    torch.testing.assert_close(C[:, 0, 1], torch.zeros(50), rtol=0, atol=1e-6)
    torch.testing.assert_close(C[:, 0, 2], torch.full((50,), 2.0), rtol=0, atol=1e-6)


def test_compressed_support_lists_the_union_in_ascending_order_then_the_padding():
    g = torch.Generator().manual_seed(12)
    V, k = 400, 60
    logits = torch.randn(3, V, generator=g)
    p = logits.softmax(1)
    q = (logits + torch.randn(3, V, generator=g)).softmax(1)
    q[2] = p[2]  # identical top-k: a union of k, padded
    support, a, b = ot.compress(p, q, k)
    for i in range(3):
        union = sorted(set(p[i].topk(k).indices.tolist()) | set(q[i].topk(k).indices.tolist()))
        assert support[i, : len(union)].tolist() == union
        assert bool((a[i, len(union) :] == 0).all()) and bool((b[i, len(union) :] == 0).all())
        torch.testing.assert_close(a[i, : len(union)], p[i, union] / p[i, union].sum())
    assert support.shape[1] > k == len(set(support[2].tolist()))


def test_entropy_is_taken_over_the_last_axis():
    g = torch.Generator().manual_seed(13)
    p = torch.rand(2, 3, 4, generator=g, dtype=torch.float64)
    p[0, 1, 2] = 0.0
    p = p / p.sum(-1, keepdim=True)
    expected = scipy_entropy(p.numpy(), axis=-1)
    np.testing.assert_allclose(ot.entropy(p).numpy(), expected, rtol=1e-12, atol=0)
    assert float(ot.entropy(torch.tensor([0.5, 0.5]))) == pytest.approx(math.log(2), abs=1e-7)


@pytest.mark.parametrize(
    "options",
    [
        {"beta": 0.0},
        {"beta": -1.0},
        {"beta": math.nan},
        {"inner_iter": 0},
        {"max_iter": 0},
        {"check_every": 0},
    ],
)
def test_ipot_refuses_settings_without_meaning(options):
    p, q, C = _pair(B=1)
    with pytest.raises(InvalidParameterError, match="ipot needs beta > 0"):
        ot.ipot(p, q, C, **options)


@pytest.mark.parametrize("options", [{"reg": 0.0}, {"reg": -0.1}, {"reg": math.nan}, {"max_iter": 0}])
def test_sinkhorn_refuses_settings_without_meaning(options):
    p, q, C = _pair(B=1)
    with pytest.raises(InvalidParameterError, match="sinkhorn needs reg > 0"):
        ot.sinkhorn(p, q, C, **options)


def test_the_smallest_meaningful_settings_are_accepted():
    p, q, C = _pair(B=1)
    exact = float(ot.exact(p, q, C).cost[0])
    one = ot.ipot(p, q, C, beta=1.0, inner_iter=1, max_iter=1, check_every=1, tol=0.0)
    assert one.iterations == 1 and float(one.cost[0]) == pytest.approx(
        _ipot_numpy(p[0].numpy(), q[0].numpy(), C[0].numpy(), 1.0, 1, 1), rel=1e-12
    )
    assert ot.sinkhorn(p, q, C, reg=1.0, max_iter=1, tol=0.0).iterations == 1
    small = ot.sinkhorn(p, q, C, reg=1e-2, max_iter=5000, tol=1e-10)
    assert 0 < float(small.cost[0]) - exact <= 1e-2 * float(ot.entropy(p)[0])
