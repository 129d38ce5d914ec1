"""Perturbation methods against independent oracles: a naive masking loop, the Shapley formula
by enumeration of permutations, the efficiency axiom, and exact recovery of additive games."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

import genattr
from genattr.algorithms.perturbation import (
    coalition_masks,
    kernel_shap_solve,
    shapley_from_table,
    shapley_kernel_weight,
    weighted_ridge,
)
from genattr.masking import Masker
from genattr.problem import Problem
from genattr.prompt import Prompt
from genattr.target import resolve_target

from .conftest import naive_log_probs

PROMPT = "The cat sat on the mat. Then a dog runs!"
SHORT = "The cat sat on a mat."
TARGET = " and the bird sings"
LINEAR = ["leave_one_out", "shapley_sampling", "shapley_exact", "kernel_shap", "lime"]


def _problem(lm, text=SHORT, mask="attention", objective="log_prob", seed=0):
    prompt = Prompt.from_text(lm.tokenizer, text)
    features = prompt.features("word")
    target = resolve_target(lm, prompt, TARGET)
    return Problem(lm, prompt, features, target, Masker(lm, prompt, features, mask), objective, seed)


def _permutation_shapley(values: torch.Tensor, F: int) -> torch.Tensor:
    """Oracle: the Shapley value as the average marginal contribution over all F! orderings."""
    out = torch.zeros(F, values.shape[1], dtype=torch.float64)
    perms = list(itertools.permutations(range(F)))
    for perm in perms:
        mask = 0
        for i in perm:
            out[i] += values[mask | (1 << i)] - values[mask]
            mask |= 1 << i
    return out / len(perms)


def test_leave_one_out_equals_a_naive_loop(lm):
    res = genattr.explain(lm, PROMPT, target=TARGET, method="leave_one_out", mask="replace", baseline="eos")
    prompt, target = res.prompt, list(res.target.ids)
    full = naive_log_probs(lm, prompt.input_ids, target).sum()
    eos = lm.tokenizer.eos_token_id
    for feature, score in zip(res.features, res.scores, strict=True):
        ids = [eos if t in feature.tokens else tok for t, tok in enumerate(prompt.input_ids)]
        expected = float(full - naive_log_probs(lm, ids, target).sum())
        assert score == pytest.approx(expected, abs=1e-4)
    # every variant batched: a pass for the shared prompt prefix, then one per group of variants
    assert res.diagnostics["forward_passes"] <= 4


def test_leave_one_out_groups_remove_features_together(llama):
    problem = _problem(llama)
    groups = [[1, 3]]
    out = genattr.algorithms.perturbation.LeaveOneOut(groups=groups).attribute(problem)
    keep = problem.all_kept(2)
    keep[1, [1, 3]] = False
    values = problem.evaluate(keep)
    assert float(out.scores[1]) == float(out.scores[3]) == pytest.approx(float(values[0, 0] - values[1, 0]))
    with pytest.raises(genattr.errors.InvalidParameterError, match="two groups"):
        genattr.algorithms.perturbation.LeaveOneOut(groups=[[1], [1, 2]])


def test_shapley_exact_equals_the_permutation_formula(lm):
    problem = _problem(lm)
    F = problem.n_features
    assert F == 7
    table = problem.evaluate(coalition_masks(F))
    oracle = _permutation_shapley(table, F)
    torch.testing.assert_close(shapley_from_table(table, F), oracle, atol=1e-9, rtol=0)
    res = genattr.explain(lm, SHORT, target=TARGET, method="shapley_exact")
    np.testing.assert_allclose(res.scores, oracle[:, 0].numpy(), atol=1e-5)
    np.testing.assert_allclose(res.token_scores, oracle[:, 1:].T.numpy(), atol=1e-5)


def test_shapley_sampling_is_exactly_efficient_and_converges(llama):
    problem = _problem(llama)
    F = problem.n_features
    table = problem.evaluate(coalition_masks(F))
    exact = shapley_from_table(table, F)[:, 0]
    total = float(table[-1, 0] - table[0, 0])
    errors = {}
    for n in (2, 64):
        errs = []
        for seed in range(4):
            res = genattr.explain(
                llama, SHORT, target=TARGET, method="shapley_sampling", n_samples=n, seed=seed
            )
            assert res.scores.sum() == pytest.approx(total, abs=1e-9)
            np.testing.assert_allclose(res.token_scores.sum(0), res.scores, atol=1e-9)
            errs.append(np.abs(res.scores - exact.numpy()).mean())
        errors[n] = np.mean(errs)
    assert errors[64] < 0.5 * errors[2]
    assert len(res.diagnostics["stderr"]) == F


def test_kernel_shap_with_every_coalition_equals_exact_shapley(qwen):
    res = genattr.explain(qwen, SHORT, target=TARGET, method="kernel_shap", n_samples=2**7)
    exact = genattr.explain(qwen, SHORT, target=TARGET, method="shapley_exact")
    np.testing.assert_allclose(res.scores, exact.scores, atol=1e-6)
    np.testing.assert_allclose(res.token_scores, exact.token_scores, atol=1e-6)


def test_kernel_shap_sampled_keeps_efficiency(llama):
    problem = _problem(llama, PROMPT)
    res = genattr.explain(llama, PROMPT, target=TARGET, method="kernel_shap", n_samples=40, seed=3)
    ends = problem.evaluate(
        torch.stack(
            [
                torch.zeros(problem.n_features, dtype=torch.bool),
                torch.ones(problem.n_features, dtype=torch.bool),
            ]
        )
    )
    assert res.scores.sum() == pytest.approx(float(ends[1, 0] - ends[0, 0]), abs=1e-8)


def test_estimators_recover_an_additive_game_exactly():
    """Oracle by construction: for v(S) = b + sum_{i in S} w_i every estimator must return w."""
    F = 6
    w = torch.tensor(
        [[0.5, -1.0], [2.0, 0.1], [0.0, 0.3], [-0.7, 0.0], [1.5, 1.5], [0.2, -0.4]], dtype=torch.float64
    )
    keep = coalition_masks(F)
    values = 0.3 + keep.double() @ w
    torch.testing.assert_close(shapley_from_table(values, F), w)
    inner = keep[1:-1]
    weights = torch.tensor([shapley_kernel_weight(int(s), F) for s in inner.sum(1)], dtype=torch.float64)
    torch.testing.assert_close(kernel_shap_solve(inner, values[1:-1], values[0], values[-1], weights), w)
    coef, intercept = weighted_ridge(
        keep, values, torch.rand(len(keep), dtype=torch.float64) + 0.1, alpha=0.0
    )
    torch.testing.assert_close(coef, w)
    torch.testing.assert_close(intercept, torch.full((2,), 0.3, dtype=torch.float64))


def test_shapley_kernel_weights_match_the_formula():
    F = 5
    for s in range(1, F):
        assert shapley_kernel_weight(s, F) == pytest.approx((F - 1) / (math.comb(F, s) * s * (F - s)))


@pytest.mark.parametrize("method", ["shapley_sampling", "kernel_shap", "lime"])
def test_same_seed_same_result(llama, method):
    kw = {"n_samples": 12}
    a = genattr.explain(llama, PROMPT, target=TARGET, method=method, seed=5, **kw)
    b = genattr.explain(llama, PROMPT, target=TARGET, method=method, seed=5, **kw)
    c = genattr.explain(llama, PROMPT, target=TARGET, method=method, seed=6, **kw)
    np.testing.assert_array_equal(a.scores, b.scores)
    assert not np.array_equal(a.scores, c.scores)
    assert a.seed == 5


@pytest.mark.parametrize("method", LINEAR)
def test_token_rows_sum_to_the_sequence_score(llama, method):
    res = genattr.explain(llama, SHORT, target=TARGET, method=method)
    assert res.token_scores.shape == (len(res.target.ids), len(res.features))
    np.testing.assert_allclose(res.token_scores.sum(0), res.scores, atol=1e-8)


def test_probability_objective(llama):
    problem = _problem(llama, objective="prob")
    res = genattr.explain(llama, SHORT, target=TARGET, method="leave_one_out", objective="prob")
    keep = problem.all_kept(1 + problem.n_features)
    for i in range(problem.n_features):
        keep[1 + i, i] = False
    lp = problem.token_log_probs(keep).double()
    expected = lp[0].sum().exp() - lp[1:].sum(1).exp()
    np.testing.assert_allclose(res.scores, expected.numpy(), atol=1e-9)
    np.testing.assert_allclose(res.token_scores, (lp[0].exp() - lp[1:].exp()).T.numpy(), atol=1e-9)
    with pytest.raises(genattr.errors.InvalidParameterError, match="objective"):
        genattr.explain(llama, SHORT, target=TARGET, objective="logit")


def test_lime_fits_the_full_prompt_and_weights_by_fraction_kept(llama):
    res = genattr.explain(llama, PROMPT, target=TARGET, method="lime", n_samples=64, alpha=0.0, seed=1)
    assert res.scores.shape == (len(res.features),)
    assert "intercept" in res.diagnostics
    with pytest.raises(genattr.errors.InvalidParameterError, match="kernel_width"):
        genattr.explain(llama, PROMPT, target=TARGET, method="lime", kernel_width=0.0)
