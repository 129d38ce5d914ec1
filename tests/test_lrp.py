"""AttnLRP (``lrp``) against oracles: conservation with every absorbed share accounted for, on tiny
random Llama, Qwen2, GPT-2 and Gemma models; LRP-epsilon computed by hand on a network of linear
layers and ReLU; the limit epsilon -> 0 (gradient x input); a second, explicit implementation of
the rules (relevance messages layer by layer, no autograd) on a one-layer transformer; typed
errors for what the rules do not cover, the model restored after them; and the method through
``genattr.explain``, each row equal to a plain backward pass of its own target token."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import genattr
from genattr import testing
from genattr.algorithms.lrp_rules import Ledger, attnlrp, epsilon_factor
from genattr.errors import UnsupportedModuleError

from .conftest import naive_log_probs, our_hooks

ARCHS = ("llama", "qwen2", "gpt2", "gemma")
PROMPT = "The doctor opens the door."
TARGET = " and the nurse sings"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny():
    """A tiny random model of each architecture, its biases (GPT-2's, Qwen2's q/k/v) drawn at
    random rather than left at their initial zeros, so that they absorb relevance."""
    models = {}
    for arch in ARCHS:
        lm = testing.tiny_lm(arch)
        with torch.random.fork_rng():
            torch.manual_seed(1)
            for name, p in lm.model.named_parameters():
                if name.endswith("bias"):
                    torch.nn.init.normal_(p, std=0.2)
        models[arch] = lm
    return models


def relevance(lm, ids, position, token, *, logit=False, epsilon=0.0, ledger=None):
    """The rules on a plain Hugging Face call: the relevance of each input position [T] for the
    log-probability (logit) of ``token`` at ``position``, that quantity, and the logits there."""
    x = lm.model.get_input_embeddings()(torch.tensor([ids])).detach().requires_grad_(True)
    with lm.eager_attention(), attnlrp(lm.model, epsilon, ledger):
        logits = lm.model(inputs_embeds=x).logits[0, position].float()
        out = logits[token] if logit else logits.log_softmax(-1)[token]
        (grad,) = torch.autograd.grad(out, x)
    return (x.detach() * grad).sum(-1)[0].double(), float(out.detach()), logits.detach().double()


def _ids(lm, text=PROMPT + TARGET):
    return lm.tokenizer(text)["input_ids"]


# --------------------------------------------------------------------- conservation
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("logit", [False, True])
def test_relevance_plus_what_the_rules_absorb_is_the_explained_output(tiny, arch, logit):
    """sum_i R_i + absorbed = F to float32 rounding (1e-6 of the largest term), while sum_i R_i
    alone misses F by more than 1e-3: the ledger's shares are real. The uniform, identity (RMSNorm,
    activations) rules absorb nothing; log-softmax absorbs -H(p) exactly; the softmax rule
    absorbs something on every architecture; linear layers absorb only where there are biases."""
    lm = tiny[arch]
    ids = _ids(lm)
    ledger = Ledger()
    R, F, logits = relevance(lm, ids, len(ids) - 1, 17, logit=logit, ledger=ledger)
    a = ledger.absorbed
    scale = max(1.0, abs(F), *(abs(v) for v in a.values()))
    assert abs(R.sum().item() + ledger.total - F) < 1e-6 * scale
    assert abs(R.sum().item() - F) > 1e-3
    for kind in ("product", "activation") + (("normalisation",) if arch != "gpt2" else ()):
        assert abs(a.get(kind, 0.0)) < 1e-6 * scale, kind
    assert abs(a["softmax"]) > 1e-4
    if arch in ("llama", "gemma"):  # no biases, epsilon 0
        assert abs(a["linear"]) < 1e-6 * scale
    else:
        assert abs(a["linear"]) > 1e-3
    entropy = -(logits.softmax(-1) * logits.log_softmax(-1)).sum().item()
    if logit:
        assert "log_softmax" not in a
    else:
        assert a["log_softmax"] == pytest.approx(-entropy, rel=1e-5)
    if arch == "gpt2":  # the position embeddings and LayerNorm's bias
        assert abs(a["constant"]) > 1e-3 and abs(a["normalisation"]) > 1e-3


@pytest.mark.parametrize("arch", ARCHS)
def test_the_rules_leave_the_forward_values_as_they_are(tiny, arch):
    lm = tiny[arch]
    ids = torch.tensor([_ids(lm)])
    x = lm.model.get_input_embeddings()(ids).detach()
    with lm.eager_attention(), torch.no_grad():
        plain = lm.model(inputs_embeds=x).logits
    with lm.eager_attention(), attnlrp(lm.model, 1e-3):
        ruled = lm.model(inputs_embeds=x.clone().requires_grad_(True)).logits
    torch.testing.assert_close(ruled.detach(), plain, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------- LRP-epsilon by hand
def _linear_rule(x, weight, z, R, epsilon):
    """R_i = x_i sum_j w_ji R_j / (z_j + epsilon sign z_j), weight [out, in] (nn.Linear's)."""
    return x * ((R / (z + epsilon * torch.where(z >= 0, 1.0, -1.0).double())) @ weight)


def _mlp(bias: bool, seed: int = 0) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Linear(5, 7, bias=bias), torch.nn.ReLU(), torch.nn.Linear(7, 3, bias=bias)
    ).double()
    if bias:
        for layer in (net[0], net[2]):
            torch.nn.init.normal_(layer.bias, std=0.5)
    return net


