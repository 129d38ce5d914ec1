"""Confidence intervals over prompts: how far a table's mean could move with other prompts.

Every entry of the reproduction's tables (``genattr reproduce``) is a mean over prompts, and
differences between methods are read on the same prompts. Both intervals come from
:func:`scipy.stats.bootstrap` with the bias-corrected and accelerated method (BCa; Efron 1987),
``N_RESAMPLES`` resamples and a fixed seed, so a document rebuilt from the same rows prints the
same intervals:

* :func:`mean_interval`: the 95% interval of the mean of one method's per-prompt values;
* :func:`paired_interval`: the 95% interval of the mean difference of two methods over the prompts
  both were run on, the bootstrap of the per-prompt differences d_i = a_i - b_i (resampling
  prompts, each with both methods' values). A difference whose interval excludes 0 is one these
  prompts support; the intervals are not corrected for the number of comparisons made.

A sample whose values are all equal (to ``CONSTANT_TOLERANCE`` of its largest magnitude) has the zero-width
interval [v, v], where BCa's acceleration is undefined; a sample of one value has no interval
(``low`` and ``high`` are NaN).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import InputError

LEVEL = 0.95
"""Confidence level of every interval."""
N_RESAMPLES = 9999
"""Bootstrap resamples per interval."""
SEED = 0
"""Seed of the resampling (numpy's default_rng)."""
METHOD = "BCa"
"""scipy.stats.bootstrap's interval method."""
CONSTANT_TOLERANCE = 1e-12
"""A sample is constant when its range is at most this times its largest magnitude (rounding
error, as in a - (a + c)), whatever its scale."""


@dataclass(frozen=True)
class Interval:
    """A mean and its confidence interval [low, high] over ``n`` values, and the interval's method."""

    mean: float
    low: float
    high: float
    n: int
    method: str = METHOD

    @property
    def excludes_zero(self) -> bool:
        """Whether the whole interval lies on one side of 0 (False when there is no interval)."""
        return bool(self.low > 0 or self.high < 0)


def _values(values: Sequence[float], what: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise InputError(f"{what} needs a non-empty list of numbers, got shape {array.shape}.")
    if not np.isfinite(array).all():
        raise InputError(f"{what} got {int((~np.isfinite(array)).sum())} non-finite values; drop them first.")
    return array


def _bootstrap(array: np.ndarray, level: float, n_resamples: int, seed: int) -> Interval:
    mean = float(array.mean())
    if array.size == 1:
        return Interval(mean, math.nan, math.nan, 1, "none")
    if np.ptp(array) <= CONSTANT_TOLERANCE * float(np.abs(array).max()):
        return Interval(mean, mean, mean, int(array.size), "constant")
    from scipy.stats import bootstrap

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy's DegenerateDataWarning: an undefined interval
        result = bootstrap(
            (array,),
            np.mean,
            n_resamples=n_resamples,
            confidence_level=level,
            method=METHOD,
            rng=np.random.default_rng(seed),
        )
    return Interval(
        mean, float(result.confidence_interval.low), float(result.confidence_interval.high), int(array.size)
    )


def mean_interval(
    values: Sequence[float], *, level: float = LEVEL, n_resamples: int = N_RESAMPLES, seed: int = SEED
) -> Interval:
    """The mean of ``values`` (one per prompt) and its bootstrap confidence interval."""
    return _bootstrap(_values(values, "mean_interval"), level, n_resamples, seed)


def paired_interval(
    a: Sequence[float],
    b: Sequence[float],
    *,
    level: float = LEVEL,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
) -> Interval:
    """The mean of a_i - b_i over prompts i (``a[i]`` and ``b[i]`` measured on the same prompt)
    and its paired bootstrap confidence interval."""
    first, second = _values(a, "paired_interval"), _values(b, "paired_interval")
    if first.shape != second.shape:
        raise InputError(
            f"paired_interval needs one value of each method per prompt; got {first.size} and {second.size}."
        )
    return _bootstrap(first - second, level, n_resamples, seed)
