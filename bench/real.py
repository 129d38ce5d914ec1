"""Every registered method on the real model SmolLM2-135M-Instruct: seconds, forward and backward
passes and their tokens through the model per method, on a chat prompt of about 50 tokens and a
16-token answer; then genattr beside Captum and Inseq on the same prompt and answer, in the same
process.

The prompt is the first of GiLOT's evaluation prompts (data/gilot_prompts) whose chat rendering,
the template's system message included (scaffolding, not features), has 45 to 55 tokens; the
target is the model's own greedy 16-token answer. Step and sample counts are given explicitly
(:data:`PARAMS`); GiLOT takes no target (it explains the model's own likely outputs, over
``n_positions`` generated positions); a method that cannot run on this prompt (shapley_exact: too
many features) is listed with the reason.

The peer table (bench/peers.py builds the peers' runs and states the conventions) runs genattr at
token level, a feature replaced by token 0 (:data:`BASELINE_ID`, ``<|endoftext|>``, Captum's
default baseline) where a method removes features, beside Captum ``LLMAttribution``
(``FeatureAblation`` in its default mode and with ``forward_in_tokens=False``,
``ShapleyValueSampling``), Captum ``LLMGradientAttribution(LayerIntegratedGradients)`` and Inseq
(``occlusion``, ``integrated_gradients``, ``attention``), with the same sample and step counts.
Its last column is the largest absolute difference of the scores where the two compute the same
quantity: leave-one-out and Shapley sampling (same permutations: both draw ``torch.randperm``
seeded 0) on log p(answer), sequence scores and per answer token; the integrated-gradients
matrix; the attention matrix (layers and heads averaged).

Run from the repository root (the first run builds the model cache, see `genattr models`):

    .venv/bin/python bench/real.py [--methods a,b,c] [--threads N] [--skip-captum] [--skip-inseq]
                                   [--skip-peers] [--contended]

``--contended`` runs only the contention check: greedy answers to :data:`CONTENDED_ANSWERS` chat
prompts by genattr's ``LanguageModel.generate`` and by Hugging Face's ``model.generate``
(interleaved prompt by prompt, so that both meet the same load; their tokens must agree), and
leave-one-out beside Captum's ``FeatureAblation`` (``forward_in_tokens=False``; not with
``--skip-captum``), first as the machine is, then while a second process keeps one core busy
(always stopped at the end); it prints each one's seconds and slowdown.

Timings are single runs (wall and process CPU seconds); other processes on the machine distort
them, which the closing load-average line shows. On a shared machine run it with
``OMP_WAIT_POLICY=PASSIVE`` (what the ``genattr`` command sets) or pass ``--threads 1``: torch's
threads, when other processes hold the cores, spin waiting on each other and run several times
slower.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch

import genattr
import peers
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
    "shapley_sampling": {"n_samples": 25, "paired": False},  # Captum's permutations, not antithetic pairs
    "kernel_shap": {"n_samples": 128},
    "lime": {"n_samples": 128},
    "gilot": {"num_beams": 10, "n_positions": 10},
    "xprompt": {"k": 3, "n_iter": 100},
}
CONTENDED_ANSWERS = 10
"""Chat prompts (GiLOT's first ones) answered greedily in the contention check."""
BASELINE_ID = 0  # <|endoftext|>, SmolLM2's unknown token; Captum's default baseline
PEER_SETTINGS = {  # genattr method at token level: its parameters beyond PARAMS
    "leave_one_out": {"mask": "replace", "baseline": BASELINE_ID},
    "shapley_sampling": {"mask": "replace", "baseline": BASELINE_ID},
    "integrated_gradients": {"baselines": "token", "baseline": BASELINE_ID},
    "attention": {},
}
PEERS = {  # genattr method: its peer runs, each with None (values not compared) or a caveat ("" if none)
    "leave_one_out": {
        peers.CAPTUM_ABLATION: "not a check: Captum's cached mode is off under transformers 5",
        peers.CAPTUM_ABLATION_JOINT: "",
        "inseq occlusion": None,
    },
    "shapley_sampling": {peers.CAPTUM_SHAPLEY: ""},
    "integrated_gradients": {peers.CAPTUM_IG: "", "inseq integrated_gradients": None},
    "attention": {"inseq attention": ""},
}
SEQUENCE_ONLY = {"integrated_gradients": peers.CAPTUM_IG}
"""genattr's sequence-only path (token_scores=False) beside the peer's matrix, whose rows it sums."""


def chat_prompt(lm) -> tuple[list[dict], Prompt]:
    """The first GiLOT prompt whose chat rendering has a length in :data:`PROMPT_TOKENS`."""
    low, high = PROMPT_TOKENS
    for row in records("gilot"):
        messages = [{"role": "user", "content": row["prompt"]}]
        prompt = Prompt.from_messages(lm.tokenizer, messages)
        if low <= len(prompt) <= high:
            return messages, prompt
    raise RuntimeError(f"no GiLOT prompt renders to {low}-{high} tokens")


def method_table(lm, prompt: Prompt, answer: list[int], methods: list[str]) -> None:
    print(
        "| method | parameters | seconds | forward passes | tokens processed | backward passes | backward tokens |\n"
        "|---|---|---|---|---|---|---|"
    )
    for name in methods:
        params = PARAMS.get(name, {})
        target = answer if registry.get(name).needs_target else None  # gilot explains its own beams
        try:
            res = genattr.explain(lm, prompt, target=target, method=name, level="word", seed=0, **params)
        except TooManyFeaturesError as exc:
            print(f"| `{name}` | {params or '-'} | skipped: {exc} | | | | |")
            continue
        d = res.diagnostics
        print(
            f"| `{name}` | {params or '-'} | {d['seconds']:.1f} | {d['forward_passes']} | {d['tokens_processed']} "
            f"| {d['backward_passes']} | {d['backward_tokens']} |",
            flush=True,
        )


def timed(fn) -> tuple[object, float, float]:
    """``fn()``, its wall seconds and its process CPU seconds."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def difference(peer: str, ours, theirs, prompt: Prompt, n_target: int) -> str:
    """The largest |genattr - peer| over the scores both compute, what was compared, and the largest
    |genattr score| there (the scale)."""

    def gap(mine, other, what: str) -> str:
        return f"{peers.max_abs_diff(mine, other):.1e} of {abs(mine).max():.2g} ({what})"

    if peer == "inseq attention":
        return gap(ours.token_scores, peers.inseq_attention_rows(theirs, prompt, n_target), "matrix")
    if peer == peers.CAPTUM_IG:
        return gap(ours.token_scores, theirs.token_attr, "matrix")
    seq = gap(ours.scores, theirs.seq_attr, "sequence")
    if ours.token_scores is None:
        return seq
    return f"{seq}; {gap(ours.token_scores, theirs.token_attr, 'per token')}"


def peer_runs(lm, prompt: Prompt, answer: list[int], args) -> dict:
    runs = {}
    if not args.skip_captum:
        runs.update(
            peers.captum_perturbation_runs(
                lm, prompt, answer, baseline=BASELINE_ID, n_samples=PARAMS["shapley_sampling"]["n_samples"]
            )
        )
        runs.update(
            peers.captum_ig_run(
                lm, prompt, answer, baseline=BASELINE_ID, n_steps=PARAMS["integrated_gradients"]["n_steps"]
            )
        )
    if not args.skip_inseq:
        runs.update(
            peers.inseq_runs(
                lm,
                prompt,
                answer,
                lm.tokenizer.decode(answer),
                n_steps=PARAMS["integrated_gradients"]["n_steps"],
            )
        )
    return runs


def peer_table(lm, prompt: Prompt, answer: list[int], args) -> None:
    """genattr at token level beside each peer run: seconds (wall and CPU), the ratio, and the
    largest score difference where the conventions match."""
    peers.quiet()
    runs = peer_runs(lm, prompt, answer, args)
    n_features = len(peers.token_features(prompt))
    print(
        f"\ngenattr beside Captum and Inseq: token level, {n_features} features (the user's tokens), "
        f"baseline token {BASELINE_ID}, log p(answer); single runs\n"
    )
    print(
        "| genattr method | genattr s (CPU s) | peer | peer s (CPU s) | genattr / peer | max abs difference |\n"
        "|---|---|---|---|---|---|"
    )
    measured = {}
    for method, peer_names in PEERS.items():
        chosen = [name for name in peer_names if name in runs]
        if not chosen:
            continue
        params = {**PARAMS.get(method, {}), **PEER_SETTINGS[method]}
        ours, wall, cpu = timed(
            lambda m=method, p=params: genattr.explain(
                lm, prompt, target=answer, method=m, level="token", seed=0, **p
            )
        )
        for name in chosen:
            theirs, peer_wall, peer_cpu = measured[name] = timed(runs[name])
            caveat = peer_names[name]
            diff = "not compared" if caveat is None else difference(name, ours, theirs, prompt, len(answer))
            if caveat:
                diff += f" ({caveat})"
            print(
                f"| `{method}` | {wall:.1f} ({cpu:.1f}) | {name} | {peer_wall:.1f} ({peer_cpu:.1f}) | "
                f"{wall / peer_wall:.2f} | {diff} |",
                flush=True,
            )

    for method, name in SEQUENCE_ONLY.items():
        if name not in measured:
            continue
        params = {**PARAMS.get(method, {}), **PEER_SETTINGS[method]}
        ours, wall, cpu = timed(
            lambda m=method, p=params: genattr.explain(
                lm, prompt, target=answer, method=m, level="token", seed=0, token_scores=False, **p
            )
        )
        theirs, peer_wall, peer_cpu = measured[name]
        summed = theirs.token_attr.sum(0)
        diff = f"{peers.max_abs_diff(ours.scores, summed):.1e} of {abs(ours.scores).max():.2g} (sequence)"
        print(
            f"| `{method}`, token_scores=False | {wall:.1f} ({cpu:.1f}) | {name} (matrix) | "
            f"{peer_wall:.1f} ({peer_cpu:.1f}) | {wall / peer_wall:.2f} | {diff} |",
            flush=True,
        )


@contextmanager
def busy_core() -> Iterator[None]:
    """A second process keeping one core busy while open, stopped on exit whatever happens."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        spinner.kill()
        spinner.wait()


def hf_answer(lm, ids: list[int]) -> list[int]:
    """Hugging Face's greedy answer to ``ids`` (up to TARGET_TOKENS tokens, EOS excluded)."""
    x = torch.tensor([ids])
    out = lm.model.generate(
        x, attention_mask=torch.ones_like(x), max_new_tokens=TARGET_TOKENS, do_sample=False, pad_token_id=0
    )[0, len(ids) :].tolist()
    return out[: next((i for i, t in enumerate(out) if t in lm.eos_ids), len(out))]


def generation_seconds(lm, prompts: list[list[int]]) -> tuple[float, float, bool]:
    """genattr's and Hugging Face's seconds answering ``prompts``, one prompt at a time, the two
    alternating which goes first; and whether every answer agrees."""
    seconds, same = {"genattr": 0.0, "hf": 0.0}, True
    runs = {
        "genattr": lambda ids: lm.generate(Batch.from_ids(ids), TARGET_TOKENS).token_ids[0],
        "hf": lambda ids: hf_answer(lm, ids),
    }
    for i, ids in enumerate(prompts):
        answers = {}
        for name in ("genattr", "hf") if i % 2 == 0 else ("hf", "genattr"):
            answers[name], wall, _ = timed(lambda n=name, ids=ids: runs[n](ids))
            seconds[name] += wall
        same &= answers["genattr"] == answers["hf"]
    return seconds["genattr"], seconds["hf"], same


def contention_table(lm, prompt: Prompt, answer: list[int], args) -> None:
    """Seconds of generation (and leave-one-out beside Captum) quiet, then with one core kept busy."""
    peers.quiet()
    prompts = [
        list(Prompt.from_messages(lm.tokenizer, [{"role": "user", "content": row["prompt"]}]).input_ids)
        for row, _ in zip(records("gilot"), range(CONTENDED_ANSWERS), strict=False)
    ]
    loo = {"mask": "replace", "mask_token": BASELINE_ID, "level": "token"}
    captum = {}
    if not args.skip_captum:
        captum = peers.captum_perturbation_runs(
            lm, prompt, answer, baseline=BASELINE_ID, n_samples=1, ablation_modes=("joint",)
        )
    print(
        f"contention: {len(prompts)} greedy answers (up to {TARGET_TOKENS} tokens), {torch.get_num_threads()} "
        f"torch threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}; single runs\n"
    )
    print(
        "| run | load before | genattr generate s | HF generate s | same tokens | genattr leave-one-out s "
        "| Captum FeatureAblation s |\n|---|---|---|---|---|---|---|"
    )
    hf_answer(lm, prompts[0])  # Hugging Face's first call sets up its generation config
    seconds = {}
    for label, load in (("no busy process", nullcontext()), ("one core busy", busy_core())):
        with load:
            before = os.getloadavg()[0]
            ours, hf, same = generation_seconds(lm, prompts)
            _, loo_s, _ = timed(
                lambda: genattr.explain(lm, prompt, target=answer, method="leave_one_out", seed=0, **loo)
            )
            captum_s = timed(captum[peers.CAPTUM_ABLATION_JOINT])[1] if captum else float("nan")
        seconds[label] = (ours, hf, loo_s, captum_s)
        print(
            f"| {label} | {before:.1f} | {ours:.1f} | {hf:.1f} | {same} | {loo_s:.1f} | {captum_s:.1f} |",
            flush=True,
        )
    ratios = [f"{busy / quiet:.1f}x" for quiet, busy in zip(*seconds.values(), strict=True)]
    print(f"| slowdown | | {ratios[0]} | {ratios[1]} | | {ratios[2]} | {ratios[3]} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default="all", help="comma-separated method names, all, or none")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--skip-captum", action="store_true", help="do not run Captum")
    parser.add_argument("--skip-inseq", action="store_true", help="do not run Inseq")
    parser.add_argument("--skip-peers", action="store_true", help="only genattr's method table")
    parser.add_argument(
        "--contended",
        action="store_true",
        help="only the contention check (one core kept busy, then stopped)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    choices = {"all": registry.names(), "none": []}
    methods = choices[args.methods] if args.methods in choices else args.methods.split(",")
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    lm = genattr.load("smollm2")
    print(f"loaded smollm2 in {time.perf_counter() - started:.1f} s, {torch.get_num_threads()} threads")
    messages, prompt = chat_prompt(lm)
    answer = lm.generate(Batch.from_ids(prompt.input_ids), TARGET_TOKENS, stop_at_eos=False).token_ids[0]
    print(
        f"prompt ({len(prompt)} tokens, {len(prompt.features('word'))} word features): {messages[0]['content']!r}"
    )
    print(f"answer ({len(answer)} tokens): {lm.tokenizer.decode(answer)!r}\n")
    if args.contended:
        contention_table(lm, prompt, list(answer), args)
    elif methods:
        method_table(lm, prompt, list(answer), methods)
    if not args.skip_peers and not args.contended:
        peer_table(lm, prompt, list(answer), args)
    print(
        f"\nload average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after, on {os.cpu_count()} CPUs"
    )


if __name__ == "__main__":
    main()
