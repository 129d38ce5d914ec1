"""Study ``gilot-table1``: GiLOT's Table 1 (MoRF, LeRF, ABPC) and Table 6 (time per sample) on
SmolLM2's chat answers to the GiLOT paper's own prompts.

Protocol ("GiLOT: Interpreting Generative Language Models via Optimal Transport", ICML 2024,
Section 4.1, :func:`~genattr.evaluate.faithfulness.perturbation_curves`): each prompt is the
user's message in the model's chat template; every method explains the greedy answer of
``MAX_NEW_TOKENS`` tokens at token level (the template's scaffolding and default system message
are never features); then 0%, 10%, ..., 100% of the prompt's tokens are hidden from attention
(the authors' masking: id 0 and attention mask 0), most relevant first (MoRF) or least relevant
first (LeRF), the answer regenerated greedily and its discrepancy from the original measured;
AUC in percent, ABPC = AUC(MoRF) - AUC(LeRF).

The greedy answer is generated once per prompt and given to every method that explains a target
(GiLOT explains its own beams): the time per sample is the explanation's, as the paper's baselines
are "adopted with given responses".

Two discrepancies are measured on the same regenerated answers: ``model`` (the default, the
paper's text: 1 - cos of the answers' mean-pooled input embeddings of the explained model) and
``aligned`` (the authors' reproduction code: the mean over aligned positions of
(1 - cos(e(y_j), e(y'_j))) / 2, :func:`~genattr.evaluate.text.aligned_distance`).

Prompts: the 100 GiLOT prompts (50 Alpaca, 50 ShareGPT) in a fixed order, each source shuffled
with seed 0 and the two interleaved, so that the first n of any run are the first n of a longer
one (and its rows are reused) and half come from each source. ``random`` is explained with
``RANDOM_SEEDS`` seeds per prompt and its curves averaged.
"""

from __future__ import annotations

import random as _random
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .. import registry
from ..errors import GenattrError, InputError
from ..evaluate.benchmark import example_seed, timed_explain
from ..evaluate.datasets import records
from ..evaluate.faithfulness import auc, perturbation_curves
from ..evaluate.tables import plot_curves
from .common import (
    COST_KEYS,
    SEED,
    Example,
    Study,
    Task,
    chat_prompt,
    complete_examples,
    fmt,
    greedy_ids,
    interval_cell,
    markdown_table,
    paired_cell,
    run_arguments,
)

NAME = "gilot-table1"
LEVEL = "token"
MASK = "attention"
MAX_NEW_TOKENS = 20
STEP = 0.1
DISCREPANCY, ALSO = "model", "aligned"
RANDOM_SEEDS = 5
"""Seeds of the random baseline per prompt; its curves are averaged over them."""

METHODS = (
    "bta",
    "bta_avg",
    "integrated_gradients",
    "integrated_gradients_avg",
    "lime",
    "gilot",
    "leave_one_out",
    "shapley_sampling",
    "aieg",
    "xprompt",
    "attention_rollout",
)
OPTIONAL = ("lrp", "discretized_ig")
"""Methods added when this genattr registers them."""
RANDOM = "random"
DIAGNOSTICS = ("beam_mass", "converged", "relative_convergence_delta", "ot_unconverged")
"""What a row keeps of its explanation's diagnostics (GiLOT's beam mass per position, the
integrated gradients' convergence)."""

PARAMS: dict[str, dict] = {
    "bta": {"n_steps": 20},
    "bta_avg": {"n_steps": 5},
    "integrated_gradients": {"n_steps": 20},
    "integrated_gradients_avg": {"n_steps": 5},
    "aieg": {"n_steps": 20},
    "lime": {"n_samples": 128},
    "shapley_sampling": {"n_samples": 10},
    "gilot": {"num_beams": 10, "n_positions": 10},
    "xprompt": {"k": 3, "n_iter": 100},
}
"""Each method's parameters (the rest at their defaults); a row records them in its settings. The
path steps of BTA, BTA-AVG, IG and IG-AVG are those of the GiLOT authors' reproduction code
(``reproduce/llama_variants/generate_exp.py``: 20, 5, 20, 5); AIEG, Shapley sampling and LIME
are sized to the budget."""

