"""genattr's calls into transformers: the key/value cache under the name the installed release
expects (``cache`` from 5.24, ``past_key_values`` before), and no deprecation of ours reaching a
user."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import pytest
import torch
from transformers.utils import logging as hf_logging

from genattr.algorithms.gilot.beams import beam_search
from genattr.masking import Masker
from genattr.model import Batch, LanguageModel, returned_cache
from genattr.text.prompt import Prompt

PROMPT = "The cat sat on the mat. Then a dog runs!"
TARGET = " and the bird sings"


def _work(lm: LanguageModel):
    """Every code path of LanguageModel that passes or reads a cache."""
    prompt = Prompt.from_text(lm.tokenizer, PROMPT)
    features = prompt.features("word")
    variants = Masker(lm, prompt, features, "attention").inputs(~torch.eye(len(features), dtype=torch.bool))
    target = lm.tokenizer(TARGET, add_special_tokens=False)["input_ids"]
    return (
        lm.target_log_probs(variants, target),  # shared prefixes: caches gathered and extended
        lm.generate(Batch.from_ids(prompt.input_ids), 5).token_ids,
        beam_search(lm, Batch.from_ids(prompt.input_ids), 3, 3).marginals,
    )


@pytest.fixture
def hf_warnings():
    """A function listing every Python warning and every transformers log record raised so far in
    the test, with transformers' verbosity at 'warning' and its warn-once memory cleared. The
    Python warnings are passed on when the test ends, so that none is silenced."""
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler, level = Collect(), hf_logging.get_verbosity()
    hf_logging.set_verbosity_warning()
    hf_logging.get_logger().addHandler(handler)
    logging.Logger.warning_once.cache_clear()
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # every warning is seen here, repeats included
            yield lambda: records + [str(w.message) for w in caught]
    finally:
        hf_logging.get_logger().removeHandler(handler)
        hf_logging.set_verbosity(level)
        for w in caught:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)


def test_our_calls_raise_no_cache_deprecation(lm, hf_warnings):
    _work(lm)
    _work(lm)  # the second round runs with caches built by the first's code paths too
    deprecations = [m for m in hf_warnings() if "past_key_values" in m or "cache_params" in m]
    assert deprecations == []


@dataclass
class _OldOutput:
    logits: torch.Tensor
    past_key_values: object = None
    attentions: tuple | None = None


class _OldCacheApi(torch.nn.Module):
    """A causal LM whose forward takes and returns the cache as ``past_key_values`` (transformers
    before 5.24), wrapping a model of the installed release; it records the caches it was given."""

    def __init__(self, inner, tokenizer):
        super().__init__()
        self.inner, self.config, self.generation_config = inner, inner.config, inner.generation_config
        self.caches_given = 0
        self.inner_cache_arg = LanguageModel(inner, tokenizer)._cache_arg

    def get_input_embeddings(self):
        return self.inner.get_input_embeddings()

    def get_output_embeddings(self):
        return self.inner.get_output_embeddings()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, use_cache=None, output_attentions=None, logits_to_keep=0):  # fmt: skip
        self.caches_given += past_key_values is not None
        out = self.inner(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            logits_to_keep=logits_to_keep,
            **{self.inner_cache_arg: past_key_values},
        )
        return _OldOutput(out.logits, returned_cache(out), out.attentions)


def test_a_model_with_the_old_cache_name_gives_the_same_results(llama):
    old = LanguageModel(_OldCacheApi(llama.model, llama.tokenizer), llama.tokenizer)
    assert old._cache_arg == "past_key_values"
    mine, theirs = _work(llama), _work(old)
    assert old.model.caches_given > 0  # the cache really travelled under the old name
    torch.testing.assert_close(theirs[0], mine[0], rtol=0, atol=1e-5)
    assert theirs[1] == mine[1]
    torch.testing.assert_close(theirs[2], mine[2], rtol=0, atol=1e-6)
