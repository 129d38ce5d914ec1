"""Terminal rendering with rich: the prompt with each feature on its score's background colour,
the target, a legend, the token-score matrix as tables of at most :data:`MAX_COLUMNS`
feature columns each (all of them printed), and the per-step scores when the result has them.

User text always goes into :class:`rich.text.Text` objects, never through console markup, so
brackets in prompts or tokens print as they are, and through :func:`~genattr.render.visible`
first, so escape sequences, bells, carriage returns and bidi overrides in a result print as
visible escapes instead of acting on the terminal. A result without a token matrix gets a
one-row table of its scores, so the numbers show where colours do not (a pipe, a file).
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import TYPE_CHECKING

from rich import box
from rich.color import Color
from rich.console import Console
from rich.style import Style
from rich.table import Table
from rich.text import Text

from . import (
    LEGEND,
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

MAX_COLUMNS = 12


def _style(value: float, scale: float, marked: bool = False) -> Style:
    background = colour(value, scale)
    return Style(
        color=Color.from_rgb(*ink(background)),
        bgcolor=Color.from_rgb(*background),
        bold=marked,
        underline=marked,
    )


def _cell(value: float, scale: float) -> Text:
    """A matrix cell: the score on its colour, or a dot where it is undefined (NaN)."""
    if math.isnan(value):
        return Text("·", style="dim")
    return Text(f"{value:.2g}", style=_style(value, scale))


def _tables(res: Attribution, width: int) -> list[Table]:
    """The token-score matrix (or, without one, the row of scores) split into tables narrow
    enough for ``width`` columns of terminal."""
    if res.token_scores is None:
        labels, matrix, what = ["score"], res.scores[None, :], "scores"
        columns = [f.text for f in res.features] + [
            f"out {k + 1}: {t}" for k, t in enumerate(res.target.tokens)
        ]
        columns = columns[: len(res.scores)]
    else:
        labels, columns, matrix = matrix_view(res)
        labels, what = [visible(t) for t in labels], "token scores"
    scale = max_abs(matrix)
    n = len(columns)
    per = max(1, min(MAX_COLUMNS, (width - 12) // 10))
    tables = []
    for lo in range(0, n, per):
        shown = range(lo, min(lo + per, n))
        table = Table(
            title=f"{what}, columns {lo + 1}-{shown[-1] + 1} of {n} (max |score| {fmt(scale)})",
            box=box.SIMPLE_HEAD,
            padding=(0, 1),
        )
        table.add_column(Text("target token" if res.token_scores is not None else ""), overflow="fold")
        for i in shown:
            table.add_column(Text(visible(columns[i])), overflow="fold", justify="right")
        for label, row in zip(labels, matrix, strict=True):
            table.add_row(Text(label), *(_cell(row[i], scale) for i in shown))
        tables.append(table)
    return tables


def step_table(res: Attribution) -> Table:
    """The per-step scores (:mod:`genattr.steps`): one row per target token."""
    labels, rows = step_rows(res)
    table = Table(title=STEP_CAPTION, box=box.SIMPLE_HEAD, padding=(0, 1))
    for i, label in enumerate(labels):
        table.add_column(Text(visible(label)), overflow="fold", justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(Text(visible(cell)) for cell in row))
    return table


def print_attribution(
    res: Attribution,
    *,
    console: Console | None = None,
    mark: Collection[int] | None = None,
    steps: bool = True,
) -> None:
    """Print ``res`` to ``console`` (a new stdout console by default); features whose positions
    are in ``mark`` are underlined as ground truth. With ``steps``, the per-step scores follow
    (:func:`step_table`) when the result has them."""
    console = console or Console()
    mark = set(mark or ())
    scale = max_abs(res.scores)
    head = Text(" · ").join(
        Text.assemble(f"{name} ", (visible(value), "bold")) for name, value in header(res)
    )
    params, called = parameters(res), settings(res)
    prompt = Text("prompt: ", style="bold")
    for text, i in pieces(res):
        style = None if i is None else _style(res.scores[i], scale, i in mark)
        prompt.append(visible(text, layout=True), style=style)
    legend = Text.assemble(
        ("legend (prompt): ", "bold"),
        (f" -{fmt(scale)} ", _style(-scale, scale)),
        (" 0 ", _style(0.0, scale)),
        (f" +{fmt(scale)} ", _style(scale, scale)),
        f" {LEGEND}",
    )
    if mark:
        legend.append("; ")
        legend.append("underlined", style="bold underline")
        legend.append(" = ground-truth feature")
    console.print(head)
    if params:
        console.print(Text.assemble(("parameters: ", "bold"), visible(params)))
    if called:
        console.print(Text.assemble(("settings: ", "bold"), visible(called)))
    console.print(prompt)
    target = Text(f"{target_label(res)}: ", style="bold")
    for text, score in target_pieces(res):
        target.append(visible(text, layout=True), style=None if score is None else _style(score, scale))
    console.print(target)
    console.print(legend)
    for table in _tables(res, console.width):
        console.print(table)
    if steps and res.step_scores:
        console.print(step_table(res))
