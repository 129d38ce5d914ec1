"""Values of the command line's options, parsed and checked: the ``type=`` functions of its
arguments (``--seed``, ``--level``, ``--target-token``, ``--target-span``, ``-p KEY=VALUE``, ...),
each raising :class:`argparse.ArgumentTypeError` with what it expected."""

from __future__ import annotations

import argparse
import json
import re
import sys

from .defaults import SEED_LIMIT
from .errors import InputError
from .text.segment import plain_levels

BOOLEANS = {
    "true": True,
    "yes": True,
    "on": True,
    "1": True,
    "false": False,
    "no": False,
    "off": False,
    "0": False,
}
NONE = ("none", "null")


def _param(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--param expects KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    return key.strip(), value


def _param_value(method_cls, key: str, text: str) -> object:
    """A ``-p KEY=VALUE`` value for ``method_cls``: for a boolean parameter the usual spellings
    (true/false, True/False, yes/no, on/off, 1/0), for an optional one none/None/null; otherwise
    JSON when it parses as JSON, else the text itself. The method validates the result."""
    param = method_cls.params.get(key)
    kinds = () if param is None else param.kind if isinstance(param.kind, tuple) else (param.kind,)
    word = text.strip().lower()
    if bool in kinds and word in BOOLEANS:
        return BOOLEANS[word]
    if param is not None and param.optional and str not in kinds and word in NONE:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _seed(text: str) -> int | None:
    """``--seed``: an integer in [0, 2**64), or ``random`` for a fresh seed recorded in the result."""
    if text.strip().lower() == "random":
        return None
    try:
        seed = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'random', got {text!r}") from None
    if not 0 <= seed < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**64), got {text}")
    return seed


def _mask_token(text: str) -> int | str:
    return int(text) if text.lstrip("-").isdigit() else text


def _mask_token_option(args: argparse.Namespace) -> int | str | None:
    """``--mask-token``, or its former name ``--baseline`` with a note on stderr (not both)."""
    if args.baseline is None:
        return args.mask_token
    if args.mask_token is not None:
        raise InputError("--baseline is the former name of --mask-token; give --mask-token only.")
    print(
        "genattr: warning: --baseline is deprecated and will be removed in the next release; "
        "use --mask-token (it takes the same values).",
        file=sys.stderr,
    )
    return args.baseline


def _fixed_seed(text: str) -> int:
    """``--seed`` of a benchmark, whose rows must be reproducible: an integer in [0, 2**64)."""
    seed = _seed(text)
    if seed is None:
        raise argparse.ArgumentTypeError("a benchmark needs a fixed integer seed, not random")
    return seed


def _target_token(text: str) -> int | str:
    """``--target-token``: an integer is a token index, anything else a substring of the response."""
    return int(text) if re.fullmatch(r"-?\d+", text) else text


def _level(text: str) -> str:
    """``--level``: a level that reads no pattern or spans, or ``coarse>fine`` of two of them."""
    parts = text.split(">")
    if len(parts) > 2 or any(part not in plain_levels() for part in parts):
        raise argparse.ArgumentTypeError(
            f"invalid choice: {text!r} (choose from {', '.join(plain_levels())}, or coarse>fine of two: sentence>word)"
        )
    return text


def _target_span(text: str) -> tuple[int, int] | str:
    """``--target-span``: START:END character offsets, or a substring of the response."""
    match = re.fullmatch(r"(\d+):(\d+)", text)
    return (int(match[1]), int(match[2])) if match else text
