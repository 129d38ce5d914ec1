"""Cost growth with prompt length on SmolLM2-135M-Instruct (``genattr.load("smollm2")``): time,
tokens processed (forward and backward) and peak memory of four sentence-level methods at prompt
lengths 250, 500, 1,000 and 2,000 tokens, and how close leave-one-out comes to its prefix-reuse floor.

Prompts are built as in bench/needle.py (bench/longctx.py): SST-2 sentences in paragraphs of five,
one needle sentence at half depth, then the question, in SmolLM2's chat template; each is the
shortest such prompt of at least the length asked. The target is fixed, :data:`TARGET` (n tokens
the same at every length). Methods (:data:`RUNS`), each at ``level="sentence"`` (the question's
sentences are features too):

- ``leave_one_out``;
- ``hierarchical``: leave-one-out at ``level="sentence>word"``, ``refine_top=3``;
- ``integrated_gradients``: :data:`IG_STEPS` steps, ``token_scores=False`` (the sequence path:
  one forward row and one backward pass per step), with ``max_batch_tokens`` set to one row so
  that each backward pass holds one path point (at the default 8,192 a backward pass over 8
  rows of 286 tokens peaked at 4.4 GB; over 4 rows of 2,000 it would hold four times a row's
  activations);
- ``gilot``: GiLOT with :data:`GILOT_PARAMS` (small beams and positions: it runs F + 1 beam
  searches), explaining the model's own beams (it takes no target).

Leave-one-out's floor. A row is the m prompt tokens and the first n - 1 target tokens, T = m + n - 1
positions. With perfect prefix reuse (a row's positions before its first removed token are those
of the full row), leave-one-out must run the full row once and, for each feature i, the positions
from its first token s_i on:

    exact floor = T + sum_i (T - s_i)            (bench/longctx.py :func:`loo_floor`)

The issue's formula, m^2/2 + m n, is the same count for token-level leave-one-out over m
features (s_i = i), about; at sentence level, F features, the exact floor is the one to read.
Both are printed beside the tokens leave-one-out processed, with their ratios; for the
hierarchical run the floor is that of both passes (each with its own full row).

Peak memory is the resident peak of each call (``VmHWM``, reset before it; Linux). Rows go to
``--out`` (default bench/results/scale.jsonl), keyed ``<length>|<method>``, and a rerun skips
those already there. Timings on a shared machine are inflated; each row records the load average.

Run from the repository root::

    nice -n 10 python bench/scale.py [--lengths 250,500] [--methods leave_one_out,gilot] [--threads N]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import time
from pathlib import Path

import torch

import genattr
from longctx import Needle, append, build, done_keys, loo_floor, machine, peak_rss_mb, reset_peak_rss, work

OUT = Path(__file__).resolve().parent / "results" / "scale.jsonl"
LENGTHS = (250, 500, 1000, 2000)
NEEDLE = Needle(
    "The password for the blue gate is mango.",
    "Question: What is the password for the blue gate? Answer in a few words.",
    "mango",
)
TARGET = "The password for the blue gate is mango."
IG_STEPS = 8
GILOT_PARAMS = {"num_beams": 3, "n_positions": 3}
RUNS = {
    "leave_one_out": {"method": "leave_one_out", "level": "sentence"},
    "hierarchical": {"method": "leave_one_out", "level": "sentence>word", "refine_top": 3},
    "integrated_gradients": {
        "method": "integrated_gradients",
        "level": "sentence",
        "n_steps": IG_STEPS,
        "token_scores": False,
    },
    "gilot": {"method": "gilot", "level": "sentence", **GILOT_PARAMS},
}


def floors(res, prompt_tokens: int, n: int) -> dict:
    """Leave-one-out's exact prefix-reuse floor (both passes for a hierarchical run) and the issue's
    m^2/2 + m n."""
    T = prompt_tokens + n - 1
    if "hierarchy" in res.extras:
        h = res.extras["hierarchy"]
        coarse = [tuple(span) for span in h["coarse_features"]]
        refined = [coarse[i] for i in h["refined"]]
        fine = [f for f in res.features if any(s <= f.start and f.end <= e for s, e in refined)]
        coarse_starts = [f.positions[0] for f in res.prompt.features(res.settings.level.split(">")[0])]
        exact = loo_floor(T, coarse_starts) + loo_floor(T, [f.positions[0] for f in fine])
    else:
        exact = loo_floor(T, [f.positions[0] for f in res.features])
    return {"floor": exact, "issue_floor": round(prompt_tokens**2 / 2 + prompt_tokens * n)}


def run(lm, length: int, name: str) -> dict:
    case = build(lm.tokenizer, "sst2", length, NEEDLE, 0.5, seed=0)
    spec = dict(RUNS[name])
    method = spec.pop("method")
    target = None if method == "gilot" else TARGET
    budget = lm.max_batch_tokens
    if method == "integrated_gradients":
        lm.max_batch_tokens = len(case.prompt) + len(
            lm.tokenizer(TARGET, add_special_tokens=False)["input_ids"]
        )
    reset_peak_rss()
    start = time.perf_counter()
    try:
        res = genattr.explain(lm, case.prompt, target, method=method, **spec)
        batch_tokens = lm.max_batch_tokens
    finally:
        lm.max_batch_tokens = budget
    wall = time.perf_counter() - start
    row = {
        "key": f"{length}|{name}",
        "length": length,
        "method": name,
        "spec": RUNS[name],
        "prompt_tokens": len(case.prompt),
        "target_tokens": len(res.target.ids),
        "features": len(res.features),
        "wall_seconds": round(wall, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "threads": torch.get_num_threads(),
        "max_batch_tokens": batch_tokens,
        **work(res.diagnostics),
        **machine(),
    }
    if method == "leave_one_out":
        row.update(floors(res, len(case.prompt), len(res.target.ids)))
    return row


def table(rows: list[dict]) -> None:
    print(
        "| prompt tokens | method | features | seconds | forward passes | forward tokens | backward passes "
        "| backward tokens | peak RSS MB | exact floor (ratio) | m^2/2 + m n (ratio) | load |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        floor = f"{r['floor']} ({r['tokens_processed'] / r['floor']:.2f})" if "floor" in r else "-"
        issue = (
            f"{r['issue_floor']} ({r['tokens_processed'] / r['issue_floor']:.2f})" if "floor" in r else "-"
        )
        print(
            f"| {r['prompt_tokens']} | {r['method']} | {r['features']} | {r['wall_seconds']:.1f} | "
            f"{r['forward_passes']} | {r['tokens_processed']} | {r['backward_passes']} | {r['backward_tokens']} | "
            f"{r['peak_rss_mb']:.0f} | {floor} | {issue} | {r['load_avg'][0]} |",
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", default=",".join(map(str, LENGTHS)))
    ap.add_argument("--methods", default=",".join(RUNS), help="comma-separated, from " + ", ".join(RUNS))
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default torch's)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    lengths = [int(x) for x in args.lengths.split(",") if x]
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(RUNS))
    if unknown:
        ap.error(f"unknown methods {unknown}; choose from {', '.join(RUNS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = genattr.load("smollm2")
    done = done_keys(args.out)
    for length in lengths:
        for name in methods:
            key = f"{length}|{name}"
            if key not in done:
                done[key] = run(lm, length, name)
                append(args.out, done[key])
            print(f"{key}: {done[key]['wall_seconds']:.1f} s", flush=True)
    table([done[f"{length}|{name}"] for length in lengths for name in methods])


if __name__ == "__main__":
    main()
