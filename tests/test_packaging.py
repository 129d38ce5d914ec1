"""What make installs is what was tested: the lock pins every package within pyproject.toml's
ranges, the floors file matches the lower bounds, and the build backend is pinned; the wheel holds
the typing marker and the zoo model."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _pins(path: Path) -> dict[str, str]:
    """name -> version of a file of ``name==version`` lines (comments and blank lines skipped)."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==([^\s;]+)", line)
        assert match, f"{path.name}: {line!r} is not a pin (name==version)"
        pins[canonicalize_name(match[1])] = match[2]
    return pins


def _requirements() -> list[Requirement]:
    project = PYPROJECT["project"]
    extras = project["optional-dependencies"]
    reqs = [Requirement(r) for r in project["dependencies"] + extras["eval"] + extras["ray"] + extras["dev"]]
    return [r for r in reqs if canonicalize_name(r.name) != "genattr"]


def test_the_lock_pins_every_requirement_within_its_range_and_torch_at_2_13():
    lock = _pins(ROOT / "requirements" / "lock.txt")
    for req in _requirements():
        name = canonicalize_name(req.name)
        assert name in lock, f"{req.name} is missing from the lock"
        assert req.specifier.contains(lock[name], prereleases=True), (
            f"lock's {req.name} {lock[name]} not in {req}"
        )
    assert lock["torch"] == _pins(ROOT / "requirements" / "torch.txt")["torch"] == "2.13.0"


def test_the_floors_are_the_lower_bounds_of_pyproject():
    floors = _pins(ROOT / "requirements" / "floors.txt")
    bounds = {}
    for req in _requirements():
        lower = [s.version for s in req.specifier if s.operator == ">="]
        assert len(lower) == 1, f"{req} needs exactly one lower bound"
        bounds[canonicalize_name(req.name)] = Version(lower[0])
    del bounds["torch"]  # one torch for every target: requirements/torch.txt
    assert {name: Version(v) for name, v in floors.items()} == bounds


def test_the_build_backend_is_pinned_and_the_licence_is_spdx():
    assert all("==" in r for r in PYPROJECT["build-system"]["requires"])
    assert PYPROJECT["project"]["license"] == "Apache-2.0"


def test_the_version_is_read_from_the_package_metadata(monkeypatch):
    from importlib.metadata import PackageNotFoundError, version

    import genattr
    from genattr import _version

    assert genattr.__version__ == _version.__version__ == version("genattr")
    assert Version(genattr.__version__) == Version(PYPROJECT["project"]["version"])

    def not_installed(name):
        raise PackageNotFoundError(name)

    monkeypatch.setattr(_version, "version", not_installed)
    assert _version.installed_version() == _version.UNKNOWN and Version(_version.UNKNOWN)


def test_the_wheel_ships_the_typing_marker_the_zoo_model_and_the_viewer_assets(tmp_path):
    """Built offline from a copy of the sources, with the pinned backend installed here."""
    pytest.importorskip("setuptools")
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    command = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        "dist",
        ".",
    ]
    subprocess.run(command, cwd=source, check=True, capture_output=True)
    (wheel,) = (source / "dist").glob("genattr-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "genattr/py.typed" in names and "genattr/protocols.py" in names
    assert {"genattr/zoo/model/model.safetensors", "genattr/zoo/model/tokenizer.json"} <= names
    assert {"genattr/render/viewer.js", "genattr/render/viewer.css"} <= names  # inlined by the viewer
