"""The installed version of genattr, read once from the package metadata (``pyproject.toml``'s
``version``), so that the version is written in one place only. A source tree run without being
installed has no metadata and reports :data:`UNKNOWN`."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

UNKNOWN = "0+unknown"
"""The version of an uninstalled source tree (PEP 440: release 0, local label ``unknown``)."""


def installed_version(distribution: str = "genattr") -> str:
    """The version of the installed ``distribution``, or :data:`UNKNOWN` when it is not installed."""
    try:
        return version(distribution)
    except PackageNotFoundError:
        return UNKNOWN


__version__ = installed_version()
