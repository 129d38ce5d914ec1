"""The former home of the method base classes, now in :mod:`genattr.registry` (import them from
``genattr``: ``from genattr import Method, Output, Param``)."""

from ..registry import (
    MAX_BEAMS,
    MAX_GRADIENT_POINTS,
    MAX_ITERATIONS,
    MAX_OUTPUT_POSITIONS,
    MAX_SAMPLES,
    Method,
    Output,
    Param,
)

__all__ = [
    "MAX_BEAMS",
    "MAX_GRADIENT_POINTS",
    "MAX_ITERATIONS",
    "MAX_OUTPUT_POSITIONS",
    "MAX_SAMPLES",
    "Method",
    "Output",
    "Param",
]
