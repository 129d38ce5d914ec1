"""Optimal transport between token distributions, solved in batches.

GiLOT ("GiLOT: Interpreting Generative Language Models via Optimal Transport", Li et al., ICML
2024) compares two distributions p, q over the vocabulary with the optimal transport cost

    L_OT(p, q) = min_{P in Pi(p, q)} <P, C>_F,   Pi(p, q) = {P >= 0 : P 1 = p, P^T 1 = q}   (Eq. 8)

under the cost C_ij = 1 - cos(e_i, e_j) of the model's token embeddings (Eq. 7), computed on the
union of the top-k tokens of p and of q (its "dynamic vocabulary compression"). This module
holds that computation for many (p, q) pairs at once:

* :func:`compress` turns B pairs of vocabulary distributions into B small problems on the union
  of their top-k supports (at most 2k tokens, renormalised), padded to the widest union;
* :func:`cosine_cost` builds the B cost matrices from the embedding matrix in one batched product;
* three solvers, each taking a batch [B, n] x [B, m] x [B, n, m] and returning an :class:`OTResult`:

  - :func:`sinkhorn`: entropic OT, min <P, C> - reg H(P), by log-domain Sinkhorn iterations
    (Cuturi, "Sinkhorn Distances", 2013) -- POT's batched solver
    (:func:`ot.batch.bregman_log_projection_batch`). Its cost <P_reg, C> exceeds the exact one
    by at most reg * min(H(p), H(q)) (H the entropy), so OT(p, p) is small but not 0.
  - :func:`ipot`: the inexact proximal point method (Xie et al., "A Fast Proximal Point Method
    for Computing Exact Wasserstein Distance", UAI 2020), which converges to the *exact* cost:
    P^{t+1} = argmin_P <P, C> + beta KL(P || P^t), each step one Sinkhorn projection of the
    kernel exp(-C / beta) * P^t. Written here, in the log domain and batched, because POT has
    no correct batched IPOT: its ``ot.batch`` proximal solver (0.9.7) uses the kernel
    exp(-C / beta) / P^t and does not converge to the exact cost.
  - :func:`exact`: the exact linear program by POT's network simplex (:func:`ot.emd`), one
    problem per call, the calls spread over threads (POT releases the GIL while it solves).

Which to use: on GiLOT's problems (cosine costs near 1 off the diagonal, 100-200 tokens) the two
iterative solvers need hundreds to thousands of iterations, each a pass over B x n x n entries,
while the simplex solves one problem exactly in about a millisecond. On CPU ``exact`` is
therefore both the most faithful and the fastest (bench/gilot.py: ~0.9 ms per problem against
~0.08 ms per problem *per iteration* for batched Sinkhorn); the batched solvers are for GPUs,
where one iteration over thousands of problems costs little. :func:`solve` runs any of them
in chunks of ``batch_size`` problems (for the iterative solvers on two CPU cores, chunks of
8 to 32 problems beat one batch of 310: bench/gilot.py).

>>> import torch
>>> p = torch.tensor([[0.5, 0.5, 0.0]]); q = torch.tensor([[0.0, 0.5, 0.5]])
>>> C = torch.tensor([[[0.0, 1.0, 2.0], [1.0, 0.0, 1.0], [2.0, 1.0, 0.0]]])
>>> round(float(exact(p, q, C).cost[0]), 6)
1.0
>>> round(float(ipot(p, q, C).cost[0]), 4)
1.0
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import ot as pot
import torch
from ot.batch import bregman_log_projection_batch

from ...errors import InvalidParameterError

SOLVERS = ("sinkhorn", "ipot", "exact")
MAX_COST_ENTRIES = 2**26
"""The most cost-matrix entries built at once (512 MiB in float64): bounds the memory of a chunk."""
MAX_TOP_K = math.isqrt(MAX_COST_ENTRIES) // 2
"""The largest ``top_k`` whose union of two supports fits one cost matrix of :data:`MAX_COST_ENTRIES`."""


@dataclass
class OTResult:
    """Costs of B transport problems and how well they were solved.

    ``cost[b]`` is <P_b, C_b>; ``marginal_error[b]`` the L1 violation of both marginal constraints,
    |P 1 - p|_1 + |P^T 1 - q|_1; ``converged[b]`` whether the solver met its tolerance;
    ``iterations`` the iterations run (the most over the chunks of :func:`solve`).
    """

    cost: torch.Tensor
    marginal_error: torch.Tensor
    converged: torch.Tensor
    iterations: int

    @classmethod
    def cat(cls, parts: list[OTResult]) -> OTResult:
        return cls(
            torch.cat([r.cost for r in parts]),
            torch.cat([r.marginal_error for r in parts]),
            torch.cat([r.converged for r in parts]),
            max(r.iterations for r in parts),
        )


def _check(p: torch.Tensor, q: torch.Tensor, C: torch.Tensor) -> None:
    if p.ndim != 2 or q.ndim != 2 or C.shape != (p.shape[0], p.shape[1], q.shape[1]):
        raise InvalidParameterError(
            f"optimal transport takes p [B, n], q [B, m] and costs [B, n, m]; got {tuple(p.shape)}, "  # pragma: no mutate
            f"{tuple(q.shape)} and {tuple(C.shape)}."  # pragma: no mutate
        )
    if bool((p < 0).any()) or bool((q < 0).any()):
        raise InvalidParameterError(
            "optimal transport needs non-negative masses; got a negative entry."  # pragma: no mutate
        )


def _marginal_error(plan: torch.Tensor, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return (plan.sum(2) - p).abs().sum(1) + (plan.sum(1) - q).abs().sum(1)


def _safe_log(x: torch.Tensor) -> torch.Tensor:
    """log x with log 0 = -inf and no warning."""
    return torch.where(x > 0, x.clamp_min(torch.finfo(x.dtype).tiny).log(), -math.inf)


def sinkhorn(
    p: torch.Tensor,
    q: torch.Tensor,
    C: torch.Tensor,
    reg: float = 0.05,
    tol: float = 1e-6,
    max_iter: int = 2000,
) -> OTResult:
    """Entropic OT by batched log-domain Sinkhorn (POT's :func:`ot.batch.bregman_log_projection_batch`).

    Solves min_P <P, C> - reg H(P) over Pi(p, q) with the potentials f, g updated as
    f = log p - LSE_j(g_j - C_ij / reg), g = log q - LSE_i(f_i - C_ij / reg), zero masses staying
    at -inf. Stops when the row-marginal violation |P 1 - p|_2 of every problem is under ``tol``
    (checked every 10 iterations) or after ``max_iter`` iterations; returns <P, C>. Needs reg > 0
    and max_iter >= 1.
    """
    _check(p, q, C)
    if not reg > 0 or max_iter < 1:
        raise InvalidParameterError(
            f"sinkhorn needs reg > 0 and max_iter >= 1; got reg={reg}, max_iter={max_iter}. "  # pragma: no mutate
            "Pass a positive regularisation and at least one iteration."  # pragma: no mutate
        )
    out = bregman_log_projection_batch(-C / reg, p, q, max_iter=max_iter, tol=tol)
    plan = out["T"]
    row_error = (plan.sum(2) - p).norm(dim=1)
    return OTResult(
        (plan * C).sum((1, 2)), _marginal_error(plan, p, q), row_error < tol, int(out["n_iters"]) + 1
    )


def ipot(
    p: torch.Tensor,
    q: torch.Tensor,
    C: torch.Tensor,
    beta: float = 1.0,
    inner_iter: int = 5,
    tol: float = 1e-7,
    max_iter: int = 2000,
    check_every: int = 10,
) -> OTResult:
    """Exact OT by the inexact proximal point method IPOT (Xie et al., 2020), batched, log domain.

    Each outer step solves P^{t+1} = argmin_P <P, C> + beta KL(P || P^t) approximately with
    ``inner_iter`` Sinkhorn sweeps on the kernel log K = log P^t - C / beta, the potentials carried
    over between steps (Algorithm 1 of the paper, which uses one sweep). The cost <P^t, C>
    converges to the exact OT cost; on cosine costs beta = 1 with a few sweeps per step converged
    fastest per sweep in our measurements, and beta below about 0.05 stalls. Stops when
    every problem's row-marginal L1 violation and relative change of cost over ``check_every``
    steps are both under ``tol``, or after ``max_iter`` steps. Needs beta > 0 and ``inner_iter``,
    ``max_iter``, ``check_every`` >= 1.

    Written by hand: POT has no correct batched IPOT (see the module docstring).
    """
    _check(p, q, C)
    if not beta > 0 or min(inner_iter, max_iter, check_every) < 1:
        raise InvalidParameterError(
            f"ipot needs beta > 0 and inner_iter, max_iter, check_every >= 1; got beta={beta}, "  # pragma: no mutate
            f"inner_iter={inner_iter}, max_iter={max_iter}, check_every={check_every}. "  # pragma: no mutate
            "Pass a positive step and at least one sweep, step and check interval."  # pragma: no mutate
        )
    log_p, log_q = _safe_log(p), _safe_log(q)
    has_p, has_q = p > 0, q > 0
    neg_inf = torch.tensor(-math.inf, dtype=C.dtype, device=C.device)  # pragma: no mutate
    f = torch.zeros_like(p)  # pragma: no mutate
    g = torch.zeros_like(q)
    occupied = has_p[:, :, None] & has_q[:, None, :]
    log_plan = torch.where(occupied, 0.0, neg_inf).expand_as(C)  # pragma: no mutate
    scaled = C / beta
    previous = None
    converged = torch.zeros(p.shape[0], dtype=torch.bool, device=p.device)
    iterations = 0  # pragma: no mutate
    for iterations in range(1, max_iter + 1):
        kernel = log_plan - scaled
        for _ in range(inner_iter):
            f = torch.where(has_p, log_p - torch.logsumexp(kernel + g[:, None, :], 2), neg_inf)
            g = torch.where(has_q, log_q - torch.logsumexp(kernel + f[:, :, None], 1), neg_inf)
        log_plan = kernel + f[:, :, None] + g[:, None, :]
        if iterations % check_every == 0 or iterations == max_iter:
            plan = log_plan.exp()
            cost = (plan * C).sum((1, 2))
            error = (plan.sum(2) - p).abs().sum(1)
            if previous is not None:
                change = (cost - previous).abs() / cost.abs().clamp_min(1e-12)
                converged = (error < tol) & (change < tol)  # pragma: no mutate
                if bool(converged.all()):
                    break
            previous = cost
    plan = log_plan.exp()
    return OTResult((plan * C).sum((1, 2)), _marginal_error(plan, p, q), converged, iterations)


def _exact_one(a: np.ndarray, b: np.ndarray, M: np.ndarray) -> tuple[float, float, bool]:
    keep = (a > 0) | (b > 0)  # zero-mass slots cannot carry transport: a smaller linear program
    a, b = a[keep] / a[keep].sum(), b[keep] / b[keep].sum()
    M = np.ascontiguousarray(M[np.ix_(keep, keep)])
    plan, log = pot.emd(a, b, M, log=True, numItermax=1_000_000)  # pragma: no mutate
    error = float(abs(plan.sum(1) - a).sum() + abs(plan.sum(0) - b).sum())
    optimal = log["warning"] is None and log["result_code"] == 1  # pragma: no mutate
    return float(log["cost"]), error, optimal


def exact(p: torch.Tensor, q: torch.Tensor, C: torch.Tensor) -> OTResult:
    """Exact OT cost of each problem by POT's network simplex (:func:`ot.emd`), in float64.

    Slots where both masses are zero are dropped and the masses renormalised to sum exactly to
    one (the simplex needs equal totals). POT solves one problem per call, outside the GIL, so the
    problems are spread over ``torch.get_num_threads()`` threads. ``converged`` is POT's
    optimality flag, ``marginal_error`` measured on the returned plan.
    """
    _check(p, q, C)
    arrays = (p.double().cpu().numpy(), q.double().cpu().numpy(), C.double().cpu().numpy())
    workers = max(1, min(torch.get_num_threads(), p.shape[0]))
    with ThreadPoolExecutor(workers) as pool:
        solved = list(pool.map(_exact_one, *arrays))
    costs, errors, ok = zip(*solved, strict=True) if solved else ((), (), ())  # pragma: no mutate
    return OTResult(
        torch.tensor(costs, dtype=C.dtype),
        torch.tensor(errors, dtype=C.dtype),
        torch.tensor(ok, dtype=torch.bool),
        1,
    )


def solve(
    p: torch.Tensor,
    q: torch.Tensor,
    C: torch.Tensor,
    solver: str = "ipot",
    batch_size: int = 32,
    **options,
) -> OTResult:
    """Solve B problems with ``solver`` (``sinkhorn``, ``ipot`` or ``exact``) in chunks of ``batch_size``.

    ``options`` go to the solver (``reg``, ``beta``, ``inner_iter``, ``tol``, ``max_iter``).
    """
    if solver not in SOLVERS:
        raise InvalidParameterError(
            f"unknown OT solver {solver!r}; choose one of {', '.join(SOLVERS)}."  # pragma: no mutate
        )
    if batch_size < 1:
        raise InvalidParameterError(f"batch_size must be at least 1, got {batch_size}.")  # pragma: no mutate
    solvers: dict[str, Callable[..., OTResult]] = {"sinkhorn": sinkhorn, "ipot": ipot, "exact": exact}
    fn = solvers[solver]
    parts = [
        fn(p[i : i + batch_size], q[i : i + batch_size], C[i : i + batch_size], **options)
        for i in range(0, p.shape[0], batch_size)
    ]
    return OTResult.cat(parts)


def unit_embeddings(matrix: torch.Tensor) -> torch.Tensor:
    """Rows of an embedding matrix [V, d] scaled to unit length (float32; zero rows stay zero)."""
    matrix = matrix.detach().float()
    return matrix / matrix.norm(dim=1, keepdim=True).clamp_min(1e-12)


def cosine_cost(unit: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """Cost matrices C_ij = 1 - cos(e_i, e_j) (GiLOT Eq. 7) on each row of token ids ``support`` [B, n].

    ``unit`` are unit-length embeddings [V, d] (:func:`unit_embeddings`). Returns [B, n, n],
    clamped to [0, 2] against rounding, with an exact zero wherever the two tokens are the same.
    """
    e = unit[support]
    cost = (1.0 - e @ e.transpose(1, 2)).clamp(0.0, 2.0)
    return cost.masked_fill(support[:, :, None] == support[:, None, :], 0.0)


def compress(p: torch.Tensor, q: torch.Tensor, top_k: int | None) -> tuple[torch.Tensor, ...]:
    """GiLOT's dynamic vocabulary compression of pairs of distributions p, q [B, V].

    The support of problem b is the union of the ``top_k`` most probable tokens of p_b and of
    q_b; both are restricted to it and renormalised. All problems share one width n, the largest
    union in the batch (at most 2k), without a Python loop: a problem with a smaller union fills
    its last slots with repeats of a token at zero mass. ``top_k`` None or >= V keeps the whole
    vocabulary. Returns (support ids [B, n], p' [B, n], q' [B, n]).
    """
    V = p.shape[1]
    if top_k is None or top_k >= V:  # pragma: no mutate
        support = torch.arange(V, device=p.device).expand(p.shape[0], -1)
        return support, p / p.sum(1, keepdim=True), q / q.sum(1, keepdim=True)
    if top_k < 1:
        raise InvalidParameterError(f"top_k must be at least 1, got {top_k}.")  # pragma: no mutate
    candidates = torch.cat([p.topk(top_k, 1).indices, q.topk(top_k, 1).indices], 1)  # pragma: no mutate
    support, _ = candidates.sort(1)
    first = torch.ones_like(support, dtype=torch.bool)  # pragma: no mutate
    first[:, 1:] = support[:, 1:] != support[:, :-1]
    order = (
        (~first).long().sort(dim=1, stable=True).indices[:, : int(first.sum(1).max())]  # pragma: no mutate
    )  # repeats last, cut
    support, first = support.gather(1, order), first.gather(1, order)
    a = p.gather(1, support) * first
    b = q.gather(1, support) * first
    return support, a / a.sum(1, keepdim=True), b / b.sum(1, keepdim=True)


def vocabulary_ot(
    p: torch.Tensor,
    q: torch.Tensor,
    unit: torch.Tensor,
    top_k: int | None = 100,
    solver: str = "ipot",
    batch_size: int = 32,
    dtype: torch.dtype = torch.float64,
    **options,
) -> OTResult:
    """OT cost between each pair of vocabulary distributions p, q [B, V] under the cosine cost of
    the unit embeddings ``unit`` [V, d], on the union of their top-k supports (:func:`compress`).

    The problems are built and solved ``batch_size`` at a time (fewer when their cost matrices
    would pass :data:`MAX_COST_ENTRIES` entries), in ``dtype``.

    >>> unit = unit_embeddings(torch.eye(4))
    >>> p = torch.tensor([[0.7, 0.3, 0.0, 0.0]]); q = torch.tensor([[0.3, 0.7, 0.0, 0.0]])
    >>> round(float(vocabulary_ot(p, q, unit, top_k=2, solver="exact").cost[0]), 6)
    0.4
    """
    if p.shape != q.shape or p.ndim != 2:
        raise InvalidParameterError(
            f"p and q must both be [B, V]; got {tuple(p.shape)} and {tuple(q.shape)}."  # pragma: no mutate
        )
    V = p.shape[1]
    width = V if top_k is None or top_k >= V else min(V, 2 * top_k)  # pragma: no mutate
    if width * width > MAX_COST_ENTRIES:
        raise InvalidParameterError(
            f"OT on {width} tokens needs a {width} x {width} cost matrix per problem, more than "  # pragma: no mutate
            f"{MAX_COST_ENTRIES} entries; compress the vocabulary with "  # pragma: no mutate
            f"top_k <= {MAX_TOP_K}."  # pragma: no mutate
        )
    batch_size = max(1, min(batch_size, MAX_COST_ENTRIES // (width * width)))
    parts = []
    for i in range(0, p.shape[0], batch_size):
        support, a, b = compress(p[i : i + batch_size], q[i : i + batch_size], top_k)
        C = cosine_cost(unit, support).to(dtype)
        parts.append(solve(a.to(dtype), b.to(dtype), C, solver, batch_size, **options))
    return OTResult.cat(parts)


def entropy(p: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of each row of p [B, n]."""
    return -torch.special.xlogy(p, p).sum(-1)


__all__ = [
    "MAX_COST_ENTRIES",
    "MAX_TOP_K",
    "SOLVERS",
    "OTResult",
    "compress",
    "cosine_cost",
    "entropy",
    "exact",
    "ipot",
    "sinkhorn",
    "solve",
    "unit_embeddings",
    "vocabulary_ot",
]
