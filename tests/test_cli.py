"""The command line and the registry: exit codes, files written, no traceback on bad input, and
the README's table of methods kept in sync with the registry."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import genattr
from genattr import registry
from genattr.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_methods_table_matches_the_registry():
    text = README.read_text()
    table = re.search(r"<!-- methods:start -->\n(.*?)\n<!-- methods:end -->", text, re.S).group(1)
    assert table == registry.markdown_table(), "regenerate with `genattr methods --markdown`"


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
    assert data["method"] == "shapley_sampling" and data["seed"] == 4 and data["params"]["n_samples"] == 3
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
        (["explain", "--model", "{llama}", "--baseline", "mask", "hi there"], "no mask token"),
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
