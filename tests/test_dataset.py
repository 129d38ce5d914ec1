"""Dataset runs (``genattr explain --data``): each line a result equal to ``genattr.explain`` of its
record, a run resumed after an interruption (a last line cut short included) ending with every
record's result exactly once and equal to an uninterrupted run's, bad data lines refused with their
line number, named sets, and the results file read back (``read_results``, ``genattr render``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import genattr
from genattr.cli import main
from genattr.dataset import Record, read_records, read_results, run_dataset
from genattr.errors import ContextLengthError, DataFormatError, GenattrWarning, InputError, ResultFormatError
from genattr.evaluate.datasets import data_dir
from genattr.zoo import examples

RECORDS = [
    {"prompt": "copy a b again a", "target": " b", "id": "first"},
    {"prompt": "recall bee seven ant eight query bee"},
    {"prompt": "copy c d again c", "target": " d"},
    {"prompt": "recall pig six cat two query cat", "target": " two", "id": 4},
]
OPTIONS = {"method": "shapley_sampling", "params": {"n_samples": 4}, "seed": 7, "max_new_tokens": 2}


@pytest.fixture(scope="module")
def zoo():
    return genattr.load("zoo")


pytestmark = pytest.mark.filterwarnings("ignore::genattr.errors.UnknownTokensWarning")


def _data(path, records=RECORDS):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def comparable(line: str) -> dict:
    """A result line without the timings that differ from run to run, its source's folder left out."""
    data = json.loads(line)
    for key in ("seconds", "model_seconds"):
        data["diagnostics"].pop(key)
    data["request"]["source"] = Path(data["request"]["source"]).name
    return data


def _by_input(path) -> dict[str, dict]:
    lines = path.read_text().splitlines()
    found = [comparable(line) for line in lines]
    return {line["request"]["input_hash"]: line for line in found}


@pytest.fixture(scope="module")
def whole(zoo, tmp_path_factory):
    """An uninterrupted run's results file."""
    tmp = tmp_path_factory.mktemp("whole")
    out = tmp / "results.jsonl"
    run_dataset(zoo, read_records(_data(tmp / "data.jsonl")), out, **OPTIONS)
    return out


def test_each_line_is_the_result_of_explain_on_its_record(zoo, whole):
    lines = whole.read_text().splitlines()
    assert len(lines) == len(RECORDS)
    results = read_results(whole)
    for record, line, res in zip(RECORDS, lines, results, strict=True):
        alone = genattr.explain(zoo, record["prompt"], target=record.get("target"), **OPTIONS)
        np.testing.assert_array_equal(res.scores, alone.scores)
        np.testing.assert_array_equal(res.token_scores, alone.token_scores)
        assert res.target.ids == alone.target.ids and res.target.generated == ("target" not in record)
        request = json.loads(line)["request"]
        assert request["id"] == record.get("id") and request["source"].endswith(
            f"data.jsonl:{RECORDS.index(record) + 1}"
        )
        assert request["settings"]["method"] == "shapley_sampling" and request["settings"]["seed"] == 7
        assert request["settings"]["params"] == {"n_samples": 4} and request["settings"]["model"] == "zoo"


@pytest.mark.parametrize("cut", [1, 30, -1])
def test_an_interrupted_run_resumes_with_each_result_once_equal_to_an_uninterrupted_run(
    zoo, whole, tmp_path, cut
):
    records = read_records(_data(tmp_path / "data.jsonl"))
    out = tmp_path / "results.jsonl"
    heard = []

    def interrupt_after_two(done, total, note):
        heard.append((done, total, note))
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_dataset(zoo, records, out, progress=interrupt_after_two, **OPTIONS)
    assert len(out.read_text().splitlines()) == 2 and heard[0][1] == 4
    third = whole.read_text().splitlines()[2]
    with out.open("a") as handle:  # the interruption cut the third line short
        handle.write(third[:cut])
    heard.clear()
    counts = run_dataset(zoo, records, out, progress=lambda *args: heard.append(args), **OPTIONS)
    assert counts == {"total": 4, "reused": 2, "computed": 2}
    assert [h[:2] for h in heard] == [(1, 2), (2, 2)] and heard[0][2].endswith("data.jsonl:3")
    lines = out.read_text().splitlines()
    assert len(lines) == 4 and len({json.loads(line)["request"]["input_hash"] for line in lines}) == 4
    assert _by_input(out) == _by_input(whole)
    again = run_dataset(zoo, records, out, **OPTIONS)
    assert again == {"total": 4, "reused": 4, "computed": 0} and out.read_text().splitlines() == lines


