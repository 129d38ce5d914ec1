"""Sampled Shapley values: permutation sampling (with antithetic pairs) and KernelSHAP (with
kernel or leverage-score sampling of coalitions), both on a budget of model evaluations with a
standard error per score (:mod:`~genattr.algorithms.sampling`).

Both keep running sums only (the credits' mean and variance; the normal equations of the
regression, per jackknife group), so their memory does not grow with the number of samples.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from ..errors import InvalidParameterError
from ..problem import Problem
from ..registry import Output, Param
from . import sampling
from .perturbation import coalition_masks, scores_from_columns, shapley_kernel_weight
from .sampling import (
    Draw,
    Groups,
    Plan,
    Run,
    SamplingMethod,
    Stream,
    Values,
    budget_params,
    jackknife_stderr,
    run,
)


def _ends(problem: Problem) -> torch.Tensor:
    """v(empty) and v(all) [2, m]."""
    F = problem.n_features
    return problem.evaluate(torch.stack([torch.zeros(F, dtype=torch.bool), torch.ones(F, dtype=torch.bool)]))


def _exact_for_one_feature(ends: torch.Tensor, run_: Run) -> Output:
    """With one feature every Shapley estimator is exact: phi = v(all) - v(empty), no error."""
    scores, tokens = scores_from_columns((ends[1] - ends[0])[None])
    return Output(scores, tokens, diagnostics=run_.diagnostics(torch.zeros(1, dtype=torch.float64)))


# --------------------------------------------------------------------- permutation sampling
def draw_permutations(n_features: int) -> Draw:
    """``draw(generator, count)``: ``count`` permutations of the F features, one
    ``torch.randperm`` each (the draws of Captum's ShapleyValueSampling seeded alike)."""

    def draw(gen: torch.Generator, count: int) -> torch.Tensor:
        return torch.stack([torch.randperm(n_features, generator=gen) for _ in range(count)])

    return draw


def permutation_credits(value: Values, perms: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """Each feature's credit in each permutation [p, F, m]: feature pi_k gets
    v(pi_1..pi_k) - v(pi_1..pi_(k-1)). Only the F - 1 inner prefixes of each permutation are
    scored (one call of ``value``); v(empty) and v(all) are ``ends``."""
    p, F = perms.shape
    position = torch.empty_like(perms)
    position.scatter_(1, perms, torch.arange(F).expand(p, F))
    inner = (
        position[:, None, :] < torch.arange(1, F)[None, :, None]
    )  # [p, F - 1, F]: prefix k keeps pi_1..pi_k
    values = value(inner.reshape(-1, F)).view(p, F - 1, -1)
    m = values.shape[2]
    chain = torch.cat([ends[0].expand(p, 1, m), values, ends[1].expand(p, 1, m)], 1)
    credits = torch.zeros(p, F, m, dtype=torch.float64)
    credits.scatter_(1, perms[:, :, None].expand(-1, -1, m), chain[:, 1:] - chain[:, :-1])
    return credits


class PermutationCredits:
    """Shapley value sampling's running estimate: the mean credit per feature over the units (a
    permutation, or with ``paired`` a permutation and its reverse, averaged), and the standard
    error of column 0, std / sqrt(units) (NaN below two units). Means and squared deviations
    are merged block by block (Chan et al.'s parallel update)."""

    def __init__(self, value: Values, ends: torch.Tensor, paired: bool) -> None:
        self.value, self.ends, self.paired = value, ends, paired
        self.count = 0
        self.mean = torch.zeros(0, dtype=torch.float64)
        self.m2 = torch.zeros(0, dtype=torch.float64)

    def add(self, perms: torch.Tensor, first: int = 0) -> None:
        p = len(perms)
        orders = torch.cat([perms, perms.flip(1)]) if self.paired else perms
        credits = permutation_credits(self.value, orders, self.ends)
        if self.paired:
            credits = (credits[:p] + credits[p:]) / 2
        block_mean = credits.mean(0)
        block_m2 = ((credits[:, :, 0] - block_mean[:, 0]) ** 2).sum(0)
        if self.count == 0:
            self.count, self.mean, self.m2 = p, block_mean, block_m2
            return
        total = self.count + p
        delta = block_mean - self.mean
        self.mean = self.mean + delta * (p / total)
        self.m2 = self.m2 + block_m2 + delta[:, 0] ** 2 * (self.count * p / total)
        self.count = total

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.count == 0:
            raise InvalidParameterError("Shapley sampling was given no permutations; draw at least one.")
        if self.count < 2:
            return self.mean, torch.full_like(self.m2, math.nan)
        return self.mean, (self.m2 / (self.count - 1)).sqrt() / math.sqrt(self.count)


class ShapleySampling(SamplingMethod):
    """Shapley value sampling (Strumbelj and Kononenko, "An Efficient Explanation of Individual
    Classifications using Game Theory", 2010; Captum's ShapleyValueSampling).

    For random permutations pi, feature pi_k is credited v(pi_1..pi_k) - v(pi_1..pi_(k-1)); the
    mean credit estimates phi_i. Each permutation's credits sum to v(x) - v(empty), so efficiency
    holds exactly. A permutation costs F - 1 evaluations (its inner prefixes; the ends are
    scored once). ``paired=True`` scores each permutation with its reverse (antithetic
    sampling; Mitchell et al., "Sampling Permutations for Shapley Value Estimation", JMLR 2022):
    feature i's credits in pi and reversed pi see complementary predecessor sets, so any
    pairwise interaction is split exactly in half and a game with interactions of order at most
    two is estimated without error. On 8 zoo prompts (bench/estimators.py, 150 seeds each) pairs
    cut the mean squared error at equal evaluations to 0.59-0.65 of unpaired sampling's
    (geometric mean over prompts, budgets 100 to 1600; 0.15 to 1.16 by prompt), hence the
    default. The standard error is that of the mean over units (permutations, or pairs),
    ``diagnostics['stderr']``.
    """

    name = "shapley_sampling"
    family = "perturbation"
    contrastive = True
    summary = "Shapley values estimated from random feature permutations (exactly efficient)"
    cost = "F - 1 forward rows per permutation, + 2 (or the budget)"
    additive = True
    default_samples = 26
    params = {
        **budget_params("permutations", "26, i.e. 13 pairs", minimum=1),
        "paired": Param(True, "score each permutation with its reverse (antithetic pairs)", bool),
    }
    paired: bool

    def attribute(self, problem: Problem) -> Output:
        F = problem.n_features
        per_unit = 2 if self.paired else 1
        if self.n_samples is not None and self.n_samples % per_unit:
            raise InvalidParameterError(
                f"shapley_sampling: paired permutations come two by two, so n_samples={self.n_samples} "  # pragma: no mutate
                "must be even; give an even number, or paired=False."  # pragma: no mutate
            )
        plan = self.plan(F, unit_cost=max(1, per_unit * (F - 1)), fixed_cost=2, samples_per_unit=per_unit)
        ends = _ends(problem)
        if F == 1:
            return _exact_for_one_feature(ends, Run(plan, 0, "exact"))
        credits = PermutationCredits(problem.evaluate, ends, self.paired)
        spent = run(credits, Stream(draw_permutations(F), problem.generator()), plan)
        mean, stderr = credits.result()
        scores, tokens = scores_from_columns(mean)
        return Output(scores, tokens, diagnostics=spent.diagnostics(stderr))


# --------------------------------------------------------------------- KernelSHAP
class KernelShapFit:
    """Weighted least squares for KernelSHAP under the efficiency constraint sum_i phi_i = v(x) - v(empty),
    streamed: blocks of coalitions are added to the normal equations, so memory does not grow
    with their number.

    Minimises sum_z w(z) (v(z) - v(empty) - z . phi)^2 with the constraint substituted for the
    last feature (phi_F = delta - sum_{j<F} phi_j, delta = v(x) - v(empty)): with
    X = z_{<F} - z_F and y = v(z) - v(empty) - z_F delta, it accumulates X^T W X and X^T W y and
    solves them by least squares (the minimum-norm solution where they are singular). Fits on
    disjoint rows add (``+``) and subtract (``-``).
    """

    def __init__(self, n_features: int, v_empty: torch.Tensor, v_full: torch.Tensor) -> None:
        self.v_empty = v_empty.double()
        self.delta = v_full.double() - self.v_empty
        m = self.delta.shape[0]
        self.xtx = torch.zeros(n_features - 1, n_features - 1, dtype=torch.float64)
        self.xty = torch.zeros(n_features - 1, m, dtype=torch.float64)
        self.rows = 0

    def add(self, keep: torch.Tensor, values: torch.Tensor, weights: torch.Tensor) -> None:
        """Add coalitions ``keep`` [S, F] with their ``values`` [S, m] and ``weights`` [S]."""
        Z = keep.double()
        y = values.double() - self.v_empty - Z[:, -1:] * self.delta[None]
        X = Z[:, :-1] - Z[:, -1:]
        wX = weights.double()[:, None] * X
        self.xtx += wX.T @ X
        self.xty += wX.T @ y
        self.rows += len(keep)

    def _combined(self, other: KernelShapFit, sign: int) -> KernelShapFit:
        out = KernelShapFit(self.xtx.shape[0] + 1, self.v_empty, self.v_empty + self.delta)
        out.xtx, out.xty = self.xtx + sign * other.xtx, self.xty + sign * other.xty
        out.rows = self.rows + sign * other.rows
        return out

    def __add__(self, other: KernelShapFit) -> KernelShapFit:
        return self._combined(other, 1)

    def __sub__(self, other: KernelShapFit) -> KernelShapFit:
        return self._combined(other, -1)

    def solve(self) -> torch.Tensor:
        """phi [F, m]."""
        if self.xtx.shape[0] == 0:
            return self.delta[None].clone()
        head = torch.linalg.lstsq(self.xtx, self.xty, driver="gelsd").solution
        return torch.cat([head, (self.delta - head.sum(0))[None]], 0)


def kernel_shap_solve(
    keep: torch.Tensor,
    values: torch.Tensor,
    v_empty: torch.Tensor,
    v_full: torch.Tensor,
    weights: torch.Tensor,
) -> torch.Tensor:
    """:class:`KernelShapFit` on one table: ``keep`` [S, F], ``values`` [S, m] -> phi [F, m]."""
    fit = KernelShapFit(keep.shape[1], v_empty, v_full)
    fit.add(keep, values, weights)
    return fit.solve()


def size_law(n_features: int, sampling: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(p(s), weight(s)) over coalition sizes s = 1..F-1 for KernelSHAP's ``sampling``:

    * ``kernel``: p(s) proportional to (F - 1) / (s (F - s)), the Shapley kernel's mass of size s,
      so that drawing from it makes every weight 1;
    * ``leverage``: p(s) = 1 / (F - 1), every size alike, and weight w(z) / p(z) = (F - 1)^2 /
      (s (F - s)), the Shapley kernel over the probability of drawing z
      (p(z) = 1 / ((F - 1) C(F, s))).
    """
    sizes = torch.arange(1, n_features).double()
    kernel = (n_features - 1) / (sizes * (n_features - sizes))
    if sampling == "kernel":
        return kernel / kernel.sum(), torch.ones_like(sizes)
    return torch.full_like(sizes, 1 / (n_features - 1)), (n_features - 1) * kernel


def draw_coalitions(n_features: int, size_p: torch.Tensor, paired: bool) -> Draw:
    """``draw(generator, count)``: ``count`` coalitions (pairs z, not z in turn when ``paired``),
    each of a size drawn from ``size_p`` over 1..F-1 and, given the size, of uniform members."""

    def draw(gen: torch.Generator, count: int) -> torch.Tensor:
        sizes = 1 + torch.multinomial(size_p, count, replacement=True, generator=gen)
        keep = torch.rand(count, n_features, generator=gen).argsort(1) < sizes[:, None]
        return torch.stack([keep, ~keep], 1).flatten(0, 1) if paired else keep

    return draw


class KernelShapRegression:
    """KernelSHAP's streamed regression over drawn coalitions, split into the groups of the
    jackknife (a complementary pair is one unit): the estimate and its standard error."""

    def __init__(self, value: Values, ends: torch.Tensor, weight: torch.Tensor, paired: bool) -> None:
        self.value, self.weight, self.pair = value, weight, 2 if paired else 1
        F = len(weight) + 1
        self.groups = Groups(lambda: KernelShapFit(F, ends[0], ends[1]))

    def add(self, keep: torch.Tensor, first: int) -> None:
        units = (first + torch.arange(len(keep))) // self.pair
        self.groups.add(units, keep, self.value(keep), self.weight[keep.sum(1) - 1])

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        phi = self.groups.total().solve()
        return phi, jackknife_stderr(phi[:, 0], [fit.solve()[:, 0] for fit in self.groups.leave_outs()])


class KernelShap(SamplingMethod):
    """KernelSHAP (Lundberg and Lee, "A Unified Approach to Interpreting Model Predictions", 2017):
    Shapley values as the weighted least squares

        min_phi sum_z pi(z) (v(z) - v(empty) - z . phi)^2  subject to  sum_i phi_i = v(x) - v(empty),

    pi(z) = (F - 1) / (C(F, |z|) |z| (F - |z|)) the Shapley kernel, solved exactly when every
    proper coalition is used (``n_samples >= 2^F - 2`` or ``budget >= 2^F``: then the result is
    the exact Shapley values and the standard error 0). Otherwise coalitions are drawn and the
    regression is weighted by pi(z) / p(z) (:func:`size_law`):

    * ``sampling='kernel'``: sizes from the kernel, p(z) proportional to pi(z), unit weights;
    * ``sampling='leverage'`` (the default): Leverage SHAP (Musco and Witter, "Provably Accurate Shapley Value
      Estimation via Leverage Score Sampling", ICLR 2025). With the constraint projected out,
      the rows of the kernel-weighted regression have leverage scores l(z) = 1 / C(F, |z|), so
      each size holds the same leverage: sizes are drawn uniformly from 1..F-1, members
      uniformly, and each row weighted pi(z) / p(z) = (F - 1)^2 / (|z| (F - |z|)). Drawn with
      replacement (the paper's Bernoulli draw without replacement would make the number of
      evaluations random). On 8 zoo prompts (bench/estimators.py) its mean squared error at
      equal budgets was 0.89-0.94 of the kernel sampling's (geometric mean), hence the default.

    ``paired=True`` draws each coalition with its complement (Covert and Lee, "Improving
    KernelSHAP", AISTATS 2021). A coalition costs one evaluation, plus two for v(empty) and v(x).
    The standard error is the delete-a-group jackknife's over :data:`~genattr.algorithms.sampling.JACKKNIFE_GROUPS`
    groups of units (pairs when paired), which holds that many [F, F] normal equations.
    """

    name = "kernel_shap"
    family = "perturbation"
    contrastive = True
    summary = "Shapley values by Shapley-kernel weighted regression with exact efficiency"
    cost = "1 forward row per coalition: n_samples (or the budget)"
    additive = True
    default_samples = 128
    params = {
        **budget_params("coalitions sampled (every one, exactly, when >= 2^F - 2)", "128", minimum=2),
        "sampling": Param(
            "leverage",
            "how coalitions are drawn: sizes uniform (Leverage SHAP), or by the Shapley kernel",
            str,
            choices=("kernel", "leverage"),
        ),
        "paired": Param(True, "draw each coalition with its complement", bool),
    }
    sampling: str
    paired: bool

    def attribute(self, problem: Problem) -> Output:
        F = problem.n_features
        plan = self.plan(F, unit_cost=1, fixed_cost=2)
        ends = _ends(problem)
        if F == 1:
            return _exact_for_one_feature(ends, Run(plan, 0, "exact"))
        if plan.seconds is None and plan.max_units >= 2**F - 2:
            return self._enumerated(problem, ends, dataclasses.replace(plan, max_units=2**F - 2))
        size_p, weight = size_law(F, self.sampling)
        regression = KernelShapRegression(problem.evaluate, ends, weight, self.paired)
        stream = Stream(draw_coalitions(F, size_p, self.paired), problem.generator())
        spent = run(regression, stream, dataclasses.replace(plan, max_units=min(plan.max_units, 2**F - 3)))
        phi, stderr = regression.result()
        scores, tokens = scores_from_columns(phi)
        return Output(scores, tokens, diagnostics=spent.diagnostics(stderr))

    def _enumerated(self, problem: Problem, ends: torch.Tensor, plan: Plan) -> Output:
        """Every proper coalition with its kernel weight, a block of
        :data:`~genattr.algorithms.sampling.SAMPLE_BLOCK` at a time: exact."""
        F, block = problem.n_features, sampling.SAMPLE_BLOCK
        fit = KernelShapFit(F, ends[0], ends[1])
        for start in range(1, 2**F - 1, block):
            keep = coalition_masks(F, start, min(start + block, 2**F - 1))
            weights = torch.tensor(
                [shapley_kernel_weight(int(s), F) for s in keep.sum(1)], dtype=torch.float64
            )
            fit.add(keep, problem.evaluate(keep), weights)
        scores, tokens = scores_from_columns(fit.solve())
        return Output(
            scores, tokens, diagnostics=Run(plan, plan.max_units, "exact").diagnostics(torch.zeros(F))
        )
