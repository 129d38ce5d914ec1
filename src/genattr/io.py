"""Files: results as JSON (written and read back, validating every field) and atomic writes.

A result is saved as one JSON object with a schema name and version (:data:`SCHEMA`,
:data:`SCHEMA_VERSION`). Version 2 keeps the call's settings (level, mask, mask_token, objective,
max_new_tokens, pattern, spans, seed) in ``settings``, apart from the method's ``params``;
version 1 files, which held the seed and level at the top level and the other settings among the
params, are read into the same shape (as are the names used before: a feature's ``tokens``,
now ``positions``, and the setting ``baseline``, now ``mask_token``). Reading never imports or evaluates anything named in the
file: each part is checked by a small reader below, and anything that is not what genattr writes
(not UTF-8, not JSON, NaN or Infinity, nesting deeper than Python parses, a wrong field) raises
:class:`~genattr.errors.ResultFormatError`. A file without ``step_scores`` (the per-step scores
of :mod:`genattr.steps`, which older files lack) is read as having none.

Every file genattr writes goes through :func:`write_atomic`: a temporary file in the same
directory, flushed to disk, then renamed over the target, so a reader never sees half a file.
"""

from __future__ import annotations

import importlib
import json
import math
import os
from numbers import Real
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ._version import __version__
from .defaults import BASELINE_NAMES, DEFAULT_LEVEL, MASKS, OBJECTIVES, SEED_LIMIT
from .errors import ResultFormatError
from .files import write_atomic
from .settings import SETTING_NAMES, Settings
from .text.prompt import Prompt
from .text.segment import LEVELS, Feature
from .text.target import Target

if TYPE_CHECKING:
    from .result import Attribution

SCHEMA = "genattr.attribution"
SCHEMA_VERSION = 3
"""The version written; :func:`attribution_fields` reads versions 1, 2 and 3."""


# --------------------------------------------------------------------- writing
def jsonable(value):
    """``value`` as plain JSON types: tuples become lists, numpy and torch scalars become numbers,
    non-finite floats become None, anything else becomes its ``repr`` string."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if hasattr(value, "tolist"):  # torch tensors
        return jsonable(value.tolist())
    return repr(value)


def attribution_to_dict(res: Attribution) -> dict:
    """``res`` as the JSON object of schema version :data:`SCHEMA_VERSION`."""
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "version": res.version,
        "method": res.method,
        "settings": jsonable(res.settings.to_dict()),
        "features": [f.to_dict() for f in res.features],
        "scores": jsonable(res.scores),
        "token_scores": jsonable(res.token_scores),
        "target_tokens": list(res.target.tokens),
        "target_ids": list(res.target.ids),
        "target_text": res.target.text,
        "target_generated": res.target.generated,
        "prompt": res.prompt.to_dict(),
        "params": jsonable(res.params),
        "diagnostics": jsonable(res.diagnostics),
        "extras": jsonable(res.extras),
        "step_scores": jsonable(res.step_scores),
    }


def write_json(path: str | os.PathLike, data: dict) -> Path:
    """Write ``data`` as indented JSON to ``path`` with :func:`write_atomic` (NaN refused)."""
    path = Path(path)
    write_atomic(path, json.dumps(data, indent=1, allow_nan=False))
    return path


# --------------------------------------------------------------------- reading
def _fail(where: str, what: str) -> ResultFormatError:
    return ResultFormatError(
        f"{where}: {what}; the file is not a valid genattr result (re-run, or restore it)."
    )


def _no_constant(name: str):
    """``json.loads``'s hook for NaN, Infinity and -Infinity: refuse them."""
    raise ResultFormatError(f"{name} is not a number genattr writes (non-finite scores are saved as null)")


