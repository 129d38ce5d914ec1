"""Speed benchmark: genattr's perturbation methods against Captum and Inseq, on one CPU model.

What is compared (one process, one model object given to every library; see bench/common.py):

* leave-one-out over the 63 maskable tokens of a 64-token prompt (BOS included, never masked),
  explaining a 16-token target: genattr ``leave_one_out`` (token level, ``mask="replace"``,
  baseline token 0 = ``<unk>``, Captum's default baseline) against Captum
  ``LLMAttribution(FeatureAblation)`` with ``TextTokenInput`` (features: every token but BOS; the
  peers' runs are built in bench/peers.py),
  in its default mode (one cached forward pass per target token per variant) and with
  ``forward_in_tokens=False`` (prompt + target in one forward pass per variant), and against
  Inseq ``occlusion`` (timing only: it occludes embeddings with zeros, step by step, and returns
  absolute per-step probability differences, so its values are not the same quantity);
* Shapley value sampling at Captum's default of 25 permutations: genattr ``shapley_sampling``
  (``paired=False``: Captum draws no antithetic pairs)
  against Captum ``LLMAttribution(ShapleyValueSampling)`` with ``forward_in_tokens=False``
  (its default mode would take 16 forward passes per coalition, minutes per call).

Values: both libraries score log p(target | prompt) - log p(target | prompt with token i replaced),
so genattr's leave-one-out must match Captum's ``forward_in_tokens=False`` scores up to float
noise, per sequence and per target token (Captum's FeatureAblation returns f(x) - f(x ablated),
unnormalised: ``seq_attr`` for the summed log-probability, ``token_attr`` per target token; the same
sign and scale as genattr's ``scores`` and ``token_scores``). Shapley estimates differ by sampling
in general, but genattr with ``seed=0`` and Captum after ``torch.manual_seed(0)`` both draw their
permutations as ``torch.randperm(63)`` from a generator seeded 0, i.e. the same ones, so they must
agree too; each library's efficiency (scores sum to v(prompt) - v(all replaced)) is checked as well.

Memory: leave-one-out on a 500-token prompt with genattr's defaults (attention mask, default
``max_batch_tokens``), in a fresh process so that the peak resident memory (VmHWM) is that run's.

Run from the repository root (builds the model into bench/.cache/ on first use):

    .venv/bin/python bench/perturbation.py [--quick] [--skip-captum] [--skip-inseq] [--cache DIR]
                                            [--threads N]

Timings are best-of (and median-of) interleaved repeats; other processes on the machine distort
them, which the closing load-average line shows.
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

import genattr
import peers
from common import DEFAULT_CACHE, load_model, time_calls, token_exact_texts

PROMPT_TOKENS, TARGET_TOKENS = 64, 16
N_SAMPLES = 25  # Captum's default for ShapleyValueSampling
BASELINE_ID = 0  # TextTokenInput's default baseline token
MEMORY_PROMPT_TOKENS, MEMORY_LIMIT_GB = 500, 3.0
TARGETS = {  # (genattr run, peer run): minimum speed-up asked for
    ("genattr leave_one_out", peers.CAPTUM_ABLATION): 20.0,
    ("genattr leave_one_out", peers.CAPTUM_ABLATION_JOINT): 3.0,
    ("genattr leave_one_out", "inseq occlusion"): None,
    ("genattr shapley_sampling", peers.CAPTUM_SHAPLEY): 3.0,
}


@dataclass
class Case:
    """A prompt and target, as text and as the token ids every library must see."""

    lm: genattr.LanguageModel
    prompt: str
    target: str
    prompt_obj: genattr.Prompt
    target_ids: list[int]

    @property
    def prompt_ids(self) -> list[int]:
        return list(self.prompt_obj.input_ids)


def make_case(lm: genattr.LanguageModel, n_prompt: int, n_target: int) -> Case:
    prompt, target = token_exact_texts(lm.tokenizer, n_prompt, n_target)
    prompt_obj = genattr.Prompt.from_text(lm.tokenizer, prompt)
    target_ids = lm.tokenizer(target, add_special_tokens=False)["input_ids"]
    assert (len(prompt_obj), len(target_ids)) == (n_prompt, n_target)
    assert prompt_obj.input_ids[0] == lm.tokenizer.bos_token_id
    assert peers.token_features(prompt_obj) == list(range(1, n_prompt)), "every token but BOS is a feature"
    return Case(lm, prompt, target, prompt_obj, target_ids)


# --------------------------------------------------------------------- the runs
def genattr_calls(case: Case) -> tuple[dict, dict]:
    def explain(method: str, **params):
        return genattr.explain(
            case.lm,
            case.prompt,
            case.target_ids,
            method=method,
            level="token",
            mask="replace",
            mask_token=BASELINE_ID,
            **params,
        )

    loo = {"genattr leave_one_out": lambda: explain("leave_one_out")}
    shapley = {
        "genattr shapley_sampling": lambda: explain(
            "shapley_sampling", n_samples=N_SAMPLES, paired=False, seed=0
        )
    }
    return loo, shapley


def captum_calls(case: Case) -> tuple[dict, dict]:
    runs = peers.captum_perturbation_runs(
        case.lm, case.prompt_obj, case.target_ids, baseline=BASELINE_ID, n_samples=N_SAMPLES
    )
    shapley = {peers.CAPTUM_SHAPLEY: runs.pop(peers.CAPTUM_SHAPLEY)}
    return runs, shapley


def inseq_calls(case: Case) -> dict:
    return peers.inseq_runs(case.lm, case.prompt_obj, case.target_ids, case.target, methods=["occlusion"])


# --------------------------------------------------------------------- value checks
@torch.no_grad()
def log_likelihood(model, prompt_ids: list[int], target_ids: list[int]) -> float:
    """sum_t log p(y_t | prompt, y_<t) by one plain forward pass of the Hugging Face model."""
    ids = torch.tensor([prompt_ids + target_ids])
    logp = model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1].double().log_softmax(-1)
    return float(logp.gather(-1, torch.tensor(target_ids)[:, None]).sum())


def value_lines(case: Case, results: dict) -> list[str]:
    lines = []
    loo = results.get("genattr leave_one_out")
    exact = results.get(peers.CAPTUM_ABLATION_JOINT)
    if loo is not None and exact is not None:
        seq = np.abs(loo.scores - exact.seq_attr.double().numpy()).max()
        tok = np.abs(loo.token_scores - exact.token_attr.double().numpy()).max()
        lines.append(
            f"leave-one-out vs Captum forward_in_tokens=False: max |diff| {seq:.2e} (sequence), "
            f"{tok:.2e} (per target token); scores range up to {np.abs(loo.scores).max():.3f}"
        )
    cached = results.get(peers.CAPTUM_ABLATION)
    if loo is not None and cached is not None:
        seq = np.abs(loo.scores - cached.seq_attr.double().numpy()).max()
        lines.append(
            f"leave-one-out vs Captum default (cached) mode: max |diff| {seq:.2e} "
            "(not a check: that mode's log-probs are known to be off under transformers 5)"
        )
    shapley = results.get("genattr shapley_sampling")
    peer = results.get(peers.CAPTUM_SHAPLEY)
    if shapley is not None:
        empty = case.prompt_ids[:1] + [BASELINE_ID] * (len(case.prompt_ids) - 1)
        delta = log_likelihood(case.lm.model, case.prompt_ids, case.target_ids) - log_likelihood(
            case.lm.model, empty, case.target_ids
        )
        stderr = np.mean(shapley.diagnostics["stderr"])
        lines.append(
            f"shapley efficiency, v(prompt) - v(all replaced) = {delta:.4f}: genattr sum "
            f"{shapley.scores.sum():.4f} (|err| {abs(shapley.scores.sum() - delta):.1e})"
        )
        if peer is not None:
            captum_sum = float(peer.seq_attr.double().sum())
            diff = np.abs(shapley.scores - peer.seq_attr.double().numpy())
            lines.append(f"  Captum sum {captum_sum:.4f} (|err| {abs(captum_sum - delta):.1e})")
            lines.append(
                f"  |genattr - Captum|: mean {diff.mean():.2e}, max {diff.max():.2e} (the same {N_SAMPLES} "
                f"permutations, both seeded 0; others would differ by about the mean stderr, {stderr:.4f})"
            )
    return lines


# --------------------------------------------------------------------- memory
def memory_bytes(field: str) -> int:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident) of this process, in bytes, from /proc (Linux).

    Not ru_maxrss: Linux keeps that across execve, so a spawned child would inherit its parent's peak.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def memory_run(cache: str, threads: int) -> dict:
    """In a fresh process: leave-one-out on a 500-token prompt with genattr's defaults; memory in bytes."""
    torch.set_num_threads(threads)
    lm = load_model(Path(cache))
    case = make_case(lm, MEMORY_PROMPT_TOKENS, TARGET_TOKENS)
    loaded, loaded_peak = memory_bytes("VmRSS"), memory_bytes("VmHWM")
    start = time.perf_counter()
    res = genattr.explain(lm, case.prompt, case.target_ids, method="leave_one_out", level="token")
    return {
        "loaded": loaded,
        "loaded_peak": loaded_peak,
        "peak": memory_bytes("VmHWM"),
        "seconds": time.perf_counter() - start,
        "forward_passes": res.diagnostics["forward_passes"],
        "features": len(res.features),
        "max_batch_tokens": lm.max_batch_tokens,
    }