PAPER_TABLE1 = {
    # GiLOT paper, Table 1: (MoRF, LeRF, ABPC) on Llama2-7b-chat and Llama2-13b-chat
    "Llama2-7b-chat": {
        "bta": (41.12, 41.05, 0.08),
        "bta_avg": (41.73, 41.01, 0.72),
        "integrated_gradients": (41.75, 40.35, 1.40),
        "integrated_gradients_avg": (41.74, 40.54, 1.20),
        "lime": (40.98, 41.81, -0.83),
        "gilot": (41.94, 40.78, 1.17),
    },
    "Llama2-13b-chat": {
        "bta": (40.98, 41.25, -0.26),
        "bta_avg": (41.46, 40.53, 0.93),
        "integrated_gradients": (41.61, 41.13, 0.48),
        "integrated_gradients_avg": (41.05, 41.31, -0.27),
        "lime": (40.36, 41.83, -1.47),
        "gilot": (41.88, 40.51, 1.38),
    },
}
PAPER_TABLE6 = {  # GiLOT paper, Table 6: seconds per sample ("Ours (OT)" for GiLOT)
    "bta": 7.01,
    "bta_avg": 64.04,
    "integrated_gradients": 7.70,
    "integrated_gradients_avg": 105.47,
    "lime": 23.83,
    "gilot": 127.47,
}


def methods(chosen: Sequence[str] | None = None) -> list[str]:
    """The study's methods: :data:`METHODS`, those of :data:`OPTIONAL` this genattr registers,
    and ``random``; or ``chosen`` of them."""
    available = [*METHODS, *[m for m in OPTIONAL if m in registry.names()], RANDOM]
    if chosen is None:
        return available
    unknown = [m for m in chosen if m not in available]
    if unknown:
        raise InputError(f"{NAME} has no method {unknown}; choose from {', '.join(available)}.")
    return [m for m in available if m in chosen]


def examples(n: int | None = None) -> list[Example]:
    """The first ``n`` prompts of the study's order (see the module docstring)."""
    rows = records("gilot")
    order = []
    for source in ("alpaca", "sharegpt"):
        ids = [r for r in rows if r["source"] == source]
        _random.Random(SEED).shuffle(ids)
        order.append(ids)
    mixed = [r for pair in zip(*order, strict=True) for r in pair]
    return [Example(f"gilot:{r['id']}", "gilot", r["prompt"]) for r in mixed[:n]]


def settings(model: str, dtype: str | None, method: str) -> dict:
    extra = {"random_seeds": RANDOM_SEEDS} if method == RANDOM else {}
    return {
        "study": NAME,
        "model": model,
        "dtype": dtype,
        "seed": SEED,
        "prompt": "chat, user message",
        "level": LEVEL,
        "mask": MASK,
        "max_new_tokens": MAX_NEW_TOKENS,
        "step": STEP,
        "discrepancies": [DISCREPANCY, ALSO],
        "params": PARAMS.get(method, {}),
        **extra,
    }


def tasks(model: str, dtype: str | None, n: int | None, chosen: Sequence[str] | None) -> list[Task]:
    return [Task(m, ex, settings(model, dtype, m)) for ex in examples(n) for m in methods(chosen)]


# --------------------------------------------------------------------- one row
def measure(lm, prompt, method: str, seed: int, params: dict) -> dict:
    """Explain ``prompt`` with ``method`` and measure the study's curves: the explanation's cost
    and diagnostics, the answer, and MoRF and LeRF under both discrepancies."""
    res, cost = timed_explain(
        lm,
        prompt,
        target=list(greedy_ids(lm, prompt, MAX_NEW_TOKENS)) if registry.get(method).needs_target else None,
        method=method,
        level=LEVEL,
        mask=MASK,
        seed=seed,
        max_new_tokens=MAX_NEW_TOKENS,
        token_scores=False,
        **params,
    )
    started, cpu = time.perf_counter(), time.process_time()
    curves = perturbation_curves(
        lm, res, step=STEP, max_new_tokens=MAX_NEW_TOKENS, embedder=DISCREPANCY, also=(ALSO,)
    )
    other_morf, other_lerf = curves.others[ALSO]
    return {
        **cost,
        "diagnostics": {k: res.diagnostics[k] for k in DIAGNOSTICS if k in res.diagnostics},
        "protocol_seconds": time.perf_counter() - started,
        "protocol_cpu_seconds": time.process_time() - cpu,
        "n_features": len(res.features),
        "response": curves.original,
        "fractions": curves.fractions,
        "morf": curves.morf,
        "lerf": curves.lerf,
        f"{ALSO}_morf": other_morf,
        f"{ALSO}_lerf": other_lerf,
    }


def with_areas(row: dict) -> dict:
    """``row`` with the areas of its curves (percent) and ABPC under both discrepancies."""
    for prefix in ("", f"{ALSO}_"):
        morf = auc(row[f"{prefix}morf"], row["fractions"])
        lerf = auc(row[f"{prefix}lerf"], row["fractions"])
        row |= {f"{prefix}auc_morf": morf, f"{prefix}auc_lerf": lerf, f"{prefix}abpc": morf - lerf}
    return row