def test_lrp_epsilon_on_linear_layers_and_relu_equals_the_hand_propagation():
    net, epsilon = _mlp(bias=True), 0.3
    x = torch.randn(4, 5, dtype=torch.float64)
    net.requires_grad_(False)
    z1 = x @ net[0].weight.T + net[0].bias
    a1 = z1.clamp(min=0)
    z2 = a1 @ net[2].weight.T + net[2].bias
    R2 = torch.zeros_like(z2)
    R2[:, 1] = z2[:, 1]  # relevance of output 1: its value
    R1 = _linear_rule(a1, net[2].weight, z2, R2, epsilon)  # the ReLU passes it on
    R0 = _linear_rule(x, net[0].weight, z1, R1, epsilon)
    absorbed = (R2.sum() - R1.sum()) + (R1.sum() - R0.sum())
    ledger = Ledger()
    xs = x.clone().requires_grad_(True)
    with attnlrp(net, epsilon, ledger):
        out = net(xs)[:, 1]
        (grad,) = torch.autograd.grad(out.sum(), xs)
    torch.testing.assert_close(xs.detach() * grad, R0, rtol=1e-10, atol=1e-12)
    assert ledger.absorbed["linear"] == pytest.approx(float(absorbed), rel=1e-9)
    assert abs(float(absorbed)) > 1e-2  # the biases and epsilon absorb: the check has teeth


def test_lrp_epsilon_tends_to_gradient_x_input_as_epsilon_tends_to_zero():
    net = _mlp(bias=False, seed=1)
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    (plain,) = torch.autograd.grad(net(x)[:, 0].sum(), x)
    gxi = (x * plain).detach()
    errors = []
    for epsilon in (1e-1, 1e-3, 1e-5, 1e-8, 0.0):
        with attnlrp(net, epsilon):
            (grad,) = torch.autograd.grad(net(x)[:, 0].sum(), x)
        errors.append(float((x.detach() * grad - gxi).abs().max() / gxi.abs().max()))
    assert errors[0] > 1e-3 and errors[0] > errors[1] > errors[2] > errors[3] and errors[3] < 1e-6
    assert errors[4] == 0.0


def test_epsilon_factor_by_hand():
    z = torch.tensor([2.0, -2.0, 0.0])
    torch.testing.assert_close(epsilon_factor(z, 0.5), torch.tensor([0.8, 0.8, 0.0]))


