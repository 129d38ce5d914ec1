"""Study ``xprompt``: the XPrompt paper's Table 1, Figure 3, Table 4 and Table 2 on SmolLM2.

"XPrompt: Explaining Large Language Model's Generation via Joint Prompt Attribution" (Chang et
al., 2024), Section 5 and Appendix A.3: remove the k prompt tokens a method ranks first, regenerate
greedily, and compare with the original answer y (:func:`~genattr.evaluate.faithfulness.similarity`):
BLEU, ROUGE-L precision / recall / F1, SentenceBERT cosine, the probability ratio
PR = p(y | m x) / p(y | x) and KL, at k = 3 (Table 1) and PR over k = 1..5 (Figure 3); the
log-likelihood log p(y | m x) along XPrompt's search, with and without its gradient
initialisation and gradient sampling (Table 4); the time per prompt (Table 2).

Methods: ``random`` (the similarity protocol's ``RANDOM_MASKS`` random k-subsets, the paper's
Random), ``leave_one_out`` (the paper's Captum, its Eq. 2), ``integrated_gradients`` and
``xprompt`` (searched afresh for each k); the ablations ``xprompt_no_init`` (``random_init``) and
``xprompt_no_probability`` (``uniform_sampling``) at k = 3, their trace only, and beside them
``xprompt_log_guidance`` (``guidance='log_probability'``), a variant the paper does not run: where
p(y | x) is small the paper's guidance p(y | x) |d log p / dm| makes softmax(g) nearly uniform, so
that w/o Probability draws the same swaps; the log form samples by the gradient itself.

Prompts, each the user's message in the chat template: XPrompt's Alpaca subset in its order and
the counselling questions of 15 to ``MAX_WORDS`` words (the paper's MHC; at least 15 words as the
paper, at most ``MAX_WORDS`` for the budget), shuffled with seed 0; the two interleaved. The
counselling questions are sensitive: the document gives their ids and numbers only.
"""

from __future__ import annotations

import random as _random
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import GenattrError, InputError
from ..evaluate.benchmark import example_seed, timed_explain
from ..evaluate.datasets import records
from ..evaluate.faithfulness import similarity
from ..evaluate.stats import mean_interval, paired_interval
from ..evaluate.tables import save_png
from .common import (
    SEED,
    Example,
    Study,
    Task,
    chat_prompt,
    complete_examples,
    fmt_interval,
    interval_cell,
    markdown_table,
    paired_cell,
    run_arguments,
    values,
)

NAME = "xprompt"
LEVEL = "token"
MASK = "attention"
MAX_NEW_TOKENS = 20
K = 3
KS = (1, 2, 3, 4, 5)
RANDOM_MASKS = 5
MAX_WORDS = 100
N_ITER = 50
"""XPrompt's swap iterations (the paper's Table 4 runs to 50)."""
DATASETS = ("xprompt-alpaca", "counsel-chat")
MAIN = ("random", "leave_one_out", "integrated_gradients", "xprompt")
ABLATIONS: dict[str, dict] = {
    "xprompt_no_init": {"random_init": True},
    "xprompt_no_probability": {"uniform_sampling": True},
    "xprompt_log_guidance": {"guidance": "log_probability"},
}
PARAMS: dict[str, dict] = {
    "integrated_gradients": {"n_steps": 20},
    "xprompt": {"n_iter": N_ITER},
    **{name: {"k": K, "n_iter": N_ITER, **extra} for name, extra in ABLATIONS.items()},
}
TRACE_AT = (1, 5, 10, 15, 20, 30, 40, 50)
DEFAULT_N = 20
METRICS = (
    ("bleu", "BLEU ↓"),
    ("rouge_l_precision", "ROUGE-L P ↓"),
    ("rouge_l_recall", "ROUGE-L R ↓"),
    ("rouge_l_f1", "ROUGE-L F1 ↓"),
    ("sentence_cosine", "SentenceBERT ↓"),
    ("probability_ratio", "PR ↓"),
    ("kl", "KL ↑"),
)

