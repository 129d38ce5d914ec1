"""Attribution methods, one module per family; importing this package registers them all.

(The package is not called `methods` because `genattr.methods()` is the public registry listing.)
"""

from . import (  # noqa: F401  # noqa: F401
    aieg,
    attention,
    baseline,
    deeplift,
    gilot,  # noqa: F401
    gradient,
    perturbation,
    xprompt,  # noqa: F401
)
from .base import Method, Output, Param

__all__ = ["Method", "Output", "Param"]
