"""Matplotlib plots of a result: a heatmap of the token scores (target tokens x features) or a
bar chart of the feature scores. Built on :class:`matplotlib.figure.Figure`, never pyplot, so it
works headless and leaves no global state; labels are drawn literally (no mathtext).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from matplotlib.figure import Figure

from ..errors import InputError
from . import colour, max_abs, visible

if TYPE_CHECKING:
    from ..result import Attribution

KINDS = ("auto", "heatmap", "bar")


def plot_attribution(res: Attribution, *, kind: str = "auto", ax=None):
    """Draw ``res`` on ``ax`` (a new figure's axes by default) and return the figure.

    ``kind="heatmap"`` draws ``res.token_scores``, ``"bar"`` draws ``res.scores``, ``"auto"``
    the heatmap when there are token scores, else the bars.
    """
    if kind not in KINDS:
        raise InputError(f"unknown plot kind {kind!r}; choose one of {', '.join(KINDS)}.")
    if kind == "auto":
        kind = "bar" if res.token_scores is None else "heatmap"
    if kind == "heatmap" and res.token_scores is None:
        raise InputError(
            f"this {res.method} result has no token scores to draw as a heatmap; use kind='bar'."
        )
    n = len(res.features)
    if ax is None:
        rows = 1 if kind == "bar" else len(res.target.tokens)
        size = (min(max(4.0, 0.4 * n + 2), 30.0), min(max(3.0, 0.35 * rows + 2), 30.0))
        ax = Figure(figsize=size, layout="constrained").add_subplot()
    fig = ax.figure
    labels = [f.text for f in res.features]
    if kind == "heatmap":
        scale = max_abs(res.token_scores)
        image = ax.imshow(res.token_scores, cmap="RdBu_r", vmin=-scale, vmax=scale, aspect="auto")
        ax.set_yticks(
            range(len(res.target.tokens)), [visible(t) for t in res.target.tokens], parse_math=False
        )
        ax.set_ylabel("target token")
        fig.colorbar(image, ax=ax, label="score")
    else:
        scale = max_abs(res.scores)
        ax.bar(
            range(n),
            res.scores,
            color=[tuple(c / 255 for c in colour(s, scale)) for s in res.scores],
            edgecolor="0.4",
        )
        ax.axhline(0.0, color="0.4", linewidth=0.8)
        ax.set_ylabel("score")
    ax.set_xticks(range(n), labels, rotation=90, parse_math=False)
    ax.set_title(f"{res.method} ({res.level})", parse_math=False)
    return fig
