"""The registry: the manifest is what the classes declare, the listing imports no torch, a name is
taken once, and installed packages add methods through the ``genattr.methods`` entry points
(exposed here without pip: a ``.dist-info`` folder on ``sys.path``)."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from genattr import Method, Output, Param, errors, registry


@contextmanager
def installed(root: Path, dist: str, files: dict[str, str], entry_points: dict[str, str]):
    """The distribution ``dist`` as pip would leave it, without pip: ``files`` (path -> text)
    under ``root``, and ``{dist}-0.1.dist-info`` with its METADATA and the ``entry_points``
    (name -> ``module:Class``) of the group ``genattr.methods``; ``root`` first on sys.path."""
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    info = root / f"{dist}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = "".join(f"{name} = {value}\n" for name, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[{registry.ENTRY_POINT_GROUP}]\n{lines}")
    sys.path.insert(0, str(root))
    importlib.invalidate_caches()
    packages = {Path(rel).parts[0] for rel in files}
    try:
        yield
    finally:
        sys.path.remove(str(root))
        for module in [m for m in sys.modules if m.split(".")[0] in packages]:
            del sys.modules[module]
        importlib.invalidate_caches()


PLUGIN = """
from genattr import Method, Output


class Plugin(Method):
    name = "plugin"
    family = "perturbation"
    summary = "a score of zero for every feature"
    token_scores = False

    def attribute(self, problem):
        import torch

        return Output(torch.zeros(problem.n_features))
"""


# --------------------------------------------------------------------- the built-ins
def test_the_manifest_is_what_the_built_in_classes_declare():
    assert registry.MANIFEST.read_text(encoding="utf-8") == registry.manifest_text(), (
        "the built-in methods changed: regenerate the manifest with `make manifest`"
    )


def test_every_built_in_is_listed_as_its_class_declares_it():
    for name in registry.BUILTIN:
        assert registry.get(name).name == name
    listed = {info.name: info for info in registry.methods() if info.package == "genattr"}
    assert listed == {name: registry.get(name).info() for name in registry.BUILTIN}


def test_a_manifest_that_misses_a_built_in_fails_loudly(monkeypatch):
    monkeypatch.setitem(registry.BUILTIN, "unlisted", "genattr.algorithms.baseline:RandomBaseline")
    registry._manifest.cache_clear()
    with pytest.raises(errors.RegistrationError, match="regenerate it"):
        registry.methods()


def _run(code: str) -> None:
    subprocess.run(
        [sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    )


def test_listing_the_methods_imports_neither_torch_nor_a_method():
    _run(
        "import sys\n"
        "from genattr.cli import main\n"
        "assert main(['methods']) == 0\n"
        "loaded = [m for m in sys.modules if m in ('torch', 'numpy', 'transformers')"
        " or m.startswith('genattr.algorithms.')]\n"
        "assert not loaded, loaded\n"
    )


def test_importing_genattr_algorithms_imports_no_method():
    _run(
        "import sys, genattr.algorithms\n"
        "loaded = [m for m in sys.modules if m.startswith('genattr.algorithms.') or m == 'torch']\n"
        "assert not loaded, loaded\n"
    )


# --------------------------------------------------------------------- register()
class _Temporary(Method):
    name = "temporary"
    family = "baseline"
    summary = "registered by a test"
    params = {"size": Param(1, "a size", int, minimum=1, maximum=3)}

    def attribute(self, problem):
        return Output([0.0] * problem.n_features)


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTERED", {})


def test_register_adds_a_method_in_this_process_once(fresh):
    assert registry.register(_Temporary) is _Temporary
    assert registry.register(_Temporary) is _Temporary  # the same class again: nothing changes
    assert registry.get("temporary") is _Temporary
    assert registry.names().count("temporary") == 1
    info = next(i for i in registry.methods() if i.name == "temporary")
    assert info.package == "tests" and info.params["size"]["maximum"] == 3

    other = type("Other", (_Temporary,), {})
    with pytest.raises(errors.DuplicateMethodError, match="'temporary' is registered twice"):
        registry.register(other)
    assert registry.get("temporary") is _Temporary


def test_a_built_in_name_is_taken(fresh):
    clash = type("Clash", (_Temporary,), {"name": "leave_one_out"})
    with pytest.raises(errors.DuplicateMethodError, match="'leave_one_out' is registered twice"):
        registry.register(clash)
    builtin = registry.get("leave_one_out")
    assert registry.register(builtin) is builtin
    assert registry.names().count("leave_one_out") == 1


@pytest.mark.parametrize(
    "cls, message",
    [
        (object, "not a subclass of genattr.Method"),
        (type("Unnamed", (Method,), {}), "registered as ''"),
        (type("Spaced", (_Temporary,), {"name": "two words"}), "registered as 'two words'"),
        (
            type("Shadow", (_Temporary,), {"params": {"name": Param(1, "a"), "values": Param(2, "b")}}),
            "parameter.s. name, values of temporary are named like attributes of genattr.Method",
        ),
    ],
)
def test_register_refuses_what_is_not_a_named_method(fresh, cls, message):
    with pytest.raises(errors.RegistrationError, match=message):
        registry.register(cls)


def test_duplicate_method_error_is_a_value_error():
    assert issubclass(errors.DuplicateMethodError, errors.RegistrationError)
    assert issubclass(errors.RegistrationError, ValueError)


# --------------------------------------------------------------------- entry points
def test_an_entry_point_adds_a_method(tmp_path):
    with installed(
        tmp_path, "plugin-dist", {"plugin_pkg/__init__.py": PLUGIN}, {"plugin": "plugin_pkg:Plugin"}
    ):
        info = next(i for i in registry.methods() if i.name == "plugin")
        assert info.package == "plugin_pkg" and not info.token_scores
        assert registry.get("plugin").__module__ == "plugin_pkg"
        assert "(from plugin_pkg)" in info.line()
    assert "plugin" not in registry.names()


@pytest.mark.parametrize(
    "entry_points, error, message",
    [
        ({"leave_one_out": "plugin_pkg:Plugin"}, errors.DuplicateMethodError, "of plugin-dist"),
        ({"other": "plugin_pkg:Plugin"}, errors.RegistrationError, "class says name = 'plugin'"),
        ({"plugin": "plugin_pkg:Missing"}, errors.RegistrationError, "cannot be imported"),
        ({"plugin": "no_such_module:Plugin"}, errors.RegistrationError, "cannot be imported"),
    ],
)
def test_a_faulty_entry_point_raises_a_typed_error_naming_its_package(tmp_path, entry_points, error, message):
    files = {"plugin_pkg/__init__.py": PLUGIN}
    with installed(tmp_path, "plugin-dist", files, entry_points), pytest.raises(error, match=message):
        registry.methods()


def test_register_refuses_a_name_an_entry_point_holds(tmp_path, fresh):
    clash = type("Clash", (_Temporary,), {"name": "plugin"})
    with (
        installed(
            tmp_path, "plugin-dist", {"plugin_pkg/__init__.py": PLUGIN}, {"plugin": "plugin_pkg:Plugin"}
        ),
        pytest.raises(errors.DuplicateMethodError, match="'plugin' is registered twice"),
    ):
        registry.register(clash)
