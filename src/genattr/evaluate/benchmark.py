"""``genattr benchmark``: methods x examples x metrics, resumable, with tables and plots.

Every finished (method, example) row is appended to ``rows.jsonl`` in the output directory and
flushed to disk before the next one starts, so an interrupted run loses nothing finished;
running the same command again skips the rows already there (a last line cut short by the
interruption is dropped and recomputed) and ends with the same tables as an uninterrupted run.

Outputs, written atomically: ``table.md`` and ``table.csv`` (faithfulness and ground-truth
metrics laid out like the papers' tables: metrics as rows with their direction, methods as
columns, the best in bold and the second underlined, one section per dataset and one over
all; a last column holds the similarity protocol's random-mask baseline, filled for its rows), ``cost.md`` (time, forward passes, tokens, peak memory: kept apart because timings differ
from run to run), and ``curves.png`` (mean MoRF and LeRF curves per method).

Data: ``zoo:TASK`` (the zoo's labelled examples, ``n`` per task, seeded), a real prompt set by
short name (``gilot``, ``xprompt-alpaca``, ``sst2``, ``counsel-chat``: :mod:`genattr.evaluate.datasets`,
the first ``n``), or a JSONL file of
``{"prompt": ..., "target": optional, "ground_truth": optional [[start, end], ...]}`` (character
spans; a word feature is in the ground truth when it overlaps a span). A malformed line is
reported with its line number and skipped.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import registry
from ..api import explain
from ..errors import GenattrError, InputError, ResultFormatError
from ..model import LanguageModel
from ..prompt import Prompt
from ..result import write_atomic
from . import ground_truth
from .faithfulness import erasure, perturbation_curves, similarity

METRIC_GROUPS = ("curves", "erasure", "similarity", "ground_truth")

# (row key, label, higher is better)
TABLE_ROWS = {
    "curves": [("auc_morf", "MoRF", True), ("auc_lerf", "LeRF", False), ("abpc", "ABPC", True)],
    "erasure": [
        ("aopc_log_odds", "log-odds (AOPC)", False),
        ("aopc_comprehensiveness", "comprehensiveness (AOPC)", True),
        ("aopc_sufficiency", "sufficiency (AOPC)", False),
        ("aopc_comprehensiveness_clipped", "comprehensiveness+ (AOPC)", True),
        ("aopc_sufficiency_clipped", "sufficiency+ (AOPC)", True),
    ],
    "similarity": [
        ("bleu", "BLEU", False),
        ("rouge_l_f1", "ROUGE-L F1", False),
        ("sentence_cosine", "SentenceBERT cosine", False),
        ("probability_ratio", "probability ratio", False),
        ("kl", "KL", True),
    ],
    "ground_truth": [
        ("recall_at_k", "recall@|G|", True),
        ("auroc", "AUROC", True),
        ("pointing_game", "pointing game", True),
        ("joint_success", "joint success", True),
    ],
}
COST_ROWS = [
    ("seconds", "time per example (s)", False),
    ("forward_passes", "forward passes", False),
    ("tokens_processed", "tokens processed", False),
    ("peak_rss_mb", "peak memory (MB, process)", False),
]


@dataclass(frozen=True)
class Item:
    """One benchmark example: an id, its dataset, the prompt, an optional target and ground truth."""

    id: str
    dataset: str
    prompt: str
    target: str | None = None
    ground_truth: tuple[int, ...] | None = None
    spans: tuple[tuple[int, int], ...] | None = None


def _jsonl_items(path: Path, n: int | None) -> tuple[list[Item], list[str]]:
    items, problems = [], []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InputError(f"cannot read data file {path}: {exc}.") from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if (
                not isinstance(record, dict)
                or not isinstance(record.get("prompt"), str)
                or not record["prompt"].strip()
            ):
                raise ValueError("needs a non-empty string field 'prompt'")
            target = record.get("target")
            if target is not None and (not isinstance(target, str) or not target):
                raise ValueError("'target' must be a non-empty string when given")
            spans = record.get("ground_truth")
            if spans is not None:
                if not (
                    isinstance(spans, list)
                    and spans
                    and all(
                        isinstance(s, list)
                        and len(s) == 2
                        and all(isinstance(x, int) for x in s)
                        and 0 <= s[0] < s[1] <= len(record["prompt"])
                        for s in spans
                    )
                ):
                    raise ValueError(
                        "'ground_truth' must be a list of [start, end] character spans of the prompt"
                    )
                spans = tuple((s[0], s[1]) for s in spans)
        except (json.JSONDecodeError, ValueError) as exc:
            problems.append(f"{path}:{number}: skipped, {exc}")
            continue
        items.append(Item(f"{path.name}:{number}", path.name, record["prompt"], target, None, spans))
        if n is not None and len(items) >= n:
            break
    return items, problems


def load_items(specs: Sequence[str], n: int | None = None, seed: int = 0) -> tuple[list[Item], list[str]]:
    """Items of every data spec (``zoo:TASK``, a prompt set's short name from
    :data:`~genattr.evaluate.datasets.DATASETS`, or a JSONL path) and the problems found reading them."""
    from ..zoo import TASKS, examples
    from .datasets import DATASETS, records

    items, problems = [], []
    for spec in specs:
        if spec.startswith("zoo:"):
            task = spec.split(":", 1)[1]
            if task not in TASKS:
                raise InputError(f"unknown zoo task {task!r} in --data; choose from {', '.join(TASKS)}.")
            for i, ex in enumerate(examples(task, 10 if n is None else n, seed=seed)):
                items.append(
                    Item(f"zoo:{task}:{i}", f"zoo:{task}", ex.prompt, ex.answer, tuple(ex.ground_truth))
                )
        elif spec in DATASETS:
            items += [
                Item(f"{spec}:{r['id']}", spec, r["prompt"], r.get("target")) for r in records(spec, n, seed)
            ]
        else:
            found, trouble = _jsonl_items(Path(spec), n)
            items += found
            problems += trouble
    return items, problems


def _truth(item: Item, res) -> tuple[int, ...] | None:
    if item.ground_truth is not None:
        return item.ground_truth
    if item.spans is None:
        return None
    return (
        tuple(f.index for f in res.features if any(f.start < e and s < f.end for s, e in item.spans)) or None
    )


def evaluate_one(
    lm: LanguageModel,
    method: str,
    item: Item,
    metrics: Sequence[str],
    *,
    seed: int = 0,
    level: str = "word",
    mask: str | None = None,
    max_new_tokens: int = 20,
    k: int = 3,
) -> dict:
    """Explain one item with one method and measure it: one benchmark row."""
    row = {"method": method, "example": item.id, "dataset": item.dataset}
    params = {}
    if "k" in registry.get(method).params:
        params["k"] = len(item.ground_truth) if item.ground_truth else k
    started, usage = time.perf_counter(), lm.usage.copy()
    try:
        n_features = len(Prompt.from_text(lm.tokenizer, item.prompt).features(level))
        if "k" in params:
            params["k"] = min(params["k"], n_features)
        res = explain(
            lm,
            item.prompt,
            target=item.target,
            method=method,
            level=level,
            seed=seed,
            max_new_tokens=max_new_tokens,
            **({"mask": mask} if mask else {}),
            **params,
        )
    except GenattrError as exc:
        return {**row, "error": str(exc)}
    row.update(
        {
            "seconds": time.perf_counter() - started,
            **{key: value for key, value in lm.usage.since(usage).items() if key != "model_seconds"},
        }
    )
    if "curves" in metrics:
        curves = perturbation_curves(lm, res, max_new_tokens=max_new_tokens)
        row.update(
            {
                "fractions": curves.fractions,
                "morf": curves.morf,
                "lerf": curves.lerf,
                "auc_morf": curves.auc_morf,
                "auc_lerf": curves.auc_lerf,
                "abpc": curves.abpc,
            }
        )
    if "erasure" in metrics:
        row.update({key: value for key, value in erasure(lm, res).items() if key.startswith("aopc_")})
    if "similarity" in metrics:
        try:
            sim = similarity(lm, res, k=min(k, len(res.features)), max_new_tokens=max_new_tokens, seed=seed)
            row.update(
                {key: value for key, value in sim.items() if not isinstance(value, str) and key != "k"}
            )
        except InputError as exc:
            row["similarity_error"] = str(exc)
    truth = _truth(item, res) if "ground_truth" in metrics else None
    if truth:
        row.update(ground_truth.metrics(res, truth))
    row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return row


class RowStore:
    """The append-only JSONL file of finished rows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[dict] = []
        if path.exists():
            lines = path.read_text(encoding="utf-8").split("\n")
            complete = lines[:-1]  # a file ending in "\n" leaves "" last; else the last line was cut short
            for number, line in enumerate(complete, start=1):
                if not line.strip():
                    continue
                try:
                    self.rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ResultFormatError(
                        f"{path}:{number} is not a benchmark row ({exc}); remove the line or "
                        "the file to recompute it."
                    ) from exc
            if lines[-1].strip():
                write_atomic(path, "".join(json.dumps(r) + "\n" for r in self.rows))
        self.done = {(r["method"], r["example"]) for r in self.rows}

    def append(self, row: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.rows.append(row)
        self.done.add((row["method"], row["example"]))


def run_benchmark(
    lm: LanguageModel,
    methods: Sequence[str],
    items: Sequence[Item],
    out: str | os.PathLike,
    *,
    metrics: Sequence[str] = METRIC_GROUPS,
    seed: int = 0,
    progress: bool = True,
    on_row: Callable[[dict], None] | None = None,
    **settings,
) -> dict:
    """Run (or resume) a benchmark into ``out``; returns {"rows", "table", "cost"}."""
    unknown = [m for m in metrics if m not in METRIC_GROUPS]
    if unknown:
        raise InputError(f"unknown metrics {unknown}; choose from {', '.join(METRIC_GROUPS)}.")
    for method in methods:
        registry.get(method)
    out = Path(out)
    store = RowStore(out / "rows.jsonl")
    todo = [(m, it) for it in items for m in methods if (m, it.id) not in store.done]
    with _progress(progress, len(todo)) as advance:
        for method, item in todo:
            row = evaluate_one(lm, method, item, metrics, seed=seed, **settings)
            store.append(row)
            if on_row is not None:
                on_row(row)
            advance(f"{method} on {item.id}")
    wanted = {(m, it.id) for it in items for m in methods}
    rows = [r for r in store.rows if (r["method"], r["example"]) in wanted]
    table_md, table_csv = tables(rows, methods, metrics)
    write_atomic(out / "table.md", table_md)
    write_atomic(out / "table.csv", table_csv)
    cost = cost_table(rows, methods)
    write_atomic(out / "cost.md", cost)
    if "curves" in metrics:
        plot_curves(rows, methods, out / "curves.png")
    return {"rows": rows, "table": table_md, "cost": cost}


class _progress:
    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total = enabled and total > 0, total

    def __enter__(self):
        if not self.enabled:
            return lambda description: None
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(
            TextColumn("[bold]benchmark"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.description}"),
            console=Console(stderr=True),
        )
        self.bar.__enter__()
        task = self.bar.add_task("", total=self.total)
        return lambda description: self.bar.update(task, advance=1, description=description)

    def __exit__(self, *exc):
        if self.enabled:
            self.bar.__exit__(*exc)
        return False


def _means(rows: list[dict], methods: Sequence[str], key: str) -> dict[str, float]:
    out = {}
    for m in methods:
        values = [
            r[key]
            for r in rows
            if r["method"] == m and isinstance(r.get(key), (int, float)) and math.isfinite(r[key])
        ]
        out[m] = float(np.mean(values)) if values else math.nan
    return out


def _format(value: float) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:.3g}" if abs(value) < 1e-2 and value != 0 else f"{value:.2f}"