def measure_memory(cache: Path, threads: int) -> dict:
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(memory_run, str(cache), threads).result()


# --------------------------------------------------------------------- report
def work_lines(case: Case, timings: dict) -> list[str]:
    """Tokens each run puts through the model, and wall time per token: genattr's counted, the
    peers' one forward pass over prompt + target per evaluation (Captum evaluates the prompt once,
    then every ablation, or every coalition of each permutation, with ``forward_in_tokens=False``)."""
    F, T = len(case.prompt_ids) - 1, len(case.prompt_ids) + len(case.target_ids)
    peer_tokens = {
        peers.CAPTUM_ABLATION_JOINT: (1 + F) * T,
        peers.CAPTUM_SHAPLEY: (1 + N_SAMPLES * F) * T,
    }
    lines = ["work (tokens through the model per call; wall time per token):"]
    for name, (timing, result) in timings.items():
        tokens = (
            result.diagnostics["tokens_processed"] if name.startswith("genattr") else peer_tokens.get(name)
        )
        if tokens:
            lines.append(f"  {name:<54} {tokens:>8} tokens  {timing.best / tokens * 1e6:6.1f} us/token")
    return lines


def print_times(timings: dict) -> None:
    print(f"{'run':<56} {'best s':>9} {'median s':>9}  repeats")
    for name, (timing, _) in timings.items():
        print(f"{name:<56} {timing.best:>9.3f} {timing.median:>9.3f}  {len(timing.times)}")


