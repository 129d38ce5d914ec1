"""The text side of an explanation: the prompt (:mod:`.prompt`), its features (:mod:`.segment`)
and the target explained (:mod:`.target`).

:class:`Target` and :func:`resolve_target` load on first use, since they need the model (and
torch); the rest imports without torch, so the command line can build its help from ``LEVELS``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .prompt import Prompt, default_system_message
from .segment import LEVELS, Feature, Level, register_level, segment

_LAZY = {"Target": "target", "resolve_target": "target"}

if TYPE_CHECKING:
    from .target import Target, resolve_target


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "LEVELS",
    "Feature",
    "Level",
    "Prompt",
    "Target",
    "default_system_message",
    "register_level",
    "resolve_target",
    "segment",
]
