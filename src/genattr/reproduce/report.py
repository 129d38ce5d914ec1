"""``docs/real-model.md``, written from the studies' stored rows alone.

The document beside the output folder ``OUT`` (``OUT.md``) has a header (the model, how the
intervals are computed, each study's rows and compute), then one section per study: its command,
tables and plots (:class:`~genattr.reproduce.common.Study`'s ``section``, plots written under
``OUT``) and its reading, the hand-written file ``OUT/reading/STUDY.md`` included unchanged (a
marked placeholder until it exists). Nothing in it depends on when or where it is built: times
come from the rows, intervals from a fixed seed, plots carry no date; rebuilding from the same
rows writes the same bytes.
"""

from __future__ import annotations

from pathlib import Path

from ..evaluate import stats
from ..evaluate.rows import RowStore
from ..files import write_atomic
from . import DEFAULT_MODEL, DEFAULT_OUT, STUDIES, study
from .common import rows_path, stored_rows


def doc_path(out: Path) -> Path:
    """The document of the output folder ``out``: ``out`` with ``.md`` appended."""
    return out.with_name(out.name + ".md")


def _rows(out: Path, name: str, model: str, dtype: str | None) -> list[dict]:
    path = rows_path(out, name)
    if not path.exists():
        return []
    return stored_rows(RowStore(path, write=False), study(name).tasks(model, dtype, None, None))


def _reading(out: Path, name: str) -> str:
    path = out / "reading" / f"{name}.md"
    if path.exists():
        return path.read_text(encoding="utf-8").strip() + "\n"
    return (
        f"> **Reading not written yet.** It goes in `{out.name}/reading/{name}.md` (beside this "
        "document); the generator includes that file here unchanged.\n"
    )


def _flags(out: Path, model: str, dtype: str | None) -> str:
    """The options of the command that are not at their defaults."""
    given = {"--out": str(out), "--model": model, "--dtype": dtype}
    defaults = {"--out": DEFAULT_OUT, "--model": DEFAULT_MODEL, "--dtype": None}
    return "".join(f" {k} {v}" for k, v in given.items() if v != defaults[k])


def _seconds(row: dict) -> float:
    return row.get("seconds", 0.0) + row.get("protocol_seconds", 0.0)


def estimate_hours(name: str, found: list[dict], model: str, dtype: str | None) -> tuple[float, bool]:
    """Hours a run of study ``name`` at its default number of prompts would take: each of its
    rows timed as the mean of the stored rows of the same method; and whether every method has
    stored rows to time it by (else the estimate leaves those out)."""
    s = study(name)
    by_method: dict[str, list[float]] = {}
    for r in found:
        by_method.setdefault(r["method"], []).append(_seconds(r))
    planned = s.tasks(model, dtype, s.default_n, None)
    known = [t for t in planned if t.method in by_method]
    hours = sum(sum(by_method[t.method]) / len(by_method[t.method]) for t in known) / 3600
    return hours, len(known) == len(planned)


def _status(name: str, found: list[dict], model: str, dtype: str | None) -> str:
    hours, whole = estimate_hours(name, found, model, dtype) if found else (0.0, False)
    n = study(name).default_n
    guess = f"{hours:.1f}{'' if whole else ' (methods without rows left out)'}" if found else "-"
    return (
        f"| `{name}` | {len(found)} | {len({r['example'] for r in found})} | "
        f"{sum(map(_seconds, found)) / 3600:.2f} | {n if n is not None else 'all'} | {guess} |"
    )


def _header(out: Path, model: str, dtype: str | None, rows: dict[str, list[dict]], flags: str) -> str:
    status = [_status(name, found, model, dtype) for name, found in rows.items()]
    return "\n".join(
        [
            "# The papers' experiments on a real chat model",
            "",
            f"Written by `genattr reproduce` from the rows under `{out.name}/rows/` (one JSON line per "
            "method and prompt, with the settings it was made with); do not edit it by hand: each "
            f"study's reading is the file `{out.name}/reading/STUDY.md`, included unchanged. "
            "Rebuild it from the rows, without the model, with "
            f"`genattr reproduce all --report-only{flags}`; a run resumes from the stored rows.",
            "",
            f"Model: `{model}`{f' ({dtype})' if dtype else ''}, each prompt the user's message in its chat "
            "template. Every mean over prompts comes with its 95% bootstrap confidence interval "
            f"({stats.METHOD}, scipy.stats.bootstrap, {stats.N_RESAMPLES} resamples, seed {stats.SEED}); "
            "methods are compared by the paired bootstrap of their per-prompt differences.",
            "",
            "Compute is the sum of the rows' own wall times (explanations and their protocols; a "
            "shared machine inflates them). The estimate of a full run at the study's default `--n` "
            "times each planned row by the mean of its method's stored rows.",
            "",
            "| study | rows | prompts | compute (hours) | default --n | full run, estimated (hours) |",
            "|---|---|---|---|---|---|",
            *status,
            "",
        ]
    )


def document(out: Path, model: str, dtype: str | None) -> str:
    """The document's text; plots are written under ``out`` on the way."""
    rows = {name: _rows(out, name, model, dtype) for name in STUDIES}
    flags = _flags(out, model, dtype)
    parts = [_header(out, model, dtype, rows, flags)]
    for name, found in rows.items():
        s = study(name)
        if found:
            run = f"genattr reproduce {name} {s.arguments(found)}{flags}"
            body = f"```sh\n{run}\n```\n\n" + s.section(found, out, out.name)
        else:
            body = f"Not run yet: `genattr reproduce {name}{flags}`.\n"
        parts += [f"## {s.title} (`{name}`)\n", body, "### Reading\n", _reading(out, name)]
    return "\n".join(parts)


def write(out: Path, model: str, dtype: str | None) -> Path:
    """Write the document of ``out`` (and its plots); returns its path."""
    out.mkdir(parents=True, exist_ok=True)
    path = doc_path(out)
    write_atomic(path, document(out, model, dtype))
    return path
