"""``genattr benchmark``: methods x examples x metrics, resumable, with tables and plots.

Every finished (method, example) row is appended to ``rows.jsonl`` in the output directory and
flushed to disk before the next one starts, so an interrupted run loses nothing finished;
running the same command again skips the rows already there (a last line cut short by the
interruption is dropped and recomputed) and ends with the same tables as an uninterrupted run.
Each row records the run's settings (model, dtype, seed, level, mask, max_new_tokens, k,
metrics) and a hash of its example (prompt, target, ground truth): a row is reused only by a run
with the same settings on the same example, and a run with other settings or data into the same
directory computes its rows afresh (with a :class:`GenattrWarning` saying how many it did not
reuse and why). Each example is explained with its own seed, derived from the run's seed and the
example id (:func:`example_seed`), so seeded methods such as ``random`` draw afresh per example.

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
import hashlib
import io
import json
import math
import os
import resource
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import registry
from ..api import explain
from ..errors import GenattrError, GenattrWarning, InputError, ResultFormatError
from ..model import LanguageModel
from ..result import write_atomic
from ..text.prompt import Prompt
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


def example_seed(seed: int, example: str) -> int:
    """The seed one example is explained with: the first four bytes of SHA-256 of
    ``"{seed}:{example}"`` as an integer in [0, 2**32). Every example gets its own draws, and the
    same ones in every process (Python's ``hash`` of a string is salted per process)."""
    digest = hashlib.sha256(f"{seed}:{example}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def item_hash(item: Item) -> str:
    """The identity of an example's data: SHA-256 (first 16 hex digits) of its dataset, prompt,
    target and ground truth, so an edited data file is never matched to rows of its old text."""
    fields = [item.dataset, item.prompt, item.target, item.ground_truth, item.spans]
    return hashlib.sha256(json.dumps(fields).encode()).hexdigest()[:16]


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
    """Explain one item with one method and measure it: one benchmark row.

    ``seed`` is the run's seed: the item is explained (and the similarity protocol's random
    masks drawn) with ``example_seed(seed, item.id)``, recorded in the row as ``seed``."""
    seed = example_seed(seed, item.id)
    row = {"method": method, "example": item.id, "dataset": item.dataset, "seed": seed}
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
            target=item.target if registry.get(method).needs_target else None,
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


ROW_FIELDS = {"method": str, "example": str, "dataset": str, "example_hash": str, "settings": dict}
IDENTITY_FIELDS = ("example_hash", "settings")
CURVE_FIELDS = ("fractions", "morf", "lerf")


def row_key(row: dict) -> tuple[str, str, str, str]:
    """What a row answers: its method, example id, example hash and the run's settings."""
    settings = json.dumps(row["settings"], sort_keys=True)
    return row["method"], row["example"], row["example_hash"], settings


def _parse_row(line: bytes, where: str) -> dict:
    """One line of ``rows.jsonl`` as a row, or a ResultFormatError saying what is wrong with it."""
    fix = "remove the line, or the whole file to recompute every row"
    try:
        row = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResultFormatError(f"{where} is not a benchmark row ({exc}); {fix}.") from exc
    if not isinstance(row, dict):
        raise ResultFormatError(f"{where} is a JSON {type(row).__name__}, not a benchmark row; {fix}.")
    for field, kind in ROW_FIELDS.items():
        if field in IDENTITY_FIELDS and field not in row:
            raise ResultFormatError(
                f"{where} has no field {field!r}: it was written by a genattr that did not record "
                "each row's settings and data, so it cannot be matched to a run; use another --out, "
                "or remove the file to recompute every row."
            )
        if not isinstance(row.get(field), kind):
            raise ResultFormatError(
                f"{where} has no {kind.__name__} field {field!r} (rows of genattr benchmark carry "
                f"{', '.join(ROW_FIELDS)}); {fix}."
            )
    curves = [row.get(field) for field in CURVE_FIELDS]
    if any(c is not None for c in curves) and not (
        all(isinstance(c, list) and all(isinstance(x, (int, float)) for x in c) for c in curves)
        and len({len(c) for c in curves}) == 1
    ):
        raise ResultFormatError(
            f"{where} has curves that are not three number lists of one length "
            f"({', '.join(CURVE_FIELDS)}); {fix}."
        )
    return row


class RowStore:
    """The append-only JSONL file of finished rows, each keyed by :func:`row_key`.

    A last line without its newline is what an interrupted append leaves: it is dropped (and its
    row recomputed). Any other line that is not a well-formed row raises ResultFormatError."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[dict] = []
        seen: dict[tuple, int] = {}
        if path.exists():
            try:
                lines = path.read_bytes().split(b"\n")
            except OSError as exc:
                raise InputError(f"cannot read {path}: {exc}; choose another --out.") from exc
            for number, line in enumerate(lines[:-1], start=1):  # a file ending in "\n" leaves b"" last
                if not line.strip():
                    continue
                row = _parse_row(line, f"{path}:{number}")
                key = row_key(row)
                if key in seen:
                    raise ResultFormatError(
                        f"{path}:{number} repeats the row of line {seen[key]} ({row['method']} on "
                        f"{row['example']}, same settings); remove one of them."
                    )
                seen[key] = number
                self.rows.append(row)
            if lines[-1].strip():
                write_atomic(path, "".join(json.dumps(r) + "\n" for r in self.rows))
        self.done = set(seen)

    def append(self, row: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.rows.append(row)
        self.done.add(row_key(row))


def _warn_not_reused(store: RowStore, wanted: dict[tuple[str, str], tuple], stamps: dict[str, dict]) -> None:
    """Warn once about the rows this run computes although the file has rows of the same method
    and example id: rows made with other settings or on other data, which it does not reuse.
    ``stamps`` holds each example's hash and the run's settings, as written into its rows."""
    stale = [
        r
        for r in store.rows
        if (r["method"], r["example"]) in wanted
        and row_key(r) != wanted[r["method"], r["example"]]
        and wanted[r["method"], r["example"]] not in store.done
    ]
    if not stale:
        return
    differ = sorted(
        {
            f"{name} {r['settings'].get(name)!r} there, {value!r} here"
            for r in stale
            for name, value in stamps[r["example"]]["settings"].items()
            if r["settings"].get(name) != value
        }
    )
    data = sum(r["example_hash"] != stamps[r["example"]]["example_hash"] for r in stale)
    reasons = differ + ([f"{data} with other example text or ground truth"] if data else [])
    warnings.warn(
        f"{len(stale)} rows in {store.path} for these methods and examples were made with other "
        f"settings or data ({'; '.join(reasons)}); they are not reused, and these rows are "
        "computed afresh (the old ones stay in the file).",
        GenattrWarning,
        stacklevel=3,
    )


def run_settings(lm: LanguageModel, *, seed: int, metrics: Sequence[str], **settings) -> dict:
    """The settings a benchmark row depends on, as recorded in every row."""
    return {
        "model": lm.name,
        "dtype": str(lm.dtype),
        "seed": seed,
        "metrics": sorted(metrics),
        **settings,
    }


def run_benchmark(
    lm: LanguageModel,
    methods: Sequence[str],
    items: Sequence[Item],
    out: str | os.PathLike,
    *,
    metrics: Sequence[str] = METRIC_GROUPS,
    seed: int = 0,
    level: str = "word",
    mask: str | None = None,
    max_new_tokens: int = 20,
    k: int = 3,
    progress: bool = True,
    on_row: Callable[[dict], None] | None = None,
) -> dict:
    """Run (or resume) a benchmark into ``out``; returns {"rows", "table", "cost"}.

    Rows already in ``out/rows.jsonl`` are reused when their method, example id, example hash
    and settings all match this run; the others are computed and appended."""
    unknown = [m for m in metrics if m not in METRIC_GROUPS]
    if unknown:
        raise InputError(f"unknown metrics {unknown}; choose from {', '.join(METRIC_GROUPS)}.")
    for method in methods:
        registry.get(method)
    repeated = sorted(i for i, count in Counter(it.id for it in items).items() if count > 1)
    if repeated:
        raise InputError(
            f"example ids {repeated} occur more than once (the same --data given twice, or two data "
            "files of the same name): give each data file once, under a name of its own."
        )
    out = Path(out)
    options = {"level": level, "mask": mask, "max_new_tokens": max_new_tokens, "k": k}
    settings = run_settings(lm, seed=seed, metrics=metrics, **options)
    stamps = {it.id: {"example_hash": item_hash(it), "settings": settings} for it in items}
    wanted = {
        (m, it.id): row_key({"method": m, "example": it.id, **stamps[it.id]}) for it in items for m in methods
    }
    store = RowStore(out / "rows.jsonl")
    _warn_not_reused(store, wanted, stamps)
    todo = [(m, it) for it in items for m in methods if wanted[m, it.id] not in store.done]
    with _progress(progress, len(todo)) as advance:
        for method, item in todo:
            row = {**evaluate_one(lm, method, item, metrics, seed=seed, **options), **stamps[item.id]}
            store.append(row)
            if on_row is not None:
                on_row(row)
            advance(f"{method} on {item.id}")
    keys = set(wanted.values())
    rows = [r for r in store.rows if row_key(r) in keys]
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
