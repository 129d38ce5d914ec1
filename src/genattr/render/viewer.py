"""The interactive viewer: one self-contained HTML page (:func:`render_viewer`) or notebook
fragment (:func:`viewer_fragment`) holding one or more results, with a small script of its own
(``viewer.js``, styled by ``viewer.css``; both inlined, nothing fetched).

Hovering or clicking an output token colours the prompt by that token's row of ``token_scores``
(and the output tokens too, for results with ``attribute_target``); a button goes back to the
sequence scores. The per-step scores (p, entropy) stand under each output token, the features
table sorts by any column, every result downloads as JSON, and the output tokens take the
keyboard (Tab, the arrow keys, Home, End, Enter or Space, Escape). Results of the same prompt
text form a group with a switch between methods and a side-by-side view; results of different
prompts form separate groups on the same page.

Colours: :func:`genattr.render.colour` (ColorBrewer RdBu), computed by the script from the same
stops, on a scale symmetric around 0 that reaches full colour at the largest finite ``|score|`` of
the row shown: the prompt's columns on one scale, the output tokens' columns (``attribute_target``)
on another, each with a legend of its range (the token just before the one explained often
outweighs the whole prompt by orders of magnitude, which one scale would leave blank).

What the page embeds, and why it is safe:

* the header of each result (method, level, diagnostics, parameters, settings) as HTML text
  through :func:`html.escape`; everything else the script writes with ``textContent`` only;
* the data as JSON in ``<script type="application/json">``: :func:`script_json` writes ``<``,
  ``>``, ``&``, U+2028 and U+2029 as ``\\u003c`` ... escapes, so no text in a result can close
  the element or open a comment, and the JSON reads back unchanged;
* ``token_scores`` losslessly as base64 of little-endian float32 when every entry is exactly a
  float32 (what float32 models compute), else float64 (:func:`pack`): 5.3 or 10.7 bytes a score,
  about a quarter to a half of the JSON text's ~20;
* the rest of the result once: the prompt and feature lists once per distinct value on the page,
  the other fields as Python's JSON text (integers beyond 2**53 included, which a script's
  numbers would round). The download rebuilds the whole result from these (the key order aside,
  the object :meth:`~genattr.Attribution.to_dict` gives; :meth:`~genattr.Attribution.load` reads it
  back equal).
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Collection, Sequence
from importlib import resources
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InputError
from . import LEGEND, PALETTE, STEP_LABELS, pieces, visible
from .html import header_html

if TYPE_CHECKING:
    from ..result import Attribution

SHARED_FIELDS = ("prompt", "features", "token_scores")
"""The fields of :meth:`~genattr.Attribution.to_dict` embedded apart from the rest of the result."""
SHOWN_STEPS = {"prob": "p", "entropy": "H"}
"""The per-step scores written under each output token, with their short labels (all of them
are in its tooltip, labelled as :data:`~genattr.render.STEP_LABELS` says)."""
_SCRIPT_SAFE = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)


def script_json(value) -> str:
    """``value`` as compact JSON safe inside ``<script type="application/json">``: ``<``, ``>``,
    ``&``, U+2028 and U+2029 escaped as ``\\uXXXX`` (these only occur inside JSON strings, where
    the escape means the same character), so no ``</script>`` or ``<!--`` can appear.

    >>> script_json({"a": "</script><!--\\u2028"})
    '{"a":"\\\\u003c/script\\\\u003e\\\\u003c!--\\\\u2028"}'
    """
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).translate(
        _SCRIPT_SAFE
    )


def pack(values: np.ndarray | None) -> dict | None:
    """A float array as ``{"dtype", "shape", "base64"}``: its bytes, little-endian, as float32
    (``"f4"``) when converting every entry to float32 and back gives it exactly (NaN included),
    else as float64 (``"f8"``); lossless either way. None stays None."""
    if values is None:
        return None
    array = np.asarray(values, dtype=np.float64)
    narrow = array.astype("<f4")
    exact = np.array_equal(narrow.astype(np.float64), array, equal_nan=True)
    data = narrow if exact else array.astype("<f8")
    return {
        "dtype": "f4" if exact else "f8",
        "shape": list(array.shape),
        "base64": base64.b64encode(data.tobytes()).decode("ascii"),
    }


def unpack(packed: dict | None) -> np.ndarray | None:
    """The float64 array of :func:`pack`'s output (what the script decodes)."""
    if packed is None:
        return None
    raw = base64.b64decode(packed["base64"])
    return np.frombuffer(raw, dtype="<" + packed["dtype"]).astype(np.float64).reshape(packed["shape"])


def _interned(table: list, index: dict, value) -> int:
    """The position of ``value`` in ``table``, appended on first sight (keyed by its JSON)."""
    key = json.dumps(value, sort_keys=True)
    if key not in index:
        index[key] = len(table)
        table.append(value)
    return index[key]


def _view(res: Attribution, mark: Collection[int]) -> dict:
    """What the script draws: the prompt as ``[text, feature]`` pieces (-1 between features), the
    output tokens as shown, the rows of ``token_scores`` ([first, stop) of the target tokens), the
    number of features F, whether output tokens are columns (``attribute_target``), the marked
    (ground-truth) features, and the step scores to write under each token."""
    first, stop = res.span
    return {
        "pieces": [[visible(text, layout=True), -1 if i is None else i] for text, i in pieces(res)],
        "tokens": [visible(t) for t in res.target.tokens],
        "features": [visible(f.text) for f in res.features],
        "first": first,
        "stop": stop,
        "n_features": len(res.features),
        "target_columns": bool(res.settings.attribute_target),
        "marks": sorted(int(i) for i in mark),
        "steps": [name for name in SHOWN_STEPS if name in res.step_scores],
    }


