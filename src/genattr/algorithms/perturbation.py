"""Perturbation methods: remove features, re-score the target, attribute the change.

Every method here evaluates its coalitions (which features are kept) in one batched call
through :meth:`genattr.problem.Problem.evaluate`, and attributes the sequence objective and every
target token's value with the same linear estimator, so that for the ``log_prob`` objective the
per-token rows sum exactly to the sequence scores.

The estimators are pure functions of a value table (coalitions -> values), tested against
independent oracles: the Shapley formula by enumeration, the efficiency axiom, and exact
recovery of an additive value function.
"""

from __future__ import annotations

import math

import torch

from ..errors import InvalidParameterError, TooManyFeaturesError
from ..problem import Problem
from ..registry import register
from .base import Method, Output, Param

MAX_EXACT_FEATURES = 12


def _split(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Estimator output [F, 1 + n] -> sequence scores [F] and token matrix [n, F]."""
    return values[:, 0], values[:, 1:].T


# --------------------------------------------------------------------- pure estimators
def coalition_masks(n_features: int) -> torch.Tensor:
    """All 2^F coalitions as a bool matrix [2^F, F]; row ``s`` keeps feature ``i`` iff bit ``i`` of ``s`` is set."""
    rows = torch.arange(2**n_features)[:, None]
    return ((rows >> torch.arange(n_features)[None]) & 1).bool()


def shapley_from_table(values: torch.Tensor, n_features: int) -> torch.Tensor:
    """Exact Shapley values from a full table of coalition values [2^F, m] (row index = bitmask):

    phi_i = sum over S not containing i of |S|! (F - |S| - 1)! / F! * (v(S + i) - v(S)).
    """
    F = n_features
    sizes = coalition_masks(F).sum(1)
    weights = torch.tensor(
        [
            math.factorial(s) * math.factorial(F - s - 1) / math.factorial(F) if s < F else 0.0
            for s in range(F + 1)
        ],
        dtype=values.dtype,
    )
    out = torch.zeros(F, values.shape[1], dtype=values.dtype)
    all_rows = torch.arange(2**F)
    for i in range(F):
        without = all_rows[(all_rows >> i) & 1 == 0]
        w = weights[sizes[without]][:, None]
        out[i] = (w * (values[without | (1 << i)] - values[without])).sum(0)
    return out


def shapley_kernel_weight(size: int, n_features: int) -> float:
    """The Shapley kernel pi(z) = (F - 1) / (C(F, |z|) |z| (F - |z|)) for 0 < |z| < F (Lundberg and Lee, 2017)."""
    return (n_features - 1) / (math.comb(n_features, size) * size * (n_features - size))


def kernel_shap_solve(
    keep: torch.Tensor,
    values: torch.Tensor,
    v_empty: torch.Tensor,
    v_full: torch.Tensor,
    weights: torch.Tensor,
) -> torch.Tensor:
    """Weighted least squares for KernelSHAP under the efficiency constraint sum_i phi_i = v(x) - v(empty).

    Minimises sum_z w(z) (v(z) - v(empty) - z . phi)^2 with the constraint substituted for the
    last feature (phi_F = delta - sum_{j<F} phi_j). ``keep`` [S, F], ``values`` [S, m]. Returns [F, m].
    """
    Z = keep.double()
    F = Z.shape[1]
    delta = (v_full - v_empty).double()
    y = values.double() - v_empty.double() - Z[:, -1:] * delta[None]
    if F == 1:
        return delta[None].clone()
    X = Z[:, :-1] - Z[:, -1:]
    sw = weights.double().sqrt()[:, None]
    head = torch.linalg.lstsq(X * sw, y * sw, driver="gelsd").solution
    return torch.cat([head, (delta - head.sum(0))[None]], 0)


def weighted_ridge(
    keep: torch.Tensor, values: torch.Tensor, weights: torch.Tensor, alpha: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted ridge regression with an unpenalised intercept: returns (coefficients [F, m], intercept [m]).

    Minimises sum_z w(z) (v(z) - b - z . c)^2 + alpha |c|^2, solved in closed form after centring
    on the weighted means.
    """
    Z, Y, w = keep.double(), values.double(), weights.double()
    zm, ym = (w[:, None] * Z).sum(0) / w.sum(), (w[:, None] * Y).sum(0) / w.sum()
    Zc, Yc = Z - zm, Y - ym
    gram = Zc.T @ (w[:, None] * Zc) + alpha * torch.eye(Z.shape[1], dtype=torch.float64)
    coef = torch.linalg.lstsq(gram, Zc.T @ (w[:, None] * Yc), driver="gelsd").solution
    return coef, ym - zm @ coef


# --------------------------------------------------------------------- methods
def _check_groups(value) -> str | None:
    if not all(isinstance(g, (list, tuple)) and g and all(isinstance(i, int) for i in g) for g in value):
        return "must be a list of non-empty lists of feature indices"  # pragma: no mutate
    flat = [i for g in value for i in g]
    if len(flat) != len(set(flat)):
        return "must not list a feature in two groups"  # pragma: no mutate
    return None


@register
class LeaveOneOut(Method):
    """Leave-one-out / feature ablation: phi_i = v(x) - v(x without feature i).

    The Captum formulation compared against in "XPrompt: Explaining Large Language Model's
    Generation via Joint Prompt Attribution" (Eq. 2). With ``groups``, the features of a group
    are removed together and each member gets the group's score (Captum's ``feature_mask``).

    >>> genattr.explain(lm, "The cat sat", target=" down", method="leave_one_out")  # doctest: +SKIP
    """

    name = "leave_one_out"
    family = "perturbation"
    summary = "v(x) - v(x without feature i), one feature (or group) removed at a time"
    params = {
        "groups": Param(
            None,
            "lists of feature indices removed together (feature ablation)",
            kind=(list, tuple),
            optional=True,
            check=_check_groups,
        )
    }

    def attribute(self, problem: Problem) -> Output:
        F = problem.n_features
        groups = [list(g) for g in self.groups] if self.groups else []
        if any(not 0 <= i < F for g in groups for i in g):
            raise InvalidParameterError(
                f"leave_one_out: groups name features outside 0..{F - 1}."  # pragma: no mutate
            )
        grouped = {i for g in groups for i in g}
        groups += [[i] for i in range(F) if i not in grouped]
        keep = problem.all_kept(1 + len(groups))
        for row, g in enumerate(groups, start=1):
            keep[row, g] = False
        values = problem.evaluate(keep)
        out = torch.zeros(F, values.shape[1], dtype=torch.float64)
        for row, g in enumerate(groups, start=1):
            out[g] = values[0] - values[row]
        scores, tokens = _split(out)
        return Output(scores, tokens, extras={"groups": groups} if self.groups else {})


@register
class ShapleySampling(Method):
    """Shapley value sampling (Strumbelj and Kononenko, 2010; Captum's ShapleyValueSampling).

    For ``n_samples`` random permutations, each feature is credited with v(P + i) - v(P), P the
    features before it; the average estimates the Shapley value. Every permutation's credits sum
    to v(x) - v(empty), so efficiency holds exactly. All coalitions of all permutations are
    scored in one batched call; ``diagnostics['stderr']`` is each score's standard error.
    """

    name = "shapley_sampling"
    family = "perturbation"
    summary = "Shapley values estimated from random feature permutations (exactly efficient)"
    stochastic = True
    convergence_check = True
    params = {"n_samples": Param(25, "permutations sampled", int, minimum=1)}

    def attribute(self, problem: Problem) -> Output:
        F, n = problem.n_features, self.n_samples
        gen = problem.generator()
        perms = torch.stack([torch.randperm(F, generator=gen) for _ in range(n)])
        keep = torch.zeros(n, F + 1, F, dtype=torch.bool)
        for k in range(1, F + 1):
            keep[torch.arange(n)[:, None], k, perms[:, :k]] = True
        values = problem.evaluate(keep.view(-1, F)).view(n, F + 1, -1)
        credits = values[:, 1:] - values[:, :-1]
        per_sample = torch.zeros(n, F, values.shape[2], dtype=torch.float64)
        per_sample.scatter_(1, perms[:, :, None].expand(-1, -1, values.shape[2]), credits)
        scores, tokens = _split(per_sample.mean(0))
        stderr = (
            per_sample[:, :, 0].std(0, unbiased=True) / math.sqrt(n) if n > 1 else torch.full((F,), math.nan)
        )
        return Output(scores, tokens, diagnostics={"stderr": stderr.tolist()})


@register
class ShapleyExact(Method):
    """Exact Shapley values by enumerating all 2^F coalitions (F <= 12).

    phi_i = sum over S not containing i of |S|! (F - |S| - 1)! / F! (v(S + i) - v(S)).
    """

    name = "shapley_exact"
    family = "perturbation"
    summary = "exact Shapley values by enumerating every coalition (up to 12 features)"

    def attribute(self, problem: Problem) -> Output:
        F = problem.n_features
        if F > MAX_EXACT_FEATURES:
            raise TooManyFeaturesError(
                f"shapley_exact enumerates 2^F coalitions and allows at most {MAX_EXACT_FEATURES} features, but the "  # pragma: no mutate
                f"prompt has {F}; use shapley_sampling or kernel_shap, or a coarser level (level='sentence')."  # pragma: no mutate
            )
        values = problem.evaluate(coalition_masks(F))
        scores, tokens = _split(shapley_from_table(values, F))
        return Output(scores, tokens)


@register
class KernelShap(Method):
    """KernelSHAP (Lundberg and Lee, 2017): Shapley values as a weighted linear regression over
    coalitions with the Shapley kernel, the efficiency constraint imposed exactly.

    With ``n_samples >= 2^F - 2`` every proper coalition is used with its kernel weight and the
    result equals the exact Shapley values; otherwise coalitions are drawn from the kernel
    (size by (F - 1) / (s (F - s)), then uniformly), in complementary pairs, with unit weights.
    """

    name = "kernel_shap"
    family = "perturbation"
    summary = "Shapley values by Shapley-kernel weighted regression with exact efficiency"
    stochastic = True
    params = {"n_samples": Param(128, "coalitions sampled (all of them when >= 2^F - 2)", int, minimum=2)}

    def attribute(self, problem: Problem) -> Output:
        F = problem.n_features
        ends = torch.stack([torch.zeros(F, dtype=torch.bool), torch.ones(F, dtype=torch.bool)])
        if F == 1:
            values = problem.evaluate(ends)
            scores, tokens = _split((values[1] - values[0])[None])
            return Output(scores, tokens)
        if F <= 30 and self.n_samples >= 2**F - 2:
            keep = coalition_masks(F)[1:-1]
            weights = torch.tensor(
                [shapley_kernel_weight(int(s), F) for s in keep.sum(1)], dtype=torch.float64
            )
        else:
            keep = self._sample(F, self.n_samples, problem.generator())
            weights = torch.ones(len(keep), dtype=torch.float64)
        values = problem.evaluate(torch.cat([ends, keep]))
        phi = kernel_shap_solve(keep, values[2:], values[0], values[1], weights)
        scores, tokens = _split(phi)
        return Output(scores, tokens, diagnostics={"coalitions": len(keep)})

    @staticmethod
    def _sample(F: int, n: int, gen: torch.Generator) -> torch.Tensor:
        sizes = torch.arange(1, F)
        size_p = (F - 1) / (sizes * (F - sizes)).double()
        half = (n + 1) // 2
        drawn = sizes[torch.multinomial(size_p / size_p.sum(), half, replacement=True, generator=gen)]
        order = torch.rand(half, F, generator=gen).argsort(1)
        keep = order < drawn[:, None]
        return torch.cat([keep, ~keep])[:n]


@register
class Lime(Method):
    """LIME (Ribeiro et al., 2016) as the GiLOT paper applies it to LLMs.

    ``n_samples`` random coalitions (the number of removed features uniform in 1..F, then which
    ones uniformly; the full prompt is always included) weighted by the exponential kernel
    pi(z) = exp(-d(z)^2 / (2 w^2)) on d(z) = 1 - sqrt(|z| / F), the cosine distance between the
    full prompt's indicator and z, i.e. a kernel on the fraction kept (w = 0.25 is LIME's text
    default: kernel_width=25 on 100 d). A ridge regression with intercept (``alpha``, LIME's
    default 1.0) is fitted; its coefficients are the scores.
    """

    name = "lime"
    family = "perturbation"
    summary = (
        "weighted linear surrogate fitted on random coalitions (exponential kernel on the fraction kept)"
    )
    stochastic = True
    params = {
        "n_samples": Param(128, "random coalitions", int, minimum=2),
        "kernel_width": Param(0.25, "kernel width w on the cosine distance", float, minimum=1e-6),
        "alpha": Param(1.0, "ridge penalty (0 = ordinary weighted least squares)", float, minimum=0.0),
    }

    def attribute(self, problem: Problem) -> Output:
        F, n = problem.n_features, self.n_samples
        gen = problem.generator()
        removed = torch.randint(1, F + 1, (n - 1,), generator=gen)
        order = torch.rand(n - 1, F, generator=gen).argsort(1)
        keep = torch.cat([problem.all_kept(), order >= removed[:, None]])
        values = problem.evaluate(keep)
        distance = 1 - (keep.sum(1).double() / F).sqrt()
        weights = torch.exp(-(distance**2) / (2 * self.kernel_width**2))
        coef, intercept = weighted_ridge(keep, values, weights, self.alpha)
        scores, tokens = _split(coef)
        return Output(scores, tokens, diagnostics={"intercept": float(intercept[0])})
