"""Perturbation methods against independent oracles: a naive masking loop, the Shapley formula
by enumeration of permutations, the efficiency axiom, and exact recovery of additive games."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

import genattr
from genattr import problem as problem_module
from genattr import registry
from genattr.algorithms import sampling
from genattr.algorithms.perturbation import coalition_masks, shapley_from_table, shapley_kernel_weight
from genattr.algorithms.sampling import Stream
from genattr.algorithms.shapley import (
    KernelShapFit,
    PermutationCredits,
    draw_permutations,
    kernel_shap_solve,
)
from genattr.algorithms.surrogate import RidgeFit, weighted_ridge
from genattr.errors import InvalidParameterError
from genattr.masking import Masker
from genattr.problem import Problem
from genattr.registry import MAX_SAMPLES
from genattr.text.prompt import Prompt
from genattr.text.target import resolve_target

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
    res = genattr.explain(lm, PROMPT, target=TARGET, method="leave_one_out", mask="replace", mask_token="eos")
    prompt, target = res.prompt, list(res.target.ids)
    full = naive_log_probs(lm, prompt.input_ids, target).sum()
    eos = lm.tokenizer.eos_token_id
    for feature, score in zip(res.features, res.scores, strict=True):
        ids = [eos if t in feature.positions else tok for t, tok in enumerate(prompt.input_ids)]
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


# --------------------------------------------------------------------- bounded work
# Integer parameters that set no amount of work: xprompt's k and the sampling methods' stop_top_k
# are checked against the prompt's features, and gilot's ot_batch_size is capped by
# ot.MAX_COST_ENTRIES where it is used.
UNBOUNDED = {("xprompt", "k"), ("gilot", "ot_batch_size")} | {
    (name, "stop_top_k") for name in ("shapley_sampling", "kernel_shap", "lime", "context_cite")
}


def _int_params():
    for name in registry.names():
        for key, param in registry.get(name).params.items():
            kinds = param.kind if isinstance(param.kind, tuple) else (param.kind,)
            if int in kinds and bool not in kinds and (name, key) not in UNBOUNDED:
                yield name, key, param


def test_every_work_parameter_has_a_limit_stated_when_passed():
    params = list(_int_params())
    assert {("shapley_sampling", "n_samples"), ("gilot", "num_beams"), ("xprompt", "n_iter")} <= {
        (n, k) for n, k, _ in params
    }
    for name, key, param in params:
        assert param.maximum is not None, f"{name}.{key} has no maximum"
        cls = registry.get(name)
        assert cls(**{key: int(param.maximum)}).values[key] == param.maximum
        with pytest.raises(InvalidParameterError, match=f"{key} must be at most {param.maximum}"):
            cls(**{key: int(param.maximum) + 1})


def test_absurd_n_samples_fails_at_once_with_the_limit(llama, monkeypatch):
    def evaluate(self, keep):
        raise AssertionError("coalitions were scored before n_samples was checked")

    monkeypatch.setattr(Problem, "evaluate", evaluate)
    with pytest.raises(InvalidParameterError, match=f"n_samples must be at most {MAX_SAMPLES}, got 10{{12}}"):
        genattr.explain(llama, SHORT, target=TARGET, method="shapley_sampling", n_samples=10**12)


def test_permutations_are_the_same_however_the_stream_is_taken():
    """A stream of permutations hands out the same ones in blocks of any size, one
    ``torch.randperm`` each from the seeded generator (as Captum draws them)."""
    gen = torch.Generator().manual_seed(1)
    expected = torch.stack([torch.randperm(6, generator=gen) for _ in range(600)])
    for per_block in (1, 7, 39, 600):
        stream = Stream(draw_permutations(6), torch.Generator().manual_seed(1))
        blocks = [stream.take(per_block) for _ in range(600 // per_block)]
        blocks.append(stream.take(600 - sum(len(b) for b in blocks)))
        torch.testing.assert_close(torch.cat(blocks), expected, rtol=0, atol=0)


def _lookup_game(F: int, m: int = 3):
    """A non-additive game: a random table of 2^F coalition values, looked up by bitmask; it
    records the rows of every call."""
    table = torch.randn(2**F, m, generator=torch.Generator().manual_seed(F), dtype=torch.float64)
    calls = []

    def value(keep: torch.Tensor) -> torch.Tensor:
        calls.append(len(keep))
        return table[(keep.long() << torch.arange(F)).sum(1)]

    return table, value, calls


def test_permutation_credits_are_the_mean_credit_whatever_the_blocks():
    """Oracle: each permutation's marginal contributions computed one by one from the table; their
    mean and standard error equal the streamed estimate for any block size, and each call
    scores the block's inner prefixes only (F - 1 coalitions a permutation)."""
    F, n = 5, 50
    table, value, calls = _lookup_game(F)
    perms = Stream(draw_permutations(F), torch.Generator().manual_seed(2)).take(n)
    credits = torch.zeros(n, F, table.shape[1], dtype=torch.float64)
    for s, perm in enumerate(perms):
        mask = 0
        for i in perm.tolist():
            credits[s, i] = table[mask | (1 << i)] - table[mask]
            mask |= 1 << i
    stderr = credits[:, :, 0].std(0) / math.sqrt(n)
    for per_block in (1, 8, n):
        calls.clear()
        estimate = PermutationCredits(value, table[[0, -1]], paired=False)
        for start in range(0, n, per_block):
            estimate.add(perms[start : start + per_block], start)
        mean, err = estimate.result()
        assert estimate.count == n and len(calls) == math.ceil(n / per_block)
        assert max(calls) == per_block * (F - 1)
        torch.testing.assert_close(mean, credits.mean(0), rtol=0, atol=1e-12)
        torch.testing.assert_close(err, stderr, rtol=0, atol=1e-12)
    torch.testing.assert_close(mean.sum(0), table[-1] - table[0], rtol=0, atol=1e-12)