def _random_masks(rows: list[dict], key: str) -> float:
    """The similarity protocol's random baseline (random masks of the same size), over all rows."""
    values = [r[f"random_{key}"] for r in rows if isinstance(r.get(f"random_{key}"), (int, float))]
    return float(np.mean(values)) if values else math.nan


def _section(
    rows: list[dict], methods: Sequence[str], specs: list[tuple[str, str, bool]], random_column: bool = False
) -> tuple[list, list]:
    md, csv_rows = [], []
    for key, label, higher in specs:
        means = _means(rows, methods, key)
        ranked = sorted((v for v in means.values() if not math.isnan(v)), reverse=higher)
        cells = []
        for m in methods:
            v, text = means[m], _format(means[m])
            if ranked and not math.isnan(v) and v == ranked[0]:
                text = f"**{text}**"
            elif len(ranked) > 1 and not math.isnan(v) and v == ranked[1]:
                text = f"<u>{text}</u>"
            cells.append(text)
        arrow = "↑" if higher else "↓"
        extra = [_random_masks(rows, key)] if random_column else []
        md.append(f"| {label} {arrow} | " + " | ".join(cells + [_format(v) for v in extra]) + " |")
        csv_rows.append([label, "higher" if higher else "lower", *[means[m] for m in methods], *extra])
    return md, csv_rows


