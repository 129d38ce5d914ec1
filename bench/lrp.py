"""AttnLRP (``lrp``) on the real model SmolLM2-135M-Instruct: its cost beside integrated gradients,
where its relevance goes, and its agreement with the paper's own code, LXT.

1. Cost: on bench/real.py's chat prompt (45-55 tokens) and the model's greedy 16-token answer,
   the per-token matrix (``level="token"``) of ``lrp`` and of ``integrated_gradients`` with 20 and
   50 steps, in the same process: wall and CPU seconds and the peak resident memory of each call
   above the memory before it (``VmHWM`` reset through ``/proc/self/clear_refs`` before each call);
   then the Pearson correlation of the matrices and of the sequence scores.
2. Conservation: for the answer's first token, the relevance summed over every input position
   and what each kind of rule absorbed (:class:`genattr.algorithms.lrp_rules.Ledger`), for
   log p and for the logit.
3. LXT: the first ``--prompts`` GiLOT prompts as chat, each with its greedy 16-token answer:
   ``lrp`` with ``from_logit=True, epsilon=0`` (LXT explains the logit with plain gradients at
   linear layers) beside LXT's relevance of each answer token's logit, teacher-forced, on the
   same feature tokens; Pearson correlation per answer token (the smallest) and over the whole
   matrices. LXT patches the model classes globally and for good, so it runs last.

LXT 2.1 (PyPI) does not import under transformers 5 as it is: its model registry imports its BERT
patch, which imports ``transformers.modeling_attn_mask_utils`` (removed in transformers 5), and
its ViT patch, which imports torchvision (not installed: it would replace genattr's CPU torch);
and its attention patch replaces the module's ``ALL_ATTENTION_FUNCTIONS`` registry with a plain
dict, on which transformers 5's attention modules call ``get_interface``. :func:`lxt_patched`
stubs the two unused modules and puts the registry back after patching; with eager attention the
module's (patched) ``eager_attention_forward`` is then what runs.

``--tiny`` instead compares the rules with LXT on tiny random Llama, Qwen2 and GPT-2 models (biases
drawn at random) and prints one line per architecture: ``tiny ARCH max|difference|/max|relevance|
correlation`` (tests/test_lrp.py runs it).

Run from the repository root, once, on a quiet machine (single runs; the load average is printed):

    .venv/bin/python bench/lrp.py [--prompts 3] [--threads N] [--skip-lxt] [--tiny]
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import warnings
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import torch

import genattr
from genattr import testing
from genattr.algorithms.lrp_rules import Ledger, attnlrp
from genattr.errors import GenattrWarning
from genattr.evaluate.datasets import records
from genattr.model import Batch
from genattr.text.prompt import Prompt
from real import TARGET_TOKENS, chat_prompt

IG_STEPS = (20, 50)
TARGET = 10.0
"""The speed-up over ``integrated_gradients`` with 20 steps that ``lrp``'s matrix should reach."""


# --------------------------------------------------------------------- LXT
def lxt_patched(modeling: ModuleType) -> None:
    """LXT's AttnLRP patches on a transformers modeling module (e.g. ``modeling_llama``), with the
    shims the module docstring describes."""
    for name, attr in (("bert", "modeling_bert"), ("vit_torch", "vision_transformer")):
        stub = SimpleNamespace(**{attr: ModuleType(name)}, attnLRP={}, cp_LRP={})
        sys.modules.setdefault(f"lxt.efficient.models.{name}", stub)  # type: ignore[arg-type]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from lxt.efficient import monkey_patch

        registry = modeling.ALL_ATTENTION_FUNCTIONS
        monkey_patch(modeling)
    modeling.ALL_ATTENTION_FUNCTIONS = registry


def lxt_rows(model, ids: list[int], start: int, answer: list[int]) -> torch.Tensor:
    """LXT's relevance of every position [n, T] for each answer token's logit, teacher-forced:
    the answer's token t is predicted at position start - 1 + t of ``ids``."""
    x = model.get_input_embeddings()(torch.tensor([ids])).detach().requires_grad_(True)
    logits = model(inputs_embeds=x, use_cache=False).logits[0]
    rows = []
    for t, token in enumerate(answer):
        (grad,) = torch.autograd.grad(logits[start - 1 + t, token], x, retain_graph=True)
        rows.append((x.detach() * grad).sum(-1)[0])
    return torch.stack(rows).double()