def ratio_lines(timings: dict) -> list[str]:
    lines = [f"{'peer / genattr (best times)':<76} {'ratio':>7} {'target':>7}  met"]
    for (ours, peer), target in TARGETS.items():
        if ours not in timings or peer not in timings:
            continue
        ratio = timings[peer][0].best / timings[ours][0].best
        verdict = "-" if target is None else ("yes" if ratio >= target else "NO")
        target_text = "-" if target is None else f">= {target:g}x"
        lines.append(
            f"{peer + ' / ' + ours.removeprefix('genattr '):<76} {ratio:>6.1f}x {target_text:>7}  {verdict}"
        )
    return lines if len(lines) > 1 else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one timed repeat instead of three")
    parser.add_argument("--skip-captum", action="store_true", help="do not run Captum")
    parser.add_argument("--skip-inseq", action="store_true", help="do not run Inseq")
    parser.add_argument(
        "--cache", type=Path, default=DEFAULT_CACHE, help="where the benchmark model is built"
    )
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = 1 if args.quick else 3
    load_before = os.getloadavg()[0]

    lm = load_model(args.cache)
    case = make_case(lm, PROMPT_TOKENS, TARGET_TOKENS)
    print(
        f"model: {lm.name} ({sum(p.numel() for p in lm.model.parameters()) / 1e6:.1f}M parameters, "
        f"vocabulary {len(lm.tokenizer)}), torch threads {torch.get_num_threads()}, "
        f"prompt {len(case.prompt_ids)} tokens (BOS + {len(case.prompt_ids) - 1} features), "
        f"target {len(case.target_ids)} tokens"
    )

    loo, shapley = genattr_calls(case)
    if not args.skip_captum:
        captum_loo, captum_shapley = captum_calls(case)
        loo, shapley = {**loo, **captum_loo}, {**shapley, **captum_shapley}
    if not args.skip_inseq:
        loo.update(inseq_calls(case))
    print(
        f"timing {len(loo) + len(shapley)} runs: warm-up, then {repeats} interleaved round(s) ...", flush=True
    )
    timings = {**time_calls(loo, repeats), **time_calls(shapley, repeats)}
    values = value_lines(case, {name: result for name, (_, result) in timings.items()})
    print(f"memory run on a {MEMORY_PROMPT_TOKENS}-token prompt in a fresh process ...", flush=True)
    memory = measure_memory(args.cache, torch.get_num_threads())

    gb = memory["peak"] / 1e9
    print("\n================================ summary ================================")
    print_times(timings)
    if ratios := ratio_lines(timings):
        print("", *ratios, sep="\n")
    print()
    print(*work_lines(case, timings), sep="\n")
    print()
    print(*values, sep="\n")
    print(
        f"memory: leave-one-out on a {MEMORY_PROMPT_TOKENS}-token prompt ({memory['features']} features, "
        f"{memory['forward_passes']} forward passes under max_batch_tokens={memory['max_batch_tokens']}, "
        f"{memory['seconds']:.1f} s): peak RSS {gb:.2f} GB, target < {MEMORY_LIMIT_GB:g} GB: "
        f"{'yes' if gb < MEMORY_LIMIT_GB else 'NO'} (after loading, before the run: resident "
        f"{memory['loaded'] / 1e9:.2f} GB, peak so far {memory['loaded_peak'] / 1e9:.2f} GB)"
    )
    load_after = os.getloadavg()[0]
    print(
        f"load average: {load_before:.2f} before, {load_after:.2f} after, on {os.cpu_count()} CPUs "
        "(a load above the benchmark's own threads means other processes shared the CPUs)"
    )


if __name__ == "__main__":
    main()
