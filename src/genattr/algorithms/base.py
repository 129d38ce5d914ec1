"""The base class of attribution methods and the declaration of their parameters."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from ..errors import InvalidParameterError
from ..problem import Problem
from ..registry import MethodInfo
from ..text.target import Target

# Limits on the parameters that set how much work a method does: one constant per concept, used as
# ``Param(maximum=...)``, so that an absurd value fails at once with the limit in the message.
MAX_SAMPLES = 100_000
"""Random draws of a sampling method: permutations, coalitions, swap proposals per step."""
MAX_GRADIENT_POINTS = 1024
"""Points at which a gradient method evaluates its gradient: path steps or random samples."""
MAX_BEAMS = 256
"""Beams per prompt of a beam search: each step holds beams x vocabulary logits per prompt."""
MAX_OUTPUT_POSITIONS = 100
"""Output positions whose distributions over the vocabulary a method holds for every prompt variant."""
MAX_ITERATIONS = 100_000
"""Iterations of a search or of an iterative solver."""


@dataclass(frozen=True)
class Param:
    """A method parameter: default, one-line doc, and its valid range."""

    default: Any
    doc: str
    kind: type | tuple = int
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple | None = None
    optional: bool = False
    check: Callable[[Any], str | None] | None = None

    def validate(self, method: str, name: str, value):
        if value is None and self.optional:
            return None
        kinds = self.kind if isinstance(self.kind, tuple) else (self.kind,)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            names = " or ".join(k.__name__ for k in kinds)
            raise InvalidParameterError(f"{method}: {name} must be {names}, got {value!r}.")
        if self.choices is not None and value not in self.choices:
            raise InvalidParameterError(
                f"{method}: {name} must be one of {', '.join(map(str, self.choices))}, got {value!r}."
            )
        if self.minimum is not None and value < self.minimum:
            raise InvalidParameterError(f"{method}: {name} must be at least {self.minimum}, got {value!r}.")
        if self.maximum is not None and value > self.maximum:
            raise InvalidParameterError(f"{method}: {name} must be at most {self.maximum}, got {value!r}.")
        if self.check is not None and (problem := self.check(value)):
            raise InvalidParameterError(f"{method}: {name} {problem}.")
        return value


@dataclass
class Output:
    """What a method computes; :func:`genattr.explain` wraps it into an :class:`~genattr.Attribution`.

    ``target`` is set only by methods that choose their own output rows (GiLOT's likely outputs).
    """

    scores: np.ndarray | torch.Tensor
    token_scores: np.ndarray | torch.Tensor | None = None
    diagnostics: dict = field(default_factory=dict)
    extras: dict = field(default_factory=dict)
    target: Target | None = None


class Method:
    """Base class. A subclass sets the class attributes, declares ``params`` and implements
    :meth:`attribute`; ``@register`` adds it to the registry."""

    name: ClassVar[str]
    family: ClassVar[str]
    summary: ClassVar[str]
    needs_gradients: ClassVar[bool] = False
    stochastic: ClassVar[bool] = False
    token_matrix: ClassVar[bool] = True
    convergence_check: ClassVar[bool] = False
    needs_target: ClassVar[bool] = True
    params: ClassVar[dict[str, Param]] = {}

    def __init__(self, **kwargs) -> None:
        unknown = sorted(set(kwargs) - set(self.params))
        if unknown:
            valid = ", ".join(sorted(self.params)) or "none"
            raise InvalidParameterError(
                f"{self.name} does not take {', '.join(unknown)}; its parameters are: {valid}."
            )
        self.values = {k: p.validate(self.name, k, kwargs.get(k, p.default)) for k, p in self.params.items()}

    def __getattr__(self, key: str):
        values = self.__dict__.get("values", {})
        if key in values:
            return values[key]
        raise AttributeError(key)

    @classmethod
    def info(cls) -> MethodInfo:
        return MethodInfo(
            cls.name,
            cls.family,
            cls.summary,
            cls.needs_gradients,
            cls.stochastic,
            cls.token_matrix,
            cls.convergence_check,
            cls.needs_target,
            {k: {"default": p.default, "doc": p.doc} for k, p in cls.params.items()},
        )

    def attribute(self, problem: Problem) -> Output:  # pragma: no cover - abstract
        raise NotImplementedError
