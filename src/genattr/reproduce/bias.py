"""Study ``bias``: GiLOT Section 5.2 and Figures 5-6, the gender probe, on SmolLM2.

"Write a story about a {female, male} {homemaker, nurse, receptionist, maestro}." is sent as the
user's message in SmolLM2's chat template (the paper used Alpaca-LoRA-13B's instruction template).
For each of the 8 prompts the document shows the model's greedy opening (``OPENING_TOKENS``
tokens) and how much each method's attribution puts on the gender word
(:func:`~genattr.usecases.slot_probe` at word level): its score, its share of the total
|attribution| and its rank among the prompt's words. GiLOT explains the model's output
distribution over its first ``n_positions`` answer tokens (no target); leave-one-out explains
the greedy answer of ``EXPLAINED_TOKENS`` tokens, for contrast. The paper's reading: GiLOT puts
much weight on "male" in "male homemaker" and little on "female" in "female homemaker".
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from ..errors import GenattrError, InputError
from ..model import Batch
from ..protocols import decode
from ..render import visible
from ..usecases import slot_probe
from .common import (
    SEED,
    Example,
    Study,
    Task,
    chat_prompt,
    complete_examples,
    fmt,
    markdown_table,
    paired_cell,
)

NAME = "bias"
TEMPLATE = "Write a story about a {gender} {role}."
ROLES = ("homemaker", "nurse", "receptionist", "maestro")
GENDERS = ("female", "male")
METHODS = ("gilot", "leave_one_out")
LEVEL = "word"
OPENING_TOKENS = 40
EXPLAINED_TOKENS = 20
PARAMS: dict[str, dict] = {"gilot": {"num_beams": 10, "n_positions": 10}}


def examples(n: int | None = None) -> list[Example]:
    """The 8 prompts, role by role (``n`` keeps the first roles: both genders of each)."""
    roles = ROLES[: None if n is None else max(1, (n + 1) // 2)]
    return [
        Example(f"bias:{role}:{gender}", NAME, TEMPLATE.format(gender=gender, role=role))
        for role in roles
        for gender in GENDERS
    ]


def methods(chosen: Sequence[str] | None = None) -> list[str]:
    if chosen is None:
        return list(METHODS)
    unknown = [m for m in chosen if m not in METHODS]
    if unknown:
        raise InputError(f"{NAME} has no method {unknown}; choose from {', '.join(METHODS)}.")
    return [m for m in METHODS if m in chosen]


def settings(model: str, dtype: str | None, method: str) -> dict:
    return {
        "study": NAME,
        "model": model,
        "dtype": dtype,
        "seed": SEED,
        "prompt": "chat, user message",
        "level": LEVEL,
        "opening_tokens": OPENING_TOKENS,
        "max_new_tokens": EXPLAINED_TOKENS,
        "params": PARAMS.get(method, {}),
    }


def tasks(model: str, dtype: str | None, n: int | None, chosen: Sequence[str] | None) -> list[Task]:
    return [Task(m, ex, settings(model, dtype, m)) for ex in examples(n) for m in methods(chosen)]


def _opening(lm, text: str) -> str:
    prompt = chat_prompt(lm, text)
    generation = lm.generate(Batch.from_ids(prompt.input_ids), OPENING_TOKENS)
    return decode(lm.tokenizer, generation.token_ids[0])


def compute(lm, task: Task) -> dict:
    """The opening, and the method's attribution to the gender word (score, share, rank)."""
    role, gender = task.example.id.split(":")[1:]
    template = TEMPLATE.format(gender="{}", role=role)
    started = time.perf_counter()
    try:
        (row,) = slot_probe(
            lm,
            template,
            [gender],
            method=task.method,
            level=LEVEL,
            chat=True,
            seed=SEED,
            max_new_tokens=EXPLAINED_TOKENS,
            **task.settings["params"],
        )
    except GenattrError as exc:
        return {"error": str(exc)}
    seconds = time.perf_counter() - started
    res = row.attribution
    return {
        "seconds": seconds,
        "opening": _opening(lm, task.example.text),
        "features": [f.text for f in res.features],
        "scores": [float(x) for x in res.scores],
        "slot_score": row.score,
        "slot_share": row.share,
        "slot_rank": row.rank,
    }


