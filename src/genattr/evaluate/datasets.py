"""Real prompt sets by short name (``genattr benchmark --data gilot``): public data kept in the
``data/`` folder of a genattr checkout, each folder with its PROVENANCE.md (source, licence,
extraction). They are research-use data and are not part of the installed package; outside a
checkout, point ``GENATTR_DATA_DIR`` at a copy of that folder.

- ``gilot``: the GiLOT paper's own 100 evaluation prompts (50 Alpaca, 50 ShareGPT).
- ``xprompt-alpaca``: XPrompt's Alpaca subset (109 prompts), rebuilt with the authors' recipe.
- ``sst2``: the 872 GLUE SST-2 dev sentences as in-context classification: :data:`SST2_SHOTS`
  demonstrations from the train pool (balanced, drawn with the benchmark's seed), then the
  sentence; the target is the gold label word (``" positive"`` / ``" negative"``).
- ``counsel-chat``: 815 counselling questions (sensitive content).
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

DATA_ENV = "GENATTR_DATA_DIR"
"""The environment variable naming the folder of the prompt sets (default: ``data/`` of the checkout)."""

SST2_SHOTS = 4
"""Demonstrations before each SST-2 sentence (half positive, half negative, shuffled)."""


@dataclass(frozen=True)
class DataSet:
    """A prompt set: its JSONL file under the data folder and a one-line description."""

    name: str
    path: str
    summary: str


DATASETS: dict[str, DataSet] = {
    d.name: d
    for d in (
        DataSet("gilot", "gilot_prompts/gilot_prompts.jsonl", "GiLOT's 100 evaluation prompts"),
        DataSet("xprompt-alpaca", "xprompt_alpaca/xprompt_alpaca_recipe.jsonl", "XPrompt's Alpaca subset"),
        DataSet("sst2", "sst2/sst2_dev.jsonl", "SST-2 dev, in-context classification"),
        DataSet("counsel-chat", "counsel_chat/counsel_chat_questions.jsonl", "counselling questions"),
    )
}


def data_dir() -> Path:
    """The folder of the prompt sets: ``$GENATTR_DATA_DIR``, else ``data/`` beside ``src/`` in a checkout."""
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser()
    return Path(__file__).resolve().parents[3] / "data"


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


SST2_QUERY = "Review: {sentence}\nSentiment:"
"""The template of every SST-2 review, the demonstrations' (followed by their label) and the query's."""


def _sst2_prompt(sentence: str, demonstrations: list[dict]) -> str:
    shots = "".join(SST2_QUERY.format(sentence=d["text"]) + f" {d['label_text']}\n\n" for d in demonstrations)
    return shots + SST2_QUERY.format(sentence=sentence)


def sst2_sentence_span(prompt: str) -> tuple[int, int]:
    """The character span (start, end) of the query's review sentence in an ``sst2`` prompt.

    >>> prompt = _sst2_prompt("a gem .", [{"text": "dull", "label_text": "negative"}])
    >>> start, end = sst2_sentence_span(prompt)
    >>> prompt[start:end]
    'a gem .'
    """
    head, tail = SST2_QUERY.split("{sentence}")
    start = prompt.rfind(head)
    if start < 0 or not prompt.endswith(tail):
        raise InputError(f"not an sst2 prompt: it must end with {SST2_QUERY!r}.")
    return start + len(head), len(prompt) - len(tail)


def _sst2(rows: list[dict], pool: list[dict], seed: int) -> list[dict]:
    """Each dev sentence after :data:`SST2_SHOTS` balanced demonstrations drawn from ``pool``."""
    rng = random.Random(seed)
    by_label = {label: [d for d in pool if d["label_text"] == label] for label in ("positive", "negative")}
    out = []
    for row in rows:
        shots = [d for label in by_label for d in rng.sample(by_label[label], SST2_SHOTS // 2)]
        rng.shuffle(shots)
        out.append(
            {"id": row["id"], "prompt": _sst2_prompt(row["text"], shots), "target": f" {row['label_text']}"}
        )
    return out


def sst2_sentences() -> tuple[list[dict], list[dict]]:
    """The SST-2 dev sentences and the pool of train demonstrations as stored (fields ``id`` or
    ``train_row``, ``text``, ``label``, ``label_text``), for prompts built otherwise than :func:`records`."""
    records("sst2", 1)  # the set's own checks: a clear error when the data folder is missing
    root = data_dir() / "sst2"
    return _read(root / "sst2_dev.jsonl"), _read(root / "sst2_train_demo_pool.jsonl")


def records(name: str, n: int | None = None, seed: int = 0) -> list[dict]:
    """The first ``n`` (default all) records of the set ``name``: ``id``, ``prompt``, for
    ``sst2`` ``target``, and for ``gilot`` the prompt's ``source`` (alpaca or sharegpt)."""
    if name not in DATASETS:
        raise InputError(f"unknown data set {name!r}; choose from {', '.join(DATASETS)}.")
    if n is not None and n < 1:
        raise InputError(f"--n must be at least 1, got {n}.")
    root = data_dir()
    path = root / DATASETS[name].path
    if not path.is_file():
        raise InputError(
            f"the prompt set {name!r} is not at {path}: the sets live in the data/ folder of a genattr "
            f"checkout (they are research-use data, not installed with the package); run from a "
            f"checkout, or set {DATA_ENV} to a copy of that folder."
        )
    rows = _read(path)[:n]
    if name == "sst2":
        return _sst2(rows, _read(root / "sst2" / "sst2_train_demo_pool.jsonl"), seed)
    return [
        {"id": row.get("id", row.get("question_id")), "prompt": row["prompt"]}
        | ({"source": row["source"]} if "source" in row else {})
        for row in rows
    ]
