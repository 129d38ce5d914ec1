"""DeepLIFT against its defining property and hand computations: summation-to-delta
(sum of scores = F(x) - F(x'), the right-hand side from a naive Hugging Face loop) on the zoo
and the tiny transformers, the multipliers of a small network worked out by hand, and each
rule's exact linearisation of its operation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import genattr
from genattr.algorithms import deeplift
from genattr.algorithms.deeplift import DeltaRules, attention, normalise, product, rescale, softmax
from genattr.errors import ConvergenceWarning
from genattr.zoo import TASKS, examples

from .conftest import naive_log_probs

PROMPT = "The cat sat on the mat."
TARGET = " and the bird sings"


@pytest.fixture(scope="module")
def zoo():
    return genattr.load("zoo")


def _gap(lm, res) -> np.ndarray:
    """F_t(x) - F_t(x') per target token (log-probs), x' with every feature token replaced by eos."""
    covered = {t for f in res.features for t in f.positions}
    eos = lm.tokenizer.eos_token_id
    replaced = [eos if i in covered else tok for i, tok in enumerate(res.prompt.input_ids)]
    target = list(res.target.ids)
    full = naive_log_probs(lm, res.prompt.input_ids, target).double()
    return (full - naive_log_probs(lm, replaced, target).double()).numpy()


# --------------------------------------------------------------------- summation-to-delta
@pytest.mark.parametrize("task", TASKS)
def test_summation_to_delta_on_the_zoo(zoo, task):
    """The zoo's answers move by about 11 nats between prompt and reference; the scores must
    account for that move (the Rescale rule at the activations alone gave sums near 0)."""
    ex = examples(task, 1, seed=0)[0]
    res = genattr.explain(zoo, ex.prompt, target=ex.answer, method="deeplift", mask_token="eos")
    gap = _gap(zoo, res)
    assert abs(gap.sum()) > 1.0
    assert abs(res.scores.sum() - gap.sum()) <= 0.05 * abs(gap.sum())
    np.testing.assert_allclose(res.token_scores.sum(1), gap, rtol=0.05, atol=0.05 * np.abs(gap).max())
    assert res.diagnostics["relative_convergence_delta"] <= 0.05
    assert res.diagnostics["unruled_operations"] == []


@pytest.mark.parametrize("baselines", ["token", "zero"])
def test_summation_to_delta_on_tiny_transformers(lm, baselines):
    res = genattr.explain(lm, PROMPT, target=TARGET, method="deeplift", mask_token="eos", baselines=baselines)
    before, after = (np.array(res.diagnostics[k]) for k in ("objective_input", "objective_baseline"))
    gap = before - after
    if baselines == "token":  # the reference's objective from a plain Hugging Face loop
        np.testing.assert_allclose(gap[:-1], _gap(lm, res), atol=1e-4)
    assert abs(res.scores.sum() - gap[-1]) <= 1e-3 * abs(gap[-1])
    np.testing.assert_allclose(res.token_scores.sum(1), gap[:-1], rtol=1e-3, atol=1e-3 * np.abs(gap).max())
    np.testing.assert_allclose(res.token_scores.sum(0), res.scores, atol=1e-9)
    assert res.diagnostics["unruled_operations"] == []
    assert res.diagnostics["converged"]


def test_summation_to_delta_with_eager_attention_and_the_probability_objective(qwen):
    """Eager attention runs matmul, softmax and matmul as separate operations (each ruled); with
    objective='prob' the exp of the log-likelihood gets the Rescale rule too."""
    with qwen.eager_attention():
        res = genattr.explain(qwen, PROMPT, target=TARGET, method="deeplift", mask_token="eos")
    gap = np.array(res.diagnostics["objective_input"]) - np.array(res.diagnostics["objective_baseline"])
    assert abs(res.scores.sum() - gap[-1]) <= 1e-3 * abs(gap[-1])
    prob = genattr.explain(qwen, PROMPT, target=TARGET[:4], method="deeplift", objective="prob")
    gap = np.array(prob.diagnostics["objective_input"]) - np.array(prob.diagnostics["objective_baseline"])
    np.testing.assert_allclose(
        prob.diagnostics["objective_input"][:-1],
        np.exp(naive_log_probs(qwen, prob.prompt.input_ids, list(prob.target.ids)).numpy()),
        rtol=1e-4,
    )
    assert abs(prob.scores.sum() - gap[-1]) <= 1e-3 * abs(gap[-1])
    np.testing.assert_allclose(prob.token_scores.sum(1), gap[:-1], rtol=1e-3, atol=1e-3 * np.abs(gap).max())


def test_an_operation_without_a_rule_is_reported():
    """torch.atan2 of two varying tensors has no DeepLIFT rule: listed, and the gap shows it."""
    torch.manual_seed(0)
    w = torch.randn(2, 4)
    rules = DeltaRules()
    x, ref = torch.randn(4) * 2, torch.randn(4) * 2

    def f(v):
        h = w @ v
        return torch.atan2(h[0], h[1]) * 3

    with rules.reference():
        f_ref = f(ref)
    xg = x.clone().requires_grad_(True)
    with rules.input():
        f_x = f(xg)
    (m,) = torch.autograd.grad(f_x, xg)
    assert rules.unruled == {"atan2": 1}
    assert float(((x - ref) * m).sum()) != pytest.approx(float(f_x.detach() - f_ref), rel=1e-2)


def test_a_missed_summation_to_delta_warns_and_names_the_operations(zoo, monkeypatch):
    """Without its log-softmax rule the zoo model's saturated output keeps its local gradient: the method
    lists the operation and warns that the scores miss F(x) - F(x')."""
    monkeypatch.delitem(deeplift.COMPOSITES, "log_softmax")
    ex = examples("recall", 1, seed=0)[0]
    with pytest.warns(ConvergenceWarning, match="log_softmax"):
        res = genattr.explain(zoo, ex.prompt, target=ex.answer, method="deeplift")
    assert res.diagnostics["unruled_operations"] == ["log_softmax"]
    assert not res.diagnostics["converged"]


# --------------------------------------------------------------------- hand computations
def _multipliers(net, x, ref):
    rules = DeltaRules()
    with rules.reference():
        f_ref = net(ref)
    xg = x.clone().requires_grad_(True)
    with rules.input():
        f_x = net(xg)
    (m,) = torch.autograd.grad(f_x.sum(), xg)
    return m, f_x.detach(), f_ref.detach(), rules


def test_multipliers_of_a_gated_network_equal_the_hand_computed_deeplift():
    """F(x) = w . (tanh(A x + a) * (B x)): the Rescale rule at tanh, s = (tanh(z) - tanh(z')) / (z - z'),
    and the product rule at the gate, d(g u) = (u + u')/2 dg + (g + g')/2 du, give
    m = A^T (s * (u + u')/2 * w) + B^T ((g + g')/2 * w)."""
    torch.manual_seed(0)
    A, a, B, w = (
        torch.randn(5, 4, dtype=torch.float64),
        torch.randn(5, dtype=torch.float64),
        torch.randn(5, 4, dtype=torch.float64),
        torch.randn(5, dtype=torch.float64),
    )

    def net(v):
        return (torch.tanh(A @ v + a) * (B @ v)) @ w

    x, ref = torch.randn(4, dtype=torch.float64) * 2, torch.randn(4, dtype=torch.float64) * 2
    m, f_x, f_ref, rules = _multipliers(net, x, ref)
    z, z_ref = A @ x + a, A @ ref + a
    g, g_ref, u, u_ref = torch.tanh(z), torch.tanh(z_ref), B @ x, B @ ref
    s = (g - g_ref) / (z - z_ref)
    hand = A.T @ (s * (u + u_ref) / 2 * w) + B.T @ ((g + g_ref) / 2 * w)
    np.testing.assert_allclose(m.numpy(), hand.numpy(), rtol=1e-12)
    assert float(((x - ref) * m).sum()) == pytest.approx(float(f_x - f_ref), rel=1e-12)
    assert rules.unruled == {}
    xg = x.clone().requires_grad_(True)
    (plain,) = torch.autograd.grad(net(xg), xg)
    assert float(((x - ref) * plain).sum()) != pytest.approx(float(f_x - f_ref), rel=1e-2)


def test_multipliers_of_an_mlp_with_hugging_face_activations_equal_the_rescale_rule():
    """Linear, GELU (tanh form, as GPT-2 writes it), Linear: one Rescale per GELU unit would be
    the paper's rule; GPT-2's GELU is 0.5 x (1 + tanh(c (x + 0.044715 x^3))), whose parts get the
    rules, and the result still sums exactly to F(x) - F(x')."""
    from transformers.activations import NewGELUActivation

    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(6, 8), NewGELUActivation(), torch.nn.Linear(8, 1)).double()
    x, ref = torch.randn(1, 6, dtype=torch.float64) * 3, torch.randn(1, 6, dtype=torch.float64)
    m, f_x, f_ref, rules = _multipliers(mlp, x, ref)
    assert float(((x - ref) * m).sum()) == pytest.approx(float(f_x - f_ref), rel=1e-10)
    assert rules.unruled == {}
    silu = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.SiLU(), torch.nn.Linear(8, 1)).double()
    m, f_x, f_ref, _ = _multipliers(silu, x, ref)
    W1, b1, W2 = silu[0].weight, silu[0].bias, silu[2].weight
    z, z_ref = x @ W1.T + b1, ref @ W1.T + b1
    s = (torch.nn.functional.silu(z) - torch.nn.functional.silu(z_ref)) / (z - z_ref)
    np.testing.assert_allclose(m.numpy(), ((s * W2) @ W1).detach().numpy(), rtol=1e-10)


