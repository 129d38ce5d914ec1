"""The command line and the registry: exit codes, files written, no traceback on bad input, and
the README's table of methods kept in sync with the registry."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import genattr
from genattr import registry
from genattr.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_methods_check() -> list[str]:
    """Check the README's table of methods against the registry: it holds exactly the built-in
    methods' rows. Returns the names of the registered methods from elsewhere (installed
    packages' entry points, ``register``), which the README does not list."""
    text = README.read_text()
    table = re.search(r"<!-- methods:start -->\n(.*?)\n<!-- methods:end -->", text, re.S).group(1)
    infos = registry.methods()
    builtin = [info for info in infos if info.name in registry.BUILTIN]
    assert table == registry.markdown_table(builtin), "regenerate with `genattr methods --markdown`"
    return [info.name for info in infos if info.name not in registry.BUILTIN]


def test_readme_methods_table_matches_the_registry():
    elsewhere = readme_methods_check()
    assert all(registry.get(name).info().package != "genattr" for name in elsewhere)


def test_registry_declares_capabilities():
    infos = genattr.methods()
    assert {"leave_one_out", "shapley_sampling", "shapley_exact", "lime", "kernel_shap"} <= {
        i.name for i in infos
    }
    for info in infos:
        assert info.summary and info.family
        assert isinstance(info.stochastic, bool) and isinstance(info.needs_gradients, bool)
        cls = registry.get(info.name)
        assert set(info.params) == set(cls.params)


def test_explain_writes_json_and_html(model_dirs, tmp_path, capsys):
    out_json, out_html = tmp_path / "r.json", tmp_path / "r.html"
    code = main(
        [
            "explain",
            "--model",
            str(model_dirs["llama"]),
            "--method",
            "shapley_sampling",
            "-p",
            "n_samples=3",
            "-p",
            "paired=false",
            "--seed",
            "4",
            "--target",
            " and the bird",
            "--json",
            str(out_json),
            "--html",
            str(out_html),
            "The cat sat on the mat.",
        ]
    )
    assert code == 0
    data = json.loads(out_json.read_text())
    assert data["method"] == "shapley_sampling" and data["settings"]["seed"] == 4
    assert data["params"]["n_samples"] == 3
    assert [f["text"] for f in data["features"]] == ["The", "cat", "sat", "on", "the", "mat", "."]
    assert out_html.read_text().startswith("<!DOCTYPE html>")
    shown = capsys.readouterr().out
    assert "shapley_sampling" in shown and "cat" in shown