def test_a_run_with_other_settings_computes_its_own_results_and_says_why(zoo, whole, tmp_path):
    out = tmp_path / "results.jsonl"
    out.write_text(whole.read_text())
    records = read_records(_data(tmp_path / "data.jsonl"))
    with pytest.warns(GenattrWarning, match=r"4 results .* not reused .*\(seed 7 there, 8 here\)") as caught:
        counts = run_dataset(zoo, records[:2], out, **{**OPTIONS, "seed": 8})
    assert any("2 of records not in this data" in str(w.message) for w in caught)
    assert counts["computed"] == 2 and len(out.read_text().splitlines()) == 6


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "is not JSON"),
        ('["copy a b"]', "is a JSON list, not an object"),
        ('{"text": "copy a b"}', "has no 'prompt' field"),
        ('{"prompt": 3}', "has no 'prompt' field"),
        ('{"prompt": "  "}', "has no 'prompt' field"),
        ('{"prompt": "copy a b", "target": ""}', "'target' must be a non-empty string"),
        ('{"prompt": "copy a b", "target": 5}', "'target' must be a non-empty string"),
        ('{"prompt": "copy a b", "id": true}', "'id' must be a string or an integer"),
        ('{"prompt": "copy a b", "id": [1]}', "'id' must be a string or an integer"),
        (json.dumps(RECORDS[0]), r"repeats .*data.jsonl:1 \(same id, prompt and target\)"),
        ('{"prompt": "another", "id": "first"}', "has the id 'first' of .*data.jsonl:1"),
    ],
)
def test_a_bad_data_line_is_a_typed_error_naming_its_line(tmp_path, line, message):
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps(RECORDS[0]) + "\n\n" + json.dumps(RECORDS[1]) + "\n" + line + "\n")
    with pytest.raises(DataFormatError, match=message) as error:
        read_records(data)
    assert "data.jsonl:4" in str(error.value)


