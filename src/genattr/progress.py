"""Progress of a long call: a callback passed in, scoped to the call, and one terminal display.

:func:`genattr.explain` takes ``progress=``, a callable ``(done, total)`` or None. While the call
runs, the callback is in scope (:func:`reporting`): every chunk of rows the model scores
(:meth:`~genattr.model.LanguageModel.chunks`) reports the rows done of the rows asked for in
that pass (:func:`report`). Outside the call nothing reports, and a model holds no display.
:func:`~genattr.evaluate.benchmark.run_benchmark` takes the same kind of callable, called once
per finished row as ``(done, total, note)``.

:func:`progress_bar` is the one display: the command line, the demo and ``genattr benchmark``
pass its callback on.

>>> with progress_bar("scoring") as bar:                                  # doctest: +SKIP
...     genattr.explain(lm, "The cat sat", target=" down", progress=bar)
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from .errors import InputError

Progress = Callable[..., None]
"""A progress callback: ``(done, total)``, and for a benchmark's rows ``(done, total, note)``."""

_IN_SCOPE: ContextVar[Progress | None] = ContextVar("genattr_progress", default=None)


def checked(progress: object) -> Progress | None:
    """``progress`` if it is None or callable, else :class:`~genattr.errors.InputError`."""
    if progress is not None and not callable(progress):
        raise InputError(
            f"progress must be a callable (done, total) or None, not {type(progress).__name__}; "
            "pass e.g. the callback of genattr.progress.progress_bar."
        )
    return progress


@contextmanager
def reporting(progress: Progress | None) -> Iterator[None]:
    """While open, :func:`report` calls ``progress`` (None: whatever an enclosing scope set)."""
    if progress is None:
        yield
        return
    token = _IN_SCOPE.set(progress)
    try:
        yield
    finally:
        _IN_SCOPE.reset(token)


def report(done: int, total: int) -> None:
    """Tell the callback in scope, if any, that ``done`` of ``total`` rows are scored."""
    progress = _IN_SCOPE.get()
    if progress is not None:
        progress(done, total)


@contextmanager
def progress_bar(label: str, enabled: bool = True) -> Iterator[Progress]:
    """A rich progress bar on stderr, labelled ``label``, while open; yields its callback
    ``(done, total, note="")``. Disabled, or with stderr not a terminal, the callback does nothing."""
    if not enabled or not sys.stderr.isatty():
        yield lambda done, total, note="": None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[note]}", markup=False),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=None, note="")

        def update(done: int, total: int, note: str = "") -> None:
            bar.update(task, completed=done, total=total, note=note)

        yield update
