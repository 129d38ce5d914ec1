"""Study ``gilot-ablations``: GiLOT's Table 3 (OT against KL), its beam-size ablation, Figure 3
(how the attribution settles as the output length J grows) and Table 8 (the probability mass the
beams cover at each output position), on SmolLM2's chat answers to the GiLOT prompts.

Variants of ``gilot`` on the first n prompts of :mod:`.gilot_table1`'s order, every one under the
same protocol (:func:`.gilot_table1.measure`: token features hidden from attention, greedy
answers of ``MAX_NEW_TOKENS`` tokens, both discrepancies):

* ``ot_b10``: the paper's default, b = 10 beams, J = 10 positions, OT distance (Eq. 8);
* ``kl_b10``: the same with KL (Eq. 6), Table 3;
* ``ot_b2``, ``ot_b5``: b = 2 and 5 beams, the beam-size ablation ("ABPC improves from 1.12 to
  1.38 when b goes from 2 to 10");
* ``ot_b10_j30``: b = 10 beams over J_max = ``J_MAX`` positions, kept as the J x features matrix
  of per-position distances (no curves): the attribution at J is the mean of its first J rows
  (beam search is causal, so these are the attributions a run with J positions gives), and
  Figure 3 is the Spearman correlation of the attribution at J with the one at J_max, J = 1..J_max;
  its beam mass per position is Table 8.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import GenattrError, InputError
from ..evaluate.benchmark import example_seed, timed_explain
from ..evaluate.stats import mean_interval
from ..evaluate.tables import save_png
from . import gilot_table1 as table1
from .common import (
    SEED,
    Study,
    Task,
    chat_prompt,
    complete_examples,
    counted,
    fmt,
    fmt_interval,
    interval_cell,
    markdown_table,
    paired_cell,
    run_arguments,
)

NAME = "gilot-ablations"
J_MAX = 30
VARIANTS: dict[str, dict] = {
    "ot_b10": {"distance": "ot", "num_beams": 10, "n_positions": 10},
    "kl_b10": {"distance": "kl", "num_beams": 10, "n_positions": 10},
    "ot_b2": {"distance": "ot", "num_beams": 2, "n_positions": 10},
    "ot_b5": {"distance": "ot", "num_beams": 5, "n_positions": 10},
    "ot_b10_j30": {"distance": "ot", "num_beams": 10, "n_positions": J_MAX, "mass_threshold": 0.0},
}
"""Each variant's GiLOT parameters (the rest at their defaults)."""
SERIES = "ot_b10_j30"
DEFAULT_N = 10
"""Prompts of a full run (the first of ``gilot-table1``'s order): 0.8 CPU hours at the first
prompts' 284 CPU seconds per prompt for all variants."""

PAPER_TABLE3 = {"kl_b10": (41.54, 40.62, 0.93), "ot_b10": (41.88, 40.51, 1.38)}
"""GiLOT Table 3 (Llama2-13b-chat): MoRF, LeRF, ABPC of GiLOT with KLD and with OT."""
PAPER_BEAMS = {"ot_b2": 1.12, "ot_b10": 1.38}
"""GiLOT Section 4.4: ABPC of GiLOT on Llama2-13b-chat with b = 2 and b = 10 beams."""
PAPER_TABLE8 = {1: 1.0, 2: 0.9981, 3: 0.9934, 4: 0.9818, 5: 0.9643, 6: 0.9515, 7: 0.9359, 8: 0.9143}
PAPER_TABLE8 |= {9: 0.8982, 10: 0.8843, 15: 0.7912}
"""GiLOT Table 8: probability mass of the top 10 sequences by max_dec_len (read as position J)."""


def methods() -> list[str]:
    return list(VARIANTS)


def _chosen(chosen: Sequence[str] | None) -> list[str]:
    if chosen is None:
        return methods()
    unknown = [m for m in chosen if m not in VARIANTS]
    if unknown:
        raise InputError(f"{NAME} has no variant {unknown}; choose from {', '.join(VARIANTS)}.")
    return [m for m in VARIANTS if m in chosen]


