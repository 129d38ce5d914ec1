"""Dataset runs: every prompt of a data set explained, one result a line, resumable.

``genattr explain --data DATA --out results.jsonl`` (:func:`run_dataset`) explains each record of
DATA (:func:`read_records`): a JSONL file of objects with a ``prompt`` string, an optional
``target`` (the continuation to explain; without one, the model's greedy output) and an optional
``id``; a prompt set by short name (``gilot``, ``xprompt-alpaca``, ``sst2``, ``counsel-chat``:
:mod:`genattr.evaluate.datasets`); or ``zoo:TASK``. A line that is not such a record raises a
:class:`~genattr.errors.DataFormatError` naming its line number: nothing is skipped.

Each line of the output is a full result as :meth:`genattr.Attribution.to_dict` writes it (read
back by :func:`read_results`, or ``Attribution.from_dict`` per line), with one more field,
``request``: the record's ``id``, its ``source`` (``FILE:LINE``), ``input_hash`` (SHA-256 of id,
prompt and target) and the run's ``settings`` (model, dtype, method, params and every other
option of :func:`genattr.explain` that the run sets, defaults included). The output is a
:class:`~genattr.jsonl.JsonlStore`, the benchmark's resumable store, keyed on ``input_hash`` and
``settings``: each result is appended and flushed before the next is written, a run skips the
records whose result is there, and a last line cut short by an interruption is dropped and
computed again, so an interrupted run resumed with the same command ends with each record's
result exactly once. Every record is explained as ``genattr explain`` explains one prompt, with
the run's seed; the same command gives the same results, on one process or on Ray
(:mod:`genattr.cluster`: ``--ray``), given the same torch thread count.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from . import registry
from .api import explain
from .cluster import Cluster, ModelSpec, completed
from .defaults import DEFAULT_SEED
from .errors import DataFormatError, GenattrError, GenattrWarning, InputError, ResultFormatError
from .io import SCHEMA, jsonable
from .jsonl import JsonlStore, json_object
from .model import LanguageModel
from .progress import Progress, checked
from .result import Attribution

RUN_OPTIONS = (
    "method",
    "level",
    "mask",
    "mask_token",
    "objective",
    "seed",
    "max_new_tokens",
    "params",
    "token_scores",
    "attribute_target",
    "refine_top",
)
"""The options of :func:`genattr.explain` a dataset run takes (the same for every record)."""


@dataclass(frozen=True)
class Record:
    """One prompt of a data set: where it is (``FILE:LINE`` or the set's id), the prompt, the
    target (None: the model's greedy output) and the record's own id, if it has one."""

    source: str
    prompt: str
    target: str | None = None
    id: str | int | None = None

    @property
    def input_hash(self) -> str:
        """SHA-256 (first 16 hex digits) of the id, prompt and target."""
        return hashlib.sha256(json.dumps([self.id, self.prompt, self.target]).encode()).hexdigest()[:16]


def _record(line: bytes, where: str) -> Record:
    """One line of a data file as a record, or a DataFormatError saying what is wrong with it."""
    fix = "fix the line or remove it, then run again"
    try:
        data = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"{where} is not UTF-8 text ({exc}); {fix}.") from exc
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"{where} is not JSON ({exc}); {fix}.") from exc
    if not isinstance(data, dict):
        raise DataFormatError(
            f'{where} is a JSON {type(data).__name__}, not an object like {{"prompt": "..."}}; {fix}.'
        )
    prompt, target, rid = data.get("prompt"), data.get("target"), data.get("id")
    if not isinstance(prompt, str) or not prompt.strip():
        raise DataFormatError(f"{where} has no 'prompt' field with a non-empty text to explain; {fix}.")
    if target is not None and (not isinstance(target, str) or not target):
        raise DataFormatError(f"{where}: 'target' must be a non-empty string, or absent; {fix}.")
    if rid is not None and (isinstance(rid, bool) or not isinstance(rid, (str, int))):
        raise DataFormatError(f"{where}: 'id' must be a string or an integer, or absent; {fix}.")
    return Record(where, prompt, target, rid)


def _file_records(path: Path) -> list[Record]:
    try:
        lines = path.read_bytes().split(b"\n")
    except OSError as exc:
        raise InputError(f"cannot read data file {path}: {exc}.") from exc
    return [_record(line, f"{path}:{n}") for n, line in enumerate(lines, start=1) if line.strip()]


def read_records(data: str | os.PathLike, n: int | None = None, seed: int = DEFAULT_SEED) -> list[Record]:
    """The first ``n`` (default all) records of ``data``: a JSONL file, a prompt set's short name
    or ``zoo:TASK`` (``n`` examples drawn with ``seed``, 10 by default). Records that repeat one
    another (same id, prompt and target), or two ids alike, raise DataFormatError."""
    from .evaluate.benchmark import load_items
    from .evaluate.datasets import DATASETS

    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise InputError(f"n must be an integer of at least 1, got {n!r}.")
    spec = os.fspath(data)
    if spec.startswith("zoo:") or spec in DATASETS:
        items, _ = load_items([spec], n, seed)
        records = [Record(it.id, it.prompt, it.target, it.id) for it in items]
    elif Path(spec).is_file():
        records = _file_records(Path(spec))[:n]
    else:
        raise InputError(
            f"--data {spec!r} is neither a file nor a prompt set; give a JSONL file, one of "
            f"{', '.join(DATASETS)}, or zoo:TASK."
        )
    if not records:
        raise InputError(f"{spec} holds no record to explain; give a file with one JSON object a line.")
    check_distinct(records)
    return records


def check_distinct(records: Sequence[Record]) -> None:
    """DataFormatError for two records of the same id, prompt and target, or of the same id."""
    inputs: dict[str, str] = {}
    ids: dict[str | int, str] = {}
    for record in records:
        if record.input_hash in inputs:
            raise DataFormatError(
                f"{record.source} repeats {inputs[record.input_hash]} (same id, prompt and target): "
                "remove one of them, or give them different ids."
            )
        if record.id is not None and record.id in ids:
            raise DataFormatError(
                f"{record.source} has the id {record.id!r} of {ids[record.id]}; give each record an id of its own."
            )
        inputs[record.input_hash] = record.source
        if record.id is not None:
            ids[record.id] = record.source


def run_settings(model: str, dtype: str | None, options: Mapping[str, object]) -> dict:
    """What every result of a run depends on: the model, its dtype (None: float32, what
    :func:`genattr.load` loads by default) and the options of :func:`genattr.explain`, defaults
    filled in, as written in each line's ``request``."""
    from .model.loading import _resolve_dtype

    unknown = sorted(set(options) - set(RUN_OPTIONS))
    if unknown:
        raise InputError(f"a dataset run takes no option {unknown}; it takes {', '.join(RUN_OPTIONS)}.")
    parameters = inspect.signature(explain).parameters
    chosen = {name: options.get(name, parameters[name].default) for name in RUN_OPTIONS}
    chosen["params"] = dict(chosen["params"] or {})  # type: ignore[call-overload]
    resolved = _resolve_dtype(dtype)
    name = "float32" if resolved is None else str(resolved).removeprefix("torch.")
    return {"model": model, "dtype": name, **jsonable(chosen)}


def explain_record(lm: LanguageModel, record: Record, *, options: dict, settings: dict) -> dict:
    """One output line: the record's result with its ``request``. An error of the call is raised
    again with the record's place in front of its message."""
    try:
        res = explain(lm, record.prompt, target=record.target, **options)
    except GenattrError as exc:
        raise type(exc)(f"{record.source}: {exc}") from exc
    request = {
        "id": record.id,
        "source": record.source,
        "input_hash": record.input_hash,
        "settings": settings,
    }
    return {**res.to_dict(), "request": request}


def _key(line: dict) -> tuple[str, str]:
    request = line["request"]
    return request["input_hash"], json.dumps(request["settings"], sort_keys=True)


def parse_line(line: bytes, where: str) -> dict:
    """One line of a results file as a JSON object with a ``request``, or ResultFormatError."""
    fix = "remove the line, or the file to compute every result again"
    what = "a result of genattr explain --data"
    data = json_object(line, where, what, fix)
    request = data.get("request")
    if (
        data.get("schema") != SCHEMA
        or not isinstance(request, dict)
        or not isinstance(request.get("input_hash"), str)
        or not isinstance(request.get("settings"), dict)
        or not isinstance(request.get("source"), str)
    ):
        raise ResultFormatError(
            f"{where} is not {what} (a result with a 'request' holding source, input_hash and settings); {fix}."
        )
    return data


def open_results(path: Path) -> JsonlStore:
    """The results file at ``path`` as a resumable store, locked for this run's writing (a last
    line cut short is dropped)."""
    return JsonlStore(
        path, parse_line, _key, "result", lambda line: f"{line['request']['source']}, same settings"
    )


def read_results(path: str | os.PathLike) -> list[Attribution]:
    """Every result of a results file in file order, each validated (:meth:`Attribution.from_dict`);
    the file is not changed. A last line cut short (a run interrupted while writing) raises
    ResultFormatError: resume the run, or remove the line."""
    path = Path(path)
    try:
        lines = path.read_bytes().split(b"\n")
    except OSError as exc:
        raise ResultFormatError(f"cannot read {path}: {exc}.") from exc
    if lines[-1].strip():
        raise ResultFormatError(
            f"{path}:{len(lines)} is cut short (a run interrupted while writing it); run the same "
            "command again to finish the file, or remove the line."
        )
    results = []
    for number, line in enumerate(lines[:-1], start=1):
        if line.strip():
            where = f"{path}:{number}"
            data = parse_line(line, where)
            try:
                results.append(Attribution.from_dict(data))
            except ResultFormatError as exc:
                raise ResultFormatError(f"{where}: {exc}") from exc
    return results


def _warn_not_reused(store: JsonlStore, wanted: dict[tuple[str, str], Record], settings: dict) -> None:
    """Warn once about the results in the file that this run does not reuse: made with other
    settings, or for records not in this data."""
    inputs = {key[0] for key in wanted}
    stale = [line for line in store.records if _key(line) not in wanted]
    if not stale:
        return
    other = [line for line in stale if line["request"]["input_hash"] in inputs]
    differ = sorted(
        {
            f"{name} {line['request']['settings'].get(name)!r} there, {value!r} here"
            for line in other
            for name, value in settings.items()
            if line["request"]["settings"].get(name) != value
        }
    )
    warnings.warn(
        f"{len(stale)} results in {store.path} are not reused by this run: {len(other)} of its records "
        f"made with other settings ({'; '.join(differ) or 'none'}), {len(stale) - len(other)} of records "
        "not in this data. They stay in the file.",
        GenattrWarning,
        stacklevel=3,
    )


def _model(model: str | os.PathLike | ModelSpec | LanguageModel) -> tuple[ModelSpec, LanguageModel | None]:
    if isinstance(model, LanguageModel):
        return ModelSpec.of(model), model
    if isinstance(model, ModelSpec):
        return model, None
    return ModelSpec(os.fspath(model)), None


def run_dataset(
    model: str | os.PathLike | ModelSpec | LanguageModel,
    records: Sequence[Record],
    out: str | os.PathLike,
    *,
    cluster: Cluster | None = None,
    threads: int | None = None,
    progress: Progress | None = None,
    **options,
) -> dict:
    """Explain every record into the results file ``out`` (created or resumed); returns
    ``{"total", "reused", "computed"}`` counts of records.

    ``model`` is a loaded model, or what loads one (a path, hub id or catalog name, or a
    :class:`~genattr.cluster.ModelSpec` with device and dtype); ``options`` are the keywords of
    :func:`genattr.explain` in :data:`RUN_OPTIONS`. Here, ``threads`` sets torch's thread count
    for the run; with a ``cluster`` the records are explained on Ray (:mod:`genattr.cluster`).
    ``progress`` hears ``(results written, results to compute, record's source)`` after each one."""
    progress = checked(progress)
    registry.get(str(options.get("method", inspect.signature(explain).parameters["method"].default)))
    spec, lm = _model(model)
    settings = run_settings(spec.source, spec.dtype, options)
    check_distinct(records)
    keys = {(r.input_hash, json.dumps(settings, sort_keys=True)): r for r in records}
    with open_results(Path(out)) as store:
        _warn_not_reused(store, keys, settings)
        todo = [record for key, record in keys.items() if key not in store.done]
        if not todo:
            return {"total": len(records), "reused": len(records), "computed": 0}
        task = partial(explain_record, options=dict(options), settings=settings)
        with closing(completed(task, todo, spec, cluster=cluster, threads=threads, lm=lm)) as results:
            for done, (index, line) in enumerate(results, 1):
                store.append(line)
                if progress is not None:
                    progress(done, len(todo), todo[index].source)
    return {"total": len(records), "reused": len(records) - len(todo), "computed": len(todo)}
