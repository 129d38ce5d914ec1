"""Append-only JSONL files of finished records, one a line: the resumable store of
``genattr benchmark`` (``rows.jsonl``, :mod:`genattr.evaluate.rows`) and of dataset runs
(``genattr explain --data``, :mod:`genattr.dataset`).

A record is appended and flushed to disk before the next one starts, so an interrupted run loses
nothing finished. Each record has a key, what it answers (for a benchmark row its method, example
and settings): a run skips the records whose key is already in the file. Reading the file checks
every line with the store's parser; a last line without its newline is what an interrupted append
leaves, and is dropped (its record is computed again); any other malformed line, and a key that
occurs twice, raise :class:`~genattr.errors.ResultFormatError`.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "rows.jsonl"
>>> store = JsonlStore(path, lambda line, where: json.loads(line), lambda r: r["k"], "row")
>>> store.append({"k": 1}); _ = path.open("a").write('{"k": 2')  # an append cut short
>>> JsonlStore(path, lambda line, where: json.loads(line), lambda r: r["k"], "row").done
{1}
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Hashable
from pathlib import Path

from .errors import InputError, ResultFormatError
from .files import write_atomic

Parse = Callable[[bytes, str], dict]
"""A store's line parser: ``(line, "FILE:LINE")`` to a record, or ResultFormatError."""


class JsonlStore:
    """The append-only JSONL file at ``path`` of records, each keyed by ``key``.

    ``parse`` reads one line (raising ResultFormatError for a malformed one); ``noun`` names a
    record in the messages (``row``, ``result``) and ``describe`` says which one it is.
    ``records`` holds the records read and appended, in file order; ``done`` their keys."""

    def __init__(
        self,
        path: Path,
        parse: Parse,
        key: Callable[[dict], Hashable],
        noun: str,
        describe: Callable[[dict], str] = lambda record: "the same key",
    ) -> None:
        self.path = path
        self.key = key
        self.records: list[dict] = []
        seen: dict[Hashable, int] = {}
        if path.exists():
            try:
                lines = path.read_bytes().split(b"\n")
            except OSError as exc:
                raise InputError(f"cannot read {path}: {exc}; choose another --out.") from exc
            for number, line in enumerate(lines[:-1], start=1):  # a file ending in "\n" leaves b"" last
                if not line.strip():
                    continue
                record = parse(line, f"{path}:{number}")
                found = key(record)
                if found in seen:
                    raise ResultFormatError(
                        f"{path}:{number} repeats the {noun} of line {seen[found]} ({describe(record)}); "
                        "remove one of them."
                    )
                seen[found] = number
                self.records.append(record)
            if lines[-1].strip():
                write_atomic(path, "".join(json.dumps(r) + "\n" for r in self.records))
        self.done = set(seen)

    def append(self, record: dict) -> None:
        """Append ``record`` as one line, flushed and synced to disk before this returns."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.records.append(record)
        self.done.add(self.key(record))


def json_object(line: bytes, where: str, what: str, fix: str) -> dict:
    """One JSONL line as a JSON object, or a ResultFormatError saying it is not ``what``."""
    try:
        record = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResultFormatError(f"{where} is not {what} ({exc}); {fix}.") from exc
    if not isinstance(record, dict):
        raise ResultFormatError(f"{where} is a JSON {type(record).__name__}, not {what}; {fix}.")
    return record
