"""What the studies share: their examples and tasks, the resumable rows, chat prompts and greedy
answers, and the tables' cells with their confidence intervals.

A study's unit of work is a :class:`Task`, one method on one example under the study's settings;
its finished row is appended to ``OUT/rows/STUDY.jsonl`` (:class:`~genattr.evaluate.rows.RowStore`)
and keyed like a benchmark row (:func:`~genattr.evaluate.rows.row_key`: method, example id, example
hash, settings), so that a run resumes where the last stopped and reuses exactly the rows made
with the same settings on the same text. Settings name the model as given on the command line,
so that the document can be rebuilt from the rows without loading the model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from ..evaluate.benchmark import Item, item_hash
from ..evaluate.rows import RowStore, row_key
from ..evaluate.stats import Interval, mean_interval, paired_interval

if TYPE_CHECKING:
    from ..model import LanguageModel
    from ..text.prompt import Prompt

SEED = 0
"""The run seed of every study; each example's own seed is derived from it (``example_seed``)."""


COST_KEYS = (
    "seconds",
    "cpu_seconds",
    "forward_passes",
    "tokens_processed",
    "backward_passes",
    "backward_tokens",
)
"""The costs :func:`~genattr.evaluate.benchmark.timed_explain` measures, averaged where a row
holds several explanations (a random baseline's seeds)."""


@dataclass(frozen=True)
class Example:
    """One prompt of a study: its id, data set, text and, where the data has one, its gold answer."""

    id: str
    dataset: str
    text: str
    target: str | None = None

    @property
    def hash(self) -> str:
        """The benchmark's hash of the example's data (:func:`~genattr.evaluate.benchmark.item_hash`)."""
        return item_hash(Item(self.id, self.dataset, self.text, self.target))


@dataclass(frozen=True)
class Task:
    """One method on one example under a study's settings: one row of the study."""

    method: str
    example: Example
    settings: dict

    def stamp(self) -> dict:
        """The fields that identify the task's row."""
        return {
            "method": self.method,
            "example": self.example.id,
            "dataset": self.example.dataset,
            "example_hash": self.example.hash,
            "settings": self.settings,
        }

    def key(self) -> tuple[str, str, str, str]:
        return row_key(self.stamp())


@dataclass(frozen=True)
class Study:
    """A study: its command-line name, its title, its tasks (``tasks(model, dtype, n, methods)``,
    n = None for all its prompts), the computation of one row (``compute(lm, task)``), its section
    of the document (``section(rows, out, link)``: markdown, plots written under ``out`` and
    linked as ``link/NAME``), its methods (``methods()``), the command-line arguments that
    compute given rows (``arguments(rows)``: ``--n`` and ``--methods``) and the number of prompts
    a run takes unless told (None: all)."""

    name: str
    title: str
    tasks: Callable[[str, str | None, int | None, Sequence[str] | None], list[Task]]
    compute: Callable[[LanguageModel, Task], dict]
    section: Callable[[list[dict], Path, str], str]
    methods: Callable[[], list[str]]
    arguments: Callable[[list[dict]], str]
    default_n: int | None = None


def rows_path(out: Path, study: str) -> Path:
    """Where a study's rows are kept: ``OUT/rows/STUDY.jsonl``."""
    return out / "rows" / f"{study}.jsonl"


def chat_prompt(lm: LanguageModel, text: str) -> Prompt:
    """``text`` as the user's message in the model's chat template, ready for the answer; only
    the message is maskable (the template's default system message is scaffolding)."""
    from ..text.prompt import Prompt

    return Prompt.from_messages(lm.tokenizer, [{"role": "user", "content": text}])


@lru_cache(maxsize=4)
def greedy_ids(lm: LanguageModel, prompt: Prompt, max_new_tokens: int) -> tuple[int, ...]:
    """The model's greedy answer to ``prompt`` (token ids), generated once and reused by every
    method explained on it (the same answer ``explain`` would generate)."""
    from ..model import Batch

    return tuple(lm.generate(Batch.from_ids(prompt.input_ids), max_new_tokens).token_ids[0])


