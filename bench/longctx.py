"""Long prompts for the long-context benchmarks (bench/needle.py, bench/scale.py): contexts cut
from the real sets in data/, one needle sentence carrying a fact, a question about it, rendered
with SmolLM2's chat template, and the measurements every row records.

A context is a run of paragraphs (five sentences each, separated by a blank line) drawn, in a
seeded order, from one source: SST-2 dev sentences (data/sst2), the XPrompt Alpaca instructions
(data/xprompt_alpaca) or the CounselChat questions (data/counsel_chat; their text is never
printed, rows record source ids only). Every sentence ends with ``.``, ``!`` or ``?`` so that
genattr's sentence level cuts the context where the sources' sentences end. The needle is one
more sentence, put at a fraction ``depth`` of the context's sentences; the question follows the
context after a blank line, in the same user message.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import random
import re
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

from genattr.text.prompt import Prompt
from genattr.text.segment import sentence_spans

DATA = Path(__file__).resolve().parents[1] / "data"
SOURCES = {
    "sst2": ("sst2/sst2_dev.jsonl", "id", "text"),
    "alpaca": ("xprompt_alpaca/xprompt_alpaca_recipe.jsonl", "id", "prompt"),
    "counsel": ("counsel_chat/counsel_chat_questions.jsonl", "question_id", "prompt"),
}
PARAGRAPH_SENTENCES = 5


@dataclass(frozen=True)
class Needle:
    """A fact (one sentence), a question whose answer is in it, and the string a correct answer holds."""

    fact: str
    question: str
    answer: str


@dataclass
class Case:
    """One long prompt: the chat ``messages``, the rendered :class:`Prompt`, and character spans into
    ``prompt.text`` of the context's sentences and paragraphs (the question is in neither), of the
    needle sentence, and of the question."""

    key: str
    needle: Needle | None
    depth: float | None
    source: str
    source_ids: list
    messages: list[dict]
    prompt: Prompt
    sentences: list[tuple[int, int]]
    paragraphs: list[tuple[int, int]]
    needle_span: tuple[int, int] | None
    question_span: tuple[int, int]
    meta: dict = field(default_factory=dict)

    @property
    def needle_index(self) -> int | None:
        """The needle's index among :attr:`sentences`."""
        return None if self.needle_span is None else self.sentences.index(self.needle_span)


def _sentence(text: str) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".!?" else text + "."


def filler(source: str) -> list[tuple[object, str]]:
    """(row id, sentence) for every sentence of the source's rows, in file order."""
    path, id_key, text_key = SOURCES[source]
    out = []
    for line in (DATA / path).read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        text = re.sub(r"\s+", " ", row[text_key]).strip()
        for s, e in sentence_spans(text):
            piece = text[s:e]
            if len(piece.split()) >= 3:
                out.append((row[id_key], _sentence(piece)))
    return out


def build(
    tokenizer,
    source: str,
    min_tokens: int,
    needle: Needle | None,
    depth: float | None,
    seed: int,
    question: str | None = None,
    key: str = "",
) -> Case:
    """The shortest context from ``source`` (sentences in a seeded order) whose chat prompt, needle and
    question included, has at least ``min_tokens`` tokens."""
    pool = filler(source)
    random.Random(seed).shuffle(pool)
    question = needle.question if needle is not None else question
    if question is None:
        raise ValueError("a case needs a needle or a question")
    chosen: list[tuple[object, str]] = []
    for item in pool:
        chosen.append(item)
        if len(chosen) % 4 == 0 or len(chosen) == len(pool):
            case = _render(tokenizer, source, chosen, needle, depth, question, key)
            if len(case.prompt) >= min_tokens:
                return _trim(tokenizer, source, chosen, needle, depth, question, key, min_tokens)
    raise ValueError(f"source {source!r} has too few sentences for {min_tokens} tokens")


def _trim(tokenizer, source, chosen, needle, depth, question, key, min_tokens) -> Case:
    while len(chosen) > 1:
        shorter = _render(tokenizer, source, chosen[:-1], needle, depth, question, key)
        if len(shorter.prompt) < min_tokens:
            break
        chosen = chosen[:-1]
    return _render(tokenizer, source, chosen, needle, depth, question, key)


def _render(tokenizer, source, chosen, needle, depth, question, key) -> Case:
    sentences = [s for _, s in chosen]
    at = None
    if needle is not None:
        at = round((depth or 0.0) * len(sentences))
        sentences = sentences[:at] + [needle.fact] + sentences[at:]
    paragraphs = [
        sentences[i : i + PARAGRAPH_SENTENCES] for i in range(0, len(sentences), PARAGRAPH_SENTENCES)
    ]
    context = "\n\n".join(" ".join(p) for p in paragraphs)
    content = f"{context}\n\n{question}"
    messages = [{"role": "user", "content": content}]
    prompt = Prompt.from_messages(tokenizer, messages)
    base = prompt.text.index(content)
    sent_spans, para_spans, cursor = [], [], base
    for p in paragraphs:
        p_start = cursor
        for s in p:
            sent_spans.append((cursor, cursor + len(s)))
            cursor += len(s) + 1
        para_spans.append((p_start, cursor - 1))
        cursor += 1  # the blank line: "\n\n" after the paragraph's last sentence (one counted above)
    q_start = base + len(context) + 2
    for s, e in sent_spans:
        if prompt.text[s:e] not in sentences:
            raise RuntimeError("sentence spans do not match the rendered prompt")
    return Case(
        key=key,
        needle=needle,
        depth=depth,
        source=source,
        source_ids=[i for i, _ in chosen],
        messages=messages,
        prompt=prompt,
        sentences=sent_spans,
        paragraphs=para_spans,
        needle_span=None if at is None else sent_spans[at],
        question_span=(q_start, q_start + len(question)),
    )


# --------------------------------------------------------------------- measurements
def reset_peak_rss() -> bool:
    """Reset this process's peak resident memory (Linux ``/proc/self/clear_refs``), after handing
    freed heap back to the system (glibc ``malloc_trim``; else the peak of a call is at least what
    earlier calls left allocated); False where it cannot, and the peak then is the process's since
    it started (``ru_maxrss``)."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss_mb() -> float:
    """Peak resident memory in MB since the last :func:`reset_peak_rss` (``VmHWM``), else ``ru_maxrss``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> dict:
    """Load average (1, 5, 15 minutes) and CPU count at the time of a row."""
    return {"load_avg": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(), "time": time.time()}


def work(diagnostics: dict) -> dict:
    """Forward and backward passes and tokens, model and wall seconds of a result's diagnostics."""
    keys = ("forward_passes", "tokens_processed", "backward_passes", "backward_tokens", "seconds")
    return {k: diagnostics.get(k, 0) for k in keys}


def done_keys(path: Path) -> dict[str, dict]:
    """The rows of a JSON-lines results file by key (the last row of a key wins)."""
    if not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r["key"]: r for r in rows}


def append(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fh.write(json.dumps(row) + "\n")


def loo_floor(row_tokens: int, starts: list[int]) -> int:
    """Tokens a leave-one-out pass must run with perfect prefix reuse: the full row once, then for
    each feature the row's positions from the feature's first token on,

        floor = T + sum_i (T - s_i),    T = m + n - 1,

    m prompt tokens, n target tokens (a row holds the prompt and the first n - 1 target tokens; its
    last n positions predict them), s_i the position of feature i's first token. For token-level
    leave-one-out (s_i = 0..m-1) it is about m^2/2 + m n, the issue's formula."""
    return row_tokens + sum(row_tokens - s for s in starts)