# --------------------------------------------------------------------- a second implementation
class TinyRMSNorm(torch.nn.Module):
    """RMS normalisation written out as Hugging Face models write it."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(1 + 0.3 * torch.randn(d, dtype=torch.float64))

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))


class OneLayer(torch.nn.Module):
    """A one-layer, one-head transformer with a gated MLP: x [T, d] -> logits [T, V]."""

    def __init__(self, d: int = 6, hidden: int = 8, vocab: int = 5) -> None:
        super().__init__()
        torch.manual_seed(3)

        def linear(i: int, o: int) -> torch.nn.Linear:
            return torch.nn.Linear(i, o, bias=False).double()

        self.q, self.k, self.v, self.o = (linear(d, d) for _ in range(4))
        self.gate, self.up, self.down, self.head = (
            linear(d, hidden),
            linear(d, hidden),
            linear(hidden, d),
            linear(d, vocab),
        )
        self.norms = torch.nn.ModuleList(TinyRMSNorm(d) for _ in range(3))
        self.act = torch.nn.SiLU()

    def forward(self, x):
        n1 = self.norms[0](x)
        scores = (self.q(n1) @ self.k(n1).T) * x.shape[1] ** -0.5 + self.mask(x.shape[0])
        h1 = x + self.o(torch.softmax(scores, -1) @ self.v(n1))
        n2 = self.norms[1](h1)
        h2 = h1 + self.down(self.act(self.gate(n2)) * self.up(n2))
        return self.head(self.norms[2](h2))

    @staticmethod
    def mask(T: int) -> torch.Tensor:
        return torch.full((T, T), -1e9, dtype=torch.float64).triu(1)


def explicit_attnlrp(m: OneLayer, x: torch.Tensor, c: int, epsilon: float, logit: bool) -> torch.Tensor:
    """The AttnLRP rules as relevance messages, layer by layer: the relevance of each position of
    x for the logit (or log-probability) of token c at the last position."""
    W = {
        name: getattr(m, name).weight.detach() for name in ("q", "k", "v", "o", "gate", "up", "down", "head")
    }
    with torch.no_grad():
        n1 = m.norms[0](x)
        q, k, v = n1 @ W["q"].T, n1 @ W["k"].T, n1 @ W["v"].T
        raw = q @ k.T * x.shape[1] ** -0.5
        S = raw + m.mask(x.shape[0])
        P = torch.softmax(S, -1)
        o = P @ v
        a = o @ W["o"].T
        h1 = x + a
        n2 = m.norms[1](h1)
        g, u = n2 @ W["gate"].T, n2 @ W["up"].T
        act = torch.nn.functional.silu(g)
        p = act * u
        mlp = p @ W["down"].T
        h2 = h1 + mlp
        n3 = m.norms[2](h2)
        z = n3 @ W["head"].T
    R_z = torch.zeros_like(z)
    if logit:
        R_z[-1, c] = z[-1, c]
    else:  # first-order rule at log-softmax: R(z_k) = z_k (delta_kc - p_k) for R(log p_c) = log p_c
        R_z[-1] = z[-1] * (
            torch.nn.functional.one_hot(torch.tensor(c), z.shape[1]) - torch.softmax(z[-1], -1)
        )
    R_h2 = _linear_rule(n3, W["head"], z, R_z, epsilon)  # identity rule through the norm
    R_h1, R_mlp = h1 * R_h2 / h2, mlp * R_h2 / h2  # the residual sum: in proportion
    R_p = _linear_rule(p, W["down"], mlp, R_mlp, epsilon)
    R_act, R_u = R_p / 2, R_p / 2  # uniform rule
    R_n2 = _linear_rule(n2, W["gate"], g, R_act, epsilon) + _linear_rule(n2, W["up"], u, R_u, epsilon)
    R_h1 = R_h1 + R_n2
    R_x, R_a = x * R_h1 / h1, a * R_h1 / h1
    R_o = _linear_rule(o, W["o"], a, R_a, epsilon)
    terms = P[:, :, None] * v[None] * (R_o / o)[:, None, :]  # [t, s, e]: o_te = sum_s P_ts v_se
    R_P, R_v = terms.sum(-1) / 2, terms.sum(0) / 2
    R_S = S * (R_P - P * R_P.sum(-1, keepdim=True))  # the softmax rule; 0 where masked
    R_raw = torch.where(m.mask(x.shape[0]) == 0, R_S, 0.0)  # the mask (0 where visible) absorbs nothing
    terms = q[:, None, :] * k[None] * x.shape[1] ** -0.5 * (R_raw / raw)[:, :, None]  # [t, s, a]
    R_q, R_k = terms.sum(1) / 2, terms.sum(0) / 2
    R_n1 = sum(
        _linear_rule(n1, W[name], t, R, epsilon)
        for name, t, R in (("q", q, R_q), ("k", k, R_k), ("v", v, R_v))
    )
    return (R_x + R_n1).sum(-1)


@pytest.mark.parametrize("logit", [True, False])
@pytest.mark.parametrize("epsilon", [0.0, 0.05])
def test_the_rules_equal_an_explicit_layer_by_layer_propagation(logit, epsilon):
    m = OneLayer()
    x = torch.randn(5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    expected = explicit_attnlrp(m, x, 2, epsilon, logit)
    xs = x.clone().requires_grad_(True)
    with attnlrp(m, epsilon):
        z = m(xs)[-1]
        out = z[2] if logit else z.log_softmax(-1)[2]
        (grad,) = torch.autograd.grad(out, xs)
    torch.testing.assert_close((xs * grad).sum(-1).detach(), expected, rtol=1e-9, atol=1e-12)
    z = m(xs)[-1]
    plain = (xs * torch.autograd.grad(z[2] if logit else z.log_softmax(-1)[2], xs)[0]).sum(-1).detach()
    assert (plain - expected).abs().max() > 1e-3  # the plain gradient is something else


# --------------------------------------------------------------------- what the rules do not cover
def _state(model):
    return {
        "flags": [p.requires_grad for p in model.parameters()],
        "forwards": [name for name, m in model.named_modules() if "forward" in m.__dict__],
        "hooks": our_hooks(model)
        + [
            h
            for m in model.modules()
            for h in m._forward_pre_hooks.values()
            if "genattr" in getattr(h, "__module__", "")
        ],
        "attn": model.config._attn_implementation,
    }


def _gemma2():
    from transformers import AutoModelForCausalLM, Gemma2Config

    tokenizer = testing.train_tokenizer("sentencepiece", testing.corpus())
    config = Gemma2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    return genattr.load(model=AutoModelForCausalLM.from_config(config), tokenizer=tokenizer, device="cpu")


class ScaleNorm(torch.nn.Module):
    """A normalisation of a class the rules do not know: x / ||x|| * g."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.g = torch.nn.Parameter(torch.ones(()))

    def forward(self, x):
        return x / x.norm(dim=-1, keepdim=True) * self.g