def read_json(path: str | os.PathLike):
    """The JSON value in the file at ``path``; a file that is not UTF-8 or not JSON (NaN and
    Infinity included, and nesting deeper than Python parses) raises ResultFormatError."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as exc:
        raise ResultFormatError(f"cannot read {path}: {exc}.") from exc
    except UnicodeDecodeError as exc:
        raise ResultFormatError(f"{path} is not UTF-8 text ({exc}); was it written by genattr?") from exc
    try:
        return json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise ResultFormatError(f"{path} is not valid JSON ({exc}); was it written by genattr?") from exc


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _typed(data: dict, key: str, kinds, where: str):
    """``data[key]``, which must be present and of type ``kinds`` (a bool is not an int)."""
    if key not in data:
        raise _fail(where, f"missing field '{key}'")
    value = data[key]
    if not isinstance(value, kinds) or (isinstance(value, bool) and kinds is int):
        raise _fail(where, f"field '{key}' has the wrong type ({type(value).__name__})")
    return value


def _optional(data: dict, key: str, kinds, default, where: str):
    """``data[key]`` checked like :func:`_typed`, or ``default`` when the field is absent."""
    return _typed(data, key, kinds, where) if key in data else default


def _renamed(data: dict, old: str, new: str, where: str) -> dict:
    """``data`` with the field ``old`` read as ``new``, the name it has had since (files written
    before the rename); a file with both is refused."""
    if old not in data:
        return data
    if new in data:
        raise _fail(where, f"both '{old}' and '{new}', its new name, are given")
    return {new if key == old else key: value for key, value in data.items()}


def finite(v) -> float | None:
    """``v`` as a finite float, or None when it is not a real number (a bool is not) or not
    finite (1e999, 10**400)."""
    if not isinstance(v, Real) or isinstance(v, bool):
        return None
    try:
        number = float(v)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _numbers(value, where: str, name: str, length: int) -> list[float]:
    """A list of ``length`` finite numbers, null standing for a non-finite score (read as NaN)."""
    if not isinstance(value, list) or len(value) != length:
        raise _fail(where, f"'{name}' must be a list of {length} numbers")
    out = []
    for v in value:
        number = math.nan if v is None else finite(v)
        if number is None:
            raise _fail(where, f"'{name}' holds {str(v)[:20]!r}, not a finite number")
        out.append(number)
    return out


def _read_prompt(data: dict, where: str) -> Prompt:
    """The prompt: ids, offsets (character spans of its text), tokens and maskable flags, one each
    per token."""
    p = _typed(data, "prompt", dict, where)
    text = _typed(p, "text", str, where)
    ids = _typed(p, "input_ids", list, where)
    offsets = _typed(p, "offsets", list, where)
    tokens = _typed(p, "tokens", list, where)
    maskable = _typed(p, "maskable", list, where)
    if not (len(offsets) == len(tokens) == len(maskable) == len(ids)):
        raise _fail(where, "prompt ids, offsets, tokens and maskable differ in length")
    if (
        not all(_is_int(i) for i in ids)
        or not all(isinstance(t, str) for t in tokens)
        or not all(isinstance(m, bool) for m in maskable)
    ):
        raise _fail(where, "prompt ids, tokens or maskable hold values of the wrong type")
    for o in offsets:
        if not (
            isinstance(o, list) and len(o) == 2 and all(map(_is_int, o)) and 0 <= o[0] <= o[1] <= len(text)
        ):
            raise _fail(where, f"prompt offset {o!r} is not a character span of the prompt")
    return Prompt(
        text,
        tuple(ids),
        tuple((o[0], o[1]) for o in offsets),
        tuple(tokens),
        tuple(maskable),
        _optional(p, "add_special_tokens", bool, True, where),
        _optional(p, "is_chat", bool, False, where),
    )


def _read_features(data: dict, prompt: Prompt, where: str) -> list[Feature]:
    """The features: each a piece of the prompt's text at its character span, on prompt tokens."""
    features = []
    for i, f in enumerate(_typed(data, "features", list, where)):
        if not isinstance(f, dict):
            raise _fail(where, f"feature {i} is not an object")
        f = _renamed(f, "tokens", "positions", where)
        start, end = _typed(f, "start", int, where), _typed(f, "end", int, where)
        text, positions = _typed(f, "text", str, where), _typed(f, "positions", list, where)
        if not (0 <= start <= end <= len(prompt.text)) or prompt.text[start:end] != text:
            raise _fail(where, f"feature {i} ({text!r}) does not match the prompt text at {start}..{end}")
        if not positions or not all(_is_int(t) and 0 <= t < len(prompt) for t in positions):
            raise _fail(where, f"feature {i} has token positions outside the prompt")
        features.append(Feature(i, text, start, end, tuple(positions)))
    return features


def _read_target(data: dict, where: str) -> Target:
    """The target: its ids and tokens, one each per target token, its text and whether generated."""
    ids = _typed(data, "target_ids", list, where)
    tokens = _typed(data, "target_tokens", list, where)
    if len(ids) != len(tokens) or not all(isinstance(t, str) for t in tokens) or not all(map(_is_int, ids)):
        raise _fail(where, "target_ids and target_tokens do not match")
    return Target(
        tuple(ids),
        _optional(data, "target_text", str, "", where),
        tuple(tokens),
        _optional(data, "target_generated", bool, False, where),
    )