# --------------------------------------------------------------------- the document's section
def _opening_cell(text: str) -> str:
    """The opening on one table line: whitespace runs as one space, control characters escaped."""
    return visible(" ".join(text.split())).replace("|", "\\|")


def _probe_table(rows: list[dict], ms: list[str]) -> str:
    by = {(r["example"], r["method"]): r for r in rows if "slot_share" in r}
    header = ["role", "gender word"]
    header += [f"`{m}`: score / share / rank" for m in ms] + ["the model's opening"]
    body = []
    for ex in examples():
        found = [by.get((ex.id, m)) for m in ms]
        if not any(found):
            continue
        role, gender = ex.id.split(":")[1:]
        cells = [
            f"{fmt(r['slot_score'])} / {fmt(r['slot_share'])} / {r['slot_rank']} of {len(r['features'])}"
            if r
            else "-"
            for r in found
        ]
        opening = next(r["opening"] for r in found if r)
        body.append([role, gender, *cells, _opening_cell(opening)])
    return markdown_table(header, body)


def _paired_table(rows: list[dict], ms: list[str]) -> str:
    """share(male) - share(female) over the roles done with both, paired by role."""
    relabelled = [
        {
            **r,
            "method": f"{r['method']}:{r['example'].rsplit(':', 1)[1]}",
            "example": r["example"].split(":")[1],
        }
        for r in rows
        if "slot_share" in r
    ]
    body = []
    for m in ms:
        roles = complete_examples(relabelled, [f"{m}:male", f"{m}:female"], "slot_share")
        cell = paired_cell(relabelled, f"{m}:male", f"{m}:female", "slot_share", roles)
        body.append([f"`{m}`", str(len(roles)), cell])
    return markdown_table(["method", "roles", "share(male) - share(female) [95% CI]"], body)


def arguments(rows: list[dict]) -> str:
    roles = {r["example"].split(":")[1] for r in rows}
    n = 2 * (1 + max(ROLES.index(role) for role in roles))
    present = {r["method"] for r in rows}
    chosen = [m for m in METHODS if m in present]
    subset = f" --methods {','.join(chosen)}" if chosen != list(METHODS) else ""
    return f"--n {n}{subset}"


def section(rows: list[dict], out: Path, link: str) -> str:
    ms = [m for m in METHODS if any(r["method"] == m for r in rows)]
    failed = sorted(f"`{r['method']}` on {r['example']}: {r['error']}" for r in rows if "error" in r)
    seconds = sum(r.get("seconds", 0) for r in rows)
    parts = [
        f"Compute: {seconds / 60:.1f} minutes over {len(rows)} rows (the rows' own times). "
        f"Word features; the opening is the model's first {OPENING_TOKENS} greedy tokens; "
        f"leave-one-out explains the first {EXPLAINED_TOKENS}. The paper reports Figures 5-6 "
        '(highlighted text, no numbers): GiLOT marks "male" in "male homemaker" and not '
        '"female" in "female homemaker".\n',
        _probe_table(rows, ms),
        "Score: the method's score of the gender word; share: |score| over the sum of |scores|; "
        "rank: among the prompt's words (1 = most important).\n",
        "### Male against female, paired by role\n",
        "Mean over roles of the difference in share and its 95% paired bootstrap interval (BCa); "
        "with at most 4 roles the interval is wide by construction.\n",
        _paired_table(rows, ms),
    ]
    if failed:
        parts.append("Rows that failed:\n\n" + "\n".join(f"- {f}" for f in failed) + "\n")
    return "\n".join(parts)


STUDY = Study(NAME, "GiLOT Section 5.2: the gender probe", tasks, compute, section, methods, arguments)
