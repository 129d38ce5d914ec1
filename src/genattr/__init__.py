"""genattr: explain what a generative language model wrote in terms of its prompt.

>>> import genattr
>>> lm = genattr.load("path/or/hub-id")                                          # doctest: +SKIP
>>> res = genattr.explain(lm, "The capital of France is", target=" Paris")      # doctest: +SKIP
>>> res.top(3); res.save("out.json"); genattr.Attribution.load("out.json")       # doctest: +SKIP
>>> genattr.methods()                                                           # doctest: +SKIP
"""

__version__ = "0.1.0"

from . import errors
from .api import explain
from .masking import MASKS
from .model import Inputs, LanguageModel, load
from .prompt import Feature, Prompt
from .registry import MethodInfo, methods
from .result import Attribution
from .segment import LEVELS
from .target import Target

__all__ = [
    "Attribution",
    "Feature",
    "Inputs",
    "LEVELS",
    "LanguageModel",
    "MASKS",
    "MethodInfo",
    "Prompt",
    "Target",
    "__version__",
    "errors",
    "explain",
    "load",
    "methods",
]
