"""The built-in attribution methods, one module per family, each imported when one of its
methods is first used (:data:`genattr.registry.BUILTIN` lists them; importing this package
imports none of them).

(The package is not called `methods` because `genattr.methods()` is the public registry listing.)
"""

from ..registry import Method, Output, Param

__all__ = ["Method", "Output", "Param"]