def _read_token_scores(data: dict, n_tokens: int, n_features: int, where: str) -> np.ndarray | None:
    """The [target tokens explained x columns] matrix of scores, or None when the method gives none."""
    rows = data.get("token_scores")
    if rows is None:
        return None
    if not isinstance(rows, list) or len(rows) != n_tokens:
        raise _fail(where, "token_scores must have one row per target token explained")
    matrix = [_numbers(row, where, "token_scores", n_features) for row in rows]
    return np.array(matrix, dtype=np.float64).reshape(n_tokens, n_features)


def _read_step_scores(data: dict, n_tokens: int, where: str) -> dict[str, list[float]]:
    """The per-step scores (:mod:`genattr.steps`): names to lists of ``n_tokens`` finite numbers
    (null is refused: step scores are never non-finite); absent in older files: empty."""
    steps = _optional(data, "step_scores", dict, {}, where)
    out = {}
    for name, values in steps.items():
        numbers = [finite(v) for v in values] if isinstance(values, list) else [None]
        if len(numbers) != n_tokens or None in numbers:
            raise _fail(where, f"step score {name[:20]!r} must be a list of {n_tokens} finite numbers")
        out[name] = [v for v in numbers if v is not None]
    return out


def _read_objects(data: dict, where: str) -> dict:
    """``params``, ``diagnostics`` and ``extras``: JSON objects, kept as they are (absent: empty)."""
    out = {}
    for key in ("params", "diagnostics", "extras"):
        out[key] = data.get(key, {})
        if not isinstance(out[key], dict):
            raise _fail(where, f"'{key}' must be an object")
    return out


# one reader per setting: (value, where, prompt text) -> the value, or a _fail
def _one_of(name: str, built_in, registry: str | None = None):
    """A reader of a name among ``built_in``, or among those registered in ``registry`` (a module
    path, imported only for a name that is not built in, so reading built-in names needs no torch)."""

    def read(value, where: str, text: str) -> str:
        if value in built_in:
            return value
        choices = built_in
        if registry is not None:
            choices = getattr(importlib.import_module(registry, __package__), name.upper() + "S")
            if value in choices:
                return value
        raise _fail(where, f"{name} {value[:20]!r} is not one of {', '.join(choices)}")

    return read


def _stages(read):
    """A reader of the names ``read`` takes and of hierarchical levels ``"coarse>fine"`` of two
    of them (:mod:`genattr.hierarchy`)."""

    def stages(value, where: str, text: str) -> str:
        parts = value.split(">")
        if len(parts) > 2:
            raise _fail(where, f"level {value[:40]!r} has more than two stages 'coarse>fine'")
        for part in parts:
            read(part, where, text)
        return value

    return stages


def _mask_token(value, where: str, text: str) -> int | str | None:
    if value is None or (_is_int(value) and value >= 0) or value in BASELINE_NAMES:
        return value
    raise _fail(where, f"mask_token must be a token id, one of {', '.join(BASELINE_NAMES)} or null")


def _max_new_tokens(value, where: str, text: str) -> int | None:
    if value is None or (_is_int(value) and value >= 1):
        return value
    raise _fail(where, "max_new_tokens must be a positive integer or null")


def _as_is(value, where: str, text: str):
    return value