def run_tasks(
    lm: LanguageModel,
    study: Study,
    tasks: Sequence[Task],
    store: RowStore,
    note: Callable[[str], None] | None = None,
) -> int:
    """Compute and append the row of every task not yet in ``store``; ``note`` hears one line per
    row (``[STUDY i/n] METHOD on EXAMPLE: S s``). Returns the number of rows computed."""
    todo = [t for t in tasks if t.key() not in store.done]
    for done, task in enumerate(todo, start=1):
        row = {**study.compute(lm, task), **task.stamp()}
        store.append(row)
        if note is not None:
            spent = row.get("seconds", 0.0) + row.get("protocol_seconds", 0.0)
            result = f"failed: {row['error']}" if "error" in row else f"{spent:.1f} s"
            note(f"[{study.name} {done}/{len(todo)}] {task.method} on {task.example.id}: {result}")
    return len(todo)


def stored_rows(store: RowStore, tasks: Sequence[Task]) -> list[dict]:
    """The rows of ``store`` that answer ``tasks`` (same method, example, data and settings)."""
    wanted = {t.key() for t in tasks}
    return [r for r in store.rows if row_key(r) in wanted]


# --------------------------------------------------------------------- tables with intervals
def run_arguments(order: Sequence[str], rows: Sequence[dict], offered: Sequence[str]) -> str:
    """The arguments that compute ``rows``: ``--n`` covers the furthest example in the study's
    ``order`` of example ids, ``--methods`` lists the methods of ``offered`` present in the rows
    when they are not all of them."""
    n = 1 + max(order.index(r["example"]) for r in rows)
    present = {r["method"] for r in rows}
    chosen = [m for m in offered if m in present]
    return f"--n {n}" + (f" --methods {','.join(chosen)}" if chosen != list(offered) else "")


def fmt(value: float) -> str:
    """A number as the tables print it: 2 decimals, or 3 significant digits below 0.01."""
    if math.isnan(value):
        return "-"
    return f"{value:.3g}" if abs(value) < 1e-2 and value != 0 else f"{value:.2f}"


def fmt_interval(iv: Interval) -> str:
    """``mean [low, high]``, or the mean alone where there is no interval (one value)."""
    if math.isnan(iv.low):
        return fmt(iv.mean)
    return f"{fmt(iv.mean)} [{fmt(iv.low)}, {fmt(iv.high)}]"


def values(rows: Sequence[dict], method: str, key: str, examples: Sequence[str]) -> list[float]:
    """``key`` of ``method``'s rows on ``examples``, in that order (rows without it are skipped)."""
    by_example = {r["example"]: r for r in rows if r["method"] == method and key in r}
    return [float(by_example[e][key]) for e in examples if e in by_example]


def complete_examples(rows: Sequence[dict], methods: Sequence[str], key: str) -> list[str]:
    """The examples (in first-seen order) on which every method has a row with ``key``."""
    have: dict[str, set[str]] = {}
    for r in rows:
        if key in r:
            have.setdefault(r["example"], set()).add(r["method"])
    return [e for e, ms in have.items() if set(methods) <= ms]


def interval_cell(rows: Sequence[dict], method: str, key: str, examples: Sequence[str]) -> str:
    found = values(rows, method, key, examples)
    return fmt_interval(mean_interval(found)) if found else "-"


def paired_cell(rows: Sequence[dict], a: str, b: str, key: str, examples: Sequence[str]) -> str:
    """The mean difference a - b of ``key`` over ``examples`` and its paired interval, in bold
    when the interval excludes 0."""
    first, second = values(rows, a, key, examples), values(rows, b, key, examples)
    if not first or len(first) != len(second):
        return "-"
    iv = paired_interval(first, second)
    text = fmt_interval(iv)
    return f"**{text}**" if iv.excludes_zero else text


def counted(n: int, singular: str, plural: str) -> str:
    """``n`` and the noun in the number it takes.

    >>> counted(1, "query", "queries"), counted(3, "query", "queries")
    ('1 query', '3 queries')
    """
    return f"{n} {singular if n == 1 else plural}"


def markdown_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in body]) + "\n"
