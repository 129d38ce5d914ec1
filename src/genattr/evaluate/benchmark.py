"""``genattr benchmark``: methods x examples x metrics, resumable, with tables and plots.

Every finished (method, example) row is appended to ``rows.jsonl`` in the output directory
(:mod:`.rows`) and flushed to disk before the next one starts, so an interrupted run loses nothing finished;
running the same command again skips the rows already there (a last line cut short by the
interruption is dropped and recomputed) and ends with the same tables as an uninterrupted run.
Each row records the run's settings (model, dtype, seed, level, mask, max_new_tokens, k,
metrics) and a hash of its example (prompt, target, ground truth): a row is reused only by a run
with the same settings on the same example, and a run with other settings or data into the same
directory computes its rows afresh (with a :class:`GenattrWarning` saying how many it did not
reuse and why). Each example is explained with its own seed, derived from the run's seed and the
example id (:func:`example_seed`), so seeded methods such as ``random`` draw afresh per example.

Outputs, written atomically (:mod:`.tables`): ``table.md`` and ``table.csv`` (faithfulness and ground-truth
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

import hashlib
import json
import os
import resource
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from .. import registry
from ..api import explain
from ..cluster import Cluster, ModelSpec, completed
from ..defaults import DEFAULT_LEVEL, DEFAULT_MASK, DEFAULT_MAX_NEW_TOKENS, DEFAULT_SEED, DEFAULT_SIMILARITY_K
from ..errors import GenattrError, InputError
from ..files import write_atomic
from ..model import LanguageModel
from ..progress import Progress, checked
from ..result import Attribution
from ..text.prompt import Prompt
from . import ground_truth
from .faithfulness import erasure, perturbation_curves, similarity
from .rows import RowStore, row_key, warn_not_reused
from .tables import METRIC_GROUPS, cost_table, plot_curves, tables


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


def load_items(
    specs: Sequence[str], n: int | None = None, seed: int = DEFAULT_SEED
) -> tuple[list[Item], list[str]]:
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


def timed_explain(lm: LanguageModel, prompt, **kwargs) -> tuple[Attribution, dict]:
    """``explain(lm, prompt, **kwargs)`` and what it cost: wall ``seconds``, the process's
    ``cpu_seconds`` (all threads; steadier than wall time on a shared machine) and the model's
    usage counters over the call (forward and backward passes, tokens processed)."""
    started, cpu, usage = time.perf_counter(), time.process_time(), lm.usage.copy()
    res = explain(lm, prompt, **kwargs)
    spent = {key: value for key, value in lm.usage.since(usage).items() if key != "model_seconds"}
    return res, {"seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu, **spent}


def evaluate_one(
    lm: LanguageModel,
    method: str,
    item: Item,
    metrics: Sequence[str],
    *,
    seed: int = DEFAULT_SEED,
    level: str = DEFAULT_LEVEL,
    mask: str | None = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    k: int = DEFAULT_SIMILARITY_K,
) -> dict:
    """Explain one item with one method and measure it: one benchmark row.

    ``seed`` is the run's seed: the item is explained (and the similarity protocol's random
    masks drawn) with ``example_seed(seed, item.id)``, recorded in the row as ``seed``."""
    seed = example_seed(seed, item.id)
    row = {"method": method, "example": item.id, "dataset": item.dataset, "seed": seed}
    params: dict[str, Any] = {}
    if "k" in registry.get(method).params:
        params["k"] = len(item.ground_truth) if item.ground_truth else k
    try:
        n_features = len(Prompt.from_text(lm.tokenizer, item.prompt).features(level))
        if "k" in params:
            params["k"] = min(params["k"], n_features)
        res, cost = timed_explain(
            lm,
            item.prompt,
            target=item.target if registry.get(method).needs_target else None,
            method=method,
            level=level,
            seed=seed,
            max_new_tokens=max_new_tokens,
            mask=mask or DEFAULT_MASK,
            token_scores=False,  # the protocols read the sequence scores only
            **params,
        )
    except GenattrError as exc:
        return {**row, "error": str(exc)}
    row.update(cost)
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


def _row(lm: LanguageModel, todo: tuple[str, Item], *, metrics, seed: int, options: dict) -> dict:
    """The row of one (method, item) pair (:func:`evaluate_one`): a task of :mod:`genattr.cluster`."""
    method, item = todo
    return evaluate_one(lm, method, item, metrics, seed=seed, **options)


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
    seed: int = DEFAULT_SEED,
    level: str = DEFAULT_LEVEL,
    mask: str | None = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    k: int = DEFAULT_SIMILARITY_K,
    progress: Progress | None = None,
    on_row: Callable[[dict], None] | None = None,
    cluster: Cluster | None = None,
    threads: int | None = None,
) -> dict:
    """Run (or resume) a benchmark into ``out``; returns {"rows", "table", "cost"}.

    Rows already in ``out/rows.jsonl`` are reused when their method, example id, example hash
    and settings all match this run; the others are computed and appended. After each computed
    row, ``on_row`` gets it and ``progress`` (:mod:`genattr.progress`) hears
    ``(rows done, rows to compute, "METHOD on EXAMPLE")``. With a ``cluster`` the rows are computed
    on Ray, each actor loading the model ``lm`` was loaded from (:mod:`genattr.cluster`), and
    arrive in order of completion; ``threads`` sets torch's thread count here."""
    progress = checked(progress)
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
    options: dict[str, Any] = {"level": level, "mask": mask, "max_new_tokens": max_new_tokens, "k": k}
    settings = run_settings(lm, seed=seed, metrics=metrics, **options)
    stamps = {it.id: {"example_hash": item_hash(it), "settings": settings} for it in items}
    wanted = {
        (m, it.id): row_key({"method": m, "example": it.id, **stamps[it.id]}) for it in items for m in methods
    }
    with RowStore(out / "rows.jsonl") as store:
        warn_not_reused(store, wanted, stamps)
        todo = [(m, it) for it in items for m in methods if wanted[m, it.id] not in store.done]
        task = partial(_row, metrics=tuple(metrics), seed=seed, options=options)
        with closing(
            completed(task, todo, ModelSpec.of(lm), cluster=cluster, threads=threads, lm=lm)
        ) as computed:
            for done, (index, row) in enumerate(computed, start=1):
                method, item = todo[index]
                row = {**row, **stamps[item.id]}
                store.append(row)
                if on_row is not None:
                    on_row(row)
                if progress is not None:
                    progress(done, len(todo), f"{method} on {item.id}")
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