PAPER_NAMES = {
    "random": "Random",
    "leave_one_out": "Captum",
    "integrated_gradients": "Integrated-Gradient",
    "xprompt": "XPrompt",
}
PAPER_TABLE1 = {  # XPrompt Table 1, LLaMA-2 (7B-Chat): BLEU, ROUGE-L P, R, F1, SentenceBert, PR, KL
    "xprompt-alpaca": {
        "random": (0.601, 0.527, 0.533, 0.522, 0.825, 0.842, 0.134),
        "leave_one_out": (0.515, 0.409, 0.421, 0.409, 0.680, 0.602, 0.417),
        "integrated_gradients": (0.541, 0.424, 0.435, 0.424, 0.725, 0.726, 0.242),
        "xprompt": (0.482, 0.388, 0.386, 0.379, 0.642, 0.549, 0.504),
    },
    "counsel-chat": {  # the paper's MHC
        "random": (0.723, 0.617, 0.614, 0.615, 0.787, 0.958, 0.023),
        "leave_one_out": (0.640, 0.497, 0.493, 0.494, 0.663, 0.760, 0.189),
        "integrated_gradients": (0.646, 0.500, 0.496, 0.498, 0.687, 0.836, 0.117),
        "xprompt": (0.575, 0.403, 0.405, 0.403, 0.602, 0.710, 0.238),
    },
}
PAPER_TABLE2 = {
    "xprompt-alpaca": {"leave_one_out": 1169.648, "xprompt": 15.225},
    "counsel-chat": {"leave_one_out": 1806.551, "xprompt": 14.473},
}
PAPER_TABLE4 = {  # log p(y | m x) after 1, 5, 10, 15, 20, 30, 40, 50 iterations
    "xprompt": (-42.448, -51.661, -56.378, -59.852, -62.303, -64.812, -67.274, -69.426),
    "xprompt_no_init": (-33.906, -44.555, -50.828, -55.652, -58.483, -62.694, -64.793, -66.415),
    "xprompt_no_probability": (-41.759, -49.867, -53.784, -57.107, -59.639, -63.339, -65.848, -67.496),
}


def methods() -> list[str]:
    return [*MAIN, *ABLATIONS]


def examples(n: int | None = None) -> list[Example]:
    """The first ``n`` prompts: Alpaca and counselling questions in turn (see the module docstring)."""
    alpaca = [
        Example(f"xprompt-alpaca:{r['id']}", "xprompt-alpaca", r["prompt"]) for r in records("xprompt-alpaca")
    ]
    counsel = [r for r in records("counsel-chat") if 15 <= len(r["prompt"].split()) <= MAX_WORDS]
    _random.Random(SEED).shuffle(counsel)
    questions = [Example(f"counsel-chat:{r['id']}", "counsel-chat", r["prompt"]) for r in counsel]
    mixed = [ex for pair in zip(alpaca, questions, strict=False) for ex in pair]
    return mixed[:n]


def settings(model: str, dtype: str | None, method: str) -> dict:
    return {
        "study": NAME,
        "model": model,
        "dtype": dtype,
        "seed": SEED,
        "prompt": "chat, user message",
        "level": LEVEL,
        "mask": MASK,
        "max_new_tokens": MAX_NEW_TOKENS,
        "ks": list(KS) if method in MAIN else [K],
        "random_masks": RANDOM_MASKS,
        "params": PARAMS.get(method, {}),
    }


def tasks(model: str, dtype: str | None, n: int | None, chosen: Sequence[str] | None) -> list[Task]:
    unknown = [m for m in chosen or () if m not in methods()]
    if unknown:
        raise InputError(f"{NAME} has no method {unknown}; choose from {', '.join(methods())}.")
    ms = [m for m in methods() if chosen is None or m in chosen]
    return [Task(m, ex, settings(model, dtype, m)) for ex in examples(n) for m in ms]


def _explain(lm, prompt, method: str, seed: int, params: dict):
    registered = "xprompt" if method in ABLATIONS else method
    return timed_explain(
        lm,
        prompt,
        method=registered,
        level=LEVEL,
        mask=MASK,
        seed=seed,
        max_new_tokens=MAX_NEW_TOKENS,
        token_scores=False,
        **params,
    )


