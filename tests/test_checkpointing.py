"""Activation checkpointing of the decoder layers (``checkpoint_layers``): the same attributions
from a forward pass that keeps only the layers' inputs, and the layers restored afterwards."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import genattr
from genattr.algorithms import lrp_rules
from genattr.errors import UnsupportedModuleError
from genattr.model.backward import checkpointed_layers, decoder_layers
from genattr.testing import tiny_lm

PROMPT = "the cat sat on the mat and looked at the dog"
TARGET = " it was"
CASES = {
    "integrated_gradients": {"n_steps": 6},
    "lrp": {},
    "aieg": {"n_steps": 6},
    "gradient_shap": {"seed": 3},
}


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2", "gemma"])
@pytest.mark.parametrize("method", sorted(CASES))
@pytest.mark.parametrize("token_scores", [True, False])
def test_checkpointed_layers_give_the_same_attribution(arch, method, token_scores):
    lm = tiny_lm(arch, layers=3)
    plain = genattr.explain(lm, PROMPT, TARGET, method=method, token_scores=token_scores, **CASES[method])
    lm.checkpoint_layers = True
    kept = genattr.explain(lm, PROMPT, TARGET, method=method, token_scores=token_scores, **CASES[method])
    np.testing.assert_allclose(kept.scores, plain.scores, rtol=1e-6, atol=1e-9)
    if token_scores:
        np.testing.assert_allclose(kept.token_scores, plain.token_scores, rtol=1e-6, atol=1e-9)
    assert np.abs(plain.scores).max() > 1e-4  # the comparison is not between zeros


def _saved_bytes(lm, method: str) -> int:
    """Bytes of the tensors the forward passes of one explanation save for the backward pass,
    outside a checkpointed layer (whose own saving torch.utils.checkpoint takes over)."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        genattr.explain(lm, PROMPT * 6, TARGET, method=method, token_scores=False, **CASES.get(method, {}))
    return total


@pytest.mark.parametrize("method", ["input_x_gradient", "lrp"])
def test_checkpointed_layers_save_a_fraction_of_the_activations(method):
    lm = tiny_lm("llama", layers=6)
    plain = _saved_bytes(lm, method)
    lm.checkpoint_layers = True
    kept = _saved_bytes(lm, method)
    assert 0 < kept < plain / 4, (kept, plain)


def test_lrp_without_its_rules_in_the_recomputation_fails(monkeypatch):
    """The recomputed layer must run under the rules again: without them it saves other tensors."""
    lm = tiny_lm("llama")
    lm.checkpoint_layers = True
    monkeypatch.setattr(lrp_rules._Rules, "recompute", lambda self: lrp_rules.nullcontext())
    with pytest.raises(torch.utils.checkpoint.CheckpointError):
        genattr.explain(lm, PROMPT, TARGET, method="lrp", token_scores=False)


def test_the_layers_are_restored_also_after_an_error():
    lm = tiny_lm("llama")
    layers = decoder_layers(lm.model)
    before = [layer.forward for layer in layers]
    with pytest.raises(RuntimeError, match="inside"), checkpointed_layers(lm.model):
        assert all(layer.forward != b for layer, b in zip(layers, before, strict=True))
        raise RuntimeError("inside")
    assert all("forward" not in layer.__dict__ for layer in layers)
    assert [layer.forward for layer in layers] == before


def test_a_model_without_a_list_of_its_layers_is_refused():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2))
    with pytest.raises(UnsupportedModuleError, match="checkpoint_layers=False"), checkpointed_layers(net):
        pass


def test_load_passes_checkpoint_layers_on():
    from genattr.testing import random_model

    model, tokenizer = random_model("llama")
    assert genattr.load(model=model, tokenizer=tokenizer, checkpoint_layers=True).checkpoint_layers
    assert not genattr.load(model=model, tokenizer=tokenizer).checkpoint_layers


def test_a_model_spec_loads_with_checkpoint_layers(tmp_path):
    from genattr.cluster import ModelSpec
    from genattr.testing import build

    path = build("llama", tmp_path)
    assert ModelSpec(str(path), checkpoint_layers=True).load().checkpoint_layers
    assert not ModelSpec(str(path)).load().checkpoint_layers
