"""Gradient methods against oracles: IG completeness on real tiny transformers (the right-hand side
from a naive Hugging Face loop), IG in closed form on a model quadratic in the embeddings, finite
differences, the model left as found, and Captum's LayerIntegratedGradients as a peer
implementation (DeepLIFT: tests/test_deeplift.py)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import genattr
from genattr.algorithms._embedding import CONVERGENCE_TOLERANCE, completeness_gap
from genattr.errors import ConvergenceWarning, InvalidParameterError
from genattr.model import Batch, LanguageModel
from genattr.registry import methods
from genattr.zoo import examples

from .conftest import naive_log_probs, our_hooks

PROMPT = "The cat sat on the mat."
TARGET = " and the bird sings"
GRADIENT_METHODS = [i.name for i in methods() if i.family == "gradient"]


def _explain(lm, method, **kw):
    return genattr.explain(lm, PROMPT, target=TARGET, method=method, **kw)


def _replaced(res, baseline_id: int) -> list[int]:
    """The prompt ids with every feature token replaced by the baseline token."""
    covered = {t for f in res.features for t in f.positions}
    return [baseline_id if i in covered else tok for i, tok in enumerate(res.prompt.input_ids)]


def _sequence(res) -> list[int]:
    """The T ids the gradient methods embed: the prompt, then the teacher-forced target but its last token."""
    return [*res.prompt.input_ids, *res.target.ids[:-1]]


# --------------------------------------------------------------------- integrated gradients
@pytest.mark.parametrize("rule", ["gausslegendre", "riemann_trapezoid"])
def test_ig_completeness_on_tiny_transformers(lm, rule):
    kw = {"baselines": "token", "mask_token": "eos", "quadrature": rule}
    res = _explain(lm, "integrated_gradients", n_steps=128, **kw)
    target = list(res.target.ids)
    full = naive_log_probs(lm, res.prompt.input_ids, target).double()
    empty = naive_log_probs(lm, _replaced(res, lm.tokenizer.eos_token_id), target).double()
    gap = (full - empty).numpy()
    assert abs(res.scores.sum() - gap.sum()) < 1e-2 * abs(gap.sum())
    np.testing.assert_allclose(res.token_scores.sum(1), gap, rtol=1e-2, atol=1e-2 * np.abs(gap).max())
    assert res.diagnostics["relative_convergence_delta"] < 1e-2
    assert res.diagnostics["n_steps"] == 128 and res.diagnostics["steps_tried"] == [128]
    np.testing.assert_allclose(res.token_scores.sum(0), res.scores, atol=1e-9)
    coarse = _explain(lm, "integrated_gradients", n_steps=2, **kw)
    assert coarse.diagnostics["relative_convergence_delta"] > res.diagnostics["relative_convergence_delta"]


def test_completeness_gap_by_hand():
    scores, tokens = torch.tensor([1.0, 2.0]), torch.tensor([[0.5, 0.5], [1.0, 1.0]])
    gap = torch.tensor([1.5, 1.0, 3.5])  # F_1, F_2, then the sequence's F(x) - F(x')
    sequence = completeness_gap(scores, tokens, gap)
    assert sequence.delta == pytest.approx(-0.5) and sequence.relative == pytest.approx(0.5 / 3.5)
    assert sequence.token_deltas.tolist() == pytest.approx([-0.5, 1.0]) and not sequence.converged
    per_token = completeness_gap(scores, tokens, gap, per_token=True)
    assert per_token.delta == pytest.approx(0.75) and per_token.relative == pytest.approx(0.75 / 1.25)
    closed = completeness_gap(scores, tokens, torch.tensor([1.0, 2.0, 3.0 * (1 + CONVERGENCE_TOLERANCE)]))
    assert closed.converged and closed.diagnostics()["converged"]
    assert completeness_gap(scores, tokens, torch.tensor([1.0, 2.0, 0.0])).relative == pytest.approx(3e12)


@pytest.mark.parametrize("method", ["integrated_gradients", "integrated_gradients_avg", "deeplift"])
def test_completeness_diagnostics_are_the_gap_of_the_scores_returned(llama, method):
    res = _explain(llama, method, **({} if method == "deeplift" else {"n_steps": 8}))
    d = res.diagnostics
    gap = torch.tensor(d["objective_input"], dtype=torch.float64) - torch.tensor(
        d["objective_baseline"], dtype=torch.float64
    )
    rows = torch.tensor(res.token_scores, dtype=torch.float64)
    expected = completeness_gap(rows.sum(0), rows, gap, per_token=method == "integrated_gradients_avg")
    assert d["convergence_delta"] == pytest.approx(expected.delta, abs=1e-9)
    assert d["relative_convergence_delta"] == pytest.approx(expected.relative, rel=1e-9)
    assert d["convergence_delta_tokens"] == pytest.approx(expected.token_deltas.tolist(), abs=1e-9)


@pytest.fixture(scope="module")
def zoo():
    return genattr.load("zoo")


# zoo prompts where 50 Gauss-Legendre steps (the former default) miss F(x) - F(x') by 9-12%
HARD_ZOO_PROMPTS = [("recall", 1), ("sentiment", 2), ("copy", 0)]


def test_ig_default_steps_converge_on_zoo_prompts(zoo):
    """Left unset, n_steps doubles from 32 until the relative convergence delta is under the
    warning threshold: the result converges and says which step counts it tried."""
    for task, index in HARD_ZOO_PROMPTS:
        ex = examples(task, 3, seed=0)[index]
        with pytest.warns(ConvergenceWarning, match="n_steps=50"):
            fixed = genattr.explain(
                zoo, ex.prompt, target=ex.answer, method="integrated_gradients", n_steps=50
            )
        assert fixed.diagnostics["relative_convergence_delta"] > CONVERGENCE_TOLERANCE
        with warnings.catch_warnings():
            warnings.simplefilter("error", ConvergenceWarning)
            res = genattr.explain(zoo, ex.prompt, target=ex.answer, method="integrated_gradients")
        d = res.diagnostics
        tried = d["relative_convergence_delta_tried"]
        assert d["steps_tried"] == [32, 64, 128][: len(tried)] and d["n_steps"] == d["steps_tried"][-1]
        assert all(delta > CONVERGENCE_TOLERANCE for delta in tried[:-1])
        assert d["converged"] and d["relative_convergence_delta"] == tried[-1] <= CONVERGENCE_TOLERANCE
        gap = d["objective_input"][-1] - d["objective_baseline"][-1]
        assert d["convergence_delta"] == pytest.approx(res.scores.sum() - gap, abs=1e-9)


def test_ig_schedule_stops_at_max_steps_and_warns(zoo):
    ex = examples("copy", 3, seed=0)[0]
    with pytest.warns(ConvergenceWarning, match="n_steps=64; raise max_steps"):
        res = genattr.explain(zoo, ex.prompt, target=ex.answer, method="integrated_gradients", max_steps=64)
    assert res.diagnostics["steps_tried"] == [32, 64]
    assert res.diagnostics["n_steps"] == 64 and not res.diagnostics["converged"]


def test_ig_completeness_for_the_probability_objective(qwen):
    res = _explain(qwen, "integrated_gradients", n_steps=128, objective="prob")
    before, after = (
        np.array(res.diagnostics["objective_input"]),
        np.array(res.diagnostics["objective_baseline"]),
    )
    gap = before - after
    assert abs(res.scores.sum() - gap[-1]) < 1e-2 * abs(gap[-1])
    np.testing.assert_allclose(res.token_scores.sum(1), gap[:-1], rtol=1e-2, atol=1e-2 * np.abs(gap).max())
    p = naive_log_probs(qwen, res.prompt.input_ids, list(res.target.ids)).double().exp()
    np.testing.assert_allclose(before[:-1], p.numpy(), rtol=1e-5)
    assert before[-1] == pytest.approx(float(p.prod()), rel=1e-5)


class QuadraticLM(LanguageModel):
    """A model whose target "log-probs" are quadratic in the prompt embeddings (linear with
    ``curvature=0``): F_t(x) = sum_{i,d} B[t,i,d] x_{i,d} + C[t,i,d] x_{i,d}^2 / 2. Integrated
    gradients then have the closed form IG_{t,i} = sum_d (x - x')_{i,d} (B + C (x + x') / 2)_{t,i,d},
    on any path rule exact for linear integrands."""

    def __init__(self, lm: LanguageModel, n_target: int, length: int, curvature: float = 50.0, **kw) -> None:
        super().__init__(lm.model, lm.tokenizer, **kw)
        gen = torch.Generator().manual_seed(0)
        d = lm.embedding_matrix.shape[1]
        self.B = torch.randn(n_target, length, d, generator=gen)
        self.C = torch.randn(n_target, length, d, generator=gen) * curvature

    def log_probs_from_embeddings(
        self, prompt_embeds, inputs, target_ids, output_attentions=False, return_logits=False
    ):
        x = prompt_embeds.float()
        return torch.einsum("bld,tld->bt", x, self.B) + 0.5 * torch.einsum("bld,tld->bt", x**2, self.C)


@pytest.mark.parametrize(
    ("rule", "n_steps", "curvature"),
    [
        ("gausslegendre", 1, 50.0),
        ("gausslegendre", 7, 50.0),
        ("riemann_trapezoid", 2, 50.0),
        ("gausslegendre", 3, 0.0),
    ],
)
def test_ig_is_exact_on_a_quadratic_model(llama, rule, n_steps, curvature):
    res0 = _explain(llama, "input_x_gradient", level="token")
    n = len(res0.target.ids)
    L = len(res0.prompt.input_ids) + n - 1
    quad = QuadraticLM(llama, n, L, curvature, max_batch_tokens=3 * (L + 1) * n)  # forces several chunks
    res = _explain(
        quad, "integrated_gradients", level="token", n_steps=n_steps, quadrature=rule, baselines="token"
    )
    x = llama.embed(torch.tensor([_sequence(res)]))[0].detach().float()
    base = llama.embed(torch.tensor([[*_replaced(res, res.settings.mask_token), *res.target.ids[:-1]]]))
    base = base[0].detach().float()
    closed = ((x - base)[None] * (quad.B + quad.C * (x + base)[None] / 2)).sum(-1)  # [n, L]
    positions = [f.positions[0] for f in res.features]
    np.testing.assert_allclose(res.token_scores, closed[:, positions].double().numpy(), rtol=1e-4, atol=1e-6)
    assert abs(res.diagnostics["convergence_delta"]) < 1e-4 * np.abs(res.scores).sum()
    avg = _explain(
        quad, "integrated_gradients_avg", level="token", n_steps=n_steps, quadrature=rule, baselines="token"
    )
    np.testing.assert_allclose(avg.token_scores, res.token_scores, atol=1e-9)
    steps = closed[:, positions].double().numpy()  # the per-step IG matrix [n, F]
    assert ((steps > 0).any(0) & (steps < 0).any(0)).any()  # some feature changes sign across steps
    np.testing.assert_allclose(avg.scores, np.abs(steps).mean(0), rtol=1e-4, atol=1e-6)  # abs, then mean
    assert not np.allclose(avg.scores, res.scores / n, rtol=1e-2)
    assert not np.allclose(avg.scores, np.abs(res.scores) / n, rtol=1e-2)
    assert avg.diagnostics["relative_convergence_delta"] < 1e-4
    assert avg.diagnostics["n_steps"] == n_steps


def test_clipped_ig_clamps_every_gradient_entry(llama):
    res0 = _explain(llama, "input_x_gradient", level="token")
    n = len(res0.target.ids)
    L = len(res0.prompt.input_ids) + n - 1
    quad = QuadraticLM(llama, n, L)
    kw = {"level": "token", "n_steps": 5, "quadrature": "riemann_trapezoid", "baselines": "zero"}
    theta = 0.5
    res = _explain(quad, "ig_clipped", threshold=theta, **kw)
    x = llama.embed(torch.tensor([_sequence(res)]))[0].detach().float()
    covered = torch.zeros(L, 1)
    covered[[f.positions[0] for f in res.features]] = 1
    base = x * (1 - covered)  # the zero baseline at feature positions
    alphas, weights = torch.linspace(0, 1, 5), torch.tensor([0.125, 0.25, 0.25, 0.25, 0.125])
    expected = torch.zeros(n, L)
    for a, w in zip(alphas, weights, strict=True):
        grad = (quad.B + quad.C * (base + a * (x - base))[None]).clamp(-theta, theta)
        expected += w * (grad * (x - base)[None]).sum(-1)
    positions = [f.positions[0] for f in res.features]
    np.testing.assert_allclose(
        res.token_scores, expected[:, positions].double().numpy(), rtol=1e-4, atol=1e-6
    )
    plain = _explain(quad, "integrated_gradients", **kw)
    assert not np.allclose(plain.token_scores, res.token_scores)
    unclipped = _explain(quad, "ig_clipped", threshold=1e6, **kw)
    np.testing.assert_allclose(unclipped.token_scores, plain.token_scores, atol=1e-9)


# --------------------------------------------------------------------- plain gradients
def test_input_x_gradient_equals_finite_differences(lm):
    """d/dh F_t(x with token i's embedding scaled by 1 + h) at h = 0 is sum_d x_{i,d} dF_t/dx_{i,d}."""
    res = _explain(lm, "input_x_gradient", level="token")
    ids, target = _sequence(res), list(res.target.ids)
    e = lm.embed(torch.tensor([ids]))[0].detach()
    h = 0.03
    columns = []
    for f in res.features:
        rows = e[None].repeat(2, 1, 1)
        rows[0, f.positions[0]] *= 1 + h
        rows[1, f.positions[0]] *= 1 - h
        with torch.no_grad():
            lp = lm.log_probs_from_embeddings(rows, Batch.from_ids(ids, 2), target).double()
        columns.append((lp[0] - lp[1]) / (2 * h))
    fd = torch.stack(columns, 1).numpy()
    np.testing.assert_allclose(res.token_scores, fd, rtol=0, atol=max(1e-4, 5e-3 * np.abs(fd).max()))
    np.testing.assert_allclose(res.scores, res.token_scores.sum(0), atol=1e-9)


def test_saliency_is_the_gradient_norm_and_smoothgrad_without_noise_equals_it(qwen):
    res = _explain(qwen, "saliency", level="token")
    ids, target = _sequence(res), list(res.target.ids)
    x = qwen.embed(torch.tensor([ids])).detach().requires_grad_(True)
    lp = qwen.log_probs_from_embeddings(x, Batch.from_ids(ids), target)[0]
    positions = [f.positions[0] for f in res.features]
    for t in range(len(target)):
        (g,) = torch.autograd.grad(lp[t], x, retain_graph=True)
        np.testing.assert_allclose(
            res.token_scores[t], g[0, positions].norm(dim=-1).numpy(), rtol=1e-4, atol=1e-7
        )
    (g,) = torch.autograd.grad(lp.sum(), x)
    np.testing.assert_allclose(res.scores, g[0, positions].norm(dim=-1).numpy(), rtol=1e-4, atol=1e-7)
    smooth = _explain(qwen, "smoothgrad", level="token", n_samples=3, stdevs=0.0)
    np.testing.assert_allclose(smooth.token_scores, res.token_scores, rtol=1e-5, atol=1e-8)
    noisy = _explain(qwen, "smoothgrad", level="token", n_samples=3)
    assert noisy.params["stdevs"] is None and noisy.diagnostics["stdevs"] > 0
    assert not np.allclose(noisy.token_scores, res.token_scores)


def test_gradient_shap_estimates_integrated_gradients_and_is_seeded(llama):
    """With one fixed baseline and no noise, GradientSHAP is a Monte Carlo estimate of IG."""
    ig = _explain(llama, "integrated_gradients", n_steps=64, baselines="zero")

    def error(n_samples: int) -> float:
        runs = [
            _explain(llama, "gradient_shap", n_samples=n_samples, baselines="zero", seed=s) for s in (1, 2)
        ]
        return float(np.mean([np.abs(r.scores - ig.scores).sum() / np.abs(ig.scores).sum() for r in runs]))

    many = error(1024)
    assert many < 0.25  # the integrand is heavy-tailed near alpha = 0: 0.05-0.19 over seeds 1..6
    assert many < 0.3 * error(16)  # the Monte Carlo error shrinks like 1 / sqrt(n_samples)
    a = _explain(llama, "gradient_shap", n_samples=4, stdevs=0.01, seed=3)
    b = _explain(llama, "gradient_shap", n_samples=4, stdevs=0.01, seed=3)
    c = _explain(llama, "gradient_shap", n_samples=4, stdevs=0.01, seed=4)
    np.testing.assert_array_equal(a.scores, b.scores)
    assert not np.array_equal(a.scores, c.scores)
    assert "convergence_delta" in a.diagnostics


# --------------------------------------------------------------------- hygiene
@pytest.mark.parametrize("method", GRADIENT_METHODS + ["bta", "bta_avg", "lrp"])
def test_gradient_methods_leave_the_model_as_found(llama, method):
    model = llama.model
    frozen = model.model.layers[0].mlp.down_proj.weight
    frozen.requires_grad_(False)
    try:
        flags = {name: p.requires_grad for name, p in model.named_parameters()}
        kw = {"n_steps": 3} if "n_steps" in genattr.registry.get(method).params else {}
        if "n_samples" in genattr.registry.get(method).params:
            kw["n_samples"] = 3
        first = _explain(llama, method, **kw)
        second = _explain(llama, method, **kw)
        np.testing.assert_array_equal(first.token_scores, second.token_scores)  # nothing accumulates
        assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
        assert all(p.grad is None for p in model.parameters())
        assert not our_hooks(model)
        assert not model.training
        assert llama.attn_implementation == "sdpa"
    finally:
        frozen.requires_grad_(True)


def test_every_gradient_method_gives_a_token_matrix_on_every_architecture(lm):
    for method in GRADIENT_METHODS:
        kw = {k: 4 for k in ("n_steps", "n_samples") if k in genattr.registry.get(method).params}
        res = _explain(lm, method, **kw)
        assert res.token_scores.shape == (len(res.target.ids), len(res.features))
        assert np.isfinite(res.token_scores).all()


def test_bad_parameters_raise_typed_errors(llama):
    with pytest.raises(InvalidParameterError, match="n_steps"):
        _explain(llama, "integrated_gradients", n_steps=0)
    with pytest.raises(InvalidParameterError, match="quadrature"):
        _explain(llama, "integrated_gradients", quadrature="riemann_left")
    with pytest.raises(InvalidParameterError, match="n_steps >= 2"):
        _explain(llama, "integrated_gradients", n_steps=1, quadrature="riemann_trapezoid")
    with pytest.raises(InvalidParameterError, match="baselines"):
        _explain(llama, "gradient_shap", baselines="uniform")
    with pytest.raises(InvalidParameterError, match="stdevs"):
        _explain(llama, "smoothgrad", stdevs=-1.0)
    with pytest.raises(InvalidParameterError, match="threshold"):
        _explain(llama, "ig_clipped", threshold=-1.0)
    with pytest.raises(InvalidParameterError, match="max_steps"):
        _explain(llama, "integrated_gradients", max_steps=1)


# --------------------------------------------------------------------- peers
@pytest.mark.bench
@pytest.mark.parametrize("rule", ["gausslegendre", "riemann_trapezoid"])
def test_ig_rows_match_captum_layer_integrated_gradients(lms, rule):
    captum = pytest.importorskip("captum.attr")
    for arch in ("llama", "gpt2"):
        lm = lms[arch]
        res = _explain(
            lm,
            "integrated_gradients",
            level="token",
            n_steps=16,
            quadrature=rule,
            baselines="token",
            mask_token="eos",
        )
        eos = lm.tokenizer.eos_token_id
        llm = captum.LLMGradientAttribution(
            captum.LayerIntegratedGradients(lm.model, lm.model.get_input_embeddings()), lm.tokenizer
        )
        inp = captum.TextTokenInput(PROMPT, lm.tokenizer, baselines=eos)
        assert inp.inp_tensor[0].tolist() == list(res.prompt.input_ids)
        # Captum's baselines live in its interpretable space: 1 keeps a token, 0 puts the baseline token.
        kept = torch.tensor(
            [[int(t == tok) for t, tok in zip(_replaced(res, eos), res.prompt.input_ids, strict=True)]]
        )
        out = llm.attribute(inp, target=torch.tensor(res.target.ids), n_steps=16, method=rule, baselines=kept)
        positions = [f.positions[0] for f in res.features]
        theirs = out.token_attr[:, positions].double().numpy()
        if rule == "riemann_trapezoid":  # Captum's steps are 1/K where the trapezoid rule's are 1/(K-1)
            theirs = theirs * 16 / 15
        np.testing.assert_allclose(res.token_scores, theirs, rtol=1e-3, atol=1e-5 * np.abs(theirs).max())


@pytest.mark.parametrize(
    ("method", "kw"),
    [
        ("integrated_gradients", {"n_steps": 8}),
        ("input_x_gradient", {}),
        ("saliency", {}),
        ("gradient_shap", {"n_samples": 6, "stdevs": 0.01}),
        ("smoothgrad", {"n_samples": 4}),
    ],
)
@pytest.mark.parametrize("objective", ["log_prob", "prob"])
def test_the_sequence_only_path_gives_the_same_sequence_scores_from_plain_backward_passes(
    llama, monkeypatch, method, kw, objective
):
    """token_scores=False: the same scores as the matrix path, without the backward pass batched
    over the target's tokens (which the spy forbids), and no matrix in the result."""
    import genattr.algorithms._embedding as embedding

    full = _explain(llama, method, objective=objective, seed=3, **kw)

    def forbidden(*args, **kwargs):
        raise AssertionError("the batched per-token backward pass ran on the sequence-only path")

    monkeypatch.setattr(embedding, "_batched_gradients", forbidden)
    only = _explain(llama, method, objective=objective, seed=3, token_scores=False, **kw)
    assert only.token_scores is None and only.settings.token_scores is False
    np.testing.assert_allclose(only.scores, full.scores, rtol=1e-4, atol=1e-6 * np.abs(full.scores).max())
    if "convergence_delta" in full.diagnostics:
        assert only.diagnostics["convergence_delta"] == pytest.approx(
            full.diagnostics["convergence_delta"], abs=1e-5
        )
    with pytest.raises(AssertionError, match="sequence-only"):
        _explain(llama, method, objective=objective, seed=3, **kw)  # the matrix path does take it


@pytest.mark.parametrize(
    ("method", "kw"), [("integrated_gradients_avg", {}), ("ig_clipped", {"threshold": 0.05}), ("aieg", {})]
)
def test_methods_whose_score_is_made_of_rows_keep_computing_them(llama, method, kw):
    """IG-AVG averages the rows' magnitudes, clipped IG clips each token's gradient, AIEG
    normalises each row: their sequence scores need the rows, so the matrix is computed and dropped."""
    full = _explain(llama, method, n_steps=8, **kw)
    only = _explain(llama, method, n_steps=8, token_scores=False, **kw)
    assert only.token_scores is None
    np.testing.assert_allclose(only.scores, full.scores, atol=1e-9)
