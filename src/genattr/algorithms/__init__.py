"""Attribution methods, one module per family; importing this package registers them all.

(The package is not called `methods` because `genattr.methods()` is the public registry listing.)
"""

from . import aieg, attention, baseline, gradient, perturbation, xprompt  # noqa: F401
from .base import Method, Output, Param

__all__ = ["Method", "Output", "Param"]