def _spans(value, where: str, text: str) -> tuple[tuple[int, int], ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(
        isinstance(s, list) and len(s) == 2 and all(map(_is_int, s)) and 0 <= s[0] <= s[1] <= len(text)
        for s in value
    ):
        raise _fail(where, "spans must be a list of [start, end] character spans of the prompt, or null")
    return tuple((s[0], s[1]) for s in value)


def _seed(value, where: str, text: str) -> int | None:
    if value is None or (_is_int(value) and 0 <= value < SEED_LIMIT):
        return value
    raise _fail(where, "seed must be an integer in [0, 2**64) or null")


def _target_span(value, where: str, text: str) -> tuple[int, int] | None:
    if value is None:
        return None
    if not (
        isinstance(value, list) and len(value) == 2 and all(map(_is_int, value)) and 0 <= value[0] < value[1]
    ):
        raise _fail(where, "target_span must be [first, stop) token indices with first < stop, or null")
    return value[0], value[1]


def _contrast(value, where: str, text: str) -> tuple[int, ...] | None:
    if value is None:
        return None
    if not (isinstance(value, list) and value and all(_is_int(v) and v >= 0 for v in value)):
        raise _fail(where, "contrast must be a non-empty list of token ids, or null")
    return tuple(value)


_SETTING_READERS = {  # name: (JSON types, reader)
    "level": (str, _stages(_one_of("level", LEVELS))),
    "mask": (str, _one_of("mask", MASKS, ".masking")),
    "mask_token": (object, _mask_token),
    "objective": (str, _one_of("objective", OBJECTIVES, ".objectives")),
    "max_new_tokens": (object, _max_new_tokens),
    "pattern": ((str, type(None)), _as_is),
    "spans": (object, _spans),
    "seed": (object, _seed),
    "attribute_target": (bool, _as_is),
    "target_span": (object, _target_span),
    "contrast": (object, _contrast),
    "token_scores": (bool, _as_is),
}


def _read_settings(values: dict, prompt: Prompt, where: str) -> Settings:
    """Settings from ``values`` (absent names take :class:`~genattr.settings.Settings`'s
    defaults); a name that is not a setting is refused, never dropped. ``baseline``, the former
    name of ``mask_token``, is read as it."""
    values = _renamed(values, "baseline", "mask_token", where)
    unknown = sorted(set(values) - set(SETTING_NAMES))
    if unknown:
        raise _fail(where, f"unknown settings {unknown} (settings are {', '.join(SETTING_NAMES)})")
    read = {}
    for name, (kinds, reader) in _SETTING_READERS.items():
        if name in values:
            read[name] = reader(_typed(values, name, kinds, where), where, prompt.text)
    return Settings(**read)


def _v1_settings(data: dict, params: dict, prompt: Prompt, where: str) -> tuple[Settings, dict]:
    """Schema version 1: ``level`` and ``seed`` at the top level, the other settings mixed into
    ``params`` (under names no method parameter had then). Returns the settings and the method's
    own parameters; ``params['level']`` repeated the level before an aggregation and is dropped."""
    params = _renamed(params, "baseline", "mask_token", where)
    values = {
        name: params[name] for name in SETTING_NAMES if name in params and name not in ("level", "seed")
    }
    values["level"] = data.get("level", DEFAULT_LEVEL)
    values["seed"] = data.get("seed")
    own = {key: value for key, value in params.items() if key not in SETTING_NAMES}
    return _read_settings(values, prompt, where), own


def _v2_settings(data: dict, params: dict, prompt: Prompt, where: str) -> tuple[Settings, dict]:
    """Schema version 2: the settings in their own object ``settings``."""
    return _read_settings(_typed(data, "settings", dict, where), prompt, where), params


_SETTINGS_BY_VERSION = {1: _v1_settings, 2: _v2_settings, 3: _v2_settings}


def attribution_fields(data, where: str = "attribution") -> dict:
    """The fields of an :class:`~genattr.Attribution` (its constructor's keywords) from a JSON
    object of schema version 1, 2 or 3, every one validated; anything else raises ResultFormatError."""
    if not isinstance(data, dict):
        raise _fail(where, "the top level must be a JSON object")
    if data.get("schema") != SCHEMA:
        raise _fail(where, f"unknown schema {data.get('schema')!r} (expected {SCHEMA!r})")
    version = data.get("schema_version")
    if not _is_int(version) or version not in _SETTINGS_BY_VERSION:
        raise _fail(
            where,
            f"schema version {version!r} is not supported (this is genattr {__version__}, which "
            f"reads schema versions {', '.join(map(str, _SETTINGS_BY_VERSION))})",
        )
    prompt = _read_prompt(data, where)
    features = _read_features(data, prompt, where)
    target = _read_target(data, where)
    objects = _read_objects(data, where)
    settings, params = _SETTINGS_BY_VERSION[version](data, objects["params"], prompt, where)
    columns = len(features) + (len(target.ids) if settings.attribute_target else 0)
    first, stop = settings.target_span or (0, len(target.ids))
    if stop > len(target.ids):
        raise _fail(where, f"target_span [{first}, {stop}) reaches past the {len(target.ids)} target tokens")
    return {
        "method": _typed(data, "method", str, where),
        "prompt": prompt,
        "features": features,
        "scores": np.array(_numbers(data.get("scores"), where, "scores", columns), dtype=np.float64),
        "target": target,
        "token_scores": _read_token_scores(data, stop - first, columns, where),
        "settings": settings,
        "params": params,
        "diagnostics": objects["diagnostics"],
        "version": _optional(data, "version", str, "", where),
        "extras": objects["extras"],
        "step_scores": _read_step_scores(data, len(target.ids), where),
    }