def ours_rows(model, ids: list[int], start: int, answer: list[int]) -> torch.Tensor:
    """The same with genattr's rules (epsilon 0, logits), one plain backward pass per token."""
    x = model.get_input_embeddings()(torch.tensor([ids])).detach().requires_grad_(True)
    with attnlrp(model, 0.0):
        logits = model(inputs_embeds=x, use_cache=False).logits[0]
        grads = [
            torch.autograd.grad(logits[start - 1 + t, token], x, retain_graph=True)[0]
            for t, token in enumerate(answer)
        ]
    return torch.stack([(x.detach() * g).sum(-1)[0] for g in grads]).double()


def tiny_check() -> None:
    """``tiny ARCH difference correlation`` for tiny random Llama, Qwen2 and GPT-2 models."""
    for arch in ("llama", "qwen2", "gpt2"):  # GPT-2 last: LXT patches torch.nn.LayerNorm itself
        model = testing.random_model(arch)[0]
        with torch.random.fork_rng():
            torch.manual_seed(1)
            for name, p in model.named_parameters():
                if name.endswith("bias"):
                    torch.nn.init.normal_(p, std=0.2)
        model.set_attn_implementation("eager")
        model.requires_grad_(False)
        ids, answer = [1, 5, 7, 9, 11, 13, 20, 30], [40, 41, 42]
        ours = ours_rows(model, ids + answer[:-1], len(ids), answer)
        lxt_patched(importlib.import_module(f"transformers.models.{arch}.modeling_{arch}"))
        theirs = lxt_rows(model, ids + answer[:-1], len(ids), answer)
        gap = float((ours - theirs).abs().max() / theirs.abs().max())
        print(f"tiny {arch} {gap:.2e} {np.corrcoef(ours.ravel(), theirs.ravel())[0, 1]:.8f}", flush=True)


