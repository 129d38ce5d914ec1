"""genattr: explain what a generative language model wrote in terms of its prompt.

>>> import genattr
>>> lm = genattr.load("path/or/hub-id")                                          # doctest: +SKIP
>>> res = genattr.explain(lm, "The capital of France is", target=" Paris")      # doctest: +SKIP
>>> res.top(3); res.save("out.json"); genattr.Attribution.load("out.json")       # doctest: +SKIP
>>> genattr.methods()                                                           # doctest: +SKIP

The names below load on first use, so ``import genattr`` (and ``genattr --help``) does not
import torch or transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from . import errors
from ._version import __version__
from .defaults import MASKS
from .text.segment import LEVELS

_LAZY = {
    "Attribution": "result",
    "Batch": "model",
    "Feature": "text.prompt",
    "LanguageModel": "model",
    "Method": "registry",
    "MethodInfo": "registry",
    "Output": "registry",
    "Param": "registry",
    "Prompt": "text.prompt",
    "Settings": "settings",
    "Target": "text.target",
    "explain": "api",
    "load": "model",
    "methods": "registry",
    "register": "registry",
    "register_level": "text.segment",
    "register_mask": "masking",
    "register_objective": "objectives",
}

if TYPE_CHECKING:
    from .api import explain
    from .masking import register_mask
    from .model import Batch, LanguageModel, load
    from .objectives import register_objective
    from .registry import Method, MethodInfo, Output, Param, methods, register
    from .result import Attribution
    from .settings import Settings
    from .text.prompt import Feature, Prompt
    from .text.segment import register_level
    from .text.target import Target


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'genattr' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "Attribution",
    "Batch",
    "Feature",
    "LEVELS",
    "LanguageModel",
    "MASKS",
    "Method",
    "MethodInfo",
    "Output",
    "Param",
    "Prompt",
    "Settings",
    "Target",
    "__version__",
    "errors",
    "explain",
    "load",
    "methods",
    "register",
    "register_level",
    "register_mask",
    "register_objective",
]
