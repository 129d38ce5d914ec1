"""Every registered method on the real model SmolLM2-135M-Instruct: seconds, forward passes and
tokens through the model per method, on a chat prompt of about 50 tokens and a 16-token answer.

The prompt is the first of GiLOT's evaluation prompts (data/gilot_prompts) whose chat rendering,
the template's system message included (scaffolding, not features), has 45 to 55 tokens; the
target is the model's own greedy 16-token answer. Step and sample counts are given explicitly
(:data:`PARAMS`); a method that cannot run on this prompt (shapley_exact: too many features) is
listed with the reason.

Run from the repository root (the first run builds the model cache, see `genattr models`):

    .venv/bin/python bench/real.py [--methods a,b,c] [--threads N]

Timings are single runs; other processes on the machine distort them, which the closing
load-average line shows.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

import genattr
from genattr import registry
from genattr.errors import TooManyFeaturesError
from genattr.evaluate.datasets import records
from genattr.model import Batch
from genattr.text.prompt import Prompt

PROMPT_TOKENS, TARGET_TOKENS = (45, 55), 16
PARAMS = {
    "integrated_gradients": {"n_steps": 20},
    "integrated_gradients_avg": {"n_steps": 20},
    "ig_clipped": {"n_steps": 20},
    "aieg": {"n_steps": 20},
    "bta": {"n_steps": 20},
    "bta_avg": {"n_steps": 20},
    "gradient_shap": {"n_samples": 5},
    "smoothgrad": {"n_samples": 10},
    "shapley_sampling": {"n_samples": 25},
    "kernel_shap": {"n_samples": 128},
    "lime": {"n_samples": 128},
    "gilot": {"num_beams": 10, "n_positions": 10},
    "xprompt": {"k": 3, "n_iter": 100},
}


def chat_prompt(lm) -> tuple[list[dict], Prompt]:
    """The first GiLOT prompt whose chat rendering has a length in :data:`PROMPT_TOKENS`."""
    low, high = PROMPT_TOKENS
    for row in records("gilot"):
        messages = [{"role": "user", "content": row["prompt"]}]
        prompt = Prompt.from_messages(lm.tokenizer, messages)
        if low <= len(prompt) <= high:
            return messages, prompt
    raise RuntimeError(f"no GiLOT prompt renders to {low}-{high} tokens")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default="all", help="comma-separated method names, or all")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = registry.names() if args.methods == "all" else args.methods.split(",")
    started = time.perf_counter()
    lm = genattr.load("smollm2")
    print(f"loaded smollm2 in {time.perf_counter() - started:.1f} s, {torch.get_num_threads()} threads")
    messages, prompt = chat_prompt(lm)
    answer = lm.generate(Batch.from_ids(prompt.input_ids), TARGET_TOKENS, stop_at_eos=False).token_ids[0]
    print(
        f"prompt ({len(prompt)} tokens, {len(prompt.features('word'))} word features): {messages[0]['content']!r}"
    )
    print(f"answer ({len(answer)} tokens): {lm.tokenizer.decode(answer)!r}\n")
    print("| method | parameters | seconds | forward passes | tokens processed |\n|---|---|---|---|---|")
    for name in methods:
        params = PARAMS.get(name, {})
        try:
            res = genattr.explain(lm, prompt, target=answer, method=name, level="word", seed=0, **params)
        except TooManyFeaturesError as exc:
            print(f"| `{name}` | {params or '-'} | skipped: {exc} | | |")
            continue
        d = res.diagnostics
        print(
            f"| `{name}` | {params or '-'} | {d['seconds']:.1f} | {d['forward_passes']} | {d['tokens_processed']} |",
            flush=True,
        )
    print(f"\nload average {os.getloadavg()[0]:.1f} over {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
