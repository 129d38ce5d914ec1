"""Attribution: the one result type every method returns.

It describes itself: the prompt (text, tokens, character offsets, what was maskable), the
features scored (text, character span, token positions), one score per feature, and where the
method gives it, one row of scores per target token (``token_scores``, target tokens x
features); the target explained; the method, every parameter and the seed; the library
version; and diagnostics (forward passes, tokens processed, time, and what the method checks
of itself, such as a convergence delta).

Results are saved as JSON only, written atomically (temporary file, then rename), with a schema
name and version. :meth:`Attribution.load` validates every field and never imports or evaluates
anything named in the file.

>>> res = genattr.explain(lm, "The capital of France is", target=" Paris")   # doctest: +SKIP
>>> res.top(2)                                                               # doctest: +SKIP
[(Feature(text='France', ...), 3.1), (Feature(text='capital', ...), 1.2)]
>>> res.save("out.json"); genattr.Attribution.load("out.json")               # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError, ResultFormatError
from .text.prompt import Prompt
from .text.segment import LEVELS, Feature, segment
from .text.target import Target

SCHEMA = "genattr.attribution"
SCHEMA_VERSION = 1
SEED_LIMIT = 2**64  # seeds are in [0, 2**64): what torch's generators accept


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


@dataclass
class Attribution:
    """Scores of the prompt's features for what the model wrote (see the module docstring).

    ``scores[i]`` belongs to ``features[i]``; ``token_scores[t, i]`` (when not None) is feature
    ``i``'s score for target token ``t``. The meaning and sign of a score depend on the method:
    ``genattr.methods()`` and the README say what each one computes.
    """

    method: str
    prompt: Prompt
    features: list[Feature]
    scores: np.ndarray
    target: Target
    token_scores: np.ndarray | None = None
    level: str = "word"
    params: dict = field(default_factory=dict)
    seed: int | None = None
    diagnostics: dict = field(default_factory=dict)
    version: str = ""
    extras: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.scores = np.asarray(self.scores, dtype=np.float64)
        if self.scores.shape != (len(self.features),):
            raise InputError(
                f"scores has shape {self.scores.shape}, expected one score per feature "
                f"({len(self.features)})."
            )
        if any(f.index != i for i, f in enumerate(self.features)):
            raise InputError("features must be numbered 0, 1, ... in order (features[i].index == i).")
        if self.token_scores is not None:
            self.token_scores = np.asarray(self.token_scores, dtype=np.float64)
            expected = (len(self.target.ids), len(self.features))
            if self.token_scores.shape != expected:
                raise InputError(
                    f"token_scores has shape {self.token_scores.shape}, expected (target tokens, "
                    f"features) = {expected}."
                )

    # ----------------------------------------------------------------- reading
    @property
    def target_tokens(self) -> list[str]:
        return list(self.target.tokens)

    def top(self, k: int = 5) -> list[tuple[Feature, float]]:
        """The ``k`` highest-scoring features with their scores, best first (ties by position)."""
        if k < 0:
            raise InputError(f"k must be non-negative, got {k}.")
        order = sorted(range(len(self.features)), key=lambda i: (-self.scores[i], i))[:k]
        return [(self.features[i], float(self.scores[i])) for i in order]

    def aggregate(self, level: str, *, pattern=None, spans=None) -> Attribution:
        """The same result at a coarser ``level``: each coarse feature's score is the sum of the
        scores of the features it contains (per target token too).

        Summing is exact for additive attributions (gradient x input, integrated gradients, the
        AIEG paper's word-level sums); for Shapley values and leave-one-out it approximates what a
        run at the coarser level would give. A feature that straddles two coarse features
        cannot be aggregated and raises :class:`~genattr.errors.InputError`.
        """
        p = self.prompt
        coarse = segment(p.text, p.offsets, p.maskable, level, pattern=pattern, spans=spans)
        owner = {t: c.index for c in coarse for t in c.tokens}
        matrix = np.zeros((len(self.features), len(coarse)))
        for f in self.features:
            owners = {owner.get(t) for t in f.tokens}
            if len(owners) != 1 or None in owners:
                raise InputError(
                    f"feature {f.text!r} does not fall inside one {level}-level feature; "
                    "aggregate only to a coarser level."
                )
            matrix[f.index, owners.pop()] = 1.0
        used = matrix.sum(0) > 0
        keep = [c for c in coarse if used[c.index]]
        matrix = matrix[:, used]
        features = [Feature(i, c.text, c.start, c.end, c.tokens) for i, c in enumerate(keep)]
        token_scores = None if self.token_scores is None else self.token_scores @ matrix
        return Attribution(
            self.method,
            self.prompt,
            features,
            self.scores @ matrix,
            self.target,
            token_scores,
            level,
            dict(self.params),
            self.seed,
            dict(self.diagnostics),
            self.version,
            {**self.extras, "aggregated_from": self.level},
        )

    # ----------------------------------------------------------------- JSON
    def to_dict(self) -> dict:
        return {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "version": self.version,
            "method": self.method,
            "level": self.level,
            "features": [f.to_dict() for f in self.features],
            "scores": jsonable(self.scores),
            "token_scores": jsonable(self.token_scores),
            "target_tokens": list(self.target.tokens),
            "target_ids": list(self.target.ids),
            "target_text": self.target.text,
            "target_generated": self.target.generated,
            "prompt": self.prompt.to_dict(),
            "params": jsonable(self.params),
            "seed": self.seed,
            "diagnostics": jsonable(self.diagnostics),
            "extras": jsonable(self.extras),
        }

    @classmethod
    def from_dict(cls, data) -> Attribution:
        """Rebuild a result from :meth:`to_dict` output, validating every field."""
        return _parse(data)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the result as JSON, atomically: a reader never sees a half-written file."""
        path = Path(path)
        text = json.dumps(self.to_dict(), indent=1, allow_nan=False)
        write_atomic(path, text)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Attribution:
        """Read a result written by :meth:`save`, validating every field; anything else (not
        UTF-8, not JSON, NaN or Infinity, nesting deeper than Python parses, a wrong field)
        raises :class:`~genattr.errors.ResultFormatError`."""
        try:
            text = Path(path).read_bytes().decode("utf-8")
        except OSError as exc:
            raise ResultFormatError(f"cannot read {path}: {exc}.") from exc
        except UnicodeDecodeError as exc:
            raise ResultFormatError(f"{path} is not UTF-8 text ({exc}); was it written by genattr?") from exc
        try:
            data = json.loads(text, parse_constant=_no_constant)
        except (ValueError, RecursionError) as exc:
            raise ResultFormatError(f"{path} is not valid JSON ({exc}); was it written by genattr?") from exc
        return _parse(data, str(path))

    # ----------------------------------------------------------------- display
    def __repr__(self) -> str:
        best = ", ".join(f"{f.text!r}: {s:.3g}" for f, s in self.top(3))
        return (
            f"Attribution(method={self.method!r}, features={len(self.features)}, "
            f"target={self.target.text!r}, top=[{best}])"
        )

    def to_html(self, *, title: str = "genattr report", mark=None) -> str:
        """A self-contained HTML page; ``mark`` is a set of feature indices to outline (ground truth)."""
        from .render.html import render_html

        return render_html([self], title=title, marks=None if mark is None else [mark])

    def _repr_html_(self) -> str:
        from .render.html import render_fragment

        return render_fragment(self)

    def show(self, console=None, mark=None) -> None:
        """Print the result to the terminal (rich: coloured backgrounds and a legend); ``mark`` as in :meth:`to_html`."""
        from .render.terminal import print_attribution

        print_attribution(self, console=console, mark=mark)

    def plot(self, kind: str = "auto", ax=None):
        """A matplotlib heatmap of ``token_scores`` (``kind="heatmap"``) or bar chart of ``scores``."""
        from .render.plots import plot_attribution

        return plot_attribution(self, kind=kind, ax=ax)


def check_writable(path: str | os.PathLike) -> Path:
    """``path`` as a :class:`~pathlib.Path` if a file can be written there: not a directory, in a
    directory that exists and is writable; else :class:`~genattr.errors.InputError` (checked
    before a long computation, so that it does not end in a failed write)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a directory; give a file name to write to.")
    parent = path.parent
    if not parent.is_dir():
        raise InputError(
            f"directory {parent} does not exist; create it first (genattr creates no directories)."
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"directory {parent} is not writable; choose another place to write {path.name}.")
    return path


def _new_file_mode(path: Path) -> int:
    """The permission bits a file written at ``path`` gets: those of the file it replaces, or for a
    new file 0o666 less the umask, as ``open()`` would give."""
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same directory and a rename, with
    the permissions of :func:`_new_file_mode`; the directory must exist (:func:`check_writable`)."""
    path = check_writable(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _new_file_mode(path))
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------- validation
def _fail(where: str, what: str) -> ResultFormatError:
    return ResultFormatError(
        f"{where}: {what}; the file is not a valid genattr result (re-run, or restore it)."
    )


def _no_constant(name: str):
    """``json.loads``'s hook for NaN, Infinity and -Infinity: refuse them."""
    raise ResultFormatError(f"{name} is not a number genattr writes (non-finite scores are saved as null)")


def _finite(v) -> float | None:
    """``v`` as a finite float, or None when it is not a number or not finite (1e999, 10**400)."""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return None
    try:
        number = float(v)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _numbers(value, where: str, name: str, length: int | None = None) -> list[float]:
    """A list of finite numbers, null standing for a non-finite score (read back as NaN)."""
    if not isinstance(value, list) or (length is not None and len(value) != length):
        raise _fail(where, f"'{name}' must be a list of {length if length is not None else ''} numbers")
    out = []
    for v in value:
        number = math.nan if v is None else _finite(v)
        if number is None:
            raise _fail(where, f"'{name}' holds {str(v)[:20]!r}, not a finite number")
        out.append(number)
    return out


def _optional(data: dict, key: str, kinds, default, where: str):
    """``data[key]`` checked like :func:`_typed`, or ``default`` when the field is absent."""
    return _typed(data, key, kinds, where) if key in data else default


def _typed(data: dict, key: str, kinds, where: str):
    if key not in data:
        raise _fail(where, f"missing field '{key}'")
    value = data[key]
    if not isinstance(value, kinds) or (isinstance(value, bool) and kinds is int):
        raise _fail(where, f"field '{key}' has the wrong type ({type(value).__name__})")
    return value


def _parse(data, where: str = "attribution") -> Attribution:
    from . import __version__

    if not isinstance(data, dict):
        raise _fail(where, "the top level must be a JSON object")
    if data.get("schema") != SCHEMA:
        raise _fail(where, f"unknown schema {data.get('schema')!r} (expected {SCHEMA!r})")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise _fail(
            where,
            f"schema version {data.get('schema_version')!r} is not supported "
            f"(this is genattr {__version__}, schema {SCHEMA_VERSION})",
        )
    p = _typed(data, "prompt", dict, where)
    text = _typed(p, "text", str, where)
    ids = _typed(p, "input_ids", list, where)
    n_tok = len(ids)
    offsets = _typed(p, "offsets", list, where)
    tokens = _typed(p, "tokens", list, where)
    maskable = _typed(p, "maskable", list, where)
    if not (len(offsets) == len(tokens) == len(maskable) == n_tok):
        raise _fail(where, "prompt ids, offsets, tokens and maskable differ in length")
    if (
        not all(isinstance(i, int) and not isinstance(i, bool) for i in ids)
        or not all(isinstance(t, str) for t in tokens)
        or not all(isinstance(m, bool) for m in maskable)
    ):
        raise _fail(where, "prompt ids, tokens or maskable hold values of the wrong type")
    for o in offsets:
        if not (
            isinstance(o, list)
            and len(o) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) for x in o)
            and 0 <= o[0] <= o[1] <= len(text)
        ):
            raise _fail(where, f"prompt offset {o!r} is not a character span of the prompt")
    prompt = Prompt(
        text,
        tuple(ids),
        tuple((o[0], o[1]) for o in offsets),
        tuple(tokens),
        tuple(maskable),
        _optional(p, "add_special_tokens", bool, True, where),
        _optional(p, "is_chat", bool, False, where),
    )
    features = []
    for i, f in enumerate(_typed(data, "features", list, where)):
        if not isinstance(f, dict):
            raise _fail(where, f"feature {i} is not an object")
        start, end = _typed(f, "start", int, where), _typed(f, "end", int, where)
        ftext, toks = _typed(f, "text", str, where), _typed(f, "tokens", list, where)
        if not (0 <= start <= end <= len(text)) or text[start:end] != ftext:
            raise _fail(where, f"feature {i} ({ftext!r}) does not match the prompt text at {start}..{end}")
        if not toks or not all(
            isinstance(t, int) and not isinstance(t, bool) and 0 <= t < n_tok for t in toks
        ):
            raise _fail(where, f"feature {i} has token positions outside the prompt")
        features.append(Feature(i, ftext, start, end, tuple(toks)))
    scores = _numbers(data.get("scores"), where, "scores", len(features))
    target_ids = _typed(data, "target_ids", list, where)
    target_tokens = _typed(data, "target_tokens", list, where)
    if (
        len(target_ids) != len(target_tokens)
        or not all(isinstance(t, str) for t in target_tokens)
        or not all(isinstance(t, int) and not isinstance(t, bool) for t in target_ids)
    ):
        raise _fail(where, "target_ids and target_tokens do not match")
    token_scores = data.get("token_scores")
    if token_scores is not None:
        if not isinstance(token_scores, list) or len(token_scores) != len(target_ids):
            raise _fail(where, "token_scores must have one row per target token")
        token_scores = [_numbers(row, where, "token_scores", len(features)) for row in token_scores]
    seed = data.get("seed")
    if seed is not None and (
        not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < SEED_LIMIT
    ):
        raise _fail(where, "seed must be an integer in [0, 2**64) or null")
    level = _optional(data, "level", str, "word", where)
    if level not in LEVELS:
        raise _fail(where, f"level {level[:20]!r} is not one of {', '.join(LEVELS)}")
    for key in ("params", "diagnostics", "extras"):
        if not isinstance(data.get(key, {}), dict):
            raise _fail(where, f"'{key}' must be an object")
    target = Target(
        tuple(target_ids),
        _optional(data, "target_text", str, "", where),
        tuple(target_tokens),
        _optional(data, "target_generated", bool, False, where),
    )
    return Attribution(
        method=_typed(data, "method", str, where),
        prompt=prompt,
        features=features,
        scores=np.array(scores),
        target=target,
        token_scores=None
        if token_scores is None
        else np.array(token_scores).reshape(len(target_ids), len(features)),
        level=level,
        params=data.get("params", {}),
        seed=seed,
        diagnostics=data.get("diagnostics", {}),
        version=_optional(data, "version", str, "", where),
        extras=data.get("extras", {}),
    )
