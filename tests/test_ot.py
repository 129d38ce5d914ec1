"""Optimal transport against POT's exact network simplex: Sinkhorn within its entropic bound, IPOT
converging to the exact cost, the axioms OT(p, p) = 0 and symmetry, batching, and GiLOT's
vocabulary compression against a set-based reimplementation."""

from __future__ import annotations

import numpy as np
import ot as pot
import pytest
import torch

from genattr.algorithms.gilot import ot
from genattr.errors import InvalidParameterError


def _problems(B=6, n=24, d=8, seed=0, zeros=True):
    """B problems on n tokens with cosine costs of random embeddings; masses peaked, some exactly 0."""
    g = torch.Generator().manual_seed(seed)
    unit = ot.unit_embeddings(torch.randn(n, d, generator=g, dtype=torch.float64))
    support = torch.stack([torch.randperm(n, generator=g) for _ in range(B)])
    C = ot.cosine_cost(unit, support).double()
    p = (3 * torch.randn(B, n, generator=g, dtype=torch.float64)).softmax(1)
    q = (3 * torch.randn(B, n, generator=g, dtype=torch.float64)).softmax(1)
    if zeros:
        p[:, :3] = 0
        q[:, -2:] = 0
        p, q = p / p.sum(1, keepdim=True), q / q.sum(1, keepdim=True)
    return p, q, C


TIGHT_IPOT = {"beta": 1.0, "inner_iter": 20, "tol": 1e-10, "max_iter": 500}


def _emd2(p, q, C) -> np.ndarray:
    return np.array(
        [
            pot.emd2(a / a.sum(), b / b.sum(), M)
            for a, b, M in zip(p.numpy(), q.numpy(), C.numpy(), strict=True)
        ]
    )


def test_exact_equals_pot_emd2_and_satisfies_the_marginals():
    p, q, C = _problems()
    res = ot.exact(p, q, C)
    np.testing.assert_allclose(res.cost.numpy(), _emd2(p, q, C), rtol=0, atol=1e-12)
    assert bool(res.converged.all()) and float(res.marginal_error.max()) < 1e-12


@pytest.mark.parametrize("reg", [0.05, 0.01])
def test_sinkhorn_stays_within_its_entropic_bound_of_exact(reg):
    """0 <= <P_reg, C> - OT(p, q) <= reg * min(H(p), H(q)), up to the marginal error times max C."""
    p, q, C = _problems()
    exact = torch.from_numpy(_emd2(p, q, C))
    res = ot.sinkhorn(p, q, C, reg=reg, tol=1e-10, max_iter=20000)
    assert bool(res.converged.all())
    slack = float(res.marginal_error.max()) * 2 + 1e-9
    gap = res.cost - exact
    bound = reg * torch.minimum(ot.entropy(p), ot.entropy(q))
    assert bool((gap >= -slack).all()) and bool((gap <= bound + slack).all())
    assert float(gap.max()) > 1e-3 * reg  # the entropic bias is real


def test_sinkhorn_gap_shrinks_with_the_regularisation():
    p, q, C = _problems(zeros=False)
    exact = torch.from_numpy(_emd2(p, q, C))
    gaps = [
        float((ot.sinkhorn(p, q, C, reg=reg, tol=1e-10, max_iter=50000).cost - exact).abs().max())
        for reg in (0.1, 0.02, 0.005)
    ]
    assert gaps[0] > gaps[1] > gaps[2]


def test_ipot_converges_to_exact():
    p, q, C = _problems()
    exact = torch.from_numpy(_emd2(p, q, C))
    res = ot.ipot(p, q, C, **TIGHT_IPOT)
    torch.testing.assert_close(res.cost, exact, rtol=1e-4, atol=0)
    assert float(res.marginal_error.max()) < 1e-6
    loose = ot.ipot(p, q, C, beta=1.0, inner_iter=1, tol=0, max_iter=20)  # few steps: not there yet
    assert float(((loose.cost - exact) / exact).abs().max()) > 1e-4 and not bool(loose.converged.any())


def test_distance_of_a_distribution_to_itself():
    p, _, C = _problems()
    for res in (ot.exact(p, p, C), ot.ipot(p, p, C, **TIGHT_IPOT)):
        assert float(res.cost.abs().max()) < 1e-6
    res = ot.sinkhorn(p, p, C, reg=0.01, tol=1e-10, max_iter=20000)
    assert bool((res.cost >= 0).all()) and bool((res.cost <= 0.01 * ot.entropy(p) + 1e-8).all())


def test_symmetry():
    p, q, C = _problems()
    for solve in (ot.exact, lambda a, b, M: ot.ipot(a, b, M, **TIGHT_IPOT)):
        torch.testing.assert_close(
            solve(p, q, C).cost, solve(q, p, C.transpose(1, 2)).cost, rtol=1e-5, atol=1e-9
        )