# --------------------------------------------------------------------- the rules, one by one
def _linearisation_gap(rule, shapes, scale, dtype=torch.float64, positive=False) -> tuple[float, float]:
    """max |J (z - z') - (y - y')| for a rule's pair (y, y') and the Jacobian J of its multiplier
    graph at z, and max |y - y'|: a rule satisfies summation-to-delta elementwise when the first is 0."""
    gen = torch.Generator().manual_seed(0)
    zs = [torch.randn(s, generator=gen, dtype=dtype) * scale for s in shapes]
    refs = [torch.randn(s, generator=gen, dtype=dtype) * scale for s in shapes]
    if positive:
        zs, refs = [z.abs() + 1e-6 for z in zs], [r.abs() + 1e-6 for r in refs]
    y, y_ref = rule(*zip(zs, refs, strict=True))
    jac = torch.autograd.functional.jacobian(lambda *z: rule(*zip(z, refs, strict=True))[0], tuple(zs))
    lin = sum(j.reshape(y.numel(), -1) @ (z - r).reshape(-1) for j, z, r in zip(jac, zs, refs, strict=True))
    return float((lin - (y - y_ref).reshape(-1)).abs().max()), float((y - y_ref).abs().max())


RULES = {
    "softmax": (lambda p: softmax(*p, -1), [(3, 5)]),
    "log_softmax": (lambda p: softmax(*p, -1, log=True), [(3, 5)]),
    "layer_norm": (lambda p: normalise(*p, (-1,), 1e-5, centre=True), [(3, 5)]),
    "rms_norm": (lambda p: normalise(*p, (-1,), 1e-6, centre=False), [(3, 5)]),
    "matmul": (lambda a, b: product(torch.matmul, *a, *b), [(2, 4, 3), (2, 3, 4)]),
    "attention": (
        lambda q, k, v: attention(q, k, v, torch.ones(4, 4, dtype=torch.bool).tril(), None, 0.5),
        [(2, 4, 3)] * 3,
    ),
}