def test_bad_utf8_and_an_empty_file_are_refused(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_bytes(b'{"prompt": "copy \xff"}\n')
    with pytest.raises(DataFormatError, match="data.jsonl:1 is not UTF-8"):
        read_records(data)
    data.write_text("\n \n")
    with pytest.raises(InputError, match="holds no record"):
        read_records(data)
    with pytest.raises(InputError, match="neither a file nor a prompt set"):
        read_records(tmp_path / "missing.jsonl")


def test_named_sets_and_zoo_tasks_give_records_with_their_ids():
    gilot = read_records("gilot", n=3)
    first = json.loads((data_dir() / "gilot_prompts" / "gilot_prompts.jsonl").read_text().splitlines()[0])
    assert [r.source for r in gilot] == ["gilot:0", "gilot:1", "gilot:2"]
    assert gilot[0] == Record("gilot:0", first["prompt"], None, "gilot:0")
    sst2 = read_records("sst2", n=2, seed=1)
    assert all(r.target in (" positive", " negative") and r.prompt.endswith("Sentiment:") for r in sst2)
    zoo = read_records("zoo:copy", n=3, seed=2)
    drawn = examples("copy", 3, seed=2)
    assert [(r.prompt, r.target) for r in zoo] == [(e.prompt, e.answer) for e in drawn]


def test_the_command_runs_a_named_set_resumes_and_reports_a_bad_line(tmp_path, capsys):
    out = tmp_path / "results.jsonl"
    args = [
        "explain",
        "--data",
        "zoo:copy",
        "--n",
        "2",
        "--out",
        str(out),
        "--quiet",
        "--method",
        "leave_one_out",
    ]
    assert main(args) == 0
    assert "2 results, 2 computed and 0 already there" in capsys.readouterr().err
    assert main(args) == 0
    assert "2 results, 0 computed and 2 already there" in capsys.readouterr().err
    data = _data(tmp_path / "data.jsonl", [RECORDS[0], {"prompt": 3}])
    assert main(["explain", "--data", str(data), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "data.jsonl:2 has no 'prompt' field" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["copy a b", "--data", "x.jsonl", "--out", "r.jsonl"], "either a prompt or --data"),
        (["--data", "x.jsonl"], "--data needs --out"),
        (["--data", "x.jsonl", "--out", "r.jsonl", "--target", " b"], "--target concern one prompt"),
        (["copy a b", "--out", "r.jsonl"], "--out goes with --data"),
        ([], "give a prompt to explain, or --data"),
        (
            ["--data", "x.jsonl", "--out", "r.jsonl", "--workers", "2"],
            "--workers is the number of Ray actors",
        ),
    ],
)
def test_the_command_refuses_options_that_do_not_go_together(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    assert main(["explain", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.splitlines()) == 1


def test_reading_results_refuses_a_line_cut_short_and_names_a_bad_line(whole, tmp_path):
    lines = whole.read_text().splitlines()
    cut = tmp_path / "cut.jsonl"
    cut.write_text("\n".join(lines[:2]) + "\n" + lines[2][:50])
    with pytest.raises(ResultFormatError, match="cut.jsonl:3 is cut short"):
        read_results(cut)
    bad = tmp_path / "bad.jsonl"
    broken = {**json.loads(lines[1]), "scores": [1.0]}
    bad.write_text(lines[0] + "\n" + json.dumps(broken) + "\n")
    with pytest.raises(ResultFormatError, match="bad.jsonl:2: .*scores"):
        read_results(bad)
    bad.write_text(json.dumps({k: v for k, v in json.loads(lines[0]).items() if k != "request"}) + "\n")
    with pytest.raises(ResultFormatError, match="bad.jsonl:1 is not a result of genattr explain --data"):
        read_results(bad)


def test_a_repeated_result_line_is_a_typed_error(zoo, whole, tmp_path):
    out = tmp_path / "results.jsonl"
    lines = whole.read_text().splitlines()
    out.write_text("\n".join([*lines, lines[1]]) + "\n")
    with pytest.raises(ResultFormatError, match="results.jsonl:5 repeats the result of line 2"):
        run_dataset(zoo, read_records(_data(tmp_path / "data.jsonl")), out, **OPTIONS)


def test_render_reads_a_results_file_into_one_page(whole, tmp_path, capsys):
    from genattr.render.viewer import render_viewer

    page = tmp_path / "page.html"
    saved = tmp_path / "alone.json"  # a saved result beside a results file: one page of both
    read_results(whole)[0].save(saved)
    assert main(["render", str(whole), str(saved), "--html", str(page)]) == 0
    results = read_results(whole)
    assert len(results) == len(RECORDS)
    assert page.read_text() == render_viewer([*results, results[0]], title="genattr: shapley_sampling")
    cut = tmp_path / "cut.jsonl"
    cut.write_text(whole.read_text()[:-20])
    capsys.readouterr()
    assert main(["render", str(cut)]) == 2
    assert "cut.jsonl:4 is cut short" in capsys.readouterr().err


def test_an_error_of_one_record_names_it_and_keeps_the_results_before_it(zoo, tmp_path):
    too_long = " ".join(["a"] * 2 * zoo.model.config.max_position_embeddings)
    data = _data(tmp_path / "data.jsonl", [RECORDS[0], {"prompt": "copy a b again a", "target": too_long}])
    out = tmp_path / "results.jsonl"
    with pytest.raises(ContextLengthError, match=r"^\S*data.jsonl:2: "):
        run_dataset(zoo, read_records(data), out, **OPTIONS)
    assert [json.loads(line)["request"]["id"] for line in out.read_text().splitlines()] == ["first"]
