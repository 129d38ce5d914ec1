"""Work of hierarchical attribution: leave-one-out at ``level="sentence>word"`` (``refine_top=3``)
against plain word-level leave-one-out, on SmolLM2 (``genattr.load("smollm2")``) and a prompt of
the first counsel_chat questions (data/counsel_chat) joined until it holds 10 sentences.

Run from the repository root: ``python bench/hierarchy.py`` (prints features, forward passes,
tokens processed and seconds of each run).
"""

from __future__ import annotations

import json
from pathlib import Path

import genattr
from genattr.text.segment import sentence_spans

DATA = Path(__file__).resolve().parents[1] / "data" / "counsel_chat" / "counsel_chat_questions.jsonl"
TARGET = " You are not worthless, and talking to a counselor can help."


def prompt(n_sentences: int = 10) -> str:
    text = ""
    for line in DATA.read_text().splitlines():
        text = (text + " " + json.loads(line)["prompt"]).strip()
        if len(sentence_spans(text)) >= n_sentences:
            break
    return text + "\nAnswer in one sentence:"


def main() -> None:
    lm, text = genattr.load("smollm2"), prompt()
    for level, kw in (("word", {}), ("sentence>word", {"refine_top": 3})):
        res = genattr.explain(lm, text, target=TARGET, level=level, method="leave_one_out", **kw)
        d = res.diagnostics
        print(
            f"{level:14s} prompt tokens={len(res.prompt)} features={len(res.features)} "
            f"forward_passes={d['forward_passes']} tokens_processed={d['tokens_processed']} seconds={d['seconds']:.2f}"
        )


if __name__ == "__main__":
    main()
