"""Study ``icl``: GiLOT Section 5.1, Table 4 and Table 5, in-context learning on SST-2 with SmolLM2.

"GiLOT: Interpreting Generative Language Models via Optimal Transport" (ICML 2024), Section 5.1
and Appendix A.1 (:func:`~genattr.usecases.icl_orders`): for each setting (a prompt template and
a set of demonstrations), every order of the demonstrations before each query sentence; per
setting the model's accuracy over queries and orders, its order sensitivity (per query the
standard deviation over orders of the top label's probability, negated when wrong, the paper's
footnote 4; averaged over queries) and the attribution-guided query weight aqw (Eq. 12: GiLOT's
share on the query's words); then Pearson's r and p of accuracy and of sensitivity against aqw
across settings (Table 4), and Spearman's rho of each template's mean aqw, accuracy and
sensitivity with the paper's Table 5.

Settings: the paper's 9 templates (Table 5, its empty prefix cells read as the prefix above:
four prefixes with two suffixes each, and "Review:" / "Sentiment:") x ``DEMO_SETS`` sets of
``SHOTS`` demonstrations drawn (seed 0) from the SST-2 train pool with both labels present. Each
demonstration is "PREFIX sentence SUFFIX label", the query "PREFIX sentence SUFFIX", one per
line, as plain text (the label word is the next token); the model's answer is the label word
(" positive" / " negative") it gives the higher probability. Queries: the first n SST-2 dev
sentences, the same for every setting. GiLOT explains the distribution of the next token only
(``n_positions`` = 1, where beams are exact): the answer is one label word.
"""

from __future__ import annotations

import random as _random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import GenattrError, InputError
from ..evaluate.datasets import sst2_sentences
from ..evaluate.stats import mean_interval
from ..evaluate.tables import save_png
from ..usecases import correlate, icl_orders
from .common import SEED, Example, Study, Task, counted, fmt, fmt_interval, markdown_table

NAME = "icl"
TEMPLATES = (
    ("Review:", "Sentiment:"),
    ("The emotion of", "is"),
    ("The emotion of", "shows"),
    ("The sentiment of", "is"),
    ("The sentiment of", "indicates"),
    ("Question:", "Answer:"),
    ("Question:", "has a sentiment of"),
    ("Input:", "sounds"),
    ("Input:", "Output:"),
)
PAPER_TABLE5 = (  # aqw, acc, sen of LLaMA-13b, in the order of TEMPLATES
    (0.4547, 0.9458, 0.0116),
    (0.2806, 0.6479, 0.2336),
    (0.2858, 0.6104, 0.3064),
    (0.2790, 0.6604, 0.2281),
    (0.3164, 0.6792, 0.2350),
    (0.4190, 0.8021, 0.0722),
    (0.3932, 0.7146, 0.1860),
    (0.3025, 0.7104, 0.1857),
    (0.4309, 0.8313, 0.0887),
)
PAPER_TABLE4 = {"sensitivity": (-0.7688, 1.13e-11), "accuracy": (0.7697, 1.04e-11)}
LABELS = (" positive", " negative")
SHOTS = 3
DEMO_SETS = 3
LEVEL = "word"
PARAMS: dict[str, Any] = {"n_positions": 1, "num_beams": 1}
DEFAULT_N = 4
"""Queries of a full run, each under all 27 settings and every order: 108 rows, 3 CPU hours at the
first rows' 99 CPU seconds a row (GiLOT over the prompt's words for each of the 6 orders)."""
METHOD = "gilot"


@dataclass(frozen=True)
class Setting:
    """One template and demonstration set, summarised over its queries (each over every order)."""

    query_weight: float
    accuracy: float
    sensitivity: float


def demonstration_sets() -> list[list[dict]]:
    """``DEMO_SETS`` sets of ``SHOTS`` pool sentences with both labels, drawn with seed 0."""
    _, pool = sst2_sentences()
    rng = _random.Random(SEED)
    sets: list[list[dict]] = []
    while len(sets) < DEMO_SETS:
        drawn = rng.sample(pool, SHOTS)
        if len({d["label_text"] for d in drawn}) == 2:
            sets.append(drawn)
    return sets


