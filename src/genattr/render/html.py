"""Static HTML renderings: a self-contained report page (:func:`render_html`, what ``genattr demo``
writes) and a fragment (:func:`render_fragment`) for places that strip scripts. Inline CSS only,
no scripts, no external resources; the interactive page of ``Attribution.to_html`` and the
notebook view are :mod:`.viewer`'s.

Every piece of text from the result (prompt, features, tokens, target, the names of the step
scores, method, parameters, diagnostics, captions, the title) goes through :func:`html.escape` with ``quote=True``, in text
and in attribute values alike.
"""

from __future__ import annotations

import html
import math
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

from ..errors import InputError
from . import (
    LEGEND,
    RGB,
    STEP_CAPTION,
    colour,
    fmt,
    header,
    ink,
    matrix_view,
    max_abs,
    parameters,
    pieces,
    settings,
    step_rows,
    target_label,
    target_pieces,
    visible,
)

if TYPE_CHECKING:
    from ..result import Attribution

CSS = """
.genattr{font-family:system-ui,sans-serif;line-height:1.6;margin:1em 0}
.genattr .ga-head,.genattr .ga-params,.genattr .ga-settings,.genattr .ga-legend{color:#444;font-size:.9em}
.genattr .ga-label{font-weight:600;margin-right:.5em}
.genattr .ga-text{white-space:pre-wrap;font-family:ui-monospace,monospace;border:1px solid #ddd;
 padding:.4em;margin:.3em 0}
.genattr .ga-f{border-radius:3px}
.genattr .ga-mark{outline:2px solid #111;outline-offset:1px}
.genattr .ga-undef{background:#eee}
.genattr .ga-sw{display:inline-block;padding:0 .5em;border:1px solid #ccc;margin-right:.2em}
.genattr .ga-wrap{overflow-x:auto;margin:.5em 0}
.genattr table{border-collapse:collapse;font-size:.8em;font-family:ui-monospace,monospace}
.genattr th,.genattr td{border:1px solid #e5e5e5;padding:1px 4px;white-space:pre;text-align:right}
"""


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _rgb(rgb: RGB) -> str:
    return "rgb({},{},{})".format(*rgb)


def _style(value: float, scale: float) -> str:
    background = colour(value, scale)
    return f"background:{_rgb(background)};color:{_rgb(ink(background))}"


def header_html(res: Attribution) -> str:
    """The header facts, parameters and settings of ``res`` as escaped HTML."""
    facts = " · ".join(f"{_e(name)} <b>{_e(value)}</b>" for name, value in header(res))
    out = f'<div class="ga-head">{facts}</div>'
    params = parameters(res)
    if params:
        out += f'<div class="ga-params">parameters: {_e(params)}</div>'
    called = settings(res)
    if called:
        out += f'<div class="ga-settings">settings: {_e(called)}</div>'
    return out


def _prompt(res: Attribution, scale: float, mark: Collection[int]) -> str:
    parts = []
    for text, i in pieces(res):
        if i is None:
            parts.append(_e(text))
            continue
        title = f"score {fmt(res.scores[i])}" + (" (ground truth)" if i in mark else "")
        cls = "ga-f ga-mark" if i in mark else "ga-f"
        parts.append(
            f'<span class="{cls}" style="{_style(res.scores[i], scale)}" title="{_e(title)}">'
            f"{_e(text)}</span>"
        )
    return f'<div class="ga-label">prompt</div><div class="ga-text ga-prompt">{"".join(parts)}</div>'


def _target(res: Attribution, scale: float) -> str:
    """The target; with ``attribute_target`` each output token on its sequence score's colour, as
    the prompt's features are (an undefined score, the last token's, is white)."""
    parts = []
    for text, score in target_pieces(res):
        if score is None:
            parts.append(_e(text))
            continue
        title = (
            "score undefined: no explained token follows it" if math.isnan(score) else f"score {fmt(score)}"
        )
        parts.append(
            f'<span class="ga-f ga-out" style="{_style(score, scale)}" title="{_e(title)}">{_e(text)}</span>'
        )
    return (
        f'<div class="ga-label">{_e(target_label(res))}</div>'
        f'<div class="ga-text ga-target">{"".join(parts)}</div>'
    )