def _attributions(lm, prompt, task: Task, seed: int) -> dict:
    """k -> (attribution, cost): XPrompt searched for each k, any other method explained once."""
    params = task.settings["params"]
    if task.method.startswith("xprompt"):
        return {k: _explain(lm, prompt, task.method, seed, {**params, "k": k}) for k in task.settings["ks"]}
    once = _explain(lm, prompt, task.method, seed, params)
    return {k: once for k in task.settings["ks"]}


def compute(lm, task: Task) -> dict:
    """At k = 3 all the similarity metrics, at every k the probability ratio; the time per prompt
    (k = 3); for XPrompt and its ablations the log-likelihood trace; for ``random``, the protocol's
    random masks (averaged) in place of the ranking's own."""
    prompt = chat_prompt(lm, task.example.text)
    seed = example_seed(SEED, task.example.id)
    try:
        found = _attributions(lm, prompt, task, seed)
        res, cost = found[K]
        row: dict = {**cost, "n_features": len(res.features)}
        if "trace" in res.extras:
            row["trace"] = res.extras["trace"]
        if task.method in ABLATIONS:
            return row
        prefix = "random_" if task.method == "random" else ""
        started = time.perf_counter()
        for k, (res, _) in found.items():
            n_random = RANDOM_MASKS if prefix else 0
            sim = similarity(lm, res, k=k, max_new_tokens=MAX_NEW_TOKENS, n_random=n_random, seed=seed)
            row[f"pr_at_{k}"] = sim[f"{prefix}probability_ratio"]
            if k == K:
                row |= {key: sim[f"{prefix}{key}"] for key, _ in METRICS}
                row["bleu"] /= 100  # sacrebleu's 0..100 as the paper's 0..1
        row["protocol_seconds"] = time.perf_counter() - started
    except GenattrError as exc:
        return {"error": str(exc)}
    return row


# --------------------------------------------------------------------- the document's section
def _table1(rows: list[dict], dataset: str, done: list[str]) -> str:
    header = [
        "method",
        *[label for _, label in METRICS],
        "time per prompt (s)",
        "paper (LLaMA-2 7B-Chat)",
        "paper's time (s, Table 2)",
    ]
    body = []
    for m in MAIN:
        if not any(r["method"] == m for r in rows):
            continue
        cells = [interval_cell(rows, m, key, done) for key, _ in METRICS]
        time = interval_cell(rows, m, "seconds", done) if m != "random" else ""
        paper = PAPER_TABLE1[dataset].get(m)
        body.append(
            [
                f"`{m}` ({PAPER_NAMES[m]})",
                *cells,
                time,
                " / ".join(f"{v:.3f}" for v in paper) if paper else "",
                f"{PAPER_TABLE2[dataset][m]:.1f}" if m in PAPER_TABLE2[dataset] else "",
            ]
        )
    return markdown_table(header, body)


def _paired(rows: list[dict], done: list[str]) -> str:
    keys = ("probability_ratio", "kl", "rouge_l_f1", "sentence_cosine")
    body = [
        [f"`xprompt` - `{m}`", *[paired_cell(rows, "xprompt", m, key, done) for key in keys]]
        for m in ("random", "leave_one_out", "integrated_gradients")
        if any(r["method"] == m for r in rows)
    ]
    return markdown_table(["difference", "PR", "KL", "ROUGE-L F1", "SentenceBERT"], body)


def _pr_over_k(rows: list[dict], done: list[str], path: Path) -> str:
    from matplotlib.figure import Figure

    present = [m for m in MAIN if any(r["method"] == m for r in rows)]
    body = [[f"`{m}`", *[interval_cell(rows, m, f"pr_at_{k}", done) for k in KS]] for m in present]
    fig = Figure(figsize=(5.5, 3.8))
    ax = fig.subplots()
    for i, m in enumerate(present):
        ax.plot(
            KS, [np.mean(values(rows, m, f"pr_at_{k}", done)) for k in KS], marker="o", label=m, color=f"C{i}"
        )
    ax.set_xlabel("k (tokens removed)")
    ax.set_ylabel("probability ratio")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    save_png(fig, path)
    return markdown_table(["method", *[f"PR @{k}" for k in KS]], body)


