"""Surrogate models fitted on random coalitions: LIME (a kernel-weighted ridge regression) and
ContextCite (a sparse linear model, LASSO, on random ablations checked on held-out ones), both on a
budget of model evaluations with a standard error per score (:mod:`~genattr.algorithms.sampling`).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from ..errors import ConvergenceWarning, InvalidParameterError
from ..problem import Problem
from ..registry import Output, Param
from .perturbation import scores_from_columns
from .sampling import (
    JACKKNIFE_GROUPS,
    Draw,
    Groups,
    SamplingMethod,
    Stream,
    Values,
    budget_params,
    jackknife_stderr,
    run,
)

LASSO_MAX_ITER = 10_000
"""Coordinate-descent sweeps the LASSO of :class:`ContextCite` may take."""


def _needs_target(problem: Problem, name: str) -> int:
    """The number of values per coalition, 1 + the problem's per-token columns."""
    if problem.target is None:
        raise InvalidParameterError(f"{name} fits the values of a target, and this problem has none.")
    return 1 + problem.n_outputs


# --------------------------------------------------------------------- LIME
class RidgeFit:
    """Weighted ridge regression with an unpenalised intercept, streamed through its sufficient
    statistics (sum w, sum w z, sum w y, sum w z z^T, sum w z y^T).

    Minimises sum_z w(z) (v(z) - b - z . c)^2 + alpha |c|^2, solved in closed form after centring
    on the weighted means: (Zc^T W Zc + alpha I) c = Zc^T W Yc, b = mean(y) - mean(z) . c. Fits on
    disjoint rows add (``+``) and subtract (``-``).
    """

    def __init__(self, n_features: int, m: int) -> None:
        self.sw = torch.zeros((), dtype=torch.float64)
        self.sz = torch.zeros(n_features, dtype=torch.float64)
        self.sy = torch.zeros(m, dtype=torch.float64)
        self.szz = torch.zeros(n_features, n_features, dtype=torch.float64)
        self.szy = torch.zeros(n_features, m, dtype=torch.float64)
        self.rows = 0

    def add(self, keep: torch.Tensor, values: torch.Tensor, weights: torch.Tensor) -> None:
        """Add coalitions ``keep`` [S, F] with their ``values`` [S, m] and ``weights`` [S]."""
        Z, Y, w = keep.double(), values.double(), weights.double()
        wZ = w[:, None] * Z
        self.sw += w.sum()
        self.sz += wZ.sum(0)
        self.sy += (w[:, None] * Y).sum(0)
        self.szz += wZ.T @ Z
        self.szy += wZ.T @ Y
        self.rows += len(keep)

    def _combined(self, other: RidgeFit, sign: int) -> RidgeFit:
        out = RidgeFit(len(self.sz), len(self.sy))
        for name in ("sw", "sz", "sy", "szz", "szy"):
            setattr(out, name, getattr(self, name) + sign * getattr(other, name))
        out.rows = self.rows + sign * other.rows
        return out

    def __add__(self, other: RidgeFit) -> RidgeFit:
        return self._combined(other, 1)

    def __sub__(self, other: RidgeFit) -> RidgeFit:
        return self._combined(other, -1)

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


def draw_lime_coalitions(n_features: int) -> Draw:
    """``draw(generator, count)``: ``count`` coalitions removing a number of features uniform in
    1..F, which ones uniformly."""

    def draw(gen: torch.Generator, count: int) -> torch.Tensor:
        removed = torch.randint(1, n_features + 1, (count,), generator=gen)
        return torch.rand(count, n_features, generator=gen).argsort(1) >= removed[:, None]

    return draw