def payload(results: Sequence[Attribution], marks: Sequence[Collection[int]]) -> dict:
    """The data the script reads: the palette and labels, the distinct prompts and feature lists,
    and per result its view, its ``token_scores`` packed, and its other fields as JSON text."""
    prompts: list = []
    feature_lists: list = []
    seen: tuple[dict, dict] = ({}, {})
    entries = []
    for res, mark in zip(results, marks, strict=True):
        data = res.to_dict()
        rest = {k: v for k, v in data.items() if k not in SHARED_FIELDS}
        entries.append(
            {
                "rest": json.dumps(rest, ensure_ascii=False, separators=(",", ":"), allow_nan=False),
                "prompt": _interned(prompts, seen[0], data["prompt"]),
                "features": _interned(feature_lists, seen[1], data["features"]),
                "token_scores": pack(res.token_scores),
                "view": _view(res, mark),
            }
        )
    return {
        "palette": [list(c) for c in PALETTE],
        "step_labels": STEP_LABELS,
        "shown_steps": SHOWN_STEPS,
        "legend": LEGEND,
        "prompts": prompts,
        "feature_lists": feature_lists,
        "results": entries,
    }


def groups(results: Sequence[Attribution]) -> list[list[int]]:
    """The positions of the results grouped by prompt text, in order of first appearance."""
    by_text: dict[str, list[int]] = {}
    for i, res in enumerate(results):
        by_text.setdefault(res.prompt.text, []).append(i)
    return list(by_text.values())


def _asset(name: str) -> str:
    return resources.files("genattr.render").joinpath(name).read_text(encoding="utf-8")


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _label(res: Attribution) -> str:
    return f"{res.method} ({res.level})"


def _panel(res: Attribution, i: int) -> str:
    """One result's frame: its escaped header and the places the script fills."""
    return (
        f'<div class="ga-panel" data-r="{i}"><div class="ga-title">{_e(_label(res))}</div>{header_html(res)}'
        '<div class="ga-bar"><button type="button" class="ga-seq" aria-pressed="true">sequence scores'
        '</button><button type="button" class="ga-dl">download JSON</button>'
        '<span class="ga-showing" aria-live="polite"></span></div>'
        '<div class="ga-legend ga-legend-prompt"></div><div class="ga-label">prompt</div>'
        '<div class="ga-text ga-prompt">(the interactive view needs JavaScript; trust the notebook '
        "or open the page in a browser)</div>"
        '<div class="ga-label">output tokens (hover, click, or Tab then arrows and Enter)</div>'
        '<div class="ga-legend ga-legend-out"></div>'
        '<div class="ga-tokens" role="toolbar" aria-label="output tokens"></div>'
        '<div class="ga-label">features</div><div class="ga-table"></div></div>'
    )


def _group(results: Sequence[Attribution], members: list[int], g: int, n_groups: int) -> str:
    """A group's heading (the prompt's start), its method switch, and its results' panels."""
    text = visible(results[members[0]].prompt.text)
    heading = f"prompt {g + 1} of {n_groups}: " if n_groups > 1 else "prompt: "
    short = text if len(text) <= 120 else text[:119] + "…"
    switch = ""
    if len(members) > 1:
        buttons = "".join(
            f'<button type="button" class="ga-method" data-r="{i}">{_e(_label(results[i]))}</button>'
            for i in members
        )
        switch = (
            f'<div class="ga-switch" role="group" aria-label="methods">{buttons}'
            '<label><input type="checkbox" class="ga-side"> side by side</label></div>'
        )
    panels = "".join(_panel(results[i], i) for i in members)
    return (
        f'<section class="ga-group"><h2 class="ga-prompt-head">{_e(heading + short)}</h2>{switch}'
        f'<div class="ga-panels">{panels}</div></section>'
    )


def viewer_fragment(results: Sequence[Attribution], *, marks: Sequence[Collection[int]] | None = None) -> str:
    """The viewer of ``results`` as one ``<div>`` with its style, data and script (for notebooks
    and pages alike); ``marks[i]`` are feature positions of ``results[i]`` to outline as ground truth."""
    if not results:
        raise InputError("no results to show; give at least one Attribution.")
    if marks is not None and len(marks) != len(results):
        raise InputError(f"marks has {len(marks)} entries for {len(results)} results; give one per result.")
    chosen = [set(m) for m in marks] if marks is not None else [set() for _ in results]
    parts = groups(results)
    body = "".join(_group(results, members, g, len(parts)) for g, members in enumerate(parts))
    return (
        f'<div class="ga-viewer"><style>{_asset("viewer.css")}</style>{body}'
        f'<script type="application/json" class="ga-data">{script_json(payload(results, chosen))}</script>'
        f"<script>{_asset('viewer.js')}</script></div>"
    )


def render_viewer(
    results: Sequence[Attribution],
    *,
    title: str = "genattr viewer",
    marks: Sequence[Collection[int]] | None = None,
) -> str:
    """A complete HTML page holding :func:`viewer_fragment` of ``results`` under ``title``."""
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<style>body{font-family:system-ui,sans-serif;margin:1em 2em}</style></head><body>"
        f'<h1 class="ga-page-title">{_e(title)}</h1>\n{viewer_fragment(results, marks=marks)}\n</body></html>\n'
    )