def _line(template: tuple[str, str], sentence: str) -> str:
    prefix, suffix = template
    return f"{prefix} {sentence} {suffix}"


def examples(n: int | None = None) -> list[Example]:
    """One example per setting and query: the prompt in the demonstrations' first order, query by
    query (every setting's first query, then every setting's second, ...), so that a run stopped
    early leaves every setting with the same queries."""
    dev, _ = sst2_sentences()
    demos = demonstration_sets()
    out = []
    for q in dev[:n]:
        for t, template in enumerate(TEMPLATES):
            for d, demo in enumerate(demos):
                lines = [f"{_line(template, x['text'])} {x['label_text']}" for x in demo]
                text = "\n".join([*lines, _line(template, q["text"])])
                out.append(Example(f"icl:t{t}:d{d}:{q['id']}", "sst2", text, f" {q['label_text']}"))
    return out


def methods() -> list[str]:
    return [METHOD]


def settings(model: str, dtype: str | None) -> dict:
    return {
        "study": NAME,
        "model": model,
        "dtype": dtype,
        "seed": SEED,
        "prompt": "plain text, in-context",
        "level": LEVEL,
        "labels": list(LABELS),
        "params": PARAMS,
    }


def tasks(model: str, dtype: str | None, n: int | None, chosen: Sequence[str] | None) -> list[Task]:
    if chosen is not None and METHOD not in chosen:
        raise InputError(f"{NAME} runs {METHOD} only.")
    return [Task(METHOD, ex, settings(model, dtype)) for ex in examples(n)]


def compute(lm, task: Task) -> dict:
    """Every order of the setting's demonstrations before the query: aqw, prediction, probability."""
    *demos, query = task.example.text.split("\n")
    started, cpu = time.perf_counter(), time.process_time()
    try:
        study = icl_orders(
            lm,
            demos,
            query,
            task.example.target or "",  # every icl example has its gold label
            LABELS,
            separator="\n",
            method=METHOD,
            level=LEVEL,
            seed=SEED,
            **PARAMS,
        )
    except GenattrError as exc:
        return {"error": str(exc)}
    return {
        "seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu,
        "orders": [list(r.order) for r in study.rows],
        "aqw": [r.query_weight for r in study.rows],
        "correct": [r.correct for r in study.rows],
        "probability": [r.probability for r in study.rows],
        "query_weight": study.query_weight,
        "accuracy": study.accuracy,
        "sensitivity": study.sensitivity,
    }


# --------------------------------------------------------------------- the document's section
def _setting_of(row: dict) -> tuple[int, int]:
    t, d = row["example"].split(":")[1:3]
    return int(t[1:]), int(d[1:])


def _settings(rows: list[dict]) -> dict[tuple[int, int], list[dict]]:
    """The rows of each setting, over the queries every setting has."""
    done = [r for r in rows if "accuracy" in r]
    queries: dict[tuple[int, int], set[str]] = {}
    for r in done:
        queries.setdefault(_setting_of(r), set()).add(r["example"].split(":", 3)[3])
    common = set.intersection(*queries.values()) if queries else set()
    grouped: dict[tuple[int, int], list[dict]] = {}
    for r in done:
        if r["example"].split(":", 3)[3] in common:
            grouped.setdefault(_setting_of(r), []).append(r)
    return dict(sorted(grouped.items()))


def _summary(found: list[dict]) -> Setting:
    return Setting(
        *(float(np.mean([r[k] for r in found])) for k in ("query_weight", "accuracy", "sensitivity"))
    )


def _plot(summaries: list[Setting], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.8))
    axes = fig.subplots(1, 2)
    aqw = [s.query_weight for s in summaries]
    for ax, name in zip(axes, ("accuracy", "sensitivity"), strict=True):
        ax.scatter(aqw, [getattr(s, name) for s in summaries], color="C0")
        ax.set_xlabel("aqw")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_png(fig, path)


