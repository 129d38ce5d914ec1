"""Discretized IG beside integrated gradients on the real model SmolLM2-135M-Instruct: seconds (the
anchor search apart), completeness gap, and the correlation of their scores, on the chat prompt
and 16-token greedy answer of bench/real.py, at the same number of steps.

Run from the repository root (single runs; other processes on the machine distort the seconds):

    .venv/bin/python bench/discretized_ig.py [--steps 30] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from scipy.stats import spearmanr

import genattr
from genattr.algorithms.discretized_ig import anchor_paths
from genattr.model import Batch
from real import TARGET_TOKENS, chat_prompt


def correlations(a: np.ndarray, b: np.ndarray) -> str:
    return f"Pearson {np.corrcoef(a.ravel(), b.ravel())[0, 1]:.3f}, Spearman {spearmanr(a.ravel(), b.ravel())[0]:.3f}"


def search_seconds(lm, res, steps: int) -> float:
    """Seconds of the anchor search alone for the distinct feature tokens of ``res``'s prompt."""
    tokens = torch.tensor(sorted({res.prompt.input_ids[t] for f in res.features for t in f.positions}))
    base = lm.embed(torch.tensor([[lm.tokenizer.eos_token_id]]))[0].detach().float().expand(len(tokens), -1)
    started = time.perf_counter()
    anchor_paths(lm, tokens, base, steps, 500, "greedy", 4096, lm.tokenizer.eos_token_id)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = genattr.load("smollm2")
    _, prompt = chat_prompt(lm)
    answer = list(
        lm.generate(Batch.from_ids(prompt.input_ids), TARGET_TOKENS, stop_at_eos=False).token_ids[0]
    )
    common = {"target": answer, "level": "word", "mask_token": "eos"}
    runs = {
        "integrated_gradients": {"n_steps": args.steps},
        "integrated_gradients trapezoid": {"n_steps": args.steps + 2, "quadrature": "riemann_trapezoid"},
        "discretized_ig": {"n_steps": args.steps},
        "discretized_ig trapezoid": {"n_steps": args.steps, "quadrature": "riemann_trapezoid"},
    }
    results = {}
    print(f"prompt {len(prompt)} tokens, answer {len(answer)} tokens, {torch.get_num_threads()} threads")
    print("| run | parameters | seconds | relative completeness gap |\n|---|---|---|---|")
    for name, params in runs.items():
        method = name.split()[0]
        res = genattr.explain(lm, prompt, method=method, **common, **params)
        results[name] = res
        d = res.diagnostics
        print(
            f"| {name} | {params} | {d['seconds']:.1f} | {d['relative_convergence_delta']:.1%} |", flush=True
        )
    dig = results["discretized_ig"]
    print(f"\nanchor search alone: {search_seconds(lm, dig, args.steps):.1f} s")
    print(
        f"features: {len(dig.features)}; anchors of the first feature token: {dig.diagnostics['anchors'][0][:8]}"
    )
    for name in ("discretized_ig", "discretized_ig trapezoid"):
        for ig in ("integrated_gradients", "integrated_gradients trapezoid"):
            a, b = results[name], results[ig]
            print(
                f"{name} vs {ig}: scores {correlations(a.scores, b.scores)}; "
                f"matrix {correlations(a.token_scores, b.token_scores)}"
            )
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