def _rows_seen(monkeypatch, lm):
    """Record the coalitions of every Problem.evaluate call and the rows of every teacher-forced
    call on ``lm``."""
    evaluated, seen = [], []
    original, evaluate = lm.label_log_probs, Problem.evaluate

    def spy(rows, labels):
        seen.append(len(rows))
        return original(rows, labels)

    def evaluate_spy(self, keep):
        evaluated.append(len(keep))
        return evaluate(self, keep)

    monkeypatch.setattr(lm, "label_log_probs", spy)
    monkeypatch.setattr(Problem, "evaluate", evaluate_spy)
    return evaluated, seen


@pytest.mark.parametrize("method", ["shapley_sampling", "kernel_shap", "lime"])
def test_sampling_methods_score_bounded_blocks_whatever_the_budget(llama, monkeypatch, method):
    """Drawn and scored 16 coalitions at a time, with the prompt variants built one forward pass at
    a time under a small budget, no call holds more rows than that, and the scores equal those
    under the default budget (the draws do not depend on it)."""
    monkeypatch.setattr(sampling, "SAMPLE_BLOCK", 16)
    n = {"shapley_sampling": 12, "kernel_shap": 60, "lime": 60}[method]
    kw = {"paired": False} if method == "shapley_sampling" else {}  # a pair of permutations: 2 (F - 1) > 16
    whole = genattr.explain(llama, PROMPT, target=TARGET, method=method, n_samples=n, seed=4, **kw)
    monkeypatch.setattr(problem_module, "EVALUATION_PASSES", 1)
    monkeypatch.setattr(llama, "max_batch_tokens", 256)
    evaluated, seen = _rows_seen(monkeypatch, llama)
    blocked = genattr.explain(llama, PROMPT, target=TARGET, method=method, n_samples=n, seed=4, **kw)
    length = len(blocked.prompt) + len(blocked.target.ids)
    assert len(evaluated) > 2 and max(evaluated) <= 16
    assert len(seen) > 2 and max(seen) <= llama.rows_per_chunk(length)
    np.testing.assert_allclose(blocked.scores, whole.scores, rtol=0, atol=1e-5)
    np.testing.assert_allclose(blocked.token_scores, whole.token_scores, rtol=0, atol=1e-5)


