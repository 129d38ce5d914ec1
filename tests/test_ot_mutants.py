"""Optimal-transport solver settings: those without meaning (a step or regularisation that is not
positive, no sweep, step or check) are refused with a typed error; the smallest meaningful ones
run, against Xie et al.'s IPOT Algorithm 1 written in NumPy and Sinkhorn's entropic bound."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from genattr import ot
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