class LimeRegression:
    """LIME's streamed ridge regression, one coalition a unit, split into the jackknife's groups."""

    def __init__(self, value: Values, n_features: int, m: int, kernel_width: float, alpha: float) -> None:
        self.value, self.width, self.alpha = value, kernel_width, alpha
        self.groups = Groups(lambda: RidgeFit(n_features, m))

    def add(self, keep: torch.Tensor, first: int) -> None:
        distance = 1 - (keep.sum(1).double() / keep.shape[1]).sqrt()
        weights = torch.exp(-(distance**2) / (2 * self.width**2))
        self.groups.add(first + torch.arange(len(keep)), keep, self.value(keep), weights)

    def fit(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.groups.total().solve(self.alpha)

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        coef = self.fit()[0]
        leave_outs = [part.solve(self.alpha)[0][:, 0] for part in self.groups.leave_outs()]
        return coef, jackknife_stderr(coef[:, 0], leave_outs)


class Lime(SamplingMethod):
    """LIME (Ribeiro et al., "Why Should I Trust You?", 2016) as the GiLOT paper applies it to LLMs.

    Random coalitions (the number of removed features uniform in 1..F, then which ones
    uniformly; the full prompt is always the first) weighted by the exponential kernel
    pi(z) = exp(-d(z)^2 / (2 w^2)) on d(z) = 1 - sqrt(|z| / F), the cosine distance between the
    full prompt's indicator and z, i.e. a kernel on the fraction kept (w = 0.25 is LIME's text
    default: kernel_width=25 on 100 d). A ridge regression with intercept (``alpha``, LIME's
    default 1.0) is fitted (:class:`RidgeFit`); its coefficients are the scores. A coalition
    costs one evaluation; the standard error is the delete-a-group jackknife's over coalitions.
    """

    name = "lime"
    family = "perturbation"
    contrastive = True
    summary = (
        "weighted linear surrogate fitted on random coalitions (exponential kernel on the fraction kept)"
    )
    cost = "1 forward row per coalition: n_samples (or the budget)"
    additive = True
    default_samples = 128
    params = {
        **budget_params("random coalitions, the full prompt included", "128", minimum=2),
        "kernel_width": Param(0.25, "kernel width w on the cosine distance", float, minimum=1e-6),
        "alpha": Param(1.0, "ridge penalty (0 = ordinary weighted least squares)", float, minimum=0.0),
    }
    kernel_width: float
    alpha: float

    def attribute(self, problem: Problem) -> Output:
        F, m = problem.n_features, _needs_target(problem, "lime")
        plan = self.plan(F, unit_cost=1, fixed_cost=0, min_units=2)
        regression = LimeRegression(problem.evaluate, F, m, self.kernel_width, self.alpha)
        full = torch.ones(1, F, dtype=torch.bool)
        spent = run(regression, Stream(draw_lime_coalitions(F), problem.generator(), head=full), plan)
        coef, stderr = regression.result()
        scores, tokens = scores_from_columns(coef)
        intercept = float(regression.fit()[1][0])
        return Output(scores, tokens, diagnostics={"intercept": intercept, **spent.diagnostics(stderr)})


# --------------------------------------------------------------------- ContextCite
def held_out(index: torch.Tensor, fraction: float) -> torch.Tensor:
    """Whether ablation ``index`` is held out: floor((i + 1) h) > floor(i h), so that exactly
    floor(n h) of the first n ablations are, for every n."""
    return torch.floor((index + 1) * fraction) > torch.floor(index * fraction)


def lasso(keep: torch.Tensor, values: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's LASSO with intercept, min_{b, c} 1/(2N) |y - b - Z c|^2 + alpha |c|_1, per
    column of ``values`` [N, m]: (coefficients [F, m], intercept [m]). Not converging within
    :data:`LASSO_MAX_ITER` sweeps warns with a :class:`~genattr.errors.ConvergenceWarning`."""
    from sklearn.exceptions import ConvergenceWarning as SklearnConvergence
    from sklearn.linear_model import Lasso

    model = Lasso(alpha=alpha, max_iter=LASSO_MAX_ITER)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SklearnConvergence)
        model.fit(keep.double().numpy(), values.double().numpy())
    if any(issubclass(w.category, SklearnConvergence) for w in caught):
        warnings.warn(
            f"context_cite: the LASSO did not converge in {LASSO_MAX_ITER} sweeps; "  # pragma: no mutate
            "raise alpha or n_samples.",  # pragma: no mutate
            ConvergenceWarning,
            stacklevel=3,
        )
    coef = torch.as_tensor(np.atleast_2d(model.coef_), dtype=torch.float64).T
    return coef, torch.as_tensor(np.atleast_1d(model.intercept_), dtype=torch.float64)


def _fit_checks(predicted: torch.Tensor, actual: torch.Tensor) -> dict:
    """Held-out R^2, Pearson and Spearman correlation (the paper's linear datamodeling score) of
    the surrogate's predictions; NaN below two held-out ablations or without variance."""
    from scipy.stats import pearsonr, spearmanr

    out = {"held_out": len(actual), "held_out_r2": math.nan, "held_out_pearson": math.nan}
    out["held_out_spearman"] = math.nan
    if len(actual) < 2 or float(actual.std()) == 0.0 or float(predicted.std()) == 0.0:
        return out
    ss_res = float(((actual - predicted) ** 2).sum())
    ss_tot = float(((actual - actual.mean()) ** 2).sum())
    out["held_out_r2"] = 1 - ss_res / ss_tot
    out["held_out_pearson"] = float(pearsonr(predicted.numpy(), actual.numpy())[0])
    out["held_out_spearman"] = float(spearmanr(predicted.numpy(), actual.numpy())[0])
    return out


class Ablations:
    """ContextCite's ablations as they are scored (the LASSO needs them all: [N, F] and [N, m]
    are held), split into the fitted ones and every ``held_out``-th one kept apart."""

    def __init__(self, value: Values, alpha: float, fraction: float) -> None:
        self.value, self.alpha, self.fraction = value, alpha, fraction
        self.keep: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    def add(self, keep: torch.Tensor, first: int) -> None:
        self.keep.append(keep)
        self.values.append(self.value(keep))

    def _split(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        keep, values = torch.cat(self.keep), torch.cat(self.values)
        return keep, values, held_out(torch.arange(len(keep)), self.fraction)

    def fit(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The LASSO on the fitted ablations: (coefficients [F, m], intercept [m])."""
        keep, values, out = self._split()
        return lasso(keep[~out], values[~out], self.alpha)

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        keep, values, out = self._split()
        coef = self.fit()[0]
        fitted = (~out).nonzero().flatten()
        group = torch.arange(len(fitted)) % JACKKNIFE_GROUPS
        groups = group.unique().tolist() if len(fitted) > 2 else []
        leave_outs = [
            lasso(keep[fitted[group != g]], values[fitted[group != g], :1], self.alpha)[0][:, 0]
            for g in groups
        ]
        return coef, jackknife_stderr(coef[:, 0], leave_outs)

    def checks(self, coef: torch.Tensor, intercept: torch.Tensor) -> dict:
        keep, values, out = self._split()
        predicted = intercept[0] + keep[out].double() @ coef[:, 0]
        return _fit_checks(predicted, values[out, 0])


class ContextCite(SamplingMethod):
    """ContextCite (Cohen-Wang, Shah, Georgiev and Madry, "ContextCite: Attributing Model
    Generation to Context", NeurIPS 2024): a sparse linear surrogate of the objective over
    random ablations, checked on ablations it was not fitted on.

    Each ablation keeps every feature independently with probability ``keep_prob`` (1/2, the
    paper's); a fraction ``held_out`` of them (every 1/h-th) is set aside and the rest fit the
    LASSO

        min_{b, c} 1/(2N) sum_z (v(z) - b - z . c)^2 + alpha |c|_1

    (scikit-learn's ``Lasso``; ``alpha`` 0.01 as in the paper's code), per target token too; the
    coefficients c are the scores. The paper regresses the logit of the response's probability;
    here v is the problem's objective (``log_prob`` by default). The LASSO is not linear in v,
    so the token rows do not sum to the scores. ``diagnostics`` holds the held-out R^2 and the
    Pearson and Spearman correlations of predicted and actual v (Spearman's is the paper's linear
    datamodeling score), the nonzero coefficients, the intercept, and the standard error of each
    coefficient by the delete-a-group jackknife over the fitted ablations (the variability of
    the fit, not the shrinkage the penalty adds). The ablations are held in memory ([N, F]).
    """

    name = "context_cite"
    family = "perturbation"
    contrastive = True
    summary = "sparse linear surrogate (LASSO) of random ablations, its fit checked on held-out ones"
    cost = "1 forward row per ablation: n_samples (or the budget)"
    default_samples = 64
    params = {
        **budget_params("random ablations, held-out ones included", "64", minimum=2),
        "keep_prob": Param(
            0.5, "probability that an ablation keeps each feature", float, minimum=0.01, maximum=0.99
        ),
        "alpha": Param(0.01, "L1 penalty of the LASSO (scikit-learn's alpha)", float, minimum=1e-8),
        "held_out": Param(
            0.25, "fraction of the ablations kept out of the fit to check it", float, minimum=0.0, maximum=0.5
        ),
    }
    keep_prob: float
    alpha: float
    held_out: float

    def attribute(self, problem: Problem) -> Output:
        F = problem.n_features
        _needs_target(problem, "context_cite")
        plan = self.plan(F, unit_cost=1, fixed_cost=0, min_units=2)
        ablations = Ablations(problem.evaluate, self.alpha, self.held_out)

        def draw(gen: torch.Generator, count: int) -> torch.Tensor:
            return torch.rand(count, F, generator=gen) < self.keep_prob

        spent = run(ablations, Stream(draw, problem.generator()), plan)
        coef, intercept = ablations.fit()
        stderr = ablations.result()[1]
        scores, tokens = scores_from_columns(coef)
        diagnostics = {
            "intercept": float(intercept[0]),
            "nonzero": int((coef[:, 0] != 0).sum()),
            **ablations.checks(coef, intercept),
            **spent.diagnostics(stderr),
        }
        return Output(scores, tokens, diagnostics=diagnostics)
