"""What every rendering of an :class:`~genattr.Attribution` shares: the diverging colour scale,
the prompt cut into scored features and the context between them, and the header facts.

:mod:`.html` writes report pages and notebook fragments, :mod:`.terminal` prints with rich,
:mod:`.plots` draws with matplotlib. Importing this package imports neither rich nor matplotlib.

Colours: ColorBrewer's diverging RdBu in 11 classes (:data:`PALETTE`, colour-blind safe, the
colours of matplotlib's ``RdBu_r`` that :mod:`.plots` draws heatmaps with), interpolated linearly:
:data:`NEUTRAL` (near-white) at 0, :data:`POSITIVE` (dark red) at the largest absolute score,
:data:`NEGATIVE` (dark blue) at minus it; a non-finite score is :data:`NEUTRAL`.
"""

from __future__ import annotations

import math
import re

import numpy as np

RGB = tuple[int, int, int]

PALETTE: tuple[RGB, ...] = (
    (5, 48, 97),
    (33, 102, 172),
    (67, 147, 195),
    (146, 197, 222),
    (209, 229, 240),
    (247, 247, 247),
    (253, 219, 199),
    (244, 165, 130),
    (214, 96, 77),
    (178, 24, 43),
    (103, 0, 31),
)
"""ColorBrewer RdBu, 11 classes, from -1 (blue) through 0 to +1 (red), evenly spaced."""
NEGATIVE, NEUTRAL, POSITIVE = PALETTE[0], PALETTE[5], PALETTE[-1]
KEY_DIAGNOSTICS = ("model", "forward_passes", "tokens_processed", "seconds")
HEADER_SETTINGS = ("level", "objective")
OBJECTIVE_UNITS = {"log_prob": "nats", "prob": "probability"}
STEP_LABELS = {"prob": "p", "log_prob": "log p", "entropy": "entropy", "rank": "rank", "contrast": "contrast"}
STEP_CAPTION = (
    "step scores: p = p(token | prompt, earlier tokens); log p and entropy in nats; rank 1 = the "
    "model's top choice; contrast = log p(token) - log p(foil token)"
)
LEGEND = "red: positive score, blue: negative, near-white: 0; intensity is |score| / max |score|"


def max_abs(values) -> float:
    """The largest finite absolute value in ``values``; 1.0 when there is none or it is 0."""
    magnitudes = np.abs(np.asarray(values, dtype=np.float64))
    magnitudes = magnitudes[np.isfinite(magnitudes)]
    peak = float(magnitudes.max()) if magnitudes.size else 0.0
    return peak if peak > 0 else 1.0


def colour(value: float, scale: float) -> RGB:
    """The colour of ``value`` on the diverging scale that reaches full colour at ``±scale``: with
    ``u = 5 min(|value| / scale, 1)`` the stops of :data:`PALETTE` from the centre outwards on the
    side of the sign, ``c = a + (b - a)(u - k)`` between stops ``k`` and ``k + 1``, each channel
    rounded half up. The viewer's script (``viewer.js``) computes the same numbers in the same order.
    """
    if not math.isfinite(value):
        return NEUTRAL
    u = min(abs(value) / scale, 1.0) * 5
    k = min(math.floor(u), 4)
    stops = PALETTE[5:] if value > 0 else PALETTE[5::-1]
    r, g, b = (math.floor(a + (b - a) * (u - k) + 0.5) for a, b in zip(stops[k], stops[k + 1], strict=True))
    return r, g, b


def ink(background: RGB) -> RGB:
    """Black or white, whichever reads better on ``background``."""
    r, g, b = background
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


def fmt(value: float) -> str:
    return f"{value:.4g}"