def tables(rows: list[dict], methods: Sequence[str], metrics: Sequence[str]) -> tuple[str, str]:
    """Markdown and CSV tables (one section per dataset, then all): metrics as rows, methods as columns."""
    specs = [spec for group in METRIC_GROUPS if group in metrics for spec in TABLE_ROWS[group]]
    datasets = sorted({r["dataset"] for r in rows})
    md_out, buffer = [], io.StringIO()
    writer = csv.writer(buffer)
    random_column = "similarity" in metrics
    extra = ["random masks"] if random_column else []
    writer.writerow(["dataset", "metric", "better", *methods, *extra])
    for dataset in [*datasets, "all"] if len(datasets) > 1 else datasets:
        subset = [r for r in rows if dataset == "all" or r["dataset"] == dataset]
        n = len({r["example"] for r in subset})
        errors = sum("error" in r for r in subset)
        md_out.append(f"### {dataset} ({n} examples{f', {errors} rows skipped' if errors else ''})\n")
        md_out.append("| metric | " + " | ".join([f"`{m}`" for m in methods] + extra) + " |")
        md_out.append("|---|" + "---|" * (len(methods) + len(extra)))
        section, csv_rows = _section(subset, methods, specs, random_column)
        md_out += section + [""]
        for r in csv_rows:
            writer.writerow([dataset, *r])
    return "\n".join(md_out), buffer.getvalue()