def test_soft_capping_raises_naming_its_module_and_leaves_the_model_as_found():
    lm = _gemma2()
    before = _state(lm.model)
    with pytest.raises(
        UnsupportedModuleError, match=r"model\.layers\.0\.self_attn \(Gemma2Attention\) applies 'tanh'"
    ):
        genattr.explain(lm, PROMPT, target=TARGET, method="lrp")
    assert _state(lm.model) == before and not before["forwards"] and not before["hooks"]


def test_an_unknown_normalisation_raises_naming_it_and_the_model_is_restored(tiny):
    lm = tiny["llama"]
    layer = lm.model.model.layers[0]
    original = layer.input_layernorm
    reference = genattr.explain(lm, PROMPT, target=TARGET, method="input_x_gradient")
    layer.input_layernorm = ScaleNorm(32)
    try:
        before = _state(lm.model)
        assert before["attn"] == "sdpa"
        with pytest.raises(UnsupportedModuleError, match=r"input_layernorm \(ScaleNorm\) applies 'norm'"):
            genattr.explain(lm, PROMPT, target=TARGET, method="lrp")
        assert _state(lm.model) == before
    finally:
        layer.input_layernorm = original
    again = genattr.explain(lm, PROMPT, target=TARGET, method="input_x_gradient")
    np.testing.assert_array_equal(again.token_scores, reference.token_scores)


def test_an_rms_norm_with_a_bias_is_refused_before_anything_runs():
    class BiasedRMSNorm(TinyRMSNorm):
        def __init__(self, d: int) -> None:
            super().__init__(d)
            self.bias = torch.nn.Parameter(torch.zeros(d, dtype=torch.float64))

    net = torch.nn.Sequential(torch.nn.Linear(6, 6).double(), BiasedRMSNorm(6))
    with (
        pytest.raises(
            UnsupportedModuleError, match=r"1 \(BiasedRMSNorm\) is an RMS normalisation with a bias"
        ),
        attnlrp(net),
    ):
        pass
    assert "forward" not in net[1].__dict__ and all(p.requires_grad for p in net.parameters())


# --------------------------------------------------------------------- the method
@pytest.mark.parametrize("arch", ARCHS)
def test_each_row_of_the_matrix_is_its_target_tokens_own_propagation(tiny, arch):
    """The rows come from one backward pass batched over the target tokens; each must equal a
    plain backward pass of its own token's log-probability, summed over each feature's positions;
    the scores are the rows' sum, and the sequence-only path gives the same scores."""
    lm = tiny[arch]
    res = genattr.explain(lm, PROMPT, target=TARGET, method="lrp", epsilon=1e-3)
    ids = [*res.prompt.input_ids, *res.target.ids[:-1]]
    n, L = len(res.target.ids), len(res.prompt.input_ids)
    assert res.token_scores.shape == (n, len(res.features))
    rows = []
    for t, token in enumerate(res.target.ids):
        R = relevance(lm, ids, L - 1 + t, token, epsilon=1e-3)[0]
        rows.append([R[list(f.positions)].sum().item() for f in res.features])
        assert res.diagnostics["relevance_total"][t] == pytest.approx(R.sum().item(), rel=1e-4, abs=1e-7)
    np.testing.assert_allclose(res.token_scores, rows, rtol=1e-4, atol=1e-6 * np.abs(rows).max())
    np.testing.assert_allclose(res.scores, res.token_scores.sum(0), atol=1e-12)
    only = genattr.explain(lm, PROMPT, target=TARGET, method="lrp", epsilon=1e-3, token_scores=False)
    assert only.token_scores is None
    np.testing.assert_allclose(only.scores, res.scores, rtol=1e-5, atol=1e-7 * np.abs(res.scores).max())


