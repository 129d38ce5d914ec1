"""Attention methods against oracles: attention probabilities read from the Hugging Face model
directly, rollout's row sums, BTA's token-wise perception recomputed from the hidden states, and
BTA's attention gradient from one backward pass per target token."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pytest
import torch

import genattr
from genattr.algorithms._embedding import forward_hooks
from genattr.algorithms.attention import ValueTap, rollout
from genattr.errors import UnsupportedModelError

from .conftest import our_hooks

PROMPT = "The cat sat on the mat."
TARGET = " and the bird sings"


def _explain(lm, method, **kw):
    return genattr.explain(lm, PROMPT, target=TARGET, method=method, level="token", **kw)


@contextmanager
def _eager(model):
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(before)


def _hf_forward(lm, res, embeds=None):
    """The Hugging Face model called directly (eager attention) on prompt + target[:-1]."""
    ids = torch.tensor([list(res.prompt.input_ids) + list(res.target.ids)[:-1]])
    if embeds is None:
        return lm.model(input_ids=ids, output_attentions=True, output_hidden_states=True)
    target = lm.model.get_input_embeddings()(ids[:, len(res.prompt.input_ids) :])
    return lm.model(inputs_embeds=torch.cat([embeds, target], 1), output_attentions=True)


def _rows(res):
    """Predicting positions and the prompt positions of the (token-level) features."""
    L, n = len(res.prompt.input_ids), len(res.target.ids)
    return torch.arange(n) + L - 1, [f.positions[0] for f in res.features]


def test_net_attention_is_the_mean_attention_probability(lm):
    res = _explain(lm, "attention")
    with torch.no_grad(), _eager(lm.model):
        maps = torch.stack(_hf_forward(lm, res).attentions)[:, 0]  # [layers, heads, T, T]
    rows, cols = _rows(res)
    expected = maps.mean((0, 1))[rows][:, cols].double().numpy()
    np.testing.assert_allclose(res.token_scores, expected, atol=1e-6)
    np.testing.assert_allclose(res.scores, expected.mean(0), atol=1e-6)
    assert (res.token_scores >= 0).all() and (res.token_scores.sum(1) <= 1 + 1e-6).all()


def test_rollout_rows_sum_to_one_and_follow_the_abnar_zuidema_recursion(lm):
    res = _explain(lm, "attention_rollout")
    with torch.no_grad(), _eager(lm.model):
        maps = torch.stack(_hf_forward(lm, res).attentions)[:, 0].float()
    full = rollout(maps)
    torch.testing.assert_close(full.sum(-1), torch.ones(full.shape[0]), atol=1e-5, rtol=0)
    eye = torch.eye(maps.shape[-1])
    torch.testing.assert_close(rollout(maps[:1]), 0.5 * maps[0].mean(0) + 0.5 * eye)
    expected = eye
    for layer in maps:
        expected = (0.5 * layer.mean(0) + 0.5 * eye) @ expected
    rows, cols = _rows(res)
    np.testing.assert_allclose(res.token_scores, expected[rows][:, cols].double().numpy(), atol=1e-6)


@pytest.mark.parametrize("method", ["attention", "attention_rollout", "bta"])
def test_the_default_attention_implementation_is_restored(llama, method):
    ids = genattr.model.Batch.from_ids(llama.tokenizer(PROMPT)["input_ids"])
    before = llama.target_log_probs(ids, [5, 6, 7])
    implementation = llama.attn_implementation
    _explain(llama, method, **({"n_steps": 2} if method == "bta" else {}))
    assert llama.attn_implementation == implementation == "sdpa"
    torch.testing.assert_close(llama.target_log_probs(ids, [5, 6, 7]), before, atol=0, rtol=0)


@torch.no_grad()
def _perception_oracle(lm, res) -> torch.Tensor:
    """P = (I + A~_L) ... (I + A~_1) with A~ = mean_h A diag(||z W_V W_O|| / ||z||), z recomputed as
    the normalised hidden state entering each layer."""
    with _eager(lm.model):
        out = _hf_forward(lm, res)
    T = out.attentions[0].shape[-1]
    P = torch.eye(T)
    for layer_index, maps in enumerate(out.attentions):
        h = out.hidden_states[layer_index][0]
        if hasattr(lm.model, "transformer"):  # GPT-2
            block = lm.model.transformer.h[layer_index]
            z = block.ln_1(h)
            d = z.shape[-1]
            v = block.attn.c_attn(z)[:, 2 * d :]
            through = v @ block.attn.c_proj.weight
        else:
            layer = lm.model.model.layers[layer_index]
            z = layer.input_layernorm(h)
            v = layer.self_attn.v_proj(z)
            heads, kv = lm.model.config.num_attention_heads, lm.model.config.num_key_value_heads
            v = v.view(T, kv, -1).repeat_interleave(heads // kv, 1).reshape(T, -1)
            through = v @ layer.self_attn.o_proj.weight.T
        tilde = maps[0].mean(0) * (through.norm(dim=-1) / z.norm(dim=-1))[None, :]
        P = P + tilde @ P
    return P


def _last_attention_gradient_rows(lm, res, logits: bool = False) -> torch.Tensor:
    """d log p(y_t) / d A^(L) (d z_t(y_t) / d A^(L), the target's logit, with ``logits``) at the
    row predicting y_t, heads kept: one backward pass per token."""
    rows, cols = _rows(res)
    target = list(res.target.ids)
    with _eager(lm.model):
        out = _hf_forward(lm, res)
        scores = out.logits[0].float()
        if not logits:
            scores = scores.log_softmax(-1)
        last = out.attentions[-1]
        grads = []
        for t, row in enumerate(rows.tolist()):
            (g,) = torch.autograd.grad(scores[row, target[t]], last, retain_graph=True)
            grads.append(g[0, :, row, cols])
    return torch.stack(grads).detach()  # [n, heads, F]


def test_bta_equals_its_definition_computed_per_token(lm):
    """With one step (alpha = 1) BTA's row t is P[row_t] * mean_h ReLU(d log p_t / dA^(L)[row_t])
    and its score the sum of the rows."""
    res = _explain(lm, "bta", n_steps=1)
    rows, cols = _rows(res)
    P = _perception_oracle(lm, res)[rows][:, cols]
    grads = _last_attention_gradient_rows(lm, res)
    expected = (P * grads.clamp(min=0).mean(1)).double().numpy()
    np.testing.assert_allclose(res.token_scores, expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())
    np.testing.assert_allclose(res.scores, expected.sum(0), rtol=1e-4, atol=1e-6 * np.abs(expected).max())
    assert (res.token_scores >= 0).all() and res.token_scores.max() > 0


def test_bta_avg_averages_the_rows_of_each_steps_logit(lm):
    """BTA-AVG's row t (one step) is P[row_t] * mean_h ReLU(d z_t(y_t) / dA^(L)[row_t]), the target's
    logit differentiated as in the GiLOT authors' code, and its score the mean of the rows: not
    BTA's score divided by n."""
    res = _explain(lm, "bta_avg", n_steps=1)
    rows, cols = _rows(res)
    P = _perception_oracle(lm, res)[rows][:, cols]
    grads = _last_attention_gradient_rows(lm, res, logits=True)
    expected = (P * grads.clamp(min=0).mean(1)).double().numpy()
    tolerance = {"rtol": 1e-4, "atol": 1e-6 * np.abs(expected).max()}
    np.testing.assert_allclose(res.token_scores, expected, **tolerance)
    np.testing.assert_allclose(res.scores, np.abs(expected).mean(0), **tolerance)
    assert (res.token_scores >= 0).all() and res.token_scores.max() > 0
    bta = _explain(lm, "bta", n_steps=1)
    assert not np.allclose(res.scores, bta.scores / len(res.target.ids), **tolerance)
    assert not np.allclose(res.token_scores, bta.token_scores, **tolerance)
    prob = _explain(lm, "bta_avg", n_steps=1, objective="prob")
    np.testing.assert_allclose(
        prob.token_scores, res.token_scores, rtol=1e-6
    )  # the logit, whatever the objective


def test_bta_integrates_the_attention_gradient_along_the_path(llama):
    """BTA with K steps averages the gradients at k/K e(x) before the ReLU."""
    res = _explain(llama, "bta", n_steps=3)
    rows, cols = _rows(res)
    x = llama.embed(torch.tensor([res.prompt.input_ids])).detach()
    covered = torch.zeros(1, x.shape[1], 1)
    covered[:, cols] = 1
    target = list(res.target.ids)
    total = 0
    with _eager(llama.model):
        for k in (1, 2, 3):
            embeds = x * (1 - covered) + (k / 3) * x * covered
            out = _hf_forward(llama, res, embeds)
            logp = out.logits[0].float().log_softmax(-1)
            picked = logp[rows, torch.tensor(target)].sum()
            (g,) = torch.autograd.grad(picked, out.attentions[-1])
            total = total + g[0][:, rows][:, :, cols].transpose(0, 1)
    P = _perception_oracle(llama, res)[rows][:, cols]
    expected = (P * (total / 3).clamp(min=0).mean(1)).double().numpy()
    np.testing.assert_allclose(res.token_scores, expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())
    assert res.token_scores.shape == (len(target), len(res.features))


def test_bta_needs_known_attention_modules():
    with pytest.raises(UnsupportedModelError, match="v_proj/o_proj"):
        ValueTap(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_bta_refuses_a_model_whose_value_projections_do_not_match_its_attention_maps(llama):
    tap = ValueTap(llama.model)
    tap.records = [(torch.ones(4, 8), torch.ones(4, 8))] * 2
    with pytest.raises(UnsupportedModelError, match="2 value projections for 3 attention maps"):
        tap.perceptions(torch.zeros(3, 1, 4, 4))


def test_forward_hooks_record_while_open_and_are_removed_on_error():
    first, second = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    seen: list[str] = []

    def recorder(name: str):
        return lambda _m, _i, _o: seen.append(name)

    record = {first: recorder("a"), second: recorder("b")}
    with pytest.raises(RuntimeError, match="inside"), forward_hooks(record.items()):
        second(first(torch.ones(2)))
        raise RuntimeError("inside")
    assert seen == ["a", "b"] and not first._forward_hooks and not second._forward_hooks

    def failing():
        yield first, record[first]
        raise RuntimeError("while registering")

    with pytest.raises(RuntimeError, match="registering"), forward_hooks(failing()):
        pass
    assert not first._forward_hooks


def test_bta_leaves_no_hook_when_the_forward_pass_fails(llama, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("forward failed")

    monkeypatch.setattr(llama, "attention_maps", broken)
    with pytest.raises(RuntimeError, match="forward failed"):
        genattr.explain(llama, "The cat sat", target=" down", method="bta", n_steps=2)
    assert not our_hooks(llama.model)
