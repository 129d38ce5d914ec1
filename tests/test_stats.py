"""Bootstrap intervals over prompts against cases known by hand: a constant sample, a normal
sample's t-interval, identical and shifted methods, and the seed that makes them repeatable."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from genattr.errors import InputError
from genattr.evaluate.stats import Interval, mean_interval, paired_interval


def test_a_constant_sample_has_a_zero_width_interval():
    iv = mean_interval([2.5] * 12)
    assert (iv.mean, iv.low, iv.high, iv.n) == (2.5, 2.5, 2.5, 12)
    assert iv.method == "constant" and iv.excludes_zero


def test_a_sample_of_small_values_is_not_constant():
    """Probabilities of about 1e-18 that differ by tenths of their size have a real interval."""
    x = np.random.default_rng(0).uniform(1, 2, 30) * 1e-18
    iv = mean_interval(x)
    assert iv.method == "BCa" and 1e-18 < iv.low < iv.mean < iv.high < 2e-18


def test_one_value_has_no_interval():
    iv = mean_interval([3.0])
    assert iv.mean == 3.0 and math.isnan(iv.low) and math.isnan(iv.high)
    assert not iv.excludes_zero


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_normal_samples_interval_is_the_t_interval(seed):
    """For n = 400 normal values the bootstrap interval of the mean and the t-interval
    mean +- t_{0.975, n-1} s / sqrt(n) agree to a few percent of the half-width."""
    x = np.random.default_rng(seed).normal(1.0, 2.0, 400)
    half = scipy_stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    iv = mean_interval(x)
    assert iv.method == "BCa"
    assert iv.mean == pytest.approx(x.mean(), abs=1e-12)
    assert iv.low == pytest.approx(x.mean() - half, abs=0.06 * half)
    assert iv.high == pytest.approx(x.mean() + half, abs=0.06 * half)


def test_a_skewed_sample_gets_an_asymmetric_interval():
    """BCa follows the skew of an exponential sample: the upper arm is the longer one."""
    x = np.random.default_rng(0).exponential(1.0, 60)
    iv = mean_interval(x)
    assert iv.high - iv.mean > 1.1 * (iv.mean - iv.low)


def test_identical_methods_differ_by_exactly_zero():
    a = np.random.default_rng(0).normal(size=30)
    iv = paired_interval(a, a.copy())
    assert (iv.mean, iv.low, iv.high) == (0.0, 0.0, 0.0)
    assert not iv.excludes_zero


def test_a_shifted_copy_differs_by_the_shift_exactly():
    a = np.arange(20, dtype=float) * 0.25  # dyadic values: a - (a + 1.5) is exactly -1.5
    iv = paired_interval(a, a + 1.5)
    assert (iv.mean, iv.low, iv.high) == (-1.5, -1.5, -1.5)
    assert iv.excludes_zero
    noisy = np.random.default_rng(1).normal(size=25)
    iv = paired_interval(noisy + 0.3, noisy)  # rounding leaves differences within 1e-16 of 0.3
    assert iv.low == pytest.approx(0.3, abs=1e-12) and iv.high == pytest.approx(0.3, abs=1e-12)


def test_pairing_removes_the_prompts_own_spread():
    """Two methods whose values move with the prompt (spread 10) but differ by 1 +- 0.1: the
    unpaired intervals overlap, the paired one excludes 0 and covers 1."""
    rng = np.random.default_rng(0)
    prompt = rng.normal(0, 10, 30)
    a, b = prompt + 1 + rng.normal(0, 0.1, 30), prompt
    ia, ib = mean_interval(a), mean_interval(b)
    assert ia.low < ib.high
    diff = paired_interval(a, b)
    assert diff.excludes_zero and diff.low < 1 < diff.high and diff.high - diff.low < 0.2


def test_the_same_values_give_the_same_interval():
    x = np.random.default_rng(5).normal(size=40)
    assert mean_interval(x) == mean_interval(list(x))
    assert mean_interval(x, seed=1) != mean_interval(x)


def test_two_values_give_the_range_of_their_resampled_means():
    """Resamples of [1, 3] have means 1, 2 or 3 (probabilities 1/4, 1/2, 1/4): the 95% interval
    is the whole range."""
    iv = mean_interval([1.0, 3.0])
    assert iv.method == "BCa" and (iv.low, iv.high) == (1.0, 3.0)


def test_bad_samples_raise_input_errors():
    with pytest.raises(InputError, match="non-empty"):
        mean_interval([])
    with pytest.raises(InputError, match="non-finite"):
        mean_interval([1.0, math.nan])
    with pytest.raises(InputError, match="one value of each method per prompt"):
        paired_interval([1.0, 2.0], [1.0])
    assert isinstance(mean_interval([1.0, 2.0, 4.0]), Interval)
