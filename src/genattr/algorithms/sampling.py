"""What the sampling estimators share: a budget, draws that do not depend on how they are taken, a
block schedule, the early-stopping rule and the jackknife standard error.

The estimators (``shapley_sampling``, ``kernel_shap``, ``lime``, ``context_cite``) draw *units*
from a seeded stream (a permutation or a pair of them, a coalition, an ablation), each costing a
fixed number of **evaluations**: coalitions passed to :meth:`~genattr.problem.Problem.evaluate`
(the model scores each distinct coalition of a call once, so it may run fewer rows). A run spends

* ``n_samples`` (the method's own unit: permutations, coalitions, ablations; its default when no
  budget is given), or
* ``budget``: at most that many evaluations, the ends (empty and full prompt) included; what a
  whole unit cannot use is left unspent, or
* ``budget_seconds``: blocks are scored while the next one is predicted, at the rate so far, to
  end within that many seconds of the start (the first block always runs).

Only one of the three may be given. ``stop_top_k=k`` ends a run early, after a block, once the
k highest scores name the same features at the last :data:`STOP_WINDOW` checks and the k-th score
exceeds the (k+1)-th by more than :data:`STOP_Z` standard errors of their difference,
sqrt(se_k^2 + se_(k+1)^2). Units are scored in blocks whose sizes depend only on the block's
index (:func:`block_units`), so a run that stopped on time or on its top k is replayed exactly,
score for score, by ``budget=diagnostics['evaluations']``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from time import perf_counter
from typing import ClassVar, Generic, Protocol, TypeVar

import torch

from ..errors import InvalidParameterError
from ..registry import MAX_EVALUATIONS, MAX_SAMPLES, Method, Param

SAMPLE_BLOCK = 4096
"""The most coalitions a sampling method scores in one block (one call of ``Problem.evaluate``)."""
FIRST_BLOCK = 64
"""Coalitions in a run's first block; each next block doubles, up to :data:`SAMPLE_BLOCK`."""
DRAW_CHUNK = 256
"""Units a stream draws from its generator at a time, whatever the blocks take."""
JACKKNIFE_GROUPS = 16
"""Groups of units (dealt round-robin) of the delete-a-group jackknife of the regression estimators."""
STOP_WINDOW = 3
"""Consecutive checks at which the top-k set must be the same for ``stop_top_k`` to stop."""
STOP_Z = 2.0
"""Standard errors by which the k-th score must exceed the (k+1)-th for ``stop_top_k`` to stop."""

Values = Callable[[torch.Tensor], torch.Tensor]
"""A value function: coalitions ``keep`` [B, F] -> values [B, m] (e.g. ``Problem.evaluate``)."""
Draw = Callable[[torch.Generator, int], torch.Tensor]
"""``draw(generator, count)``: ``count`` units (a pair drawn as one unit may yield two rows)."""


def budget_params(samples_doc: str, default: str, minimum: int) -> dict[str, Param]:
    """The parameters of every sampling method: ``n_samples`` (``samples_doc``, ``default`` when
    no budget is given), ``budget``, ``budget_seconds`` and ``stop_top_k``."""
    return {
        "n_samples": Param(
            None,
            f"{samples_doc} (default {default}); not with budget or budget_seconds",
            int,
            minimum=minimum,
            maximum=MAX_SAMPLES,
            optional=True,
        ),
        "budget": Param(
            None,
            "model evaluations (coalitions scored, ends included) to spend instead of n_samples",
            int,
            minimum=1,
            maximum=MAX_EVALUATIONS,
            optional=True,
        ),
        "budget_seconds": Param(
            None,
            "seconds to spend instead of n_samples; diagnostics['evaluations'] replays the run as budget",
            float,
            minimum=1e-3,
            optional=True,
        ),
        "stop_top_k": Param(
            None,
            f"stop early once the k best features are stable and {STOP_Z:g} stderr apart from the next",
            int,
            minimum=1,
            optional=True,
        ),
    }


