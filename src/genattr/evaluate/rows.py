"""The benchmark's resumable row store: ``rows.jsonl``, one finished (method, example) row a line
(a :class:`~genattr.jsonl.JsonlStore`).

A row is appended and flushed to disk before the next one starts, so an interrupted run loses
nothing finished. Each row carries the run's settings and a hash of its example
(``example_hash``), and is keyed on them with its method and example id (:func:`row_key`): a row
is reused only by a run with the same settings on the same example. Reading the file checks every
line (:func:`parse_row`); a last line cut short by an interruption is dropped and recomputed.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from ..errors import GenattrWarning, ResultFormatError
from ..jsonl import JsonlStore, json_object

ROW_FIELDS = {"method": str, "example": str, "dataset": str, "example_hash": str, "settings": dict}
IDENTITY_FIELDS = ("example_hash", "settings")
CURVE_FIELDS = ("fractions", "morf", "lerf")


def row_key(row: dict) -> tuple[str, str, str, str]:
    """What a row answers: its method, example id, example hash and the run's settings."""
    settings = json.dumps(row["settings"], sort_keys=True)
    return row["method"], row["example"], row["example_hash"], settings


def parse_row(line: bytes, where: str) -> dict:
    """One line of ``rows.jsonl`` as a row, or a ResultFormatError saying what is wrong with it."""
    fix = "remove the line, or the whole file to recompute every row"
    row = json_object(line, where, "a benchmark row", fix)
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
        and len({len(c) for c in curves if isinstance(c, list)}) == 1
    ):
        raise ResultFormatError(
            f"{where} has curves that are not three number lists of one length "
            f"({', '.join(CURVE_FIELDS)}); {fix}."
        )
    return row


class RowStore(JsonlStore):
    """The benchmark's rows: a :class:`~genattr.jsonl.JsonlStore` of rows keyed by :func:`row_key`."""

    def __init__(self, path: Path, *, write: bool = True) -> None:
        super().__init__(path, parse_row, row_key, "row", _same_row, write=write)

    @property
    def rows(self) -> list[dict]:
        return self.records


def _same_row(row: dict) -> str:
    return f"{row['method']} on {row['example']}, same settings"


def warn_not_reused(store: RowStore, wanted: dict[tuple[str, str], tuple], stamps: dict[str, dict]) -> None:
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
