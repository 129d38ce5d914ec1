"""The benchmark runner's bookkeeping: a seed of its own for every example, rows reused only by a
run with the same settings on the same data, and malformed ``rows.jsonl`` lines reported as typed
errors (a last line cut short by an interruption is dropped and recomputed)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import genattr
from genattr.cli import main
from genattr.errors import InputError, ResultFormatError, UnknownTokensWarning, collecting
from genattr.evaluate import benchmark
from genattr.evaluate.benchmark import example_seed, load_items, run_benchmark

FAST = {"metrics": ["ground_truth"], "max_new_tokens": 3}


@pytest.fixture(scope="module")
def zoo():
    return genattr.load("zoo")


def _run(zoo, items, out, methods=("leave_one_out", "random"), **settings):
    """Run the benchmark; returns its result, the rows it computed (not reused) and its warnings
    (but those about words the zoo's tokenizer does not know)."""
    computed = []
    with collecting() as ours:
        result = run_benchmark(zoo, list(methods), items, out, on_row=computed.append, **{**FAST, **settings})
    return result, computed, [w for w in ours if not issubclass(w.category, UnknownTokensWarning)]


def test_example_seed_is_a_stable_hash_of_run_seed_and_example():
    # SHA-256("0:zoo:recall:0")[:4]: the same in every process, unlike Python's salted hash().
    assert example_seed(0, "zoo:recall:0") == 1351944715
    code = "from genattr.evaluate.benchmark import example_seed; print(example_seed(0, 'zoo:recall:0'))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(other.stdout) == 1351944715
    ids = [f"zoo:recall:{i}" for i in range(200)]
    assert len({example_seed(0, i) for i in ids}) == 200
    assert all(example_seed(0, i) != example_seed(1, i) for i in ids)
    assert all(0 <= example_seed(7, i) < 2**32 for i in ids)


def test_random_baseline_ranks_every_example_afresh(zoo, tmp_path, monkeypatch):
    seen = []

    def recording_explain(*args, **kwargs):
        res = genattr.explain(*args, **kwargs)
        seen.append(res)
        return res

    monkeypatch.setattr(benchmark, "explain", recording_explain)
    items, _ = load_items(["zoo:recall", "zoo:copy"], n=30, seed=0)
    result, _, _ = _run(zoo, items, tmp_path / "out", methods=["random"])
    assert [res.seed for res in seen] == [example_seed(0, it.id) for it in items]
    assert [row["seed"] for row in result["rows"]] == [res.seed for res in seen]
    tops = [int(np.argmax(res.scores)) for res in seen]
    assert len(set(tops)) >= 8, tops  # one seed for all gave the same top feature on every example
    # Random scores are at chance against the ground truth: mean AUROC 0.5 within 3 standard errors.
    aurocs = [row["auroc"] for row in result["rows"]]
    assert abs(np.mean(aurocs) - 0.5) < 3 * np.std(aurocs) / np.sqrt(len(aurocs)), np.mean(aurocs)
    assert 0 < np.mean([row["pointing_game"] for row in result["rows"]]) < 0.6


def _jsonl(path, prompts):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"prompt": p, "target": t}) + "\n" for p, t in prompts))
    return str(path)


@pytest.mark.parametrize(
    "change",
    [
        {"level": "token"},
        {"mask": "replace"},
        {"seed": 1},
        {"max_new_tokens": 4},
        {"k": 2},
        {"metrics": ["ground_truth", "erasure"]},
        {"data": "another file of the same name"},
    ],
    ids=lambda change: next(iter(change)),
)
def test_a_run_with_other_settings_or_data_recomputes_every_row(zoo, tmp_path, change):
    first = [("recall ant one bee two query bee", " two"), ("copy a b again a", " b")]
    items, _ = load_items([_jsonl(tmp_path / "a" / "data.jsonl", first)])
    settings = {k: v for k, v in change.items() if k != "data"}
    if "seed" in change:  # the run's seed also draws the zoo's examples
        items = [*items, *load_items(["zoo:copy"], n=2, seed=0)[0]]
    out = tmp_path / "out"
    _, computed, _ = _run(zoo, items, out)
    assert len(computed) == 2 * len(items)

    again = items
    if "seed" in change:
        again = [*items[:2], *load_items(["zoo:copy"], n=2, seed=1)[0]]
    if "data" in change:
        # Line 1 unchanged (its rows are reused), line 2 edited, line 3 new.
        edited = [first[0], ("copy c d again c", " d"), first[1]]
        again, _ = load_items([_jsonl(tmp_path / "b" / "data.jsonl", edited)])
    result, computed, warned = _run(zoo, again, out, **settings)
    expected, _, _ = _run(zoo, again, tmp_path / "fresh", **settings)
    reused = {"data.jsonl:1"} if "data" in change else set()
    assert sorted((r["method"], r["example"]) for r in computed) == sorted(
        (m, it.id) for it in again for m in ("leave_one_out", "random") if it.id not in reused
    )
    assert result["table"] == expected["table"]
    assert len(warned) == 1 and "not reused" in str(warned[0].message)
    name = next(iter(change))
    assert (name if name != "data" else "other example text") in str(warned[0].message)

    # Both runs' rows stay in the file; running the first again reuses its rows, computes nothing.
    _, computed, warned = _run(zoo, items, out)
    assert computed == [] and warned == []


