"""Files written whole or not at all: :func:`write_atomic` (text or bytes, through a temporary file
and a rename) and :func:`check_writable`, checked before a long computation.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "out.txt"
>>> write_atomic(path, "scores"); path.read_text()
'scores'
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import InputError


def check_writable(path: str | os.PathLike) -> Path:
    """``path`` as a :class:`~pathlib.Path` if a file can be written there: not a directory, in a
    directory that exists and is writable; else :class:`~genattr.errors.InputError` (checked
    before a long computation, so that it does not end in a failed write)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a directory; give a file name to write to.")
    parent = path.parent
    if not parent.is_dir():
        raise InputError(
            f"directory {parent} does not exist; create it first (genattr creates no directories)."
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"directory {parent} is not writable; choose another place to write {path.name}.")
    return path


def _new_file_mode(path: Path) -> int:
    """The permission bits a file written at ``path`` gets: those of the file it replaces, or for a
    new file 0o666 less the umask, as ``open()`` would give."""
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8, or bytes as they are) to ``path`` through a temporary file
    in the same directory and a rename, with the permissions of :func:`_new_file_mode`; the
    directory must exist (:func:`check_writable`). If anything fails, the old file is untouched
    and no temporary file is left."""
    path = check_writable(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _new_file_mode(path))
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
