"""Attribution results: JSON round trip, atomic writes, validation of tampered files, top-k and
aggregation to coarser levels."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

import genattr
from genattr import result as result_module
from genattr.errors import InputError, ResultFormatError

PROMPT = "The cat sat on the mat. Then a dog runs!"
TARGET = " and the bird sings"
OVERFLOW = "a number literal that overflows to infinity"  # json.dumps would write Infinity


@pytest.fixture(scope="module")
def result(lms):
    return genattr.explain(
        lms["llama"], PROMPT, target=TARGET, method="shapley_sampling", n_samples=4, seed=2
    )


def test_json_has_the_documented_fields(result, tmp_path):
    path = result.save(tmp_path / "r.json")
    data = json.loads(path.read_text())
    for key in (
        "features",
        "scores",
        "token_scores",
        "target_tokens",
        "method",
        "params",
        "seed",
        "diagnostics",
        "version",
        "schema",
        "schema_version",
    ):
        assert key in data
    assert set(data["features"][0]) >= {"text", "start", "end", "tokens"}
    assert (
        data["method"] == "shapley_sampling" and data["seed"] == 2 and data["version"] == genattr.__version__
    )
    assert data["params"]["n_samples"] == 4 and data["params"]["level"] == "word"
    assert data["diagnostics"]["forward_passes"] >= 1


def test_save_and_load_round_trip(result, tmp_path):
    (tmp_path / "sub").mkdir()
    path = result.save(tmp_path / "sub" / "r.json")
    back = genattr.Attribution.load(path)
    assert back.features == result.features
    np.testing.assert_array_equal(back.scores, result.scores)
    np.testing.assert_array_equal(back.token_scores, result.token_scores)
    assert back.target == result.target and back.prompt == result.prompt
    assert back.params == json.loads(json.dumps(result.to_dict()["params"]))
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]  # no temporary file left behind


def test_atomic_save_keeps_the_old_file_when_writing_fails(result, tmp_path, monkeypatch):
    path = result.save(tmp_path / "r.json")
    before = path.read_text()
    import genattr.result as module

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(module.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        result.save(path)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


@pytest.mark.parametrize(
    "tamper, message",
    [
        (lambda d: d.update(schema="pickle"), "unknown schema"),
        (lambda d: d.update(schema_version=99), "schema version"),
        (lambda d: d["scores"].pop(), "scores"),
        (lambda d: d["scores"].__setitem__(0, "1; import os"), "not a finite number"),
        (lambda d: d["scores"].__setitem__(0, OVERFLOW), "not a finite number"),
        (lambda d: d["scores"].__setitem__(0, 10**400), "not a finite number"),
        (lambda d: d["token_scores"][0].__setitem__(0, OVERFLOW), "not a finite number"),
        (lambda d: d.update(target_generated="yes please"), "'target_generated' has the wrong type"),
        (lambda d: d["prompt"].update(is_chat=1), "'is_chat' has the wrong type"),
        (lambda d: d.update(level=12345), "'level' has the wrong type"),
        (lambda d: d.update(level="paragraph"), "level 'paragraph' is not one of"),
        (lambda d: d.update(target_text=["x"]), "'target_text' has the wrong type"),
        (lambda d: d.update(seed=2**64), r"seed must be an integer in \[0, 2\*\*64\)"),
        (lambda d: d.update(seed=-1), "seed must be"),
        (lambda d: d["features"][0].update(text="<script>"), "does not match the prompt"),
        (lambda d: d["features"][0].update(tokens=[10**6]), "outside the prompt"),
        (lambda d: d.update(token_scores=[[0.0]]), "one row per target token"),
        (lambda d: d["prompt"].update(offsets=[[0, 10**6]] * len(d["prompt"]["offsets"])), "character span"),
        (lambda d: d.pop("method"), "missing field 'method'"),
        (lambda d: d.update(seed="os.system('x')"), "seed"),
    ],
)
def test_tampered_files_fail_with_a_clear_error(result, tmp_path, tamper, message):
    data = result.to_dict()
    tamper(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data).replace(json.dumps(OVERFLOW), "-1e999"))
    with pytest.raises(ResultFormatError, match=message):
        genattr.Attribution.load(path)


@pytest.mark.parametrize(
    "payload, message",
    [
        (b'{"scores": [NaN]}', "NaN is not a number genattr writes"),
        (b'{"scores": [-Infinity]}', "-Infinity is not a number genattr writes"),
        (b'{"seed": ' + b"9" * 5000 + b"}", "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
        (b'{"method": "caf\xe9"}', "not UTF-8"),
    ],
)
def test_unparseable_files_fail_with_a_clear_error(tmp_path, payload, message):
    path = tmp_path / "bad.json"
    path.write_bytes(payload)
    with pytest.raises(ResultFormatError, match=message):
        genattr.Attribution.load(path)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_get_the_umask_and_replaced_files_keep_their_mode(result, tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        path = result.save(tmp_path / "r.json")
        assert stat.S_IMODE(path.stat().st_mode) == mode
        path.chmod(0o640)
        result_module.write_atomic(path, "{}")
        assert stat.S_IMODE(path.stat().st_mode) == 0o640 and path.read_text() == "{}"
    finally:
        os.umask(old)


def test_writing_creates_no_directories_and_refuses_a_directory(result, tmp_path):
    with pytest.raises(InputError, match="does not exist; create it first"):
        result.save(tmp_path / "a" / "b" / "r.json")
    assert not (tmp_path / "a").exists()
    with pytest.raises(InputError, match="is a directory"):
        result.save(tmp_path)
    with pytest.raises(InputError, match="is a directory"):
        result_module.check_writable(tmp_path)
    assert result_module.check_writable(tmp_path / "r.json") == tmp_path / "r.json"


def test_loading_never_evaluates_names_in_the_file(result, tmp_path):
    data = result.to_dict()
    data["method"] = "__import__('os').system('touch pwned')"
    data["params"] = {"__class__": "subprocess.Popen", "__reduce__": ["os.system", ["echo hi"]]}
    path = tmp_path / "odd.json"
    path.write_text(json.dumps(data))
    back = genattr.Attribution.load(path)
    assert back.method == data["method"] and back.params == data["params"]
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(ResultFormatError, match="not valid JSON"):
        path.write_text("{not json")
        genattr.Attribution.load(path)


def test_top_orders_by_score(result):
    top = result.top(3)
    assert [s for _, s in top] == sorted(result.scores, reverse=True)[:3]
    assert len(result.top(100)) == len(result.features)


def test_aggregate_sums_into_coarser_features(result):
    sentences = result.aggregate("sentence")
    assert [f.text for f in sentences.features] == ["The cat sat on the mat.", "Then a dog runs!"]
    assert sentences.scores[0] == pytest.approx(result.scores[:7].sum())
    assert sentences.scores[1] == pytest.approx(result.scores[7:].sum())
    np.testing.assert_allclose(sentences.token_scores.sum(1), result.token_scores.sum(1))
    assert sentences.extras["aggregated_from"] == "word"
    with pytest.raises(InputError, match="coarser"):
        result.aggregate("token")