def _trace_table(rows: list[dict]) -> str:
    """Table 4: each variant's mean trace, then XPrompt minus each variant paired by prompt, the
    paper's value (or its difference of means) beside ours where the paper ran the variant."""

    def paper(values: Sequence[float] | None) -> str:
        return " / ".join(f"{v:.1f}" for v in values) if values else "-"

    traces = {
        m: {r["example"]: r["trace"] for r in rows if r["method"] == m and "trace" in r}
        for m in ("xprompt", *ABLATIONS)
    }
    body = []
    for m, by_example in traces.items():
        if by_example:
            cells = [fmt_interval(mean_interval([t[i] for t in by_example.values()])) for i in TRACE_AT]
            body.append([f"`{m}`", str(len(by_example)), *cells, paper(PAPER_TABLE4.get(m))])
    for m in ABLATIONS:
        both = [e for e in traces["xprompt"] if e in traces[m]]
        if both:
            cells = []
            for i in TRACE_AT:
                iv = paired_interval([traces["xprompt"][e][i] for e in both], [traces[m][e][i] for e in both])
                cells.append(f"**{fmt_interval(iv)}**" if iv.excludes_zero else fmt_interval(iv))
            ours, theirs = PAPER_TABLE4["xprompt"], PAPER_TABLE4.get(m)
            difference = [a - b for a, b in zip(ours, theirs, strict=True)] if theirs else None
            body.append([f"`xprompt` - `{m}`", str(len(both)), *cells, paper(difference)])
    header = ["variant", "prompts", *[f"after {i}" for i in TRACE_AT], "paper (LLaMA-2)"]
    return markdown_table(header, body)


def section(rows: list[dict], out: Path, link: str) -> str:
    failed = sorted(f"`{r['method']}` on {r['example']}: {r['error']}" for r in rows if "error" in r)
    hours = sum(r.get("seconds", 0) + r.get("protocol_seconds", 0) for r in rows) / 3600
    parts = [
        f"Compute: {hours:.2f} hours over {len(rows)} rows (explanations and the similarity protocol, "
        "the rows' own times). The counselling questions are given by "
        "id only. BLEU is on the paper's 0..1 scale; the paper's columns are its Table 1 "
        "(LLaMA-2 7B-Chat; its MHC set beside the counselling questions).\n"
    ]
    if failed:
        parts.append("Rows that failed:\n\n" + "\n".join(f"- {f}" for f in failed) + "\n")
    present = [m for m in MAIN if any(r["method"] == m for r in rows)]
    for dataset in DATASETS:
        subset = [r for r in rows if r["dataset"] == dataset]
        done = complete_examples(subset, present, "probability_ratio")
        if not done:
            continue
        parts += [
            f"### {dataset}: Table 1 at k = {K}, {len(done)} prompts ({', '.join(done)})\n",
            _table1(subset, dataset, done),
            "Paired differences over the same prompts (**bold**: the 95% interval excludes 0):\n",
            _paired(subset, done),
            "Probability ratio over k (Figure 3):\n",
            _pr_over_k(subset, done, out / f"{NAME}-pr-{dataset}.png"),
            f"![Probability ratio over k, {dataset}]({link}/{NAME}-pr-{dataset}.png)\n",
        ]
    parts += [
        f"### XPrompt's search, log p(y | m x) by iteration, k = {K} (Table 4)\n",
        "Means over all prompts with 95% BCa intervals, then XPrompt minus each ablation paired by "
        "prompt (**bold**: the interval excludes 0; negative: XPrompt's search went lower).\n",
        _trace_table(rows),
    ]
    return "\n".join(parts)


def arguments(rows: list[dict]) -> str:
    return run_arguments([ex.id for ex in examples()], rows, methods())


STUDY = Study(
    NAME,
    "XPrompt Table 1, Figure 3, Table 4 and Table 2: joint attribution",
    tasks,
    compute,
    section,
    methods,
    arguments,
    DEFAULT_N,
)