def settings(model: str, dtype: str | None, variant: str) -> dict:
    base = {k: v for k, v in table1.settings(model, dtype, "gilot").items() if k != "params"}
    return {**base, "study": NAME, "params": VARIANTS[variant]}


def tasks(model: str, dtype: str | None, n: int | None, chosen: Sequence[str] | None) -> list[Task]:
    return [Task(v, ex, settings(model, dtype, v)) for ex in table1.examples(n) for v in _chosen(chosen)]


def compute(lm, task: Task) -> dict:
    """A variant with curves (:func:`.gilot_table1.measure`), or the J_max series: the per-position
    distances and the beam mass at each position."""
    prompt = chat_prompt(lm, task.example.text)
    seed = example_seed(SEED, task.example.id)
    params = task.settings["params"]
    try:
        if task.method != SERIES:
            return table1.with_areas(table1.measure(lm, prompt, "gilot", seed, params))
        res, cost = timed_explain(
            lm, prompt, method="gilot", level=table1.LEVEL, mask=table1.MASK, seed=seed, **params
        )
    except GenattrError as exc:
        return {"error": str(exc)}
    return {
        **cost,
        "n_features": len(res.features),
        "token_scores": np.asarray(res.token_scores).tolist(),
        "beam_mass": res.diagnostics["beam_mass"],
    }


# --------------------------------------------------------------------- the document's section
def spearman_series(token_scores: Sequence[Sequence[float]]) -> list[float]:
    """Spearman's rho of the attribution at J (mean of the first J rows) with the one at J_max
    (all rows), J = 1..J_max; NaN where either attribution is constant."""
    from scipy.stats import spearmanr

    matrix = np.asarray(token_scores, dtype=np.float64)
    running = np.cumsum(matrix, axis=0) / np.arange(1, len(matrix) + 1)[:, None]
    out = []
    for row in running:
        constant = np.ptp(row) == 0 or np.ptp(running[-1]) == 0
        out.append(math.nan if constant else float(spearmanr(row, running[-1]).statistic))
    return out


def _curve_table(rows: list[dict], variants: Sequence[str], done: list[str], paper: dict, label: str) -> str:
    body = []
    for v in variants:
        cells = [
            interval_cell(rows, v, k, done) for k in ("auc_morf", "auc_lerf", "abpc", f"{table1.ALSO}_abpc")
        ]
        found = paper.get(v)
        paper_cell = (
            " / ".join(f"{x:.2f}" for x in found)
            if isinstance(found, tuple)
            else (f"{found:.2f}" if found else "")
        )
        body.append([f"`{v}`", *cells, paper_cell])
    header = ["variant", "MoRF ↑", "LeRF ↓", "ABPC ↑", f"ABPC ({table1.ALSO}) ↑", label]
    return markdown_table(header, body)


def _paired(rows: list[dict], pairs: list[tuple[str, str]], done: list[str]) -> str:
    body = [
        [f"`{a}` - `{b}`", *[paired_cell(rows, a, b, k, done) for k in ("abpc", f"{table1.ALSO}_abpc")]]
        for a, b in pairs
    ]
    return markdown_table(["difference", f"ABPC ({table1.DISCREPANCY})", f"ABPC ({table1.ALSO})"], body)


def _series_tables(series: list[dict], out: Path, link: str) -> list[str]:
    rhos = np.array([spearman_series(r["token_scores"]) for r in series])
    mass = np.array([r["beam_mass"] for r in series])
    shown = [j for j in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 15, 20, 25, J_MAX) if j <= J_MAX]
    body = []
    for j in shown:
        rho = [x for x in rhos[:, j - 1] if math.isfinite(x)]
        paper = PAPER_TABLE8.get(j)
        body.append(
            [
                str(j),
                fmt_interval(mean_interval(rho)) if rho else "-",
                fmt_interval(mean_interval(mass[:, j - 1].tolist())),
                f"{paper:.4f}" if paper is not None else "",
            ]
        )
    _plot_series(rhos, mass, out / f"{NAME}-length.png")
    header = ["J", f"Spearman rho with J = {J_MAX}", "beam mass (b = 10)", "paper Table 8 mass"]
    return [
        markdown_table(header, body),
        f"![Spearman rho with J = {J_MAX} and beam mass by J]({link}/{NAME}-length.png)\n",
    ]


