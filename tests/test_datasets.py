"""The real prompt sets by short name: every row of each file, read independently; SST-2 as
balanced in-context prompts with the gold label as target; provenance beside every file; a typed
error outside a checkout."""

from __future__ import annotations

import json
import re

import pytest

from genattr.cli import main
from genattr.errors import InputError
from genattr.evaluate.benchmark import load_items
from genattr.evaluate.datasets import DATA_ENV, DATASETS, SST2_SHOTS, data_dir, records

ROWS = {"gilot": 100, "xprompt-alpaca": 109, "sst2": 872, "counsel-chat": 815}


def _lines(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_each_set_gives_every_row_of_its_file_with_its_provenance(name):
    path = data_dir() / DATASETS[name].path
    assert (path.parent / "PROVENANCE.md").is_file()
    rows = records(name)
    assert len(rows) == ROWS[name] == len(_lines(path))
    if name != "sst2":
        assert [r["prompt"] for r in rows] == [line["prompt"] for line in _lines(path)]
    assert len(records(name, 3)) == 3


def test_sst2_prompts_end_with_the_sentence_after_balanced_pool_demonstrations():
    dev = _lines(data_dir() / "sst2" / "sst2_dev.jsonl")
    pool = {(d["text"], d["label_text"]) for d in _lines(data_dir() / "sst2" / "sst2_train_demo_pool.jsonl")}
    rows = records("sst2", 20, seed=1)
    for row, gold in zip(rows, dev, strict=False):
        assert row["target"] == f" {gold['label_text']}"
        assert row["prompt"].endswith(f"Review: {gold['text']}\nSentiment:")
        shots = re.findall(r"Review: (.*)\nSentiment: (positive|negative)\n\n", row["prompt"])
        assert len(shots) == SST2_SHOTS and set(shots) <= pool
        assert sorted(label for _, label in shots) == ["negative"] * 2 + ["positive"] * 2
    assert records("sst2", 20, seed=1) == rows
    assert records("sst2", 20, seed=2) != rows


def test_benchmark_items_by_short_name():
    items, problems = load_items(["gilot", "sst2"], 2, 0)
    assert not problems
    assert [i.id for i in items] == ["gilot:0", "gilot:1", "sst2:0", "sst2:1"]
    assert items[0].prompt == "Give three tips for staying healthy." and items[0].target is None
    assert items[2].target in (" positive", " negative")


def test_outside_a_checkout_the_error_says_where_the_sets_live(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    with pytest.raises(InputError, match="data/ folder of a genattr checkout"):
        records("gilot")
    assert main(["benchmark", "--data", "gilot", "--out", str(tmp_path / "out")]) == 2
    assert "GENATTR_DATA_DIR" in capsys.readouterr().err
    with pytest.raises(InputError, match="unknown data set"):
        records("nope")