def test_render_and_methods_commands(model_dirs, tmp_path, capsys):
    out_json = tmp_path / "r.json"
    assert (
        main(
            [
                "explain",
                "--model",
                str(model_dirs["gpt2"]),
                "--quiet",
                "--max-new-tokens",
                "3",
                "--json",
                str(out_json),
                "--level",
                "token",
                "Hello there",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out == ""
    assert main(["render", str(out_json), "--html", str(tmp_path / "x.html")]) == 0
    assert (tmp_path / "x.html").exists()
    assert main(["methods"]) == 0
    assert "leave_one_out" in capsys.readouterr().out


def test_render_puts_several_results_on_one_page_grouped_by_prompt(model_dirs, tmp_path, capsys):
    """Two methods on one prompt share a group (a method switch), a third result of another
    prompt has its own; --terminal prints each result."""
    from genattr.render.viewer import render_viewer

    runs = [("leave_one_out", "Hello there"), ("random", "Hello there"), ("leave_one_out", "Bye now")]
    paths = []
    for k, (method, prompt) in enumerate(runs):
        paths.append(tmp_path / f"r{k}.json")
        argv = ["explain", "--model", str(model_dirs["gpt2"]), "-q", "--max-new-tokens", "2"]
        assert main([*argv, "--method", method, "--json", str(paths[-1]), prompt]) == 0
    page = tmp_path / "page.html"
    assert main(["render", *map(str, paths), "--html", str(page), "--terminal"]) == 0
    results = [genattr.Attribution.load(p) for p in paths]
    assert page.read_text() == render_viewer(results, title="genattr: leave_one_out, random")
    text = page.read_text()
    assert text.count('class="ga-group"') == 2 and text.count('class="ga-method"') == 2
    assert capsys.readouterr().out.count("method leave_one_out") == 2


@pytest.mark.parametrize(
    "argv, message",
    [
        (["explain", "--model", "/no/such/dir", "hi"], "does not exist"),
        (["explain", "--model", "{llama}", "   "], "empty"),
        (["explain", "--model", "{llama}", "--target", "", "hi"], "empty"),
        (
            ["explain", "--model", "{llama}", "--method", "lime", "-p", "n_samples=0", "hi there"],
            "at least 2",
        ),
        (["explain", "--model", "{llama}", "--mask-token", "mask", "hi there"], "no mask token"),
        (["render", "{bad}"], "not valid JSON"),
    ],
)
def test_bad_input_exits_2_with_one_line(model_dirs, tmp_path, capsys, argv, message):
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    argv = [a.format(llama=model_dirs["llama"], bad=bad) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("genattr: error:") and message in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_unknown_method_exits_2_before_loading_the_model(capsys):
    assert main(["explain", "--model", "no/such-model", "--method", "magic", "hi"]) == 2
    err = capsys.readouterr().err
    assert "unknown method 'magic'" in err and "leave_one_out" in err and "hub" not in err


def test_console_script_runs_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "genattr.cli", "explain", "--model", str(tmp_path / "none"), "hi"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def _cli(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "genattr.cli", *argv], capture_output=True, text=True, timeout=300, env=env
    )


def test_explain_prints_only_genattr_output_and_verbose_brings_transformers_back(model_dirs):
    """No loading bars, no transformers logging, no deprecation text of any library on a run
    with default settings; ``--verbose`` lets transformers speak again."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "TRANSFORMERS_VERBOSITY"}
    argv = ["explain", "--model", str(model_dirs["llama"]), "--max-new-tokens", "3", "hi there"]
    quiet = _cli(*argv, env=env)
    assert quiet.returncode == 0 and "leave_one_out" in quiet.stdout
    assert quiet.stderr == ""
    assert not re.search("deprecat|past_key_values|warn", quiet.stdout, re.IGNORECASE)
    loud = _cli(*argv, "--verbose", env={**env, "TRANSFORMERS_VERBOSITY": "info"})
    assert loud.returncode == 0 and "loading" in loud.stderr.lower()


def test_demo_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo.html"
    assert main(["demo", "--model", "zoo", "--quick", "--out", str(out)]) == 0
    page = out.read_text()
    assert all(name in page for name in registry.names())
    shown = capsys.readouterr().out
    assert "recall@|G|" in shown and "leave_one_out" in shown
    assert "accuracy 1.00" in shown  # the in-context use case: the zoo looks keys up in any order
    assert "'sad': share 1.00, rank 1" in " ".join(shown.split())  # the slot probe: the polar word decides


def _one_line_error(capsys, message: str) -> str:
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.endswith("\n") and "Traceback" not in err, err
    assert err.startswith("genattr") and message in err, err
    return err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["explain", "--level", "para", "hi"], "argument --level: invalid choice"),
        (["explain", "--seed", str(2**64), "hi"], "must be in [0, 2**64)"),
        (["explain", "--seed", "-1", "hi"], "must be in [0, 2**64)"),
        (["explain", "--seed", "soon", "hi"], "expected an integer or 'random'"),
        (["benchmark", "--seed", str(10**30), "--data", "zoo:x", "--out", "o"], "must be in [0, 2**64)"),
        (["benchmark", "--seed", "random", "--data", "zoo:x", "--out", "o"], "needs a fixed integer seed"),
        (["nonsense"], "invalid choice"),
    ],
)
def test_argument_errors_are_one_line(capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    _one_line_error(capsys, message)


def test_error_messages_are_one_line_without_terminal_controls(tmp_path, capsys, monkeypatch):
    import genattr.result

    def fail(path):
        raise genattr.errors.ResultFormatError("\n\ncould not read\n  the file\x1b]0;pwned\x07 \u202eyes\n")

    monkeypatch.setattr(genattr.result.Attribution, "load", staticmethod(fail))
    assert main(["render", str(tmp_path / "r.json")]) == 2
    err = _one_line_error(capsys, "could not read the file")
    assert err == "genattr: error: could not read the file\\x1b]0;pwned\\x07 \\u202eyes\n"


@pytest.mark.parametrize(
    "flag, name, message",
    [
        ("--json", "", "is a directory"),
        ("--html", "", "is a directory"),
        ("--json", "no/such/r.json", "does not exist; create it first"),
        ("--html", "no/such/r.html", "does not exist; create it first"),
    ],
)
def test_unwritable_outputs_fail_before_the_model_loads(tmp_path, capsys, flag, name, message):
    # the model does not exist either: its error would come first if the output were checked late
    assert main(["explain", "--model", str(tmp_path / "none"), flag, str(tmp_path / name), "hi"]) == 2
    _one_line_error(capsys, message)
    assert not (tmp_path / "no").exists()
    assert main(["render", str(tmp_path / "none.json"), "--html", str(tmp_path / name)]) == 2
    _one_line_error(capsys, message)


def test_demo_checks_its_output_first(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "no" / "demo.html")]) == 2
    _one_line_error(capsys, "does not exist; create it first")


def test_no_target_method_rejects_target_before_loading(tmp_path, capsys):
    cls = next(registry.get(n) for n in registry.names() if not registry.get(n).needs_target)
    assert (
        main(["explain", "--model", str(tmp_path / "none"), "--method", cls.name, "--target", "x", "hi"]) == 2
    )
    _one_line_error(capsys, f"{cls.name} takes no --target")


@pytest.mark.parametrize("spelling, value", [("True", True), ("yes", True), ("on", True), ("false", False)])
def test_boolean_parameters_accept_the_usual_spellings(model_dirs, tmp_path, capsys, spelling, value):
    out = tmp_path / "r.json"
    argv = ["explain", "--model", str(model_dirs["llama"]), "--method", "xprompt", "-q", "--json", str(out)]
    params = ["-p", "k=1", "-p", "n_iter=1", "-p", f"random_init={spelling}", "-p", "uniform_sampling=no"]
    assert main([*argv, *params, "--target", " ran", "The cat sat"]) == 0
    data = json.loads(out.read_text())
    assert data["params"]["random_init"] is value and data["params"]["uniform_sampling"] is False
    assert main([*argv, "-p", "random_init=yes please", "--target", " ran", "The cat sat"]) == 2
    _one_line_error(capsys, "random_init must be bool, got 'yes please'")


def test_a_param_named_like_a_setting_goes_to_the_method(model_dirs, capsys):
    argv = ["explain", "--model", str(model_dirs["llama"]), "-q", "-p", "level=2", "--target", " ran", "hi"]
    assert main(argv) == 2
    _one_line_error(capsys, "leave_one_out does not take level")


def test_seed_random_is_drawn_and_recorded(model_dirs, tmp_path, capsys):
    argv = ["explain", "--model", str(model_dirs["llama"]), "--method", "random", "-q", "--target", " ran"]
    seeds, scores = [], []
    for i, seed in enumerate(["random", "random", None]):
        out = tmp_path / f"r{i}.json"
        assert (
            main([*argv, "--seed", str(seed if seed else seeds[0]), "--json", str(out), "The cat sat"]) == 0
        )
        data = json.loads(out.read_text())
        seeds.append(data["settings"]["seed"])
        scores.append(data["scores"])
    assert all(isinstance(s, int) and 0 <= s < 2**64 for s in seeds) and seeds[0] != seeds[1]
    assert seeds[2] == seeds[0] and scores[2] == scores[0] != scores[1]  # the recorded seed repeats the run


def test_piped_explain_prints_the_scores_of_a_method_without_matrix(model_dirs, tmp_path, capsys):
    out = tmp_path / "r.json"
    argv = ["explain", "--model", str(model_dirs["llama"]), "--method", "random", "--target", " ran"]
    assert main([*argv, "--json", str(out), "The cat sat"]) == 0
    shown = capsys.readouterr().out
    scores = json.loads(out.read_text())["scores"]
    assert re.search(r"score\s+" + r"\s+".join(re.escape(f"{s:.2g}") for s in scores), shown), shown


def test_render_terminal_escapes_hostile_text(model_dirs, tmp_path, capsys):
    out = tmp_path / "r.json"
    evil = "\x1b]0;pwned\x07\x1b[2J\r\u202e"
    argv = ["explain", "--model", str(model_dirs["llama"]), "-q", "--json", str(out)]
    assert main([*argv, "--target", f" ran{evil}", f"The cat{evil} sat"]) == 0
    data = json.loads(out.read_text())
    data["method"] += evil
    data["settings"]["pattern"] = f"p{evil}"
    data["target_tokens"][0] += evil
    out.write_text(json.dumps(data))
    assert main(["render", str(out), "--terminal"]) == 0
    shown = capsys.readouterr().out
    assert not re.search("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]", shown), repr(shown)
    escaped = "\\x1b]0;pwned\\x07\\x1b[2J\\r\\u202e"
    assert f"leave_one_out{escaped}" in shown and f"pattern=p{escaped}" in shown
    assert f"The cat{escaped} sat" in shown and f" ran{escaped}" in shown


@pytest.mark.parametrize(
    "payload, message",
    [
        (b'{"seed": ' + b"7" * 5000 + b"}", "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b'{"scores": [Infinity]}', "Infinity is not a number"),
    ],
)
def test_render_of_a_malformed_file_exits_2(tmp_path, capsys, payload, message):
    path = tmp_path / "bad.json"
    path.write_bytes(payload)
    assert main(["render", str(path), "--terminal"]) == 2
    _one_line_error(capsys, message)


def test_render_of_a_result_with_huge_integers_exits_2(model_dirs, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["explain", "--model", str(model_dirs["llama"]), "-q", "--json", str(out), "hi there"]) == 0
    text = out.read_text()
    data = json.loads(text)
    data["scores"][0] = 10**400
    out.write_text(json.dumps(data))
    assert main(["render", str(out)]) == 2
    _one_line_error(capsys, "not a finite number")


def test_explain_and_benchmark_pass_their_progress_bar(model_dirs, tmp_path, monkeypatch):
    import genattr.api
    from genattr.evaluate import benchmark

    calls = {}

    def explain(*args, **kwargs):
        calls["explain"] = kwargs["progress"]
        return real_explain(*args, **kwargs)

    def run_benchmark(*args, **kwargs):
        calls["benchmark"] = kwargs["progress"]
        raise genattr.errors.InputError("stop here")

    real_explain = genattr.api.explain
    monkeypatch.setattr(genattr.api, "explain", explain)
    monkeypatch.setattr(benchmark, "run_benchmark", run_benchmark)
    assert main(["explain", "--model", str(model_dirs["llama"]), "--target", " on", "-q", "The cat sat"]) == 0
    argv = ["benchmark", "--model", str(model_dirs["llama"]), "--data", "zoo:recall", "--n", "1"]
    assert main([*argv, "--out", str(tmp_path / "b")]) == 2
    assert callable(calls["explain"]) and callable(calls["benchmark"])


def test_baseline_option_is_a_deprecated_alias_of_mask_token(model_dirs, tmp_path, capsys):
    base = ["explain", "--model", str(model_dirs["llama"]), "--target", " on", "--mask", "replace", "-q"]
    assert main([*base, "--mask-token", "eos", "--json", str(tmp_path / "new.json"), "The cat sat"]) == 0
    assert "deprecated" not in capsys.readouterr().err
    assert main([*base, "--baseline", "eos", "--json", str(tmp_path / "old.json"), "The cat sat"]) == 0
    err = capsys.readouterr().err
    assert "--baseline is deprecated" in err and "--mask-token" in err
    new, old = (json.loads((tmp_path / name).read_text()) for name in ("new.json", "old.json"))
    assert old["settings"] == new["settings"] and old["scores"] == new["scores"]
    assert new["settings"]["mask_token"] == genattr.load(model_dirs["llama"]).tokenizer.eos_token_id
    assert main([*base, "--baseline", "eos", "--mask-token", "eos", "The cat sat"]) == 2
    assert "give --mask-token only" in capsys.readouterr().err


def test_chat_sends_the_prompt_through_the_chat_template(model_dirs, qwen, tmp_path, capsys):
    out = tmp_path / "chat.json"
    argv = ["explain", "--model", str(model_dirs["qwen2"]), "--chat", "--target", " yes", "--json", str(out)]
    assert main([*argv, "--quiet", "Is the cat on the mat?"]) == 0
    data = json.loads(out.read_text())
    messages = [{"role": "user", "content": "Is the cat on the mat?"}]
    expected = genattr.explain(qwen, messages, target=" yes")
    assert data["prompt"]["text"] == expected.prompt.text and "<|im_start|>" in data["prompt"]["text"]
    assert [f["text"] for f in data["features"]] == ["Is", "the", "cat", "on", "the", "mat", "?"]
    np.testing.assert_allclose(data["scores"], expected.scores, rtol=1e-6, atol=1e-9)


def test_include_system_needs_chat(model_dirs, capsys):
    argv = ["explain", "--model", str(model_dirs["llama"]), "--include-system", "hi"]
    assert main(argv) == 2
    assert "use it with --chat" in capsys.readouterr().err


def test_explain_step_scores_prints_the_table_after_the_attribution(
    model_dirs, tmp_path, capsys, monkeypatch
):
    import dataclasses

    import genattr.api
    from genattr.model import Batch
    from genattr.render import step_rows
    from genattr.steps import step_scores

    def explain(lm, *args, **kwargs):
        res = real_explain(lm, *args, **kwargs)
        if res.step_scores:
            return res
        inputs = Batch.from_ids(res.prompt.input_ids)
        return dataclasses.replace(res, step_scores=step_scores(lm, inputs, res.target.ids))

    real_explain = genattr.api.explain
    monkeypatch.setattr(genattr.api, "explain", explain)
    out = tmp_path / "r.json"
    argv = ["explain", "--model", str(model_dirs["llama"]), "--target", " on the mat", "--json", str(out)]
    assert main([*argv, "--step-scores", "The cat sat"]) == 0
    shown = capsys.readouterr().out
    res = genattr.Attribution.load(out)
    labels, rows = step_rows(res)
    assert labels == ["token", "p", "log p", "entropy", "rank"] and len(rows) == len(res.target.ids) >= 3
    attribution, steps = shown.split("step scores:", 1)
    assert "The cat sat" in attribution and "legend" in attribution and "cat" not in steps
    for row in rows:
        assert re.search(r"\s+".join(map(re.escape, [row[0].strip(), *row[1:]])), steps), steps
    assert main(argv + ["The cat sat"]) == 0
    assert "step scores" not in capsys.readouterr().out
    monkeypatch.setattr(genattr.api, "explain", real_explain)
    empty = genattr.api.explain
    monkeypatch.setattr(
        genattr.api, "explain", lambda *a, **k: dataclasses.replace(empty(*a, **k), step_scores={})
    )
    assert main([*argv, "--step-scores", "The cat sat"]) == 0
    assert capsys.readouterr().err == "genattr: leave_one_out gave no step scores for this target.\n"


def test_step_scores_with_quiet_exits_2_before_loading_the_model(capsys):
    assert main(["explain", "--model", "no/such-model", "-q", "--step-scores", "hi"]) == 2
    _one_line_error(capsys, "--step-scores prints a table after the attribution: drop --quiet")


def test_explain_checkpoint_layers_loads_the_model_so_and_gives_the_same_scores(
    model_dirs, tmp_path, monkeypatch
):
    import genattr.model

    loaded, original = [], genattr.model.load

    def spy(*args, **kwargs):
        lm = original(*args, **kwargs)
        loaded.append(lm.checkpoint_layers)
        return lm

    monkeypatch.setattr(genattr.model, "load", spy)
    scores = []
    for extra in ([], ["--checkpoint-layers"]):
        out = tmp_path / f"r{len(extra)}.json"
        argv = [
            "explain",
            "--model",
            str(model_dirs["llama"]),
            "--method",
            "lrp",
            "--target",
            " and the bird",
        ]
        assert main([*argv, *extra, "--json", str(out), "The cat sat on the mat."]) == 0
        scores.append(json.loads(out.read_text())["scores"])
    assert loaded == [False, True]
    np.testing.assert_allclose(scores[1], scores[0], rtol=1e-6)
    assert max(map(abs, scores[0])) > 0