def test_a_budget_below_one_rows_outputs_splits_the_backward_pass_into_groups(tiny, monkeypatch):
    """Memory bounded: under a budget of two outputs' worth of tokens, the backward pass from the
    head's input runs in ceil(n / 2) groups, and the matrix is the same."""
    lm = tiny["llama"]
    whole = genattr.explain(lm, PROMPT, target=TARGET, method="lrp")
    n, T = len(whole.target.ids), len(whole.prompt.input_ids) + len(whole.target.ids) - 1
    assert whole.diagnostics["backward_passes"] == 2  # the head, then every token at once
    assert whole.diagnostics["backward_tokens"] == n + T * n
    monkeypatch.setattr(lm, "max_batch_tokens", 2 * T)
    grouped = genattr.explain(lm, PROMPT, target=TARGET, method="lrp")
    assert grouped.diagnostics["backward_passes"] == 1 + -(-n // 2)
    assert grouped.diagnostics["backward_tokens"] == whole.diagnostics["backward_tokens"]
    np.testing.assert_allclose(grouped.token_scores, whole.token_scores, rtol=1e-5, atol=1e-9)


def test_prob_rows_are_the_log_prob_rows_times_p_and_logit_rows_start_at_the_logit(tiny):
    lm = tiny["qwen2"]
    log = genattr.explain(lm, PROMPT, target=TARGET, method="lrp")
    prob = genattr.explain(lm, PROMPT, target=TARGET, method="lrp", objective="prob")
    p = naive_log_probs(lm, log.prompt.input_ids, log.target.ids).exp().double().numpy()
    np.testing.assert_allclose(prob.token_scores, log.token_scores * p[:, None], rtol=1e-4, atol=1e-12)
    logit = genattr.explain(lm, PROMPT, target=TARGET, method="lrp", from_logit=True, epsilon=0.0)
    ids = [*log.prompt.input_ids, *log.target.ids[:-1]]
    L = len(log.prompt.input_ids)
    R = relevance(lm, ids, L, log.target.ids[1], logit=True)[0]
    np.testing.assert_allclose(
        logit.token_scores[1], [R[list(f.positions)].sum() for f in log.features], rtol=1e-4
    )
    assert not np.allclose(logit.token_scores, log.token_scores, rtol=0.1)


def test_word_features_sum_their_tokens(tiny):
    lm = tiny["gpt2"]
    text = "Pseudowords like zorbington confuse tokenizers."
    tokens = genattr.explain(lm, text, target=TARGET, method="lrp", level="token")
    words = genattr.explain(lm, text, target=TARGET, method="lrp", level="word")
    assert len(words.features) < len(tokens.features)
    for word in words.features:
        inside = [f.index for f in tokens.features if set(f.positions) <= set(word.positions)]
        np.testing.assert_allclose(
            words.token_scores[:, word.index], tokens.token_scores[:, inside].sum(1), rtol=1e-5, atol=1e-9
        )


# --------------------------------------------------------------------- the reference implementation
@pytest.mark.bench
def test_the_rules_agree_with_lxt_on_tiny_models():
    """LXT (the paper's code), patched into the model classes in a process of its own (its patches
    are global and permanent), against ``attnlrp`` with epsilon 0 on the logit (see bench/lrp.py)."""
    pytest.importorskip("lxt")
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "lrp.py"), "--tiny"],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )  # fmt: skip
    rows = [line.split() for line in out.stdout.splitlines() if line.startswith("tiny ")]
    assert [r[1] for r in rows] == ["llama", "qwen2", "gpt2"]
    for row in rows:
        assert float(row[2]) < 1e-6  # largest |difference| relative to the largest |relevance|
