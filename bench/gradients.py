"""Speed benchmark: genattr's integrated-gradients per-token matrix against Captum and Inseq.

Same model and inputs as bench/perturbation.py (bench/common.py's Llama, a 64-token prompt, BOS
included, explaining a 16-token target), one process, one model object given to every library:

* genattr ``integrated_gradients`` (token level, ``baselines="token"`` with baseline token 0 =
  ``<unk>``, 50 Gauss-Legendre steps): one batched forward pass per chunk of steps shared by all
  16 target tokens, and one backward pass per chunk batched over the target tokens; the call
  also scores F(x) and F(x') for the convergence delta;
* Captum ``LLMGradientAttribution(LayerIntegratedGradients(model, embeddings))`` with
  ``TextTokenInput`` (baseline token 0 at every token but BOS, built in bench/peers.py), the
  same 50 Gauss-Legendre steps: it runs one integrated-gradients call (forward and backward over
  all steps) per target token;
* Inseq ``integrated_gradients`` with 50 steps, also one call per generation step (timing only:
  its default baseline is not genattr's, so its values are not compared).

Values: genattr's and Captum's matrices are the same quantity; their largest difference is
printed next to the largest entry.

Times: wall-clock seconds (bench/common.py's interleaved repeats after a warm-up) and the process
CPU seconds of the same calls; on a machine shared with other work, the CPU times are the steadier
measure of the work each library does, the wall times what a user waits.

Run from the repository root (builds the model into bench/.cache/ on first use):

    .venv/bin/python bench/gradients.py [--quick] [--skip-captum] [--skip-inseq] [--n-steps 50]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

import genattr
import peers
from common import DEFAULT_CACHE, load_model, time_calls, token_exact_texts

PROMPT_TOKENS, TARGET_TOKENS = 64, 16
BASELINE_ID = 0  # TextTokenInput's default baseline token
TARGETS = {  # peer run: minimum speed-up asked for
    peers.CAPTUM_IG: 2.0,
    "inseq integrated_gradients": 2.0,
}
OURS = "genattr integrated_gradients"


def cpu_timed(fn, times: list[float]):
    """``fn`` wrapped to append the process CPU seconds of each call to ``times``."""

    def run():
        start = time.process_time()
        out = fn()
        times.append(time.process_time() - start)
        return out

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one timed repeat instead of three")
    parser.add_argument("--skip-captum", action="store_true", help="do not run Captum")
    parser.add_argument("--skip-inseq", action="store_true", help="do not run Inseq")
    parser.add_argument("--n-steps", type=int, default=50, help="integration steps (default 50)")
    parser.add_argument(
        "--cache", type=Path, default=DEFAULT_CACHE, help="where the benchmark model is built"
    )
    args = parser.parse_args()
    peers.quiet()
    repeats = 1 if args.quick else 3
    load_before = os.getloadavg()[0]

    lm = load_model(args.cache)
    prompt, target = token_exact_texts(lm.tokenizer, PROMPT_TOKENS, TARGET_TOKENS)
    prompt_obj = genattr.Prompt.from_text(lm.tokenizer, prompt)
    prompt_ids = list(prompt_obj.input_ids)
    target_ids = lm.tokenizer(target, add_special_tokens=False)["input_ids"]
    print(
        f"model: {lm.name} ({sum(p.numel() for p in lm.model.parameters()) / 1e6:.1f}M parameters, "
        f"vocabulary {len(lm.tokenizer)}), torch threads {torch.get_num_threads()}, prompt "
        f"{len(prompt_ids)} tokens (BOS + {len(prompt_ids) - 1} features), target {len(target_ids)} tokens, "
        f"n_steps {args.n_steps}"
    )

    calls = {
        OURS: lambda: genattr.explain(
            lm,
            prompt,
            target_ids,
            method="integrated_gradients",
            level="token",
            n_steps=args.n_steps,
            baselines="token",
            mask_token=BASELINE_ID,
        )
    }
    if not args.skip_captum:
        calls.update(
            peers.captum_ig_run(lm, prompt_obj, target_ids, baseline=BASELINE_ID, n_steps=args.n_steps)
        )
    if not args.skip_inseq:
        calls.update(
            peers.inseq_runs(
                lm, prompt_obj, target_ids, target, methods=["integrated_gradients"], n_steps=args.n_steps
            )
        )
    cpu: dict[str, list[float]] = {name: [] for name in calls}
    timings = time_calls({name: cpu_timed(fn, cpu[name]) for name, fn in calls.items()}, repeats)
    cpu_best = {name: min(times[1:]) for name, times in cpu.items()}  # the first call is the warm-up

    print(f"\n{'run':<60} {'best s':>9} {'median s':>9} {'best CPU s':>11}  repeats")
    for name, (timing, _) in timings.items():
        print(
            f"{name:<60} {timing.best:>9.3f} {timing.median:>9.3f} {cpu_best[name]:>11.3f}  {len(timing.times)}"
        )
    ours = timings[OURS][1]
    print("\n================================ summary ================================")
    print(f"{'peer / genattr (best times)':<60} {'wall':>7} {'CPU':>7} {'target':>7}  met")
    for peer, goal in TARGETS.items():
        if peer in timings:
            ratio = timings[peer][0].best / timings[OURS][0].best
            cpu_ratio = cpu_best[peer] / cpu_best[OURS]
            met = "yes" if min(ratio, cpu_ratio) >= goal else "NO"
            print(f"{peer:<60} {ratio:>6.1f}x {cpu_ratio:>6.1f}x {'>= ' + format(goal, 'g') + 'x':>7}  {met}")
    if not args.skip_captum:
        theirs = timings[peers.CAPTUM_IG][1].token_attr
        gap = np.abs(ours.token_scores - theirs.double().numpy()).max()
        print(
            f"genattr vs Captum per-token matrix: max |diff| {gap:.2e}; entries range up to "
            f"{np.abs(ours.token_scores).max():.3e}"
        )
    print(
        f"genattr: {ours.diagnostics['forward_passes']} forward passes per call (max_batch_tokens="
        f"{lm.max_batch_tokens}), relative convergence delta {ours.diagnostics['relative_convergence_delta']:.1e}"
    )
    print(
        f"load average: {load_before:.2f} before, {os.getloadavg()[0]:.2f} after, on {os.cpu_count()} CPUs "
        "(a load above the benchmark's own threads means other processes shared the CPUs)"
    )


if __name__ == "__main__":
    main()
