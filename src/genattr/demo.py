"""``genattr demo``: a real model's answer explained, or every method checked against ground truth.

The default (``--model smollm2``) puts a question from GiLOT's evaluation prompts (``data/gilot``)
through SmolLM2's chat template, lets the model answer, and explains the answer with the methods
that finish in about a minute each on two cores (leave-one-out, attention, integrated gradients,
GiLOT, XPrompt), each with its step and sample counts given explicitly; it prints the terminal
views and writes all of them into one HTML report (``demo.html``). The system message the template
adds is scaffolding unless ``include_system``.

``--model zoo`` runs every registered method on the shipped zoo model instead: for one example of
each zoo task it prints the attributions as terminal heatmaps with the ground-truth words
underlined, writes them all into ``demo.html``, then prints a table of ground-truth agreement
(recall@|G|, AUROC, pointing game, joint success) per method and task over a small example set.
New methods appear by themselves, since it reads the registry. Methods with a set size ``k``
(XPrompt) are given k = |G|.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from . import registry
from .api import explain
from .errors import TooManyFeaturesError, collecting
from .evaluate import ground_truth
from .files import write_atomic
from .model import load
from .text.prompt import Prompt
from .usecases import icl_orders, slot_probe
from .zoo import TASKS, examples

DEMO_SEED = 7


def _explain(lm, method, ex, notes: dict[str, list[str]]):
    """Explain ``ex`` with ``method``; genattr's own warnings are collected into ``notes``."""
    params: dict[str, Any] = {"k": len(ex.ground_truth)} if "k" in registry.get(method).params else {}
    target = ex.answer if registry.get(method).needs_target else None
    with collecting() as ours:
        res = explain(lm, ex.prompt, target=target, method=method, seed=0, **params)
    notes.setdefault(method, []).extend(str(w.message) for w in ours)
    return res


def run_demo(
    out: str | os.PathLike = "demo.html",
    quick: bool = False,
    console: Console | None = None,
    model: str = "smollm2",
    include_system: bool = False,
) -> list:
    """Run the demo on ``model`` (``zoo``: the ground-truth demo; otherwise :func:`run_real_demo`);
    returns the results shown (real model) or the ground-truth records (zoo)."""
    if model != "zoo":
        return run_real_demo(out, quick=quick, console=console, model=model, include_system=include_system)
    return run_zoo_demo(out, quick=quick, console=console)


def run_zoo_demo(
    out: str | os.PathLike = "demo.html", quick: bool = False, console: Console | None = None
) -> list:
    """The zoo demo; returns the ground-truth records (one per method and example)."""
    from .render.html import render_html

    console = console or Console()
    started = time.perf_counter()
    lm = load("zoo")
    names = registry.names()
    console.rule(f"genattr demo: {len(names)} methods on the zoo model")
    shown, marks, captions, skipped = [], [], [], []
    notes: dict[str, list[str]] = {}
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


REAL_QUESTION = "What are the three primary colors?"
"""The demo's question: item 1 of GiLOT's evaluation prompts (data/gilot_prompts, from Alpaca)."""

# (method, parameters, level), with every step and sample count explicit
REAL_METHODS: dict[str, list[tuple[str, dict[str, Any], str]]] = {
    "full": [
        ("leave_one_out", {}, "word"),
        ("attention", {}, "word"),
        ("integrated_gradients", {"n_steps": 8}, "word"),
        ("gilot", {"num_beams": 4, "n_positions": 4}, "word"),
        ("xprompt", {"k": 3, "n_iter": 20}, "word"),
    ],
    "quick": [
        ("leave_one_out", {}, "word"),
        ("attention", {}, "word"),
        ("integrated_gradients", {"n_steps": 2}, "word"),
        ("gilot", {"num_beams": 2, "n_positions": 2}, "word"),
        ("xprompt", {"k": 3, "n_iter": 3}, "word"),
    ],
}
REAL_ANSWER_TOKENS = {"full": 16, "quick": 6}


def run_real_demo(
    out: str | os.PathLike = "demo.html",
    *,
    quick: bool = False,
    console: Console | None = None,
    model: str = "smollm2",
    include_system: bool = False,
) -> list:
    """Explain a real model's answer to :data:`REAL_QUESTION` with :data:`REAL_METHODS`; returns the results."""
    from .model import Batch
    from .progress import progress_bar
    from .render.html import render_html

    console = console or Console()
    started = time.perf_counter()
    mode = "quick" if quick else "full"
    console.print(f"loading {model} (the first load builds the cache: up to a few minutes)", highlight=False)
    lm = load(model)
    messages = [{"role": "user", "content": REAL_QUESTION}]
    prompt = Prompt.from_messages(lm.tokenizer, messages, include_default_system=include_system)
    answer = lm.generate(Batch.from_ids(prompt.input_ids), REAL_ANSWER_TOKENS[mode]).token_ids[0]
    target = lm.tokenizer.decode(answer)
    scaffolding = "a feature" if include_system else "scaffolding, not a feature (--include-system to change)"
    console.rule(f"genattr demo on {model}, loaded in {time.perf_counter() - started:.0f} s")
    console.print(f"user: {REAL_QUESTION}\n{model}: {target}", markup=False, highlight=False)
    console.print(f"the chat template's system message is {scaffolding}", highlight=False)
    shown, captions, notes = [], [], {}
    plan = REAL_METHODS[mode]
    for i, (name, params, level) in enumerate(plan, start=1):
        console.print(f"[{i}/{len(plan)}] {name} {params or ''} ...", markup=False, highlight=False)
        began = time.perf_counter()
        with collecting() as ours, progress_bar(name) as bar:
            target_ids = answer if registry.get(name).needs_target else None
            res = explain(
                lm, prompt, target=target_ids, method=name, level=level, seed=0, progress=bar, **params
            )
        notes[name] = [str(w.message) for w in ours]
        console.rule(f"[bold]{name}[/bold] ({time.perf_counter() - began:.1f} s)")
        res.show(console=console)
        shown.append(res)
        captions.append(f"{name} {params or ''}".strip())
    title = f"genattr demo on {model}: {REAL_QUESTION}"
    write_atomic(Path(out), render_html(shown, title=title, captions=captions))
    for method, messages_ in notes.items():
        if messages_:
            console.print(f"note: {method} warned: {messages_[0]}", markup=False, highlight=False)
    console.print(f"wrote {out} in {time.perf_counter() - started:.0f} s")
    return shown
