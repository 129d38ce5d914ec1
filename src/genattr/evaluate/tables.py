"""The benchmark's tables and plot, from its rows: metrics laid out like the papers' tables
(metrics as rows with their direction, methods as columns, the best in bold and the second
underlined, one section per dataset and one over all), the cost table, and the mean MoRF and LeRF
curves per method.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..files import write_atomic

METRIC_GROUPS = ("curves", "erasure", "similarity", "ground_truth")

# (row key, label, higher is better)
TABLE_ROWS = {
    "curves": [("auc_morf", "MoRF", True), ("auc_lerf", "LeRF", False), ("abpc", "ABPC", True)],
    "erasure": [
        ("aopc_log_odds", "log-odds (AOPC)", False),
        ("aopc_comprehensiveness", "comprehensiveness (AOPC)", True),
        ("aopc_sufficiency", "sufficiency (AOPC)", False),
        ("aopc_comprehensiveness_clipped", "comprehensiveness+ (AOPC)", True),
        ("aopc_sufficiency_clipped", "sufficiency+ (AOPC)", True),
    ],
    "similarity": [
        ("bleu", "BLEU", False),
        ("rouge_l_f1", "ROUGE-L F1", False),
        ("sentence_cosine", "SentenceBERT cosine", False),
        ("probability_ratio", "probability ratio", False),
        ("kl", "KL", True),
    ],
    "ground_truth": [
        ("recall_at_k", "recall@|G|", True),
        ("auroc", "AUROC", True),
        ("pointing_game", "pointing game", True),
        ("joint_success", "joint success", True),
        ("average_precision", "average precision", True),
    ],
}
COST_ROWS = [
    ("seconds", "time per example (s)", False),
    ("forward_passes", "forward passes", False),
    ("tokens_processed", "tokens processed", False),
    ("backward_passes", "backward passes", False),
    ("backward_tokens", "backward tokens", False),
    ("peak_rss_mb", "peak memory (MB, process)", False),
]


def _means(rows: list[dict], methods: Sequence[str], key: str) -> dict[str, float]:
    out = {}
    for m in methods:
        values = [
            r[key]
            for r in rows
            if r["method"] == m and isinstance(r.get(key), (int, float)) and math.isfinite(r[key])
        ]
        out[m] = float(np.mean(values)) if values else math.nan
    return out


def _format(value: float) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:.3g}" if abs(value) < 1e-2 and value != 0 else f"{value:.2f}"


def _random_masks(rows: list[dict], key: str) -> float:
    """The similarity protocol's random baseline (random masks of the same size), over all rows."""
    values = [r[f"random_{key}"] for r in rows if isinstance(r.get(f"random_{key}"), (int, float))]
    return float(np.mean(values)) if values else math.nan


def _section(
    rows: list[dict], methods: Sequence[str], specs: list[tuple[str, str, bool]], random_column: bool = False
) -> tuple[list, list]:
    md, csv_rows = [], []
    for key, label, higher in specs:
        means = _means(rows, methods, key)
        ranked = sorted((v for v in means.values() if not math.isnan(v)), reverse=higher)
        cells = []
        for m in methods:
            v, text = means[m], _format(means[m])
            if ranked and not math.isnan(v) and v == ranked[0]:
                text = f"**{text}**"
            elif len(ranked) > 1 and not math.isnan(v) and v == ranked[1]:
                text = f"<u>{text}</u>"
            cells.append(text)
        arrow = "↑" if higher else "↓"
        extra = [_random_masks(rows, key)] if random_column else []
        md.append(f"| {label} {arrow} | " + " | ".join(cells + [_format(v) for v in extra]) + " |")
        csv_rows.append([label, "higher" if higher else "lower", *[means[m] for m in methods], *extra])
    return md, csv_rows


def tables(rows: list[dict], methods: Sequence[str], metrics: Sequence[str]) -> tuple[str, str]:
    """Markdown and CSV tables (one section per dataset, then all): metrics as rows, methods as columns."""
    specs = [spec for group in METRIC_GROUPS if group in metrics for spec in TABLE_ROWS[group]]
    datasets = sorted({r["dataset"] for r in rows})
    md_out, buffer = [], io.StringIO()
    writer = csv.writer(buffer)
    random_column = "similarity" in metrics
    extra = ["random masks"] if random_column else []
    writer.writerow(["dataset", "metric", "better", *methods, *extra])
    for dataset in [*datasets, "all"] if len(datasets) > 1 else datasets:
        subset = [r for r in rows if dataset == "all" or r["dataset"] == dataset]
        n = len({r["example"] for r in subset})
        errors = sum("error" in r for r in subset)
        md_out.append(f"### {dataset} ({n} examples{f', {errors} rows skipped' if errors else ''})\n")
        md_out.append("| metric | " + " | ".join([f"`{m}`" for m in methods] + extra) + " |")
        md_out.append("|---|" + "---|" * (len(methods) + len(extra)))
        section, csv_rows = _section(subset, methods, specs, random_column)
        md_out += section + [""]
        for r in csv_rows:
            writer.writerow([dataset, *r])
    return "\n".join(md_out), buffer.getvalue()


def cost_table(rows: list[dict], methods: Sequence[str]) -> str:
    lines = ["| cost | " + " | ".join(f"`{m}`" for m in methods) + " |", "|---|" + "---|" * len(methods)]
    return "\n".join(lines + _section(rows, methods, COST_ROWS)[0]) + "\n"


def save_png(fig, path: Path) -> None:
    """Save the matplotlib figure ``fig`` as a PNG whose bytes depend on the figure alone (no
    software version or date in its metadata), so that redrawing the same rows changes nothing."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, metadata={"Software": None})
    write_atomic(path, buffer.getvalue())


def plot_curves(
    rows: list[dict],
    methods: Sequence[str],
    path: Path,
    ylabel: str = "1 - cos(original, regenerated)",
) -> None:
    """Mean MoRF and LeRF curves per method, side by side, saved as PNG (a distinct colour and
    line style per method, the legend beside the plots); ``ylabel`` names the discrepancy."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 4.6))
    axes = fig.subplots(1, 2, sharey=True)
    # tab20 is a ListedColormap, which matplotlib's stubs type as a plain Colormap without colours.
    colours: Sequence[tuple[float, float, float]] = colormaps["tab20"].colors  # type: ignore[attr-defined]
    styles = ("-", "--", ":", "-.")
    for ax, key, title in (
        (axes[0], "morf", "MoRF (most relevant first) ↑"),
        (axes[1], "lerf", "LeRF (least relevant first) ↓"),
    ):
        for i, m in enumerate(methods):
            curves = [r for r in rows if r["method"] == m and key in r]
            if curves:
                ax.plot(
                    curves[0]["fractions"],
                    np.mean([r[key] for r in curves], 0),
                    label=m,
                    color=colours[i % len(colours)],
                    linestyle=styles[(i // len(colours)) % len(styles)],
                )
        ax.set_title(title)
        ax.set_xlabel("fraction of features removed")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(ylabel)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 0.83, 1))
    save_png(fig, path)
