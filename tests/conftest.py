"""Hermetic fixtures: tiny random models built from configs, tokenizers trained here in a second,
saved to a temporary directory and loaded back through ``genattr.load(path)``."""

from __future__ import annotations

import os

import pytest
import torch

import genattr
from genattr import testing

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
torch.set_num_threads(1)  # tiny models: one thread is as fast, and never oversubscribes a busy machine

ARCHS = ("gpt2", "llama", "qwen2")


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {arch: testing.build(arch, root / arch, seed=0) for arch in ARCHS}


@pytest.fixture(scope="session")
def lms(model_dirs):
    return {arch: genattr.load(path) for arch, path in model_dirs.items()}


@pytest.fixture(params=ARCHS)
def lm(request, lms):
    return lms[request.param]


@pytest.fixture(scope="session")
def llama(lms):
    return lms["llama"]


@pytest.fixture(scope="session")
def qwen(lms):
    return lms["qwen2"]


WORDS = "red blue green cat dog sat ran up down yes"


def word_level_lm(directory, *, layers: int, seed: int) -> genattr.LanguageModel:
    """A Llama over a word-level vocabulary of 15 tokens (the 10 WORDS + 5 specials), saved to
    ``directory`` and loaded back; its head is sharpened so that beams and greedy paths are far
    from ties."""
    from transformers import AutoModelForCausalLM

    tokenizer = testing.train_tokenizer("word", [WORDS])
    config = testing.model_config(
        "llama", len(tokenizer), hidden=16, layers=layers, heads=2, context=64, tokenizer=tokenizer
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
        model.lm_head.weight.data *= 6.0
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return genattr.load(directory)


@pytest.fixture(scope="session")
def word_lm(tmp_path_factory):
    """A two-layer word-level Llama (see :func:`word_level_lm`), for enumeration oracles."""
    return word_level_lm(tmp_path_factory.mktemp("word") / "model", layers=2, seed=3)


def our_hooks(model: torch.nn.Module) -> list:
    """The forward hooks genattr's code left on ``model`` (transformers keeps its own output recorders)."""
    hooks = [h for m in model.modules() for h in m._forward_hooks.values()]
    return [h for h in hooks if getattr(h, "__module__", "").startswith("genattr")]


def naive_log_probs(lm, prompt_ids, target_ids) -> torch.Tensor:
    """Oracle: log p(target | prompt) by calling the Hugging Face model directly, one step per
    target token, no cache, no batching, no genattr code path."""
    ids = list(prompt_ids)
    out = []
    with torch.no_grad():
        for t in target_ids:
            logits = lm.model(input_ids=torch.tensor([ids])).logits[0, -1].float()
            out.append(float(logits.log_softmax(-1)[t]))
            ids.append(int(t))
    return torch.tensor(out)
