"""The ``genattr reproduce`` command: run studies (resuming from their stored rows), then rebuild
the document from all stored rows.

    genattr reproduce gilot-table1 bias --n 2
    genattr reproduce all --report-only
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from ..errors import InputError
from . import DEFAULT_MODEL, DEFAULT_OUT, STUDIES


def add_parser(sub, configure: Callable[[bool], None]) -> None:
    """Add ``reproduce`` to the command line's subcommands ``sub``; ``configure(verbose)`` sets
    transformers' logging before the model loads."""
    p = sub.add_parser(
        "reproduce",
        help="the papers' experiments on a real model, resumable, into a document",
        description="Run the named studies (resuming from their rows under OUT/rows/), then "
        "rebuild OUT.md from every study's stored rows.",
    )
    p.add_argument(
        "studies", nargs="+", choices=[*STUDIES, "all"], metavar="STUDY", help=", ".join([*STUDIES, "all"])
    )
    p.add_argument("--n", type=int, default=None, help="prompts per study (default: each study's own number)")
    p.add_argument("--methods", default=None, help="comma-separated methods (default: all of each study's)")
    p.add_argument(
        "--out",
        default=DEFAULT_OUT,
        help=f"folder of the rows and plots; the document is OUT.md (default {DEFAULT_OUT})",
    )
    p.add_argument(
        "--report-only", action="store_true", help="only rebuild the document and plots from the stored rows"
    )
    p.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"the model (default {DEFAULT_MODEL}); rows record it"
    )
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None)
    p.add_argument("--quiet", "-q", action="store_true", help="no line per finished row")
    p.add_argument("--verbose", action="store_true", help="show transformers' own logging")
    p.set_defaults(func=cmd_reproduce, configure=configure)


def _plans(names: list[str], model: str, dtype: str | None, n: int | None, chosen: list[str] | None) -> dict:
    """Each study's tasks: ``n`` prompts (default the study's own number), the ``chosen``
    methods it has (all without ``chosen``); a study that has none of them is left out."""
    from . import study

    offered = {name: study(name).methods() for name in names}
    if chosen is not None:
        unknown = [m for m in chosen if not any(m in ms for ms in offered.values())]
        if unknown:
            raise InputError(
                f"no study of {', '.join(names)} has the methods {unknown}; they have "
                f"{', '.join(sorted({m for ms in offered.values() for m in ms}))}."
            )
    plans = {}
    for name in names:
        mine = None if chosen is None else [m for m in chosen if m in offered[name]]
        if mine != []:
            plans[name] = study(name).tasks(model, dtype, n or study(name).default_n, mine)
    return plans


def cmd_reproduce(args: argparse.Namespace) -> int:
    from ..evaluate.rows import RowStore
    from ..model import load
    from . import report, study
    from .common import rows_path, run_tasks

    names = list(STUDIES) if "all" in args.studies else list(dict.fromkeys(args.studies))
    if args.n is not None and args.n < 1:
        raise InputError(f"--n must be at least 1, got {args.n}.")
    chosen = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    out = Path(args.out)
    if not out.parent.is_dir():
        raise InputError(f"directory {out.parent} does not exist; create it first.")
    plans = _plans(names, args.model, args.dtype, args.n, chosen)
    if not args.report_only:
        with ExitStack() as held:  # every study's rows locked for this run before the model loads
            stores = {name: held.enter_context(RowStore(rows_path(out, name))) for name in plans}
            args.configure(args.verbose)
            lm = load(args.model, device=args.device, dtype=args.dtype)
            for name, tasks in plans.items():
                store = stores[name]
                stored = sum(t.key() in store.done for t in tasks)
                print(f"{name}: {len(tasks)} rows, {stored} already stored", file=sys.stderr)
                note = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
                run_tasks(lm, study(name), tasks, store, note)
    print(f"wrote {report.write(out, args.model, args.dtype)}", file=sys.stderr)
    return 0
