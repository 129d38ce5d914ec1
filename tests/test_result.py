"""Attribution results: JSON round trip, atomic writes, validation of tampered files, top-k and
aggregation to coarser levels."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

import genattr
from genattr import files, registry
from genattr.errors import GenattrDeprecationWarning, InputError, ResultFormatError
from genattr.registry import Method, Output, Param
from genattr.settings import Settings

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
        "settings",
        "diagnostics",
        "version",
        "schema",
        "schema_version",
    ):
        assert key in data
    assert (
        set(data["features"][0]) >= {"text", "start", "end", "positions"}
        and "tokens" not in data["features"][0]
    )
    assert "mask_token" in data["settings"] and "baseline" not in data["settings"]
    assert (
        data["method"] == "shapley_sampling"
        and data["settings"]["seed"] == 2
        and data["version"] == genattr.__version__
    )
    assert data["params"]["n_samples"] == 4 and data["settings"]["level"] == "word"
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

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", boom)
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
        (lambda d: d["settings"].update(level=12345), "'level' has the wrong type"),
        (lambda d: d["settings"].update(level="paragraph"), "level 'paragraph' is not one of"),
        (lambda d: d.update(target_text=["x"]), "'target_text' has the wrong type"),
        (lambda d: d["settings"].update(seed=2**64), r"seed must be an integer in \[0, 2\*\*64\)"),
        (lambda d: d["settings"].update(seed=-1), "seed must be"),
        (lambda d: d["features"][0].update(text="<script>"), "does not match the prompt"),
        (lambda d: d["features"][0].update(positions=[10**6]), "outside the prompt"),
        (lambda d: d["features"][0].update(tokens=[1]), "both 'tokens' and 'positions'"),
        (lambda d: d.update(token_scores=[[0.0]]), "one row per target token"),
        (lambda d: d["prompt"].update(offsets=[[0, 10**6]] * len(d["prompt"]["offsets"])), "character span"),
        (lambda d: d.pop("method"), "missing field 'method'"),
        (lambda d: d["settings"].update(seed="os.system('x')"), "seed"),
        (lambda d: d.pop("settings"), "missing field 'settings'"),
        (lambda d: d.update(settings=["word"]), "'settings' has the wrong type"),
        (lambda d: d["settings"].update(mask="blur"), "mask 'blur' is not one of"),
        (lambda d: d["settings"].update(objective="odds"), "objective 'odds' is not one of"),
        (lambda d: d["settings"].update(mask_token="zero"), "mask_token must be a token id"),
        (lambda d: d["settings"].update(mask_token=True), "mask_token must be a token id"),
        (lambda d: d["settings"].update(baseline="zero"), "both 'baseline' and 'mask_token'"),
        (lambda d: d["settings"].update(max_new_tokens=0), "max_new_tokens must be a positive integer"),
        (lambda d: d["settings"].update(pattern=["a"]), "'pattern' has the wrong type"),
        (lambda d: d["settings"].update(spans=[[0, 10**6]]), "spans must be a list of"),
        (lambda d: d["settings"].update(colour="red"), r"unknown settings \['colour'\]"),
    ],
)
def test_tampered_files_fail_with_a_clear_error(result, tmp_path, tamper, message):
    data = result.to_dict()
    tamper(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data).replace(json.dumps(OVERFLOW), "-1e999"))
    with pytest.raises(ResultFormatError, match=message):
        genattr.Attribution.load(path)


V1_FILE = Path(__file__).parent / "data" / "attribution_v1.json"
"""A result saved by genattr 0.1.0 in schema version 1 (shapley_sampling, seed 3, mask replace,
baseline eos = id 2): settings mixed into params, level and seed at the top level."""


def test_a_version_1_file_loads_into_the_version_2_shape(tmp_path):
    old = json.loads(V1_FILE.read_text())
    assert old["schema_version"] == 1 and old["params"]["mask"] == "replace"
    res = genattr.Attribution.load(V1_FILE)
    assert res.params == {"n_samples": 2}
    assert res.settings == Settings(level="word", mask="replace", mask_token=2, objective="log_prob", seed=3)
    assert res.level == "word" and res.seed == 3
    np.testing.assert_array_equal(res.scores, old["scores"])
    assert [(f.text, f.start, f.positions) for f in res.features] == [
        (f["text"], f["start"], tuple(f["tokens"])) for f in old["features"]
    ]
    new = res.save(tmp_path / "r.json")
    data = json.loads(new.read_text())
    assert data["schema_version"] == 3 and "seed" not in data and "level" not in data
    assert data["settings"]["mask"] == "replace" and data["params"] == {"n_samples": 2}
    assert genattr.Attribution.load(new).settings == res.settings


def test_a_version_2_file_with_the_former_names_loads(result, tmp_path):
    data = result.to_dict()
    data["settings"]["baseline"] = data["settings"].pop("mask_token")
    for feature in data["features"]:
        feature["tokens"] = feature.pop("positions")
    path = tmp_path / "early.json"
    path.write_text(json.dumps(data))
    back = genattr.Attribution.load(path)
    assert back.settings == result.settings and back.settings.mask_token == result.settings.mask_token
    assert back.features == result.features
    data["settings"]["baseline"] = "zero"
    path.write_text(json.dumps(data))
    with pytest.raises(ResultFormatError, match="mask_token must be a token id"):
        genattr.Attribution.load(path)


def test_settings_baseline_is_a_deprecated_name_of_mask_token():
    with pytest.warns(GenattrDeprecationWarning, match="read mask_token"):
        assert Settings(mask_token=3).baseline == 3


def test_version_1_settings_are_validated_like_version_2_ones(tmp_path):
    old = json.loads(V1_FILE.read_text())
    old["params"]["mask"] = "blur"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(old))
    with pytest.raises(ResultFormatError, match="mask 'blur' is not one of"):
        genattr.Attribution.load(path)


def test_settings_round_trip_for_every_kind_of_setting(lms, tmp_path):
    prompt = "The cat sat on the mat. Then a dog runs!"
    for level, extra in (("regex", {"pattern": r"\w+"}), ("spans", {"spans": [(4, 7), (8, 11)]})):
        res = genattr.explain(
            lms["llama"], prompt, method="leave_one_out", level=level, max_new_tokens=2, **extra
        )
        back = genattr.Attribution.load(res.save(tmp_path / f"{level}.json"))
        assert back.settings == res.settings and back.settings.max_new_tokens == 2
        assert back.settings.seed is None and back.params == res.params == {"groups": None}
    assert back.settings.spans == ((4, 7), (8, 11)) and back.settings.pattern is None


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
        files.write_atomic(path, "{}")
        assert stat.S_IMODE(path.stat().st_mode) == 0o640 and path.read_text() == "{}"
    finally:
        os.umask(old)


def test_atomic_writes_take_bytes_as_they_are(tmp_path):
    data = bytes(range(256))  # not UTF-8: written byte for byte, never re-encoded
    files.write_atomic(tmp_path / "b.png", data)
    assert (tmp_path / "b.png").read_bytes() == data
    assert [p.name for p in tmp_path.iterdir()] == ["b.png"]


def test_writing_creates_no_directories_and_refuses_a_directory(result, tmp_path):
    with pytest.raises(InputError, match="does not exist; create it first"):
        result.save(tmp_path / "a" / "b" / "r.json")
    assert not (tmp_path / "a").exists()
    with pytest.raises(InputError, match="is a directory"):
        result.save(tmp_path)
    with pytest.raises(InputError, match="is a directory"):
        files.check_writable(tmp_path)
    assert files.check_writable(tmp_path / "r.json") == tmp_path / "r.json"


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


class _SettingNamedParams(Method):
    """A throwaway method whose parameters are named like settings of the call."""

    name = "setting_named_params"
    family = "test"
    summary = "scores feature i by i times its parameter 'level'"
    token_scores = False
    params = {
        "level": Param(3, "a number named like the level setting"),
        "mask": Param("soft", "a word named like the mask setting", kind=str),
        "seed": Param(11, "a number named like the seed setting"),
    }

    def attribute(self, problem):
        return Output(np.arange(problem.n_features, dtype=np.float64) * self.values["level"])


def test_a_method_parameter_named_like_a_setting_does_not_collide_with_it(lms, tmp_path, monkeypatch):
    lookup = registry.get
    monkeypatch.setattr(
        registry,
        "get",
        lambda name: _SettingNamedParams if name == _SettingNamedParams.name else lookup(name),
    )
    call = {"method": _SettingNamedParams.name, "target": TARGET, "level": "sentence", "mask": "delete"}
    res = genattr.explain(lms["llama"], PROMPT, seed=5, **call)
    assert res.params == {"level": 3, "mask": "soft", "seed": 11}
    assert (res.settings.level, res.settings.mask, res.settings.seed) == ("sentence", "delete", None)
    np.testing.assert_array_equal(res.scores, [0.0, 3.0])  # two sentences, scored with the parameter
    back = genattr.Attribution.load(res.save(tmp_path / "r.json"))
    assert back.params == res.params and back.settings == res.settings
    res = genattr.explain(lms["llama"], PROMPT, params={"level": 2, "mask": "hard"}, **call)
    assert res.params == {"level": 2, "mask": "hard", "seed": 11} and res.settings.level == "sentence"
    np.testing.assert_array_equal(res.scores, [0.0, 2.0])
    with pytest.raises(genattr.errors.InvalidParameterError, match=r"\['n_samples'\] are given both"):
        genattr.explain(lms["llama"], PROMPT, method="shapley_sampling", params={"n_samples": 2}, n_samples=3)
    with pytest.raises(InputError, match="params must be a mapping"):
        genattr.explain(lms["llama"], PROMPT, params=[("n_samples", 2)])
