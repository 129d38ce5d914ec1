"""Sliding-window models (Mistral, Gemma, Qwen2 with ``use_sliding_window``): genattr's own attention
masks (hidden tokens, trees of beams) must apply the window the model's own masks apply, and its
caches must keep every key. Oracles: Hugging Face's own masking from a 2-D mask, one call per
sequence, and one call per beam prefix, on prompts several times longer than the window."""

from __future__ import annotations

import pytest
import torch

import genattr
import genattr.model.prefix
from genattr import testing
from genattr.algorithms.gilot.beams import beam_search, score_beam_tree
from genattr.errors import UnsupportedModelError
from genattr.masking import Masker
from genattr.text.prompt import Prompt

from .conftest import WORDS
from .test_model_beams import _naive_tree_marginals

WINDOW = 3
PROMPT = "red cat sat up down dog ran blue"


@pytest.fixture(
    scope="module",
    params=[("sliding_attention", "sliding_attention"), ("sliding_attention", "full_attention")],
)
def sliding_lm(request):
    from transformers import AutoModelForCausalLM

    tokenizer = testing.train_tokenizer("word", [WORDS])
    config = testing.model_config(
        "qwen2", len(tokenizer), hidden=16, layers=2, heads=2, context=64, tokenizer=tokenizer
    )
    config.use_sliding_window, config.sliding_window, config.max_window_layers = True, WINDOW, 0
    config.layer_types = list(request.param)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config)
        model.lm_head.weight.data *= 6.0
    return genattr.load(model=model, tokenizer=tokenizer)


def _leave_one_out(lm, strategy):
    prompt = Prompt.from_text(lm.tokenizer, PROMPT)
    features = prompt.features("word")
    keep = torch.ones(len(features) + 1, len(features), dtype=torch.bool)
    keep[torch.arange(1, len(features) + 1), torch.arange(len(features))] = False
    return Masker(lm, prompt, features, strategy).inputs(keep)


@pytest.mark.parametrize("share", [True, False])
def test_hidden_tokens_under_a_sliding_window_match_the_models_own_masking(sliding_lm, share, monkeypatch):
    lm = sliding_lm
    monkeypatch.setattr(lm, "share_prefix", share)
    monkeypatch.setattr(
        genattr.model.prefix, "PREFILL_CALL_TOKENS", 0
    )  # cut the prefix tree wherever it pays
    inputs = _leave_one_out(lm, "attention")
    target = torch.tensor(lm.tokenizer(" up down yes", add_special_tokens=False)["input_ids"])
    n = len(target)
    assert inputs.length + n > 3 * WINDOW
    ours = lm.target_log_probs(inputs, target)
    ids = torch.cat([inputs.input_ids, target[:-1].expand(len(inputs), -1)], 1)
    visible = torch.cat([inputs.visible, torch.ones(len(inputs), n - 1, dtype=torch.bool)], 1)
    with torch.no_grad():
        logp = lm.model(input_ids=ids, attention_mask=visible.long()).logits[:, -n:].float().log_softmax(-1)
    oracle = logp.gather(-1, target.expand(len(inputs), -1)[:, :, None]).squeeze(-1)
    # A hidden last prompt token still sees itself in genattr (it predicts the first target token),
    # while Hugging Face's 2-D mask hides it from itself too: compare the other rows.
    rows = inputs.visible[:, -1]
    assert int(rows.sum()) >= len(inputs) - 1
    torch.testing.assert_close(ours[rows], oracle[rows], atol=1e-5, rtol=0)


def test_beams_under_a_sliding_window_match_one_call_per_prefix(sliding_lm):
    lm = sliding_lm
    inputs = _leave_one_out(lm, "replace")
    J = 4
    search = beam_search(lm, inputs, num_beams=3, max_new_tokens=J)
    for row in (0, 3):
        tokens, parents = (
            search.extras["beam_tokens"][row, : J - 1],
            search.extras["beam_parents"][row, : J - 1],
        )
        marginals, mass = _naive_tree_marginals(lm, inputs.input_ids[row].tolist(), tokens, parents)
        torch.testing.assert_close(search.marginals[row].double(), marginals, atol=1e-5, rtol=0)
        torch.testing.assert_close(search.mass[row].double(), mass, atol=1e-6, rtol=1e-4)
        scored = score_beam_tree(lm, inputs.rows(slice(row, row + 1)), tokens, parents)
        torch.testing.assert_close(scored.marginals[0].double(), marginals, atol=1e-5, rtol=0)


def test_layers_of_other_kinds_are_refused_only_where_genattr_builds_masks():
    """A model declaring chunked-attention layers: genattr cannot reproduce that pattern in its own
    masks, so hiding tokens is refused with a typed error, while replacing them (the model's own
    masks) still works."""
    from transformers import AutoModelForCausalLM

    tokenizer = testing.train_tokenizer("word", [WORDS])
    config = testing.model_config(
        "llama", len(tokenizer), hidden=16, layers=2, heads=2, context=64, tokenizer=tokenizer
    )
    config.layer_types = ["chunked_attention", "full_attention"]
    lm = genattr.load(model=AutoModelForCausalLM.from_config(config), tokenizer=tokenizer)
    with pytest.raises(UnsupportedModelError, match="chunked_attention.*mask='replace'"):
        genattr.explain(lm, PROMPT, target=" up", method="leave_one_out", mask="attention")
    res = genattr.explain(lm, PROMPT, target=" up", method="leave_one_out", mask="replace")
    assert len(res.scores) == len(PROMPT.split())
