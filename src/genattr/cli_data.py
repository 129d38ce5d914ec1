"""The command line's dataset runs and Ray options: ``genattr explain --data DATA --out FILE``
(:mod:`genattr.dataset`) and ``--ray local|ADDRESS --workers N --chunk N --threads N`` of
``explain --data`` and ``benchmark`` (:mod:`genattr.cluster`).

    genattr explain --data prompts.jsonl --out results.jsonl --method leave_one_out
    genattr explain --data gilot --n 20 --out gilot.jsonl --ray local --workers 2
    genattr benchmark --model zoo --data zoo:recall --out runs/b1 --ray local
"""

from __future__ import annotations

import argparse
import sys

from .cluster import DEFAULT_CHUNK, Cluster
from .errors import InputError

SINGLE_PROMPT = {
    "target": "--target",
    "chat": "--chat",
    "include_system": "--include-system",
    "json": "--json",
    "html": "--html",
    "step_scores": "--step-scores",
    "target_token": "--target-token",
    "target_span": "--target-span",
    "contrast": "--contrast",
}
"""The options of ``genattr explain`` that concern one prompt, refused with ``--data``."""


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_ray_options(parser: argparse.ArgumentParser) -> None:
    """``--ray``, ``--workers``, ``--chunk`` and ``--threads``."""
    parser.add_argument(
        "--ray",
        metavar="local|ADDRESS",
        default=None,
        help="run on Ray (pip install 'genattr[ray]'): local starts a cluster on this machine, an "
        "address (auto, HOST:6379) joins one started with `ray start`",
    )
    parser.add_argument(
        "--workers",
        type=_positive,
        default=None,
        help="with --ray: actors (default: the cluster's CPUs / --threads)",
    )
    parser.add_argument(
        "--chunk", type=_positive, default=DEFAULT_CHUNK, help="with --ray: prompts an actor takes at a time"
    )
    parser.add_argument(
        "--threads",
        type=_positive,
        default=None,
        help="torch threads (and with --ray each actor's CPUs, default 1); the same count gives the same results",
    )


def add_dataset_options(parser: argparse.ArgumentParser) -> None:
    """``--data``, ``--out`` and ``--n`` of ``genattr explain``, and the Ray options."""
    parser.add_argument(
        "--data",
        default=None,
        help="explain every prompt of a JSONL file ({'prompt': ..., 'target': optional, 'id': optional} "
        "a line), a prompt set (gilot, xprompt-alpaca, sst2, counsel-chat) or zoo:TASK; needs --out",
    )
    parser.add_argument("--out", default=None, help="with --data: the results file (JSONL, resumable)")
    parser.add_argument("--n", type=_positive, default=None, help="with --data: the first N records only")
    add_ray_options(parser)


def cluster_option(args: argparse.Namespace) -> Cluster | None:
    """The :class:`~genattr.cluster.Cluster` of ``--ray`` (None without it)."""
    if args.ray is None:
        if args.workers is not None:
            raise InputError("--workers is the number of Ray actors: use it with --ray.")
        return None
    return Cluster(args.ray, args.workers, args.chunk, args.threads or 1)


def check_dataset_args(args: argparse.Namespace) -> None:
    """InputError for ``explain`` given both or neither of a prompt and ``--data``, ``--data``
    without ``--out`` or with an option of one prompt, or ``--out`` and ``--n`` without it."""
    if args.data is None:
        for name in ("out", "n", "ray"):
            if getattr(args, name) is not None:
                raise InputError(f"--{name} goes with --data (a dataset run); give --data, or drop --{name}.")
        if args.prompt is None:
            raise InputError("give a prompt to explain, or --data FILE for every prompt of a file.")
        return
    if args.prompt is not None:
        raise InputError("give either a prompt or --data, not both.")
    if args.out is None:
        raise InputError("--data needs --out FILE, the results file (one result a line, resumable).")
    given = [flag for name, flag in SINGLE_PROMPT.items() if getattr(args, name)]
    if given:
        raise InputError(
            f"{', '.join(given)} concern one prompt; with --data give a target per record "
            "(a 'target' field) and read the results with `genattr render`."
        )


def run_data_command(args: argparse.Namespace, params: dict, mask_token: int | str | None) -> int:
    """``genattr explain --data``: explain every record into ``--out``, with a progress bar."""
    from .cluster import ModelSpec
    from .dataset import read_records, run_dataset
    from .files import check_writable
    from .progress import progress_bar

    check_writable(args.out)
    cluster = cluster_option(args)
    records = read_records(args.data, args.n, args.seed if args.seed is not None else 0)
    options = {
        "method": args.method,
        "level": args.level,
        "mask": args.mask,
        "mask_token": mask_token,
        "seed": args.seed,
        "max_new_tokens": args.max_new_tokens,
        "params": params,
        "token_scores": not args.sequence_only,
        "attribute_target": True if args.attribute_target else None,
        "refine_top": args.refine_top,
    }
    spec = ModelSpec(args.model, args.device, args.dtype, args.checkpoint_layers)
    threads = None if cluster else args.threads
    with progress_bar("explain", not args.quiet) as bar:
        counts = run_dataset(
            spec, records, args.out, cluster=cluster, threads=threads, progress=bar, **options
        )
    print(
        f"wrote {args.out}: {counts['total']} results, {counts['computed']} computed and "
        f"{counts['reused']} already there",
        file=sys.stderr,
    )
    return 0
