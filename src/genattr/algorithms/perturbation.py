"""Perturbation methods: remove features, re-score the target, attribute the change.

Every perturbation method evaluates its coalitions (which features are kept) in batched calls
through :meth:`genattr.problem.Problem.evaluate`, and attributes the sequence objective and every
target token's value with the same estimator, so that for the ``log_prob`` objective the
per-token rows of a linear estimator sum exactly to the sequence scores.

This module holds the exact methods (leave-one-out, Shapley values by enumeration) and the
Shapley formulas the others are checked against; the sampling estimators are in
:mod:`~genattr.algorithms.shapley` (Shapley value sampling, KernelSHAP) and
:mod:`~genattr.algorithms.surrogate` (LIME, ContextCite), their budgets and standard errors in
:mod:`~genattr.algorithms.sampling`.

The estimators are pure functions of a value table (coalitions -> values), tested against
independent oracles: the Shapley formula by enumeration, the efficiency axiom, and exact
recovery of an additive value function.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..errors import InvalidParameterError, TooManyFeaturesError
from ..problem import Problem
from ..registry import Method, Output, Param

MAX_EXACT_FEATURES = 12


def scores_from_columns(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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
    cost = "F + 1 forward rows (shared prompt prefixes run once)"
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
        scores, tokens = scores_from_columns(out)
        return Output(scores, tokens, extras={"groups": groups} if self.groups else {})


class ShapleyExact(Method):
    """Exact Shapley values by enumerating all 2^F coalitions (F <= 12).

    phi_i = sum over S not containing i of |S|! (F - |S| - 1)! / F! (v(S + i) - v(S)).
    """

    name = "shapley_exact"
    family = "perturbation"
    contrastive = True
    summary = "exact Shapley values by enumerating every coalition (up to 12 features)"
    cost = "2^F forward rows"
    additive = True

    def attribute(self, problem: Problem) -> Output:
        F = problem.n_features
        if F > MAX_EXACT_FEATURES:
            raise TooManyFeaturesError(
                f"shapley_exact enumerates 2^F coalitions and allows at most {MAX_EXACT_FEATURES} features, but the "  # pragma: no mutate
                f"prompt has {F}; use shapley_sampling or kernel_shap, or a coarser level (level='sentence')."  # pragma: no mutate
            )
        values = problem.evaluate(coalition_masks(F))
        scores, tokens = scores_from_columns(shapley_from_table(values, F))
        return Output(scores, tokens)