# --------------------------------------------------------------------- cost
def memory_bytes(field: str) -> int:
    """``VmRSS`` or ``VmHWM`` of this process in bytes (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def measured(run) -> tuple[object, float, float, float]:
    """``run()``, its wall and CPU seconds, and its peak resident memory above the start, in MB."""
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current VmRSS
    before = memory_bytes("VmRSS")
    wall, cpu = time.perf_counter(), time.process_time()
    out = run()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return out, wall, cpu, (memory_bytes("VmHWM") - before) / 1e6


def pearson(a, b) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def cost_table(lm, prompt: Prompt, answer: list[int]) -> None:
    runs = {"lrp": {}} | {f"integrated_gradients, {s} steps": {"n_steps": s} for s in IG_STEPS}
    results, seconds = {}, {}
    print(
        "| method | wall s | CPU s | peak MB above start | forward passes | backward passes |\n|---|---|---|---|---|---|"
    )
    for label, params in runs.items():
        method = label.split(",")[0]
        res, wall, cpu, peak = measured(
            lambda m=method, p=params: genattr.explain(
                lm, prompt, target=answer, method=m, level="token", seed=0, **p
            )
        )
        results[label], seconds[label] = res, wall
        d = res.diagnostics
        print(
            f"| `{label}` | {wall:.2f} | {cpu:.2f} | {peak:.0f} | {d['forward_passes']} | {d['backward_passes']} |",
            flush=True,
        )
    ig20 = f"integrated_gradients, {IG_STEPS[0]} steps"
    speedup = seconds[ig20] / seconds["lrp"]
    verdict = "met" if speedup >= TARGET else "missed"
    print(f"\nlrp matrix {speedup:.1f}x faster than {ig20} (target {TARGET:g}x: {verdict})")
    lrp = results["lrp"]
    for label, res in results.items():
        if label != "lrp":
            print(
                f"Pearson lrp vs {label}: matrix {pearson(lrp.token_scores, res.token_scores):.3f}, "
                f"sequence scores {pearson(lrp.scores, res.scores):.3f}"
            )
    a, b = (results[f"integrated_gradients, {s} steps"] for s in IG_STEPS)
    print(
        f"Pearson {IG_STEPS[0]} vs {IG_STEPS[1]} IG steps: matrix {pearson(a.token_scores, b.token_scores):.3f}"
    )


def conservation_lines(lm, prompt: Prompt, answer: list[int]) -> None:
    ids = [*prompt.input_ids, answer[0]]
    for logit in (False, True):
        ledger = Ledger()
        x = lm.model.get_input_embeddings()(torch.tensor([ids[:-1]])).detach().requires_grad_(True)
        with lm.eager_attention(), attnlrp(lm.model, 0.0, ledger):
            z = lm.model(inputs_embeds=x).logits[0, -1].float()
            out = z[answer[0]] if logit else z.log_softmax(-1)[answer[0]]
            (grad,) = torch.autograd.grad(out, x)
        total = float((x.detach() * grad).sum())
        shares = ", ".join(f"{k} {v:+.3f}" for k, v in sorted(ledger.absorbed.items()))
        print(
            f"first answer token, {'logit' if logit else 'log p'} = {float(out.detach()):.3f}: relevance over "
            f"every position {total:.3f}; absorbed: {shares}; gap {float(out.detach()) - total - ledger.total:.1e}"
        )


# --------------------------------------------------------------------- agreement with LXT
def lxt_table(lm, n_prompts: int) -> None:
    cases = []
    for row in list(records("gilot"))[:n_prompts]:
        prompt = Prompt.from_messages(lm.tokenizer, [{"role": "user", "content": row["prompt"]}])
        answer = lm.generate(Batch.from_ids(prompt.input_ids), TARGET_TOKENS, stop_at_eos=False).token_ids[0]
        res = genattr.explain(
            lm, prompt, target=list(answer), method="lrp", level="token", from_logit=True, epsilon=0.0
        )
        cases.append((prompt, list(answer), res))
    modeling = importlib.import_module(type(lm.model).__module__)
    lxt_patched(modeling)
    lm.model.set_attn_implementation("eager")
    print("\n| prompt tokens | features | smallest per-token Pearson | matrix Pearson | max abs difference |")
    print("|---|---|---|---|---|")
    for prompt, answer, res in cases:
        rows = lxt_rows(lm.model, [*prompt.input_ids, *answer[:-1]], len(prompt), answer)
        theirs = np.array([[r[list(f.positions)].sum().item() for f in res.features] for r in rows])
        per_token = min(pearson(a, b) for a, b in zip(res.token_scores, theirs, strict=True))
        print(
            f"| {len(prompt)} | {len(res.features)} | {per_token:.4f} | {pearson(res.token_scores, theirs):.4f} | "
            f"{np.abs(res.token_scores - theirs).max():.1e} of {np.abs(theirs).max():.2g} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=3, help="GiLOT prompts compared with LXT")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--skip-lxt", action="store_true", help="do not run LXT")
    parser.add_argument("--tiny", action="store_true", help="only the comparison with LXT on tiny models")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", GenattrWarning)
    if args.tiny:
        tiny_check()
        return
    load_before = os.getloadavg()[0]
    lm = genattr.load("smollm2")
    messages, prompt = chat_prompt(lm)
    answer = list(
        lm.generate(Batch.from_ids(prompt.input_ids), TARGET_TOKENS, stop_at_eos=False).token_ids[0]
    )
    print(
        f"SmolLM2, {torch.get_num_threads()} threads; prompt {len(prompt)} tokens, answer {len(answer)} tokens"
    )
    print(f"prompt: {messages[0]['content']!r}\nanswer: {lm.tokenizer.decode(answer)!r}\n")
    cost_table(lm, prompt, answer)
    print()
    conservation_lines(lm, prompt, answer)
    if not args.skip_lxt:
        lxt_table(lm, args.prompts)
    print(
        f"\nload average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after, on {os.cpu_count()} CPUs"
    )


if __name__ == "__main__":
    main()
