"""Perturbation methods: remove features, re-score the target, attribute the change.

Every method here evaluates its coalitions (which features are kept) in batched calls through
:meth:`genattr.problem.Problem.evaluate`, and attributes the sequence objective and every
target token's value with the same linear estimator, so that for the ``log_prob`` objective the
per-token rows sum exactly to the sequence scores.

The sampling methods draw and score their coalitions :data:`SAMPLE_BLOCK` at a time and keep
only running sums (Shapley means and variances, the normal equations of the regressions), so
their memory does not grow with ``n_samples``; draws made block by block are the same whatever
the memory budget, and so are the results.

The estimators are pure functions of a value table (coalitions -> values), tested against
independent oracles: the Shapley formula by enumeration, the efficiency axiom, and exact
recovery of an additive value function.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import torch

from ..errors import InvalidParameterError, TooManyFeaturesError
from ..problem import Problem
from ..registry import MAX_SAMPLES, Method, Output, Param

MAX_EXACT_FEATURES = 12
SAMPLE_BLOCK = 4096
"""Coalitions a sampling method draws and scores at a time. A constant rather than a function of
the memory budget, so that the random draws do not depend on ``max_batch_tokens``;
:meth:`~genattr.problem.Problem.evaluate` runs each block in chunks under that budget."""

Values = Callable[[torch.Tensor], torch.Tensor]
"""A value function: coalitions ``keep`` [B, F] -> values [B, m] (e.g. ``Problem.evaluate``)."""


def _scores_from_columns(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An estimator's output [F, 1 + n], one column per value of :meth:`~genattr.problem.Problem.evaluate`
    (column 0 the sequence's, then each target token's), as (sequence scores [F], token matrix [n, F])."""
    return values[:, 0], values[:, 1:].T


# --------------------------------------------------------------------- pure estimators
def coalition_masks(n_features: int, start: int = 0, stop: int | None = None) -> torch.Tensor:
    """Coalitions ``start``..``stop`` (default all 2^F) as a bool matrix [rows, F]; row ``s`` keeps
    feature ``i`` iff bit ``i`` of ``s`` is set."""
    rows = torch.arange(start, 2**n_features if stop is None else stop)[:, None]
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


class KernelShapFit:
    """Weighted least squares for KernelSHAP under the efficiency constraint sum_i phi_i = v(x) - v(empty),
    streamed: blocks of coalitions are added to the normal equations, so memory does not grow
    with their number.

    Minimises sum_z w(z) (v(z) - v(empty) - z . phi)^2 with the constraint substituted for the
    last feature (phi_F = delta - sum_{j<F} phi_j, delta = v(x) - v(empty)): with
    X = z_{<F} - z_F and y = v(z) - v(empty) - z_F delta, it accumulates X^T W X and X^T W y and
    solves them by least squares (the minimum-norm solution where they are singular).
    """

    def __init__(self, n_features: int, v_empty: torch.Tensor, v_full: torch.Tensor) -> None:
        self.v_empty = v_empty.double()
        self.delta = v_full.double() - self.v_empty
        m = self.delta.shape[0]
        self.xtx = torch.zeros(n_features - 1, n_features - 1, dtype=torch.float64)
        self.xty = torch.zeros(n_features - 1, m, dtype=torch.float64)

    def add(self, keep: torch.Tensor, values: torch.Tensor, weights: torch.Tensor) -> None:
        """Add coalitions ``keep`` [S, F] with their ``values`` [S, m] and ``weights`` [S]."""
        Z = keep.double()
        y = values.double() - self.v_empty - Z[:, -1:] * self.delta[None]
        X = Z[:, :-1] - Z[:, -1:]
        wX = weights.double()[:, None] * X
        self.xtx += wX.T @ X
        self.xty += wX.T @ y

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