def _plot_series(rhos: np.ndarray, mass: np.ndarray, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    js = np.arange(1, rhos.shape[1] + 1)
    for ax, data, title in (
        (axes[0], rhos, f"Spearman rho with J = {J_MAX}"),
        (axes[1], mass, "beam mass (b = 10)"),
    ):
        for row in data:
            ax.plot(js, row, color="0.8", linewidth=0.8)
        ax.plot(js, np.nanmean(data, 0), color="C0", linewidth=2, label="mean over prompts")
        ax.set_title(title)
        ax.set_xlabel("J (output positions)")
        ax.grid(alpha=0.3)
    axes[0].legend(frameon=False)
    fig.tight_layout()
    save_png(fig, path)


def section(rows: list[dict], out: Path, link: str) -> str:
    present = [v for v in VARIANTS if any(r["method"] == v for r in rows)]
    curves = [v for v in present if v != SERIES]
    done = complete_examples(rows, curves, "abpc")
    failed = sorted(f"`{r['method']}` on {r['example']}: {r['error']}" for r in rows if "error" in r)
    hours = sum(r.get("seconds", 0) + r.get("protocol_seconds", 0) for r in rows) / 3600
    parts = [
        f"Compute: {hours:.2f} hours over {len(rows)} rows (the rows' own times); prompts complete for "
        f"every curve variant: {len(done)}. Same protocol as `gilot-table1`; the paper's numbers are "
        "Llama2-13b-chat's (Table 3, Section 4.4) and compare in direction, not in level.\n"
    ]
    if failed:
        parts.append("Rows that failed:\n\n" + "\n".join(f"- {f}" for f in failed) + "\n")
    if done:
        distance = [v for v in ("ot_b10", "kl_b10") if v in curves]
        beams = [v for v in ("ot_b2", "ot_b5", "ot_b10") if v in curves]
        parts += [
            "### OT against KL (Table 3)\n",
            _curve_table(rows, distance, done, PAPER_TABLE3, "paper MoRF / LeRF / ABPC"),
            "### Beam size b (Section 4.4)\n",
            _curve_table(rows, beams, done, PAPER_BEAMS, "paper ABPC"),
            "### Paired differences of ABPC over the same prompts\n",
            "**Bold**: the 95% paired bootstrap interval excludes 0.\n",
            _paired(
                rows,
                [
                    (a, b)
                    for a, b in (("ot_b10", "kl_b10"), ("ot_b10", "ot_b2"), ("ot_b10", "ot_b5"))
                    if a in curves and b in curves
                ],
                done,
            ),
        ]
    series = [r for r in rows if r["method"] == SERIES and "token_scores" in r]
    if series:
        parts += [
            f"### Output length J (Figure 3) and beam mass (Table 8), {counted(len(series), 'prompt', 'prompts')}\n",
            f"Means over prompts with 95% BCa intervals; {fmt(float(np.mean([r['n_features'] for r in series])))} "
            "token features per prompt on average. The paper's Figure 3 (J_max = 100) settles by J = 10. "
            "Its Table 8 rows are read as position J = max_dec_len (its first row, 1.0000, is the first "
            "position, which needs no beams).\n",
            *_series_tables(series, out, link),
        ]
    return "\n".join(parts)


def arguments(rows: list[dict]) -> str:
    return run_arguments([ex.id for ex in table1.examples()], rows, list(VARIANTS))


STUDY = Study(
    NAME,
    "GiLOT Table 3, beam size, Figure 3 and Table 8: the ablations",
    tasks,
    compute,
    section,
    methods,
    arguments,
    DEFAULT_N,
)