def _template_agreement(summaries: dict[tuple[int, int], Setting], templates: list[int]) -> str:
    """Spearman's rho between each template's mean aqw, accuracy and sensitivity (over its
    demonstration sets) and the paper's Table 5 values for the same templates."""
    from scipy.stats import spearmanr

    body = []
    for i, name in enumerate(("query_weight", "accuracy", "sensitivity")):
        ours = [np.mean([getattr(v, name) for (t, _), v in summaries.items() if t == tt]) for tt in templates]
        rho, p = spearmanr(ours, [PAPER_TABLE5[t][i] for t in templates])
        body.append([name if name != "query_weight" else "aqw", fmt(float(rho)), f"{p:.3g}"])
    return markdown_table(["per template", "Spearman rho with the paper", "p-value"], body)


def section(rows: list[dict], out: Path, link: str) -> str:
    grouped = _settings(rows)
    failed = sorted(f"{r['example']}: {r['error']}" for r in rows if "error" in r)
    hours = sum(r.get("seconds", 0) for r in rows) / 3600
    parts = [f"Compute: {hours:.2f} hours over {len(rows)} rows (one per setting and query, every order).\n"]
    if failed:
        parts.append("Rows that failed:\n\n" + "\n".join(f"- {f}" for f in failed) + "\n")
    if not grouped:
        return "\n".join(parts)
    n_queries = len(next(iter(grouped.values())))
    per_query: dict[str, list[float]] = {}
    for found in grouped.values():
        for r in found:
            per_query.setdefault(r["example"].split(":", 3)[3], []).append(r["accuracy"])
    overall = mean_interval([float(np.mean(v)) for v in per_query.values()])
    summaries = {key: _summary(found) for key, found in grouped.items()}
    parts.append(
        f"The model's in-context accuracy over every setting, query and order: {fmt_interval(overall)} "
        f"(95% BCa interval over the {counted(len(per_query), 'query', 'queries')}; chance 0.5). Settings: {len(grouped)} "
        f"({counted(n_queries, 'query', 'queries')} each, {SHOTS}! orders of {SHOTS} demonstrations).\n"
    )
    body = []
    for (t, d), found in grouped.items():
        paper = PAPER_TABLE5[t]
        cells = [
            fmt_interval(mean_interval([r[k] for r in found]))
            for k in ("query_weight", "accuracy", "sensitivity")
        ]
        body.append(
            [f"{TEMPLATES[t][0]} … {TEMPLATES[t][1]}", str(d), *cells, " / ".join(f"{v:.4f}" for v in paper)]
        )
    parts += [
        "### Settings (Table 5)\n",
        "Means over queries with 95% BCa intervals; the paper's column is LLaMA-13b's aqw / acc / sen "
        "for the template (its 7 demonstration sets averaged).\n",
        markdown_table(
            ["template", "demo set", "aqw", "accuracy", "sensitivity", "paper aqw / acc / sen"], body
        ),
    ]
    templates = sorted({t for t, _ in grouped})
    if len(templates) >= 3:
        parts += [
            f"Per template (the mean over its demonstration sets) against the paper's Table 5, over the "
            f"{len(templates)} templates:\n",
            _template_agreement(summaries, templates),
        ]
    if len(summaries) >= 3:
        r = correlate(list(summaries.values()))
        table = [
            [
                f"{name} versus aqw",
                fmt(r[name][0]),
                f"{r[name][1]:.3g}",
                f"{PAPER_TABLE4[name][0]:.4f}",
                f"{PAPER_TABLE4[name][1]:.3g}",
            ]
            for name in ("sensitivity", "accuracy")
        ]
        _plot(list(summaries.values()), out / f"{NAME}-aqw.png")
        parts += [
            f"### Correlations across the {len(summaries)} settings (Table 4)\n",
            markdown_table(["", "Pearson r", "p-value", "paper r", "paper p"], table),
            f"![Accuracy and sensitivity against aqw, one point per setting]({link}/{NAME}-aqw.png)\n",
        ]
    return "\n".join(parts)


def arguments(rows: list[dict]) -> str:
    dev, _ = sst2_sentences()
    order = [str(q["id"]) for q in dev]
    n = 1 + max(order.index(r["example"].split(":", 3)[3]) for r in rows)
    return f"--n {n}"


STUDY = Study(
    NAME,
    "GiLOT Section 5.1, Tables 4-5: in-context learning and the query weight",
    tasks,
    compute,
    section,
    methods,
    arguments,
    DEFAULT_N,
)