def _steps(res: Attribution) -> str:
    """The per-step scores (:mod:`genattr.steps`) under the target: one row per target token."""
    if not res.step_scores:
        return ""
    labels, rows = step_rows(res)
    head = "".join(f"<th>{_e(label)}</th>" for label in labels)
    body = "".join(
        f"<tr><th>{_e(visible(row[0]))}</th>{''.join(f'<td>{_e(cell)}</td>' for cell in row[1:])}</tr>"
        for row in rows
    )
    return (
        f'<div class="ga-label">{_e(STEP_CAPTION)}</div><div class="ga-wrap"><table class="ga-steps">'
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"
    )


def _matrix(res: Attribution) -> str:
    """The token-score matrix, coloured on its own scale (max |token score|) with its own legend;
    with ``attribute_target`` the output tokens are columns too, their undefined entries (a token
    for itself and the tokens before it) blank and grey."""
    labels, columns, matrix = matrix_view(res)
    scale = max_abs(matrix)
    head = "".join(f"<th>{_e(visible(c))}</th>" for c in columns)
    rows = []
    for token, row in zip(labels, matrix, strict=True):
        cells = []
        for column, v in zip(columns, row, strict=True):
            if math.isnan(v):
                cells.append(f'<td class="ga-undef" title="{_e(f"{token} / {column}: undefined")}"></td>')
                continue
            title = f"{token} / {column}: score {fmt(v)}"
            cells.append(f'<td style="{_style(v, scale)}" title="{_e(title)}">{v:.2g}</td>')
        rows.append(f"<tr><th>{_e(visible(token))}</th>{''.join(cells)}</tr>")
    what = "features, then output tokens" if res.settings.attribute_target else "features"
    return (
        f'<div class="ga-label">token scores (rows: target tokens, columns: {what}; '
        f'max |score| {_e(fmt(scale))})</div><div class="ga-wrap"><table class="ga-matrix">'
        f"<thead><tr><th></th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
        + _legend(scale, "token scores", False)
    )


def _legend(scale: float, what: str, marked: bool) -> str:
    """The colour key of ``what``: swatches at -scale, 0 and +scale, the colours' full range."""
    swatches = "".join(
        f'<span class="ga-sw" style="{_style(v, scale)}">{_e(label)}</span>'
        for v, label in ((-scale, f"-{fmt(scale)}"), (0.0, "0"), (scale, f"+{fmt(scale)}"))
    )
    mark = '; <span class="ga-sw ga-mark">outlined</span> = ground-truth feature' if marked else ""
    return (
        f'<div class="ga-legend"><span class="ga-label">legend ({_e(what)})</span>{swatches} '
        f"{_e(LEGEND)}{mark}</div>"
    )


def _body(res: Attribution, mark: Collection[int]) -> str:
    scale = max_abs(res.scores)
    matrix = "" if res.token_scores is None else _matrix(res)
    return (
        header_html(res)
        + _prompt(res, scale, mark)
        + _legend(
            scale, "prompt and output tokens" if res.settings.attribute_target else "prompt", bool(mark)
        )
        + _target(res, scale)
        + _steps(res)
        + matrix
    )


def render_fragment(res: Attribution, *, mark: Collection[int] | None = None) -> str:
    """One result as a ``<div>`` with its own scoped ``<style>`` (for notebooks)."""
    return f'<div class="genattr"><style>{CSS}</style>{_body(res, set(mark or ()))}</div>'


def render_html(
    results: Sequence[Attribution],
    *,
    title: str = "genattr report",
    marks: Sequence[Collection[int]] | None = None,
    captions: Sequence[str] | None = None,
) -> str:
    """A complete HTML page holding every result in order; ``marks[i]`` are the feature positions of
    ``results[i]`` to outline as ground truth, ``captions[i]`` its heading."""
    for name, extra in (("marks", marks), ("captions", captions)):
        if extra is not None and len(extra) != len(results):
            raise InputError(
                f"{name} has {len(extra)} entries for {len(results)} results; give one per result."
            )
    sections = []
    for i, res in enumerate(results):
        caption = f"<h2>{_e(captions[i])}</h2>" if captions is not None and captions[i] else ""
        mark = set(marks[i]) if marks is not None else set()
        sections.append(f'<section class="genattr">{caption}{_body(res, mark)}</section>')
    body = "\n".join(sections)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f"<style>{CSS}</style></head><body><h1>{_e(title)}</h1>\n{body}\n</body></html>\n"
    )