def test_kernel_shap_enumerates_every_coalition_block_by_block(qwen, monkeypatch):
    exact = genattr.explain(qwen, SHORT, target=TARGET, method="shapley_exact")
    monkeypatch.setattr(sampling, "SAMPLE_BLOCK", 16)
    res = genattr.explain(qwen, SHORT, target=TARGET, method="kernel_shap", n_samples=2**7)
    assert res.diagnostics["samples"] == 2 ** len(res.features) - 2
    assert res.diagnostics["evaluations"] == 2 ** len(res.features)
    np.testing.assert_allclose(res.scores, exact.scores, atol=1e-6)


def test_streamed_regressions_equal_their_one_table_solutions():
    """Oracle: the weighted least squares of KernelSHAP solved on the whole table by lstsq on
    sqrt(w)-scaled rows, and numpy's weighted ridge, against the normal equations added block by block."""
    F, m = 6, 2
    gen = torch.Generator().manual_seed(0)
    keep = torch.rand(300, F, generator=gen) < 0.5
    values = torch.randn(300, m, generator=gen, dtype=torch.float64)
    weights = torch.rand(300, generator=gen, dtype=torch.float64) + 0.1
    v_empty, v_full = (
        torch.tensor([0.2, -0.1], dtype=torch.float64),
        torch.tensor([1.0, 0.5], dtype=torch.float64),
    )
    Z = keep.double()
    delta = v_full - v_empty
    X = (Z[:, :-1] - Z[:, -1:]) * weights.sqrt()[:, None]
    y = (values - v_empty - Z[:, -1:] * delta) * weights.sqrt()[:, None]
    head = torch.linalg.lstsq(X, y).solution
    expected = torch.cat([head, (delta - head.sum(0))[None]])
    fit = KernelShapFit(F, v_empty, v_full)
    for part in torch.arange(300).split(70):
        fit.add(keep[part], values[part], weights[part])
    torch.testing.assert_close(fit.solve(), expected)
    alpha = 0.7
    A = np.hstack([np.ones((300, 1)), Z.numpy()])
    W = np.diag(weights.numpy())
    penalty = alpha * np.diag([0.0] + [1.0] * F)
    beta = np.linalg.solve(A.T @ W @ A + penalty, A.T @ W @ values.numpy())
    ridge = RidgeFit(F, m)
    for part in torch.arange(300).split(70):
        ridge.add(keep[part], values[part], weights[part])
    coef, intercept = ridge.solve(alpha)
    np.testing.assert_allclose(coef.numpy(), beta[1:], atol=1e-10)
    np.testing.assert_allclose(intercept.numpy(), beta[0], atol=1e-10)


def test_problem_builds_prompt_variants_a_bounded_chunk_at_a_time(llama, monkeypatch):
    """Problem.evaluate never turns more coalitions into inputs at once than EVALUATION_PASSES
    forward passes hold, and the values do not depend on it."""
    problem = _problem(llama, PROMPT)
    keep = coalition_masks(problem.n_features)[:200]
    whole = problem.evaluate(keep)
    monkeypatch.setattr(problem_module, "EVALUATION_PASSES", 2)
    monkeypatch.setattr(llama, "max_batch_tokens", 128)
    built = []
    original = problem.masker.inputs
    monkeypatch.setattr(problem.masker, "inputs", lambda k: built.append(len(k)) or original(k))
    chunked = problem.evaluate(keep)
    limit = 2 * llama.rows_per_chunk(len(problem.prompt) + len(problem.target.ids))
    assert len(built) > 1 and max(built) <= limit and sum(built) == len(torch.unique(keep, dim=0))
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-5)
