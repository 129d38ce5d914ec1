"""Typed errors: every bad input raises one of these, with a message that says what was
wrong, the limit where there is one, and what to do.

All of them derive from :class:`GenattrError`, so ``except genattr.errors.GenattrError``
catches every error the library raises on purpose (the CLI turns them into exit code 2).
They also derive from the matching built-in (``ValueError``, ``OSError``, ...), so code that
already catches those keeps working. Warnings derive from :class:`GenattrWarning`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager


class GenattrError(Exception):
    """Base class of the errors genattr raises on purpose."""


class InputError(GenattrError, ValueError):
    """The prompt, target or an argument cannot be used as given."""


class EmptyPromptError(InputError):
    """The prompt is empty or only whitespace."""


class NoMaskableFeaturesError(InputError):
    """The prompt has no token that may be masked (only control tokens or template scaffolding)."""


class ContextLengthError(InputError):
    """Prompt plus target (or generation budget) exceed the model's context window."""


class EmptyTargetError(InputError):
    """The target continuation is empty, or the model generated nothing to explain."""


class UnknownMethodError(InputError):
    """No method is registered under the given name."""


class UnknownLevelError(InputError):
    """The feature level is not one of the known segmentations."""


class UnknownMaskError(InputError):
    """The masking strategy or the baseline token is unknown or unavailable for this tokenizer."""


class InvalidParameterError(InputError):
    """A method or call parameter is out of its valid range."""


class UnknownObjectiveError(InvalidParameterError):
    """No objective is registered under the given name."""


class TooManyFeaturesError(InvalidParameterError):
    """An exact method was asked for more features than it can enumerate."""


class RegistrationError(GenattrError, ValueError):
    """A method cannot be registered: not a ``genattr.Method`` subclass, a name that is not its
    class's, or an entry point that fails to import."""


class DuplicateMethodError(RegistrationError):
    """A method name is taken twice (built in, by an installed package's entry point, or by
    ``genattr.register``)."""


class ModelLoadError(GenattrError, OSError):
    """The model or tokenizer could not be loaded (missing path, unreadable files, no network)."""


class UnsupportedModelError(GenattrError, ValueError):
    """The model uses a feature genattr cannot reproduce in its own attention masks, or lacks
    what a method reads (the attention modules BTA taps)."""


class UnsupportedModuleError(UnsupportedModelError):
    """A module of the model computes something no propagation rule of the method covers (LRP's
    rules: an elementwise function outside an activation or a normalisation, a product with an
    input-dependent weight, fused attention)."""


class NumericalError(GenattrError, FloatingPointError):
    """The model produced NaN or infinite values."""


class ResultFormatError(GenattrError, ValueError):
    """A saved attribution file is malformed, tampered with, or of an unknown schema."""


class DataFormatError(InputError):
    """A line of a data file (``genattr explain --data``) is not a record to explain: not JSON, not
    an object, no non-empty ``prompt`` string, a ``target`` or ``id`` of the wrong type, or a repeat."""


class ClusterError(GenattrError, RuntimeError):
    """A Ray cluster cannot be used: Ray is not installed, its address cannot be reached, or a
    worker died mid-run (the results finished before are kept: run the same command again)."""


class GenattrWarning(UserWarning):
    """Base class of the warnings genattr issues: filter ``GenattrWarning`` to see or silence
    exactly genattr's own (third-party libraries warn under their own categories)."""


class ConvergenceWarning(GenattrWarning):
    """An iterative computation stopped short of its tolerance: integrated gradients missing
    completeness, an optimal-transport solver that did not converge."""


class LowBeamMassWarning(GenattrWarning):
    """GiLOT's beams cover too little probability for the beam-marginalised distribution to be
    reliable (the paper's boundary case, Section 6)."""


class UnknownTokensWarning(GenattrWarning):
    """The tokenizer read words of the prompt as its unknown token: they are features like any
    other, but the model sees each of them as that one token."""


class GenattrDeprecationWarning(GenattrWarning, DeprecationWarning):
    """A name genattr still accepts but will drop in its next release (the message names the
    new one): ``baseline=`` of :func:`genattr.explain`, now ``mask_token=``. Python shows
    deprecation warnings of code run as ``__main__`` and hides the others unless asked
    (``-W default::DeprecationWarning``, or pytest, which shows them)."""


@contextmanager
def collecting(category: type[Warning] = GenattrWarning) -> Iterator[list[warnings.WarningMessage]]:
    """Collects every warning of ``category`` (by default genattr's own) issued while open, repeats
    included, into the list it yields (filled on exit); warnings of other categories are passed on
    as they came, to the filters and handlers outside.

    >>> with collecting(ConvergenceWarning) as caught:                       # doctest: +SKIP
    ...     res = genattr.explain(lm, prompt, target=target, method="integrated_gradients")
    >>> [str(w.message) for w in caught]                                     # doctest: +SKIP
    """
    ours: list[warnings.WarningMessage] = []
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", category)
            yield ours
    finally:
        for w in caught:
            if issubclass(w.category, category):
                ours.append(w)
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