class Estimator(Protocol):
    """A streamed estimator: scores blocks of units and estimates from what it has seen."""

    def add(self, units: torch.Tensor, first: int) -> None:
        """Score ``units`` (a block of the stream, starting at unit index ``first``)."""

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(estimate [F, m], standard error of column 0 [F], NaN where there is too little to tell)."""


class Stream:
    """Units drawn :data:`DRAW_CHUNK` at a time by ``draw(generator, count)`` after the rows of
    ``head``, and handed out in any counts: the i-th unit is the same however they are taken."""

    def __init__(self, draw: Draw, generator: torch.Generator, head: torch.Tensor | None = None) -> None:
        self._draw, self._gen = draw, generator
        self._buffer = head

    def take(self, count: int) -> torch.Tensor:
        """The next ``count`` units."""
        while self._buffer is None or len(self._buffer) < count:
            fresh = self._draw(self._gen, DRAW_CHUNK)
            self._buffer = fresh if self._buffer is None else torch.cat([self._buffer, fresh])
        out, self._buffer = self._buffer[:count], self._buffer[count:]
        return out


def block_units(index: int, unit_cost: int) -> int:
    """Units in block ``index``: as many as min(SAMPLE_BLOCK, FIRST_BLOCK * 2^index) coalitions
    hold at ``unit_cost`` coalitions a unit, and at least one."""
    coalitions = min(SAMPLE_BLOCK, FIRST_BLOCK << min(index, 30))
    return max(1, coalitions // max(1, unit_cost))


@dataclass(frozen=True)
class Plan:
    """How much a run may spend: ``max_units`` units of ``unit_cost`` evaluations each after
    ``fixed_cost`` evaluations, within ``seconds`` of ``started`` if given; ``stop_top_k`` as in
    the module docstring; ``samples_per_unit`` converts units to the method's ``n_samples``."""

    max_units: int
    unit_cost: int
    fixed_cost: int
    samples_per_unit: int = 1
    seconds: float | None = None
    stop_top_k: int | None = None
    started: float = 0.0


@dataclass(frozen=True)
class Run:
    """What a run spent: units scored, and why it ended (``budget``, ``seconds`` or ``top_k``)."""

    plan: Plan
    units: int
    stopped: str

    @property
    def evaluations(self) -> int:
        return self.plan.fixed_cost + self.units * self.plan.unit_cost

    def diagnostics(self, stderr: torch.Tensor) -> dict:
        """``stderr`` [F], ``evaluations`` (replay with ``budget=``), ``samples`` (replay with
        ``n_samples=``) and ``stopped``."""
        return {
            "stderr": stderr.tolist(),
            "evaluations": self.evaluations,
            "samples": self.units * self.plan.samples_per_unit,
            "stopped": self.stopped,
        }


def top_k_settled(history: list[frozenset[int]], scores: torch.Tensor, stderr: torch.Tensor, k: int) -> bool:
    """The stopping rule of ``stop_top_k`` at one check: appends the current top-k set to
    ``history`` and tells whether the last :data:`STOP_WINDOW` sets agree and
    score_(k) - score_(k+1) > STOP_Z sqrt(se_(k)^2 + se_(k+1)^2) (NaN errors never settle)."""
    order = torch.argsort(scores, descending=True, stable=True)
    history.append(frozenset(order[:k].tolist()))
    if len(history) < STOP_WINDOW or len(set(history[-STOP_WINDOW:])) > 1:
        return False
    kth, next_ = int(order[k - 1]), int(order[k])
    gap = float(scores[kth] - scores[next_])
    return gap > STOP_Z * math.hypot(float(stderr[kth]), float(stderr[next_]))


def run(estimator: Estimator, stream: Stream, plan: Plan) -> Run:
    """Score blocks of ``stream``'s units into ``estimator`` until the plan's units, time or
    stopping rule says stop (see the module docstring)."""
    units, index = 0, 0
    history: list[frozenset[int]] = []
    sampling_started = perf_counter()
    while units < plan.max_units:
        size = min(block_units(index, plan.unit_cost), plan.max_units - units)
        if plan.seconds is not None and units:
            now = perf_counter()
            predicted = (now - sampling_started) / units * size
            if now - plan.started + predicted > plan.seconds:
                return Run(plan, units, "seconds")
        estimator.add(stream.take(size), units)
        units, index = units + size, index + 1
        if plan.stop_top_k is not None:
            estimate, stderr = estimator.result()
            if top_k_settled(history, estimate[:, 0], stderr, plan.stop_top_k):
                return Run(plan, units, "top_k")
    return Run(plan, units, "budget")