@pytest.mark.parametrize(
    "solver,options",
    [
        ("sinkhorn", {"reg": 0.05, "tol": 0.0, "max_iter": 200}),
        ("ipot", {"tol": 0.0, "max_iter": 100}),
        ("exact", {}),
    ],
)
def test_batched_equals_looped(solver, options):
    """With the iterations fixed (tol 0), solving 7 problems together, in chunks or one by one agrees."""
    p, q, C = _problems(B=7)
    looped = torch.cat(
        [ot.solve(p[i : i + 1], q[i : i + 1], C[i : i + 1], solver, **options).cost for i in range(7)]
    )
    for batch_size in (7, 3):
        batched = ot.solve(p, q, C, solver, batch_size=batch_size, **options)
        torch.testing.assert_close(batched.cost, looped, rtol=1e-9, atol=1e-12)


def test_cosine_cost_is_one_minus_the_cosine():
    g = torch.Generator().manual_seed(1)
    E = torch.randn(10, 5, generator=g)
    support = torch.tensor([[0, 3, 3, 7], [9, 1, 2, 5]])
    C = ot.cosine_cost(ot.unit_embeddings(E), support)
    cos = torch.nn.functional.cosine_similarity(E[support][:, :, None], E[support][:, None, :], dim=-1)
    torch.testing.assert_close(C, 1 - cos, atol=1e-6, rtol=0)
    assert float(C[0, 1, 2]) == 0.0 and float(C[0].diagonal().abs().max()) == 0.0


def test_compression_with_k_equal_to_the_vocabulary_is_full_vocabulary_ot():
    g = torch.Generator().manual_seed(2)
    V = 12
    E = torch.randn(V, 6, generator=g, dtype=torch.float64)
    unit = ot.unit_embeddings(E)
    p = (2 * torch.randn(4, V, generator=g)).softmax(1)
    q = (2 * torch.randn(4, V, generator=g)).softmax(1)
    full = 1 - torch.nn.functional.cosine_similarity(E[:, None], E[None], dim=-1).clamp(max=1)
    expected = _emd2(p.double(), q.double(), full.expand(4, -1, -1).contiguous())
    for k in (V, None, 10 * V):
        res = ot.vocabulary_ot(p, q, unit, top_k=k, solver="exact")
        np.testing.assert_allclose(res.cost.numpy(), expected, atol=1e-6, rtol=0)


def test_compression_is_the_renormalised_union_of_the_top_k():
    """Oracle: the union built as a Python set, both distributions restricted to it and renormalised."""
    g = torch.Generator().manual_seed(3)
    V, k = 40, 5
    E = torch.randn(V, 6, generator=g, dtype=torch.float64)
    logits = 2 * torch.randn(3, V, generator=g)
    p = logits.softmax(1)
    q = (logits + 0.7 * torch.randn(3, V, generator=g)).softmax(1)  # top-k sets that overlap in part
    res = ot.vocabulary_ot(p, q, ot.unit_embeddings(E), top_k=k, solver="exact")
    for i in range(3):
        union = sorted(set(p[i].topk(k).indices.tolist()) | set(q[i].topk(k).indices.tolist()))
        assert k < len(union) < 2 * k
        a, b = p[i, union].double(), q[i, union].double()
        cos = torch.nn.functional.cosine_similarity(E[union][:, None], E[union][None], dim=-1)
        expected = pot.emd2((a / a.sum()).numpy(), (b / b.sum()).numpy(), (1 - cos).clamp(min=0).numpy())
        assert float(res.cost[i]) == pytest.approx(expected, abs=1e-6)
    support, a, b = ot.compress(p, q, k)
    assert k < support.shape[1] < 2 * k
    torch.testing.assert_close(a.sum(1), torch.ones(3), rtol=0, atol=1e-6)


def test_bad_input_raises_typed_errors(monkeypatch):
    p, q, C = _problems(B=2)
    with pytest.raises(InvalidParameterError, match="costs"):
        ot.exact(p, q, C[:, :3])
    with pytest.raises(InvalidParameterError, match="non-negative"):
        ot.sinkhorn(-p, q, C)
    with pytest.raises(InvalidParameterError, match="unknown OT solver"):
        ot.solve(p, q, C, "simplex")
    with pytest.raises(InvalidParameterError, match="batch_size"):
        ot.solve(p, q, C, "exact", batch_size=0)
    with pytest.raises(InvalidParameterError, match="top_k"):
        ot.compress(p, q, 0)
    big = torch.full((1, 9000), 1 / 9000)
    monkeypatch.setattr(
        ot, "compress", lambda *args: pytest.fail("a problem was built before the size check")
    )
    with pytest.raises(InvalidParameterError, match="top_k <= 4096"):  # a 9000 x 9000 cost matrix
        ot.vocabulary_ot(big, big, torch.eye(9000, 2), top_k=None, solver="exact")
