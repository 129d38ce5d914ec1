"""Append-only JSONL files of finished records, one a line: the resumable store of
``genattr benchmark`` (``rows.jsonl``, :mod:`genattr.evaluate.rows`), of ``genattr reproduce``
and of dataset runs (``genattr explain --data``, :mod:`genattr.dataset`).

A record is appended and flushed to disk before the next one starts, so an interrupted run loses
nothing finished. Each record has a key, what it answers (for a benchmark row its method, example
and settings): a run skips the records whose key is already in the file. Reading the file checks
every line with the store's parser; a last line without its newline is what an interrupted append
leaves, and is dropped (its record is computed again); any other malformed line, and a key that
occurs twice, raise :class:`~genattr.errors.ResultFormatError`.

One process at a time writes a file: a store opened for writing holds an exclusive lock on it
(``flock``, released when the store is closed or its process ends) from before it reads the file
until it is closed, so two runs on one file cannot both compute and append the same records; the
second is refused with :class:`~genattr.errors.InputError`. A file the store created and left
empty (a run that failed before its first record) is removed when it closes. A store opened with
``write=False`` only reads (a report rebuilt while a run goes on): it takes no lock and leaves the
file as it is.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "rows.jsonl"
>>> parse, key = (lambda line, where: json.loads(line)), (lambda r: r["k"])
>>> with JsonlStore(path, parse, key, "row") as store:
...     store.append({"k": 1}); _ = path.open("a").write('{"k": 2')  # an append cut short
>>> JsonlStore(path, parse, key, "row", write=False).done
{1}
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Hashable
from pathlib import Path
from types import TracebackType
from typing import IO, TypeVar

from .errors import InputError, ResultFormatError

try:
    import fcntl
except ImportError:  # Windows: no flock, so no lock against a second writer
    fcntl = None  # type: ignore[assignment]

Store = TypeVar("Store", bound="JsonlStore")

Parse = Callable[[bytes, str], dict]
"""A store's line parser: ``(line, "FILE:LINE")`` to a record, or ResultFormatError."""


class JsonlStore:
    """The append-only JSONL file at ``path`` of records, each keyed by ``key``.

    ``parse`` reads one line (raising ResultFormatError for a malformed one); ``noun`` names a
    record in the messages (``row``, ``result``) and ``describe`` says which one it is.
    ``records`` holds the records read and appended, in file order; ``done`` their keys. With
    ``write`` (the default) the store locks the file until :meth:`close` (or the end of a
    ``with`` block) and cuts an interrupted last line off it; without, it only reads."""

    def __init__(
        self,
        path: Path,
        parse: Parse,
        key: Callable[[dict], Hashable],
        noun: str,
        describe: Callable[[dict], str] = lambda record: "the same key",
        *,
        write: bool = True,
    ) -> None:
        self.path = path
        self.key = key
        self._new = not path.exists()
        self._handle = _claim(path) if write else None
        try:
            self.records, cut = _read(path, parse, key, noun, describe)
        except (InputError, ResultFormatError):
            self.close()
            raise
        if self._handle is not None and cut:
            os.truncate(path, path.stat().st_size - cut)
        self.done = {key(record) for record in self.records}

    def append(self, record: dict) -> None:
        """Append ``record`` as one line, flushed and synced to disk before this returns."""
        if self._handle is None or self._handle.closed:
            raise ValueError(f"the store of {self.path} is not open for writing")
        self._handle.write(json.dumps(record) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self.records.append(record)
        self.done.add(self.key(record))

    def close(self) -> None:
        """Release the file for another writer (removing it if this store created it and wrote
        nothing to it); the records read and appended stay readable."""
        if self._handle is None or self._handle.closed:
            return
        if self._new and os.fstat(self._handle.fileno()).st_size == 0:
            self.path.unlink(missing_ok=True)
        self._handle.close()

    def __enter__(self: Store) -> Store:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()


def _read(
    path: Path, parse: Parse, key: Callable[[dict], Hashable], noun: str, describe: Callable[[dict], str]
) -> tuple[list[dict], int]:
    """The records of the file at ``path`` (none if it is missing), each line checked, and the
    length in bytes of a last line cut short (0 if none)."""
    try:
        lines = path.read_bytes().split(b"\n") if path.exists() else [b""]
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc}; choose another --out.") from exc
    records: list[dict] = []
    seen: dict[Hashable, int] = {}
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
        records.append(record)
    return records, len(lines[-1])


def _claim(path: Path) -> IO[str]:
    """``path`` opened for appending (created empty if missing, with its directory) under an
    exclusive lock, or InputError if another process holds the lock."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = path.open("a", encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc}; choose another --out.") from exc
    if fcntl is not None:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise InputError(
                f"{path} is being written by another genattr run; wait for it to finish (a run "
                "started then reuses its records), or choose another --out."
            ) from None
    return handle


def json_object(line: bytes, where: str, what: str, fix: str) -> dict:
    """One JSONL line as a JSON object, or a ResultFormatError saying it is not ``what``."""
    try:
        record = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResultFormatError(f"{where} is not {what} ({exc}); {fix}.") from exc
    if not isinstance(record, dict):
        raise ResultFormatError(f"{where} is a JSON {type(record).__name__}, not {what}; {fix}.")
    return record