@pytest.mark.parametrize("name", RULES)
def test_each_rule_is_an_exact_linearisation_of_its_operation(name):
    rule, shapes = RULES[name]
    gap, moved = _linearisation_gap(rule, shapes, scale=3.0)
    assert moved > 0.1
    assert gap <= 1e-12 * max(1.0, moved)


@pytest.mark.parametrize("f", [torch.rsqrt, torch.log, torch.reciprocal, torch.exp])
def test_the_rescale_rule_is_exact_near_zero_in_float32(f):
    """Inputs of order 1e-4 in float32 (a normalisation's variance on a reference near zero),
    where rsqrt, log and 1/z curve sharply and z - z' is below sqrt(eps): the secant is still
    used wherever the two points are told apart, not the local derivative."""
    gap, moved = _linearisation_gap(
        lambda p: rescale(f, *p), [(50,)], scale=1e-4, dtype=torch.float32, positive=True
    )
    assert moved > 1e-4
    assert gap <= 1e-4 * moved


def test_softmax_stays_exact_in_float32_when_the_reference_row_is_dominated_elsewhere():
    """Scores of spread 20: a row whose largest score on the input is far below another on the
    reference. Through e / sum(e), 1 / sum(e) on that side reaches 1e10 and the product rule's two
    terms cancel; through the log-sum-exp every multiplier stays bounded."""
    gap, moved = _linearisation_gap(lambda p: softmax(*p, -1), [(3, 5)], scale=20.0, dtype=torch.float32)
    assert moved > 0.5
    assert gap <= 1e-5
