"""Shared helpers for genattr's speed benchmarks: the benchmark model, token-exact texts, timing.

The benchmark model is a random Llama (hidden 256, 4 layers, 4 heads, 1024 positions) with a
4000-token sentencepiece-style tokenizer trained on genattr's synthetic corpus. It is built once
with :func:`genattr.testing.build` into a cache directory and loaded from there with
:func:`genattr.load`; nothing is downloaded.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import transformers

import genattr
from genattr import testing

DEFAULT_CACHE = Path(__file__).resolve().parent / ".cache"
MODEL_SPEC = {
    "hidden": 256,
    "layers": 4,
    "heads": 4,
    "vocab_size": 4000,
    "n_pseudo": 3000,
    "n_sentences": 4000,
    "context": 1024,
}
MODEL_DIR = "llama-h256-l4-v4000"


def model_path(cache: Path = DEFAULT_CACHE) -> Path:
    """The benchmark model's directory under ``cache``, built there on first use."""
    path = Path(cache) / MODEL_DIR
    if not (path / "config.json").exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.parent / ".gitignore").write_text("*\n")
        testing.build("llama", path, **MODEL_SPEC)
    return path


def load_model(cache: Path = DEFAULT_CACHE, **load_kwargs) -> genattr.LanguageModel:
    """Build (once) and load the benchmark model; checks that its tokenizer reached the planned size."""
    transformers.utils.logging.disable_progress_bar()
    lm = genattr.load(model_path(cache), **load_kwargs)
    if len(lm.tokenizer) != MODEL_SPEC["vocab_size"]:
        raise RuntimeError(
            f"the tokenizer has {len(lm.tokenizer)} tokens, not {MODEL_SPEC['vocab_size']}; "
            "raise n_pseudo / n_sentences in MODEL_SPEC."
        )
    return lm


def token_exact_texts(tokenizer, n_prompt: int, n_target: int) -> tuple[str, str]:
    """A prompt of exactly ``n_prompt`` tokens (special tokens included) and a continuation of exactly
    ``n_target`` tokens, cut at word boundaries from the synthetic corpus, such that tokenising
    prompt + continuation gives the prompt's ids followed by the continuation's."""
    words = " ".join(testing.corpus(MODEL_SPEC["n_sentences"], MODEL_SPEC["n_pseudo"])).split(" ")

    def count(text: str, special: bool) -> int:
        return len(tokenizer(text, add_special_tokens=special)["input_ids"])

    for start in range(len(words)):
        end = start + 1
        while end < len(words) and count(" ".join(words[start:end]), True) < n_prompt:
            end += 1
        prompt = " ".join(words[start:end])
        if count(prompt, True) != n_prompt:
            continue
        stop = end + 1
        while stop < len(words) and count(" " + " ".join(words[end:stop]), False) < n_target:
            stop += 1
        target = " " + " ".join(words[end:stop])
        if count(target, False) != n_target:
            continue
        joint = tokenizer(prompt + target)["input_ids"]
        if joint == tokenizer(prompt)["input_ids"] + tokenizer(target, add_special_tokens=False)["input_ids"]:
            return prompt, target
    raise RuntimeError(f"no {n_prompt}-token prompt with a {n_target}-token continuation in the corpus")


@dataclass
class Timing:
    """Wall times in seconds of the repeats of one call (after a warm-up)."""

    times: list[float]

    @property
    def best(self) -> float:
        return min(self.times)

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def time_calls(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, tuple[Timing, object]]:
    """Run every call once untimed (warm-up), then ``repeats`` timed rounds in which each call runs once.

    Interleaving the calls makes background load, if any, fall on all of them alike. Returns each
    call's timing and its last result.
    """
    results = {name: fn() for name, fn in calls.items()}
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            start = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - start)
    return {name: (Timing(times[name]), results[name]) for name in calls}
