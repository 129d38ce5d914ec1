"""The resumable JSONL store's single writer: a second writer on the same file, in this process or
another, is refused with a typed error until the first closes; a reader goes on meanwhile and
leaves the file as it is, a cut last line included; and ``genattr reproduce`` refuses a study
whose rows another run is writing before it loads the model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from genattr.cli import main
from genattr.errors import InputError, ResultFormatError
from genattr.jsonl import JsonlStore


def _store(path, write: bool = True) -> JsonlStore:
    return JsonlStore(path, lambda line, where: json.loads(line), lambda r: r["k"], "row", write=write)


def test_a_second_writer_is_refused_until_the_first_closes(tmp_path):
    path = tmp_path / "rows.jsonl"
    with _store(path) as first:
        first.append({"k": 1})
        with pytest.raises(InputError, match="rows.jsonl is being written by another genattr run"):
            _store(path)
        first.append({"k": 2})  # the refused store took nothing from the first
    with _store(path) as second:
        assert second.done == {1, 2}
        second.append({"k": 3})
    assert path.read_text() == '{"k": 1}\n{"k": 2}\n{"k": 3}\n'


def test_a_writer_in_another_process_holds_the_file(tmp_path):
    path = tmp_path / "rows.jsonl"
    holder = (
        "import json, sys; from genattr.jsonl import JsonlStore\n"
        f"s = JsonlStore(__import__('pathlib').Path({str(path)!r}), lambda l, w: json.loads(l), "
        "lambda r: r['k'], 'row')\n"
        "s.append({'k': 1}); print('held', flush=True); sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "held\n"
        with pytest.raises(InputError, match="being written by another genattr run"):
            _store(path)
        assert _store(path, write=False).done == {1}  # reading goes on
    finally:
        proc.communicate("")
    assert proc.returncode == 0
    with _store(path) as store:  # the lock ends with its process
        assert store.done == {1}


def test_a_reader_leaves_a_cut_line_that_a_writer_then_cuts(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"k": 1}\n{"k": 2')  # a writer's append under way, or cut short
    reader = _store(path, write=False)
    assert reader.done == {1} and path.read_text() == '{"k": 1}\n{"k": 2'
    with pytest.raises(ValueError, match="not open for writing"):
        reader.append({"k": 2})
    with _store(path) as writer:
        assert writer.done == {1} and path.read_text() == '{"k": 1}\n'
        writer.append({"k": 2})
    assert path.read_text() == '{"k": 1}\n{"k": 2}\n'


def test_a_store_refused_for_a_bad_line_releases_the_file(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"k": 1}\n{"k": 1}\n')
    with pytest.raises(ResultFormatError, match="rows.jsonl:2 repeats the row of line 1") as refused:
        _store(path)
    path.write_text('{"k": 1}\n')
    with _store(path) as store:  # while the refused store lives on in the traceback
        assert store.done == {1} and refused.traceback


def test_reproduce_refuses_rows_another_run_is_writing_before_loading_the_model(tmp_path, capsys):
    out = tmp_path / "real-model"
    held = out / "rows" / "bias.jsonl"
    with _store(held):
        args = ["reproduce", "gilot-table1", "bias", "--out", str(out), "--model", "/no/such/model"]
        assert main(args) == 2  # the lock is met first: the missing model is never loaded
        err = capsys.readouterr().err
        assert "bias.jsonl is being written by another genattr run" in err and "Traceback" not in err
        assert not (out / "rows" / "gilot-table1.jsonl").exists()  # claimed, then released unwritten
        assert main([*args[:-2], "--report-only"]) == 0  # rebuilding the document needs no lock


def test_a_file_the_writer_created_is_removed_if_it_wrote_nothing(tmp_path):
    new, kept = tmp_path / "new.jsonl", tmp_path / "kept.jsonl"
    kept.write_text("")  # there before the store: left as it was
    with _store(new), _store(kept):
        assert new.exists()
    assert not new.exists() and kept.read_bytes() == b""
    with _store(new) as store:
        store.append({"k": 1})
    assert new.read_text() == '{"k": 1}\n'