def cost_table(rows: list[dict], methods: Sequence[str]) -> str:
    lines = ["| cost | " + " | ".join(f"`{m}`" for m in methods) + " |", "|---|" + "---|" * len(methods)]
    return "\n".join(lines + _section(rows, methods, COST_ROWS)[0]) + "\n"


def plot_curves(rows: list[dict], methods: Sequence[str], path: Path) -> None:
    """Mean MoRF and LeRF curves per method, side by side, saved as PNG (a distinct colour and
    line style per method, the legend beside the plots)."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 4.6))
    axes = fig.subplots(1, 2, sharey=True)
    colours = colormaps["tab20"].colors
    styles = ("-", "--", ":", "-.")
    for ax, key, title in (
        (axes[0], "morf", "MoRF (most relevant first) ↑"),
        (axes[1], "lerf", "LeRF (least relevant first) ↓"),
    ):
        for i, m in enumerate(methods):
            curves = [r for r in rows if r["method"] == m and key in r]
            if curves:
                ax.plot(
                    curves[0]["fractions"],
                    np.mean([r[key] for r in curves], 0),
                    label=m,
                    color=colours[i % len(colours)],
                    linestyle=styles[(i // len(colours)) % len(styles)],
                )
        ax.set_title(title)
        ax.set_xlabel("fraction of features removed")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("1 - cos(original, regenerated)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 0.83, 1))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".png.tmp")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, path)
