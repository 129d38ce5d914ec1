"""genattr: explain what a generative language model wrote in terms of its prompt.

>>> import genattr
>>> from genattr.testing import tiny_lm
>>> lm = tiny_lm()  # a random model built in memory; genattr.load("path/or/hub-id") for a real one
>>> res = genattr.explain(lm, "The doctor opens the door", target=" and the nurse")
>>> [f.text for f in res.features], res.scores.shape, res.token_scores.shape
(['The', 'doctor', 'opens', 'the', 'door'], (5,), (3, 5))
>>> len(res.top(3))
3
>>> "shapley_sampling" in [m.name for m in genattr.methods()]
True
>>> res.save("out.json"); genattr.Attribution.load("out.json")                 # doctest: +SKIP

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