class RidgeFit:
    """Weighted ridge regression with an unpenalised intercept, streamed through its sufficient
    statistics (sum w, sum w z, sum w y, sum w z z^T, sum w z y^T).

    Minimises sum_z w(z) (v(z) - b - z . c)^2 + alpha |c|^2, solved in closed form after centring
    on the weighted means: (Zc^T W Zc + alpha I) c = Zc^T W Yc, b = mean(y) - mean(z) . c.
    """

    def __init__(self, n_features: int, m: int) -> None:
        self.sw = torch.zeros((), dtype=torch.float64)
        self.sz = torch.zeros(n_features, dtype=torch.float64)
        self.sy = torch.zeros(m, dtype=torch.float64)
        self.szz = torch.zeros(n_features, n_features, dtype=torch.float64)
        self.szy = torch.zeros(n_features, m, dtype=torch.float64)

    def add(self, keep: torch.Tensor, values: torch.Tensor, weights: torch.Tensor) -> None:
        """Add coalitions ``keep`` [S, F] with their ``values`` [S, m] and ``weights`` [S]."""
        Z, Y, w = keep.double(), values.double(), weights.double()
        wZ = w[:, None] * Z
        self.sw += w.sum()
        self.sz += wZ.sum(0)
        self.sy += (w[:, None] * Y).sum(0)
        self.szz += wZ.T @ Z
        self.szy += wZ.T @ Y

    def solve(self, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(coefficients [F, m], intercept [m])."""
        zm, ym = self.sz / self.sw, self.sy / self.sw
        gram = self.szz - self.sw * torch.outer(zm, zm) + alpha * torch.eye(len(zm), dtype=torch.float64)
        coef = torch.linalg.lstsq(gram, self.szy - self.sw * torch.outer(zm, ym), driver="gelsd").solution
        return coef, ym - zm @ coef


def weighted_ridge(
    keep: torch.Tensor, values: torch.Tensor, weights: torch.Tensor, alpha: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """:class:`RidgeFit` on one table: returns (coefficients [F, m], intercept [m])."""
    fit = RidgeFit(keep.shape[1], values.shape[1])
    fit.add(keep, values, weights)
    return fit.solve(alpha)


def permutation_blocks(
    n_features: int, n: int, per_block: int, gen: torch.Generator
) -> Iterator[torch.Tensor]:
    """``n`` random permutations of the F features, ``per_block`` at a time as [p, F] tensors.

    Drawn one by one, so that the permutations are the same however they are blocked.
    """
    for start in range(0, n, per_block):
        yield torch.stack(
            [torch.randperm(n_features, generator=gen) for _ in range(min(per_block, n - start))]
        )


def shapley_sampling_estimate(
    value: Values, blocks: Iterator[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Shapley value sampling over blocks of permutations [p, F]: (mean credits [F, m], the
    standard error of column 0 [F] (NaN from fewer than two permutations), permutations used).

    In permutation pi, feature pi_k is credited v(pi_1..pi_k) - v(pi_1..pi_(k-1)). The mean and
    the sum of squared deviations of the credits are merged block by block (Chan et al.'s
    parallel update), so that only [F, m] running sums are held.
    """
    count = 0
    mean: torch.Tensor | None = None
    m2: torch.Tensor | None = None
    for perms in blocks:
        p, F = perms.shape
        prefix = torch.zeros(p, F + 1, F, dtype=torch.bool)
        for k in range(1, F + 1):
            prefix[torch.arange(p)[:, None], k, perms[:, :k]] = True
        values = value(prefix.view(-1, F)).view(p, F + 1, -1)
        credits = torch.zeros(p, F, values.shape[2], dtype=torch.float64)
        credits.scatter_(1, perms[:, :, None].expand(-1, -1, values.shape[2]), values[:, 1:] - values[:, :-1])
        block_mean = credits.mean(0)
        block_m2 = ((credits[:, :, 0] - block_mean[:, 0]) ** 2).sum(0)
        if mean is None or m2 is None:
            count, mean, m2 = p, block_mean, block_m2
            continue
        total = count + p
        delta = block_mean - mean
        mean = mean + delta * (p / total)
        m2 = m2 + block_m2 + delta[:, 0] ** 2 * (count * p / total)
        count = total
    if mean is None or m2 is None:
        raise InvalidParameterError("Shapley sampling was given no permutations; draw at least one.")
    stderr = (m2 / (count - 1)).sqrt() / math.sqrt(count) if count > 1 else torch.full_like(m2, math.nan)
    return mean, stderr, count


# --------------------------------------------------------------------- methods
def _check_groups(value) -> str | None:
    if not all(isinstance(g, (list, tuple)) and g and all(isinstance(i, int) for i in g) for g in value):
        return "must be a list of non-empty lists of feature indices"  # pragma: no mutate
    flat = [i for g in value for i in g]
    if len(flat) != len(set(flat)):
        return "must not list a feature in two groups"  # pragma: no mutate
    return None


class LeaveOneOut(Method):
    """Leave-one-out / feature ablation: phi_i = v(x) - v(x without feature i).

    The Captum formulation compared against in "XPrompt: Explaining Large Language Model's
    Generation via Joint Prompt Attribution" (Eq. 2). With ``groups``, the features of a group
    are removed together and each member gets the group's score (Captum's ``feature_mask``).

    References
    ----------
    Chang et al., "XPrompt: Explaining Large Language Model's Generation via Joint Prompt
    Attribution", 2024, Eq. 2; Captum's ``FeatureAblation``.

    Examples
    --------
    >>> import genattr
    >>> from genattr.testing import tiny_lm
    >>> lm = tiny_lm()
    >>> res = genattr.explain(lm, "The doctor opens the door", target=" and the nurse",
    ...                       method="leave_one_out")
    >>> res.diagnostics["forward_passes"]   # the full prompt and its 5 variants in one batch
    1
    >>> bool(abs(res.token_scores.sum(0) - res.scores).max() < 1e-9)   # v sums over target tokens
    True
    >>> res = genattr.explain(lm, "The doctor opens the door", target=" and", method="leave_one_out",
    ...                       groups=[[0, 1], [2, 3, 4]])
    >>> bool(res.scores[0] == res.scores[1]), bool(res.scores[2] == res.scores[4])
    (True, True)
    """

    name = "leave_one_out"
    family = "perturbation"
    contrastive = True
    summary = "v(x) - v(x without feature i), one feature (or group) removed at a time"
    additive = True
    params = {
        "groups": Param(
            None,
            "lists of feature indices removed together (feature ablation)",
            kind=(list, tuple),
            optional=True,
            check=_check_groups,
        )
    }
    groups: Sequence[Sequence[int]] | None

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
        scores, tokens = _scores_from_columns(out)
        return Output(scores, tokens, extras={"groups": groups} if self.groups else {})


class ShapleySampling(Method):
    """Shapley value sampling (Strumbelj and Kononenko, 2010; Captum's ShapleyValueSampling).

    For ``n_samples`` random permutations, each feature is credited with v(P + i) - v(P), P the
    features before it; the average estimates the Shapley value. Every permutation's credits sum
    to v(x) - v(empty), so efficiency holds exactly. The permutations are drawn and their
    coalitions scored a block at a time (:data:`SAMPLE_BLOCK` coalitions, see
    :func:`shapley_sampling_estimate`); ``diagnostics['stderr']`` is each score's standard error.
    """

    name = "shapley_sampling"
    family = "perturbation"
    contrastive = True
    summary = "Shapley values estimated from random feature permutations (exactly efficient)"
    stochastic = True
    additive = True
    standard_error = True
    params = {"n_samples": Param(25, "permutations sampled", int, minimum=1, maximum=MAX_SAMPLES)}
    n_samples: int

    def attribute(self, problem: Problem) -> Output:
        F = problem.n_features
        per_block = max(1, SAMPLE_BLOCK // (F + 1))
        blocks = permutation_blocks(F, self.n_samples, per_block, problem.generator())
        mean, stderr, _ = shapley_sampling_estimate(problem.evaluate, blocks)
        scores, tokens = _scores_from_columns(mean)
        return Output(scores, tokens, diagnostics={"stderr": stderr.tolist()})


class ShapleyExact(Method):
    """Exact Shapley values by enumerating all 2^F coalitions (F <= 12).

    phi_i = sum over S not containing i of |S|! (F - |S| - 1)! / F! (v(S + i) - v(S)).
    """

    name = "shapley_exact"
    family = "perturbation"
    contrastive = True
    summary = "exact Shapley values by enumerating every coalition (up to 12 features)"
    additive = True

    def attribute(self, problem: Problem) -> Output:
        F = problem.n_features
        if F > MAX_EXACT_FEATURES:
            raise TooManyFeaturesError(
                f"shapley_exact enumerates 2^F coalitions and allows at most {MAX_EXACT_FEATURES} features, but the "  # pragma: no mutate
                f"prompt has {F}; use shapley_sampling or kernel_shap, or a coarser level (level='sentence')."  # pragma: no mutate
            )
        values = problem.evaluate(coalition_masks(F))
        scores, tokens = _scores_from_columns(shapley_from_table(values, F))
        return Output(scores, tokens)


def kernel_coalition_blocks(n_features: int, n: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """``n`` coalitions drawn from the Shapley kernel in complementary pairs, :data:`SAMPLE_BLOCK` at a time.

    Per pair, a size s in 1..F-1 with probability proportional to (F - 1) / (s (F - s)), then the
    s kept features uniformly; the pair is that coalition and its complement.
    """
    F = n_features
    sizes = torch.arange(1, F)
    size_p = (F - 1) / (sizes * (F - sizes)).double()
    for start in range(0, n, SAMPLE_BLOCK):
        rows = min(SAMPLE_BLOCK, n - start)
        half = (rows + 1) // 2
        drawn = sizes[torch.multinomial(size_p / size_p.sum(), half, replacement=True, generator=gen)]
        keep = torch.rand(half, F, generator=gen).argsort(1) < drawn[:, None]
        yield torch.cat([keep, ~keep])[:rows]


class KernelShap(Method):
    """KernelSHAP (Lundberg and Lee, 2017): Shapley values as a weighted linear regression over
    coalitions with the Shapley kernel, the efficiency constraint imposed exactly.

    With ``n_samples >= 2^F - 2`` every proper coalition is used with its kernel weight and the
    result equals the exact Shapley values; otherwise coalitions are drawn from the kernel
    (size by (F - 1) / (s (F - s)), then uniformly), in complementary pairs, with unit weights.
    Either way they are scored :data:`SAMPLE_BLOCK` at a time into the normal equations
    (:class:`KernelShapFit`).
    """

    name = "kernel_shap"
    family = "perturbation"
    contrastive = True
    summary = "Shapley values by Shapley-kernel weighted regression with exact efficiency"
    stochastic = True
    additive = True
    params = {
        "n_samples": Param(
            128, "coalitions sampled (all of them when >= 2^F - 2)", int, minimum=2, maximum=MAX_SAMPLES
        )
    }
    n_samples: int

    def attribute(self, problem: Problem) -> Output:
        F = problem.n_features
        ends = problem.evaluate(
            torch.stack([torch.zeros(F, dtype=torch.bool), torch.ones(F, dtype=torch.bool)])
        )
        fit, coalitions = KernelShapFit(F, ends[0], ends[1]), 0
        for keep, weights in self._blocks(F, problem.generator()):
            fit.add(keep, problem.evaluate(keep), weights)
            coalitions += len(keep)
        scores, tokens = _scores_from_columns(fit.solve())
        return Output(scores, tokens, diagnostics={"coalitions": coalitions})

    def _blocks(self, F: int, gen: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(coalitions, weights): every proper coalition with its kernel weight when ``n_samples``
        covers them all, else coalitions drawn from the kernel with unit weights."""
        if F == 1:
            return
        if self.n_samples < 2**F - 2:
            for keep in kernel_coalition_blocks(F, self.n_samples, gen):
                yield keep, torch.ones(len(keep), dtype=torch.float64)
            return
        for start in range(1, 2**F - 1, SAMPLE_BLOCK):
            keep = coalition_masks(F, start, min(start + SAMPLE_BLOCK, 2**F - 1))
            yield (
                keep,
                torch.tensor([shapley_kernel_weight(int(s), F) for s in keep.sum(1)], dtype=torch.float64),
            )


def lime_coalition_blocks(n_features: int, n: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """LIME's ``n`` coalitions, :data:`SAMPLE_BLOCK` at a time: the full prompt first, then
    coalitions removing a number of features uniform in 1..F, which ones uniformly."""
    F = n_features
    for start in range(0, n, SAMPLE_BLOCK):
        rows = min(n, start + SAMPLE_BLOCK) - max(start, 1)
        removed = torch.randint(1, F + 1, (rows,), generator=gen)
        keep = torch.rand(rows, F, generator=gen).argsort(1) >= removed[:, None]
        yield torch.cat([torch.ones(1, F, dtype=torch.bool), keep]) if start == 0 else keep


class Lime(Method):
    """LIME (Ribeiro et al., 2016) as the GiLOT paper applies it to LLMs.

    ``n_samples`` random coalitions (the number of removed features uniform in 1..F, then which
    ones uniformly; the full prompt is always included) weighted by the exponential kernel
    pi(z) = exp(-d(z)^2 / (2 w^2)) on d(z) = 1 - sqrt(|z| / F), the cosine distance between the
    full prompt's indicator and z, i.e. a kernel on the fraction kept (w = 0.25 is LIME's text
    default: kernel_width=25 on 100 d). A ridge regression with intercept (``alpha``, LIME's
    default 1.0) is fitted (:class:`RidgeFit`, the coalitions scored :data:`SAMPLE_BLOCK` at a
    time); its coefficients are the scores.
    """

    name = "lime"
    family = "perturbation"
    contrastive = True
    summary = (
        "weighted linear surrogate fitted on random coalitions (exponential kernel on the fraction kept)"
    )
    stochastic = True
    additive = True
    params = {
        "n_samples": Param(128, "random coalitions", int, minimum=2, maximum=MAX_SAMPLES),
        "kernel_width": Param(0.25, "kernel width w on the cosine distance", float, minimum=1e-6),
        "alpha": Param(1.0, "ridge penalty (0 = ordinary weighted least squares)", float, minimum=0.0),
    }
    n_samples: int
    kernel_width: float
    alpha: float

    def attribute(self, problem: Problem) -> Output:
        F = problem.n_features
        if problem.target is None:
            raise InvalidParameterError("lime fits the values of a target, and this problem has none.")
        fit = RidgeFit(F, 1 + problem.n_outputs)
        for keep in lime_coalition_blocks(F, self.n_samples, problem.generator()):
            distance = 1 - (keep.sum(1).double() / F).sqrt()
            fit.add(keep, problem.evaluate(keep), torch.exp(-(distance**2) / (2 * self.kernel_width**2)))
        coef, intercept = fit.solve(self.alpha)
        scores, tokens = _scores_from_columns(coef)
        return Output(scores, tokens, diagnostics={"intercept": float(intercept[0])})