def test_the_same_run_again_reuses_every_row_silently(zoo, tmp_path):
    items, _ = load_items(["zoo:copy"], n=3, seed=2)
    first, computed, warned = _run(zoo, items, tmp_path / "out")
    assert len(computed) == 6 and warned == []
    again, computed, warned = _run(zoo, items, tmp_path / "out")
    assert computed == [] and warned == [] and again["table"] == first["table"]
    row = json.loads((tmp_path / "out" / "rows.jsonl").read_text().splitlines()[0])
    assert row["settings"] == {
        "model": zoo.name,
        "dtype": str(zoo.dtype),
        "seed": 0,
        "metrics": ["ground_truth"],
        "level": "word",
        "mask": None,
        "max_new_tokens": 3,
        "k": 3,
    }
    assert row["example_hash"] == benchmark.item_hash(items[0]) and len(row["example_hash"]) == 16


def test_one_example_id_twice_is_refused(zoo, tmp_path):
    a = _jsonl(tmp_path / "a" / "data.jsonl", [("copy a b again a", " b")])
    b = _jsonl(tmp_path / "b" / "data.jsonl", [("copy c d again c", " d")])
    items, _ = load_items([a, b])
    with pytest.raises(InputError, match="more than once"):
        run_benchmark(zoo, ["random"], items, tmp_path / "out", **FAST)


@pytest.fixture(scope="module")
def finished(zoo, tmp_path_factory):
    """A finished run's directory and its rows.jsonl lines."""
    out = tmp_path_factory.mktemp("finished")
    items, _ = load_items(["zoo:copy"], n=2, seed=5)
    run_benchmark(zoo, ["leave_one_out", "random"], items, out, **FAST)
    return items, (out / "rows.jsonl").read_text().splitlines()


def _row_without(line, field):
    row = json.loads(line)
    del row[field]
    return json.dumps(row)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda line: _row_without(line, "example"), "no str field 'example'"),
        (lambda line: _row_without(line, "settings"), "did not record each row's settings"),
        (lambda line: json.dumps({**json.loads(line), "settings": "x"}), "no dict field 'settings'"),
        (lambda line: json.dumps({**json.loads(line), "method": 3}), "no str field 'method'"),
        (lambda line: line[:40], "is not a benchmark row"),
        (lambda line: "[1, 2]", "is a JSON list"),
        (lambda line: json.dumps({**json.loads(line), "morf": [0.0, "x"]}), "curves"),
        (lambda line: "\xff", "is not a benchmark row"),
    ],
    ids=[
        "no example",
        "no settings",
        "settings not a dict",
        "method not a string",
        "cut JSON",
        "a list",
        "bad curve",
        "bad utf-8",
    ],
)
def test_a_malformed_row_before_the_last_is_a_typed_error(zoo, tmp_path, finished, damage, message):
    items, lines = finished
    rows = tmp_path / "out" / "rows.jsonl"
    rows.parent.mkdir()
    text = "\n".join([lines[0], damage(lines[1]), *lines[2:]]) + "\n"
    rows.write_bytes(text.encode("utf-8") if "\xff" not in text else text.encode("latin-1"))
    with pytest.raises(ResultFormatError, match=message) as error:
        run_benchmark(zoo, ["leave_one_out", "random"], items, tmp_path / "out", **FAST)
    assert "rows.jsonl:2 " in str(error.value) and "remove the" in str(error.value)


def test_a_repeated_row_is_a_typed_error(zoo, tmp_path, finished):
    items, lines = finished
    rows = tmp_path / "out" / "rows.jsonl"
    rows.parent.mkdir()
    rows.write_text("\n".join([*lines, lines[1]]) + "\n")
    with pytest.raises(ResultFormatError, match="rows.jsonl:5 repeats the row of line 2"):
        run_benchmark(zoo, ["leave_one_out", "random"], items, tmp_path / "out", **FAST)


@pytest.mark.parametrize("cut", [1, 25, -1, None])
def test_a_last_line_cut_short_is_dropped_and_recomputed(zoo, tmp_path, finished, cut):
    items, lines = finished
    rows = tmp_path / "out" / "rows.jsonl"
    rows.parent.mkdir()
    rows.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:cut])  # no newline: an append cut short
    _, computed, warned = _run(zoo, items, tmp_path / "out")
    assert [r["example"] for r in computed] == [json.loads(lines[-1])["example"]] and warned == []
    assert rows.read_text().splitlines() == lines[:-1] + [json.dumps(computed[0])]


def test_the_command_exits_2_on_a_row_without_example(tmp_path, capsys):
    data = _jsonl(tmp_path / "data.jsonl", [("copy a b again a", " b")])
    args = ["benchmark", "--data", data, "--methods", "random", "--metrics", "ground_truth", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "out")]) == 0
    rows = tmp_path / "out" / "rows.jsonl"
    rows.write_text(_row_without(rows.read_text().splitlines()[0], "example") + "\n")
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "genattr: error:" in err and "rows.jsonl:1 has no str field 'example'" in err
    assert "Traceback" not in err


def test_progress_hears_each_computed_row_and_nothing_for_reused_ones(zoo, tmp_path):
    items, _ = load_items(["zoo:recall"], n=2, seed=0)
    heard: list[tuple] = []
    _run(zoo, items, tmp_path / "out", progress=lambda *args: heard.append(args))
    assert heard == [
        (1, 4, f"leave_one_out on {items[0].id}"),
        (2, 4, f"random on {items[0].id}"),
        (3, 4, f"leave_one_out on {items[1].id}"),
        (4, 4, f"random on {items[1].id}"),
    ]
    _run(zoo, items, tmp_path / "out", progress=lambda *args: heard.append(args))
    assert len(heard) == 4
    with pytest.raises(InputError, match="progress must be a callable"):
        run_benchmark(zoo, ["random"], items, tmp_path / "other", progress=True, **FAST)
