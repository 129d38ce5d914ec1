"""``genattr demo``: every registered method on the shipped zoo model, checked against ground truth.

For one example of each zoo task it prints the attributions of every method as terminal
heatmaps with the ground-truth words underlined, writes them all into one self-contained HTML
report (``demo.html``), then prints a table of ground-truth agreement (recall@|G|, AUROC,
pointing game, joint success) per method and task over a small example set. New methods appear
by themselves, since the demo reads the registry. Methods with a set size ``k`` (XPrompt) are
given k = |G|.
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

from rich.console import Console
from rich.table import Table

from . import registry
from .api import explain
from .errors import GenattrWarning, TooManyFeaturesError
from .evaluate import ground_truth
from .model import load
from .result import write_atomic
from .usecases import icl_orders, slot_probe
from .zoo import TASKS, examples

DEMO_SEED = 7


def _explain(lm, method, ex, notes: dict[str, list[str]]):
    """Explain ``ex`` with ``method``; genattr's own warnings are collected into ``notes``."""
    params = {"k": len(ex.ground_truth)} if "k" in registry.get(method).params else {}
    target = ex.answer if registry.get(method).needs_target else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", GenattrWarning)
        res = explain(lm, ex.prompt, target=target, method=method, seed=0, **params)
    ours = [w for w in caught if issubclass(w.category, GenattrWarning)]
    notes.setdefault(method, []).extend(str(w.message) for w in ours)
    for w in caught:  # other libraries' warnings are passed on as they came
        if w not in ours:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return res


def run_demo(
    out: str | os.PathLike = "demo.html", quick: bool = False, console: Console | None = None
) -> list:
    """Run the demo; returns the ground-truth records (one per method and example)."""
    from .render.html import render_html

    console = console or Console()
    started = time.perf_counter()
    lm = load("zoo")
    names = registry.names()
    console.rule(f"genattr demo: {len(names)} methods on the zoo model")
    shown, marks, captions, skipped, notes = [], [], [], [], {}
    for task in TASKS:
        ex = examples(task, 1, seed=DEMO_SEED)[0]
        console.rule(f"[bold]{task}[/bold]: {ex.prompt} ->{ex.answer}   (ground truth underlined)")
        for name in names:
            try:
                res = _explain(lm, name, ex, notes)
            except TooManyFeaturesError:
                skipped.append(f"{name} on {task} (too many features)")
                continue
            console.print(f"[bold]{name}[/bold]")
            res.show(console=console, mark=set(ex.ground_truth))
            shown.append(res)
            marks.append(set(ex.ground_truth))
            captions.append(f"{task}: {name}")
    write_atomic(
        Path(out), render_html(shown, title="genattr demo on the zoo model", marks=marks, captions=captions)
    )
    records = []
    n = 1 if quick else 4
    for task in TASKS:
        for ex in examples(task, n, seed=DEMO_SEED + 1):
            for name in names:
                try:
                    res = _explain(lm, name, ex, notes)
                except TooManyFeaturesError:
                    continue
                records.append({"method": name, "task": task, **ground_truth.metrics(res, ex.ground_truth)})
    _print_table(console, records, n)
    _use_cases(console, lm)
    for note in skipped:
        console.print(f"skipped: {note}")
    for method, messages in sorted(notes.items()):
        if messages:
            console.print(
                f"note: {method} warned on {len(messages)} explanations, e.g. {messages[0]}",
                markup=False,
                highlight=False,
            )
    console.print(f"wrote {out} in {time.perf_counter() - started:.0f} s")
    return records


def _print_table(console: Console, records: list[dict], n: int) -> None:
    summary = ground_truth.summarize(records)
    tasks = [t for t in TASKS if any(k[1] == t for k in summary)]
    table = Table(title=f"recall@|G| / AUROC against the ground truth, {n} examples per task", box=None)
    table.add_column("method", no_wrap=True)
    for t in tasks:
        table.add_column(t, justify="right", no_wrap=True)
    for method in sorted({m for m, _ in summary}):
        cells = []
        for t in tasks:
            s = summary.get((method, t))
            cells.append("-" if s is None else f"{s['recall_at_k']:.2f}/{s['auroc']:.2f}")
        table.add_row(method, *cells)
    console.print(table)


def _use_cases(console: Console, lm) -> None:
    """GiLOT's use cases (Section 5) on the zoo: the query weight over orders of the key-value
    pairs of a ``recall`` prompt, and a slot probe on ``sentiment`` (a polar filler against a
    neutral one)."""
    pairs = ["bee seven", "ant eight", "pig six"]
    study = icl_orders(lm, pairs, "query ant", " eight", [" seven", " eight", " six"], prefix="recall ")
    console.print(
        f"use case, in-context orders (GiLOT 5.1): {len(study.rows)} orders of {pairs}: "
        f"query weight {study.query_weight:.3f}, accuracy {study.accuracy:.2f}, "
        f"sensitivity {study.sensitivity:.2g}",
        highlight=False,
    )
    rows = slot_probe(lm, "sentiment a {} road cloud by floor paper", ["sad", "pole"])
    cells = ", ".join(f"{r.filler!r}: share {r.share:.2f}, rank {r.rank}" for r in rows)
    console.print(
        f"use case, slot probe (GiLOT 5.2): 'sentiment a {{}} road cloud by floor paper': {cells}",
        highlight=False,
    )