def jackknife_stderr(full: torch.Tensor, leave_outs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Delete-a-group jackknife standard error from the estimates without each of G groups:

    se = sqrt((G - 1) / G sum_g (theta_(-g) - mean_g theta_(-g))^2)

    (Efron and Stein's jackknife; for a smooth function of means, such as a least-squares fit,
    it agrees to first order with the delta method / sandwich variance). NaN below two groups."""
    if len(leave_outs) < 2:
        return torch.full_like(full, math.nan, dtype=torch.float64)
    stacked = torch.stack([t.double() for t in leave_outs])
    G = len(leave_outs)
    return ((G - 1) / G * ((stacked - stacked.mean(0)) ** 2).sum(0)).sqrt()


class SamplingMethod(Method):
    """A method that spends a budget of model evaluations on random units (see the module docstring)."""

    stochastic = True
    standard_error = True
    default_samples: ClassVar[int]
    n_samples: int | None
    budget: int | None
    budget_seconds: float | None
    stop_top_k: int | None

    def plan(
        self,
        n_features: int,
        *,
        unit_cost: int,
        fixed_cost: int,
        samples_per_unit: int = 1,
        min_units: int = 1,
    ) -> Plan:
        """The run's plan from ``n_samples``, ``budget`` or ``budget_seconds`` (one of them) and
        ``stop_top_k``, at most :data:`~genattr.registry.MAX_EVALUATIONS` evaluations."""
        started = perf_counter()
        given = [k for k in ("n_samples", "budget", "budget_seconds") if getattr(self, k) is not None]
        if len(given) > 1:
            raise InvalidParameterError(
                f"{self.name}: {' and '.join(given)} are given; give one of n_samples, budget or "  # pragma: no mutate
                "budget_seconds (a run on budget_seconds is replayed with budget=diagnostics['evaluations'])."  # pragma: no mutate
            )
        if self.stop_top_k is not None and self.stop_top_k >= n_features:
            raise InvalidParameterError(
                f"{self.name}: stop_top_k={self.stop_top_k} must be less than the {n_features} features, "  # pragma: no mutate
                "so that a (k+1)-th score exists to separate the top k from; lower it."  # pragma: no mutate
            )
        cap = (MAX_EVALUATIONS - fixed_cost) // unit_cost
        if self.budget is not None:
            units = (self.budget - fixed_cost) // unit_cost
            if units < min_units:
                raise InvalidParameterError(
                    f"{self.name}: budget={self.budget} evaluations is less than the "  # pragma: no mutate
                    f"{fixed_cost + min_units * unit_cost} the smallest run needs on {n_features} features; raise it."  # pragma: no mutate
                )
        elif self.budget_seconds is not None:
            units = cap
        else:
            samples = self.default_samples if self.n_samples is None else self.n_samples
            units = samples // samples_per_unit
        return Plan(
            min(units, cap),
            unit_cost,
            fixed_cost,
            samples_per_unit,
            self.budget_seconds,
            self.stop_top_k,
            started,
        )


FitT = TypeVar("FitT", bound="Fit")


class Fit(Protocol):
    """A regression streamed through additive sufficient statistics."""

    rows: int

    def add(self, keep: torch.Tensor, values: torch.Tensor, weights: torch.Tensor) -> None: ...

    def __add__(self: FitT, other: FitT) -> FitT: ...

    def __sub__(self: FitT, other: FitT) -> FitT: ...


class Groups(Generic[FitT]):
    """:data:`JACKKNIFE_GROUPS` streamed fits made by ``make``, unit ``u`` going to group
    ``u mod JACKKNIFE_GROUPS``: their sum is the fit on everything, the sum less one group the
    fit of the jackknife that deletes it."""

    def __init__(self, make: Callable[[], FitT]) -> None:
        self.parts = [make() for _ in range(JACKKNIFE_GROUPS)]

    def add(
        self, units: torch.Tensor, keep: torch.Tensor, values: torch.Tensor, weights: torch.Tensor
    ) -> None:
        """Add rows (coalitions ``keep``, ``values``, ``weights``) belonging to unit indices ``units``."""
        group = units % JACKKNIFE_GROUPS
        for g in group.unique().tolist():
            rows = group == g
            self.parts[g].add(keep[rows], values[rows], weights[rows])

    def total(self) -> FitT:
        out = self.parts[0]
        for part in self.parts[1:]:
            out = out + part
        return out

    def leave_outs(self) -> list[FitT]:
        """The total less each group that holds rows."""
        total = self.total()
        return [total - part for part in self.parts if part.rows]