def _mean_of_seeds(runs: list[dict]) -> dict:
    """The random baseline's row: its curves and explanation costs averaged over the seeds, the
    protocol's seconds summed (the compute spent), and each seed's ABPC."""
    row = {key: runs[0][key] for key in ("n_features", "response", "fractions")}
    row |= {key: float(np.mean([r[key] for r in runs])) for key in COST_KEYS}
    row |= {key: sum(r[key] for r in runs) for key in ("protocol_seconds", "protocol_cpu_seconds")}
    for key in ("morf", "lerf", f"{ALSO}_morf", f"{ALSO}_lerf"):
        row[key] = np.mean([r[key] for r in runs], axis=0).tolist()
    row["seed_abpc"] = [r["abpc"] for r in runs]
    return with_areas(row)


def compute(lm, task: Task) -> dict:
    """One method on one prompt: the explanation's cost, its curves under both discrepancies and
    their areas; for ``random``, :data:`RANDOM_SEEDS` seeds averaged (:func:`_mean_of_seeds`)."""
    prompt = chat_prompt(lm, task.example.text)
    params = task.settings["params"]
    try:
        if task.method != RANDOM:
            seed = example_seed(SEED, task.example.id)
            return with_areas(measure(lm, prompt, task.method, seed, params))
        seeds = [example_seed(SEED, f"{task.example.id}#{r}") for r in range(RANDOM_SEEDS)]
        return _mean_of_seeds([with_areas(measure(lm, prompt, RANDOM, s, params)) for s in seeds])
    except GenattrError as exc:
        return {"error": str(exc)}


# --------------------------------------------------------------------- the document's section
def arguments(rows: list[dict]) -> str:
    return run_arguments([ex.id for ex in examples()], rows, methods())


def _paper(model: str, method: str) -> str:
    found = PAPER_TABLE1[model].get(method)
    return " / ".join(f"{v:.2f}" for v in found) if found else ""


def _main_table(rows: list[dict], ms: list[str], done: list[str]) -> str:
    header = ["method", "MoRF ↑", "LeRF ↓", "ABPC ↑", "time per sample (s)"]
    header += [f"paper {m}: MoRF / LeRF / ABPC" for m in PAPER_TABLE1] + ["paper time (s)"]
    body = []
    for m in ms:
        cells = [interval_cell(rows, m, key, done) for key in ("auc_morf", "auc_lerf", "abpc", "seconds")]
        paper_time = PAPER_TABLE6.get(m)
        paper = [_paper(model, m) for model in PAPER_TABLE1] + [f"{paper_time:.2f}" if paper_time else ""]
        body.append([f"`{m}`", *cells, *paper])
    return markdown_table(header, body)


def _aligned_table(rows: list[dict], ms: list[str], done: list[str]) -> str:
    keys = [f"{ALSO}_auc_morf", f"{ALSO}_auc_lerf", f"{ALSO}_abpc"]
    body = [[f"`{m}`", *[interval_cell(rows, m, k, done) for k in keys]] for m in ms]
    return markdown_table(["method", "MoRF ↑", "LeRF ↓", "ABPC ↑"], body)


def _paired_table(rows: list[dict], ms: list[str], done: list[str]) -> str:
    pairs = [(m, RANDOM) for m in ms if m != RANDOM]
    pairs += [("gilot", m) for m in ms if m not in ("gilot", RANDOM)] if "gilot" in ms else []
    body = [
        [f"`{a}` - `{b}`", *[paired_cell(rows, a, b, key, done) for key in ("abpc", f"{ALSO}_abpc")]]
        for a, b in pairs
        if RANDOM in ms or b != RANDOM
    ]
    return markdown_table(["difference", f"ABPC ({DISCREPANCY})", f"ABPC ({ALSO})"], body)


def _cost_table(rows: list[dict], ms: list[str], done: list[str]) -> str:
    keys = (
        "cpu_seconds",
        "forward_passes",
        "backward_passes",
        "tokens_processed",
        "protocol_seconds",
        "protocol_cpu_seconds",
    )
    body = [[f"`{m}`", *[interval_cell(rows, m, k, done) for k in keys]] for m in ms]
    header = [
        "method",
        "CPU s",
        "forward passes",
        "backward passes",
        "tokens processed",
        "protocol (s)",
        "protocol CPU s",
    ]
    return markdown_table(header, body)


def _random_spread(rows: list[dict], done: list[str]) -> str:
    spreads = [np.std(r["seed_abpc"], ddof=1) for r in rows if r["method"] == RANDOM and r["example"] in done]
    if not spreads:
        return ""
    return (
        f"The random baseline is the mean over {RANDOM_SEEDS} seeds per prompt; one seed's ABPC "
        f"differs from another's by a standard deviation of {fmt(float(np.mean(spreads)))} points "
        "on the same prompt (mean over prompts).\n"
    )


