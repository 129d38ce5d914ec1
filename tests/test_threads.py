"""The command line's OpenMP wait policy: passive unless the environment chose one, read by the
OpenMP runtime torch loads (shown by ``OMP_DISPLAY_ENV=VERBOSE``: ``GOMP_SPINCOUNT`` is 0 when
passive, 300000 when left to its default, 3e10 when active)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _spin_count(code: str, **env: str) -> str:
    """The GOMP_SPINCOUNT the OpenMP runtime reports when ``code`` runs in a fresh interpreter."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_"))}
    environ.update(PYTHONPATH=SRC, OMP_DISPLAY_ENV="VERBOSE", **env)
    out = subprocess.run(
        [sys.executable, "-c", code], env=environ, capture_output=True, text=True, check=True
    )
    (line,) = [x for x in out.stderr.splitlines() if "GOMP_SPINCOUNT" in x]
    return line.split("=")[1].strip().strip("'")


COMMAND_THEN_TORCH = "from genattr.cli import main; main(['methods']); import torch"


def test_the_command_line_makes_torch_threads_wait_passively():
    assert _spin_count(COMMAND_THEN_TORCH) == "0"
    assert _spin_count("import genattr, torch") == "300000"  # importing genattr leaves the default


@pytest.mark.parametrize(("policy", "spins"), [("ACTIVE", "30000000000"), ("PASSIVE", "0")])
def test_a_policy_in_the_environment_is_kept(policy, spins):
    assert _spin_count(COMMAND_THEN_TORCH, OMP_WAIT_POLICY=policy) == spins


def test_nothing_changes_once_torch_is_loaded():
    code = "import os, torch; from genattr.cli import main; main(['methods']); print(os.environ.get('OMP_WAIT_POLICY'))"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OMP_")}
    out = subprocess.run(
        [sys.executable, "-c", code], env={**environ, "PYTHONPATH": SRC}, capture_output=True, text=True
    )
    assert out.stdout.splitlines()[-1] == "None"