_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escape(char: str) -> str:
    code = ord(char)
    return _NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def visible(text: str, *, layout: bool = False) -> str:
    """``text`` safe to print on a terminal: every control character (C0, DEL, C1: escape
    sequences, bells, carriage returns) and every bidirectional override or isolate
    (U+202A-U+202E, U+2066-U+2069; the marks U+061C, U+200E, U+200F) written as a visible escape (``\\n``, ``\\x1b``,
    ``\\u202e``). With ``layout``, line breaks and tabs are kept as they are."""
    keep = "\n\t" if layout else ""
    return _CONTROL.sub(lambda m: m.group() if m.group() in keep else _escape(m.group()), text)


def pieces(res) -> list[tuple[str, int | None]]:
    """The prompt text, in order and complete, as ``(text, feature position)`` pieces; context
    between features (template scaffolding, unscored text) has position None."""
    text, cursor = res.prompt.text, 0
    out: list[tuple[str, int | None]] = []
    for i, f in sorted(enumerate(res.features), key=lambda item: (item[1].start, item[1].end)):
        start = max(f.start, cursor)
        if start > cursor:
            out.append((text[cursor:start], None))
        if f.end > start:
            out.append((text[start : f.end], i))
            cursor = f.end
    if cursor < len(text):
        out.append((text[cursor:], None))
    return out


def header(res) -> list[tuple[str, str]]:
    """``(name, value)`` pairs for the header line: method, level, the objective with its unit,
    and the key diagnostics present."""
    items = [("method", res.method), ("level", res.level)]
    objective = res.settings.objective
    if objective in OBJECTIVE_UNITS:
        items.append(("objective", f"{objective} ({OBJECTIVE_UNITS[objective]})"))
    for key in KEY_DIAGNOSTICS:
        if key in res.diagnostics:
            value = res.diagnostics[key]
            items.append((key, fmt(value) if isinstance(value, float) else str(value)))
    return items


def parameters(res) -> str:
    """The method's parameters as ``name=value`` pairs, leaving out those not set."""
    return ", ".join(f"{k}={v}" for k, v in res.params.items() if v is not None)


def settings(res) -> str:
    """The call's settings as ``name=value`` pairs: only those that are set, and not the level
    and objective, which :func:`header` gives."""
    return ", ".join(f"{k}={v}" for k, v in res.settings.set_items(leave_out=HEADER_SETTINGS))


def step_rows(res) -> tuple[list[str], list[list[str]]]:
    """The per-step scores as a table: the column labels (``token``, then one per score, named by
    :data:`STEP_LABELS` or as stored) and one row of strings per target token (the token as
    stored, ranks and other whole numbers without decimals, the rest to 4 significant digits)."""
    names = list(res.step_scores)
    labels = ["token", *(STEP_LABELS.get(name, name) for name in names)]
    rows = [
        [token, *(_number(res.step_scores[name][t]) for name in names)]
        for t, token in enumerate(res.target.tokens)
    ]
    return labels, rows


def _number(value: float) -> str:
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else fmt(value)


def matrix_view(res) -> tuple[list[str], list[str], np.ndarray]:
    """The token-score matrix as it is drawn: row labels (the target tokens explained), column
    labels (the features' text, then, with ``attribute_target``, one per output token, marked
    ``out k:``) and the matrix (NaN where an entry is undefined)."""
    first, stop = res.span
    columns = [f.text for f in res.features]
    if res.settings.attribute_target:
        columns += [f"out {k + 1}: {token}" for k, token in enumerate(res.target.tokens)]
    return list(res.target.tokens[first:stop]), columns, res.token_scores


def target_pieces(res) -> list[tuple[str, float | None]]:
    """The target as ``(token, score)`` pieces: with ``attribute_target`` each output token with its
    sequence score (NaN where undefined), else the whole text with None."""
    if not res.settings.attribute_target:
        return [(res.target.text, None)]
    F = len(res.features)
    return [(token, float(res.scores[F + k])) for k, token in enumerate(res.target.tokens)]


def target_label(res) -> str:
    return "target (generated by the model)" if res.target.generated else "target (given)"