def section(rows: list[dict], out: Path, link: str) -> str:
    """The study's tables, paired comparisons and plots, from its rows."""
    ms = [m for m in methods() if any(r["method"] == m for r in rows)]
    done = complete_examples(rows, ms, "abpc")
    failed = sorted(f"`{r['method']}` on {r['example']}: {r['error']}" for r in rows if "error" in r)
    hours = sum(r.get("seconds", 0) + r.get("protocol_seconds", 0) for r in rows) / 3600
    cpu = sum(r.get("cpu_seconds", 0) + r.get("protocol_cpu_seconds", 0) for r in rows) / 3600
    lengths = [r["n_features"] for r in rows if r["example"] in done and r["method"] == ms[0]]
    parts = [
        f"Compute: {hours:.2f} hours ({cpu:.2f} CPU hours) over {len(rows)} rows (explanations and their "
        "perturbation curves, the sum of the rows' own times). "
        f"Prompts complete for every method: {len(done)} "
        f"({', '.join(done)}), {fmt(float(np.mean(lengths))) if lengths else '-'} tokens each on average. "
        f"The model answers {MAX_NEW_TOKENS} tokens greedily; features are tokens, hidden from attention.\n",
        "Prompts: the first n of the 100 GiLOT prompts in a fixed order (each source shuffled with "
        "seed 0, then Alpaca and ShareGPT in turn), so that half come from each source and a longer "
        "run reuses these rows. Discrepancy between the original and the regenerated answer: "
        f"`{DISCREPANCY}` (the default) is 1 - cos of the two answers' mean-pooled input embeddings of "
        f"the explained model, as the paper's text says (Sections 4.1 and 6); `{ALSO}` is the mean "
        "over aligned positions of (1 - cos) / 2 of the answers' token embeddings, as the authors' "
        "reproduction code computes it (`reproduce/llama_variants/perturbation.py`), over the "
        "answers' positions only. Parameters: "
        + ", ".join(f"`{m}` {PARAMS[m]}" for m in ms if m in PARAMS)
        + ", the rest at genattr's defaults.\n",
    ]
    if failed:
        parts.append(
            "Rows that failed (left out of the tables):\n\n" + "\n".join(f"- {f}" for f in failed) + "\n"
        )
    if not done:
        return "\n".join(parts + ["No prompt has a row of every method yet.\n"])
    parts += [
        f"### MoRF, LeRF and ABPC (discrepancy `{DISCREPANCY}`, the default) beside GiLOT Tables 1 and 6\n",
        "Means over prompts with 95% BCa bootstrap intervals. The paper's columns are its Table 1 "
        "(Llama2 chat models, its own discrepancy and answer length) and Table 6 (its GPUs): they "
        "compare in ranking, not in level. Time per sample is the explanation's alone: the greedy "
        "answer is generated once and given to the methods that explain one (GiLOT runs its own "
        'beam search), as the paper\'s baselines are "adopted with given responses".\n',
        _main_table(rows, ms, done),
        f"### The same under the authors' code's discrepancy (`{ALSO}`)\n",
        _aligned_table(rows, ms, done),
        "### Paired differences of ABPC over the same prompts\n",
        "Mean difference and its 95% paired bootstrap interval; **bold**: the interval excludes 0 "
        "(not corrected for the number of comparisons).\n",
        _paired_table(rows, ms, done),
        _random_spread(rows, done),
        "### Cost per sample\n",
        _cost_table(rows, ms, done),
    ]
    complete = [r for r in rows if r["example"] in done]
    plot_curves(complete, ms, out / f"{NAME}-curves.png")
    aligned = [{**r, "morf": r[f"{ALSO}_morf"], "lerf": r[f"{ALSO}_lerf"]} for r in complete]
    plot_curves(aligned, ms, out / f"{NAME}-curves-{ALSO}.png", ylabel="aligned token distance")
    parts += [
        f"![Mean MoRF and LeRF curves, discrepancy {DISCREPANCY}]({link}/{NAME}-curves.png)\n",
        f"![Mean MoRF and LeRF curves, discrepancy {ALSO}]({link}/{NAME}-curves-{ALSO}.png)\n",
    ]
    return "\n".join(parts)


DEFAULT_N = 24
"""Prompts of a full run (12 Alpaca, 12 ShareGPT): 2.7 hours of the stored rows' own time (400 s
per prompt for all methods and their curves), the largest share of the suite's 8 hours on 2 cores."""

STUDY = Study(
    NAME,
    "GiLOT Table 1 and Table 6: faithfulness and time per sample",
    tasks,
    compute,
    section,
    methods,
    arguments,
    DEFAULT_N,
)
