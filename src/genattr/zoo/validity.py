"""Checks that the zoo's ground truth is real for a model: accuracy and interventions.

* :func:`accuracy`: held-out greedy accuracy per task (for ``story``: the share of examples
  whose generated words all stay in the topic's cluster).
* :func:`intervention_drops`: the drop in the answer's log-probability when the ground-truth
  words are removed, beside the drop when as many randomly chosen other words are removed.
"""

from __future__ import annotations

import random

import torch

from ..errors import UnsupportedModelError
from ..masking import Masker
from ..model import Batch, LanguageModel
from ..protocols import token_strings
from ..text.prompt import Prompt
from .tasks import Example, examples

EVAL_SEED = 12345


def _prompt_ids(lm: LanguageModel, ex: Example) -> list[int]:
    return lm.tokenizer(ex.prompt)["input_ids"]


def generations(lm: LanguageModel, exs: list[Example], max_new_tokens: int = 9) -> list[list[str]]:
    """Greedy continuations (as words, EOS excluded) of every example, in one batched call."""
    pad = lm.tokenizer.pad_token_id
    if pad is None:
        raise UnsupportedModelError(
            "the zoo's checks left-pad the prompts with a pad token, which this tokenizer lacks."
        )
    inputs = Batch.left_padded([_prompt_ids(lm, ex) for ex in exs], pad)
    gen = lm.generate(inputs, max_new_tokens)
    return [token_strings(lm.tokenizer, ids) for ids in gen.token_ids]


def correct(ex: Example, words: list[str]) -> bool:
    if ex.task == "story":
        return bool(words) and all(w in ex.info["cluster"] for w in words)
    return tuple(words) == ex.answer_words


def accuracy(lm: LanguageModel, task: str, n: int = 200, seed: int = EVAL_SEED) -> float:
    exs = examples(task, n, seed)
    outs = generations(lm, exs, max_new_tokens=9 if task == "story" else 2)
    return sum(correct(ex, out) for ex, out in zip(exs, outs, strict=True)) / max(1, n)


def intervention_drops(
    lm: LanguageModel, ex: Example, *, mask: str = "attention", rng: random.Random, n_random: int = 4
) -> tuple[float, float]:
    """(drop when G is removed, mean drop when |G| random non-G words are removed), in nats of
    the expected answer's log-probability."""
    prompt = Prompt.from_text(lm.tokenizer, ex.prompt)
    features = prompt.features("word")
    masker = Masker(lm, prompt, features, mask)
    others = [i for i in range(len(features)) if i not in ex.ground_truth]
    k = min(len(ex.ground_truth), len(others))
    keep = torch.ones(2 + n_random, len(features), dtype=torch.bool)
    keep[1, list(ex.ground_truth)] = False
    for row in range(n_random):
        keep[2 + row, rng.sample(others, k)] = False
    target = lm.tokenizer(ex.answer, add_special_tokens=False)["input_ids"]
    lp = lm.target_log_probs(masker.inputs(keep), target).sum(1)
    return float(lp[0] - lp[1]), float((lp[0] - lp[2:]).mean())
