"""Greedy decoding of many prompt rows at once, with a key/value cache."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..errors import InvalidParameterError
from .batch import Batch
from .prefix import returned_cache

if TYPE_CHECKING:
    from .language_model import LanguageModel


@dataclass
class Generation:
    """Greedy continuations: token ids (EOS excluded), their log-probabilities, and whether EOS ended them."""

    token_ids: list[list[int]]
    log_probs: list[list[float]]
    stopped: list[bool]


@torch.no_grad()
def generate(
    lm: LanguageModel, inputs: Batch, max_new_tokens: int, *, stop_at_eos: bool = True
) -> Generation:
    """Greedy continuation of every row (KV cache; stops at EOS or after ``max_new_tokens``)."""
    if max_new_tokens < 1:
        raise InvalidParameterError(f"max_new_tokens must be at least 1, got {max_new_tokens}.")
    lm.check_length(inputs.length + max_new_tokens, "prompt + max_new_tokens")
    eos = set(lm.eos_ids) if stop_at_eos else set()
    tokens: list[list[int]] = []
    log_probs: list[list[float]] = []
    stopped: list[bool] = []
    seqs: list[list[int]]
    lps: list[list[float]]
    for sl in lm.chunks(len(inputs), inputs.length + max_new_tokens):
        rows = inputs.rows(sl)
        r = len(rows)
        logits, past = lm.prefill(rows)
        visible, last_pos = rows.visible, rows.positions[:, -1]
        seqs, lps, done = [[] for _ in range(r)], [[] for _ in range(r)], [False] * r
        for step in range(max_new_tokens):
            logp = logits.float().log_softmax(-1).cpu()
            best = logp.argmax(-1)
            for i in range(r):
                if done[i]:
                    continue
                tok = int(best[i])
                if tok in eos:
                    done[i] = True
                    continue
                seqs[i].append(tok)
                lps[i].append(float(logp[i, tok]))
            if all(done) or step == max_new_tokens - 1:
                break
            visible = torch.cat([visible, torch.ones(r, 1, dtype=torch.bool)], 1)
            out = lm.forward(
                input_ids=best[:, None],
                visible=visible,
                positions=(last_pos + step + 1)[:, None],
                cache=past,
                use_cache=True,
                logits_to_keep=1,
            )
            logits, past = out.logits[:, -1], returned_cache(out)
        tokens += seqs
        log_probs += lps
        stopped += done
    return Generation(tokens, log_probs, stopped)
