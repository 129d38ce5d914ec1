"""Settings: how a call to :func:`genattr.explain` was made, apart from the method's parameters.

A result keeps the two in separate places (``Attribution.settings`` and ``Attribution.params``),
so that a method parameter may share a name with a setting (``level``, ``mask``, ``seed``, ...)
without either overwriting the other, and so that the faithfulness protocols can read how
features were removed without looking through the method's parameters.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, fields

from .defaults import DEFAULT_LEVEL, DEFAULT_MASK, DEFAULT_OBJECTIVE
from .errors import GenattrDeprecationWarning


@dataclass(frozen=True)
class Settings:
    """The settings of one call, as they took effect.

    ``level`` says how the prompt was cut into features, with ``pattern`` (the regular
    expression's text, for ``level="regex"``) or ``spans`` (character spans, for ``level="spans"``);
    ``mask`` and ``mask_token`` (the token that stands in for a removed feature: a token id, or the
    name of one such as ``"eos"``) how a feature is removed; ``objective`` what a coalition of
    features is scored by; ``max_new_tokens`` the length of the greedy continuation explained
    (None when the target was given); ``seed`` the seed of a stochastic method (None for a
    deterministic one). None means "not set". ``baseline`` is the deprecated former name of
    ``mask_token`` (read-only).
    """

    level: str = DEFAULT_LEVEL
    mask: str = DEFAULT_MASK
    mask_token: int | str | None = None
    objective: str = DEFAULT_OBJECTIVE
    max_new_tokens: int | None = None
    pattern: str | None = None
    spans: tuple[tuple[int, int], ...] | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        # a compiled pattern is recorded as its text, spans as a tuple of (start, end) pairs
        object.__setattr__(self, "pattern", getattr(self.pattern, "pattern", self.pattern))
        if self.spans is not None:
            object.__setattr__(self, "spans", tuple((start, end) for start, end in self.spans))

    @property
    def baseline(self) -> int | str | None:
        """Deprecated: the former name of :attr:`mask_token`."""
        warnings.warn(
            "Settings.baseline is deprecated and will be removed in the next release; read mask_token.",
            GenattrDeprecationWarning,
            stacklevel=2,
        )
        return self.mask_token

    def to_dict(self) -> dict:
        """Every setting by name, in field order (spans as lists, the way JSON holds them)."""
        out = asdict(self)
        if self.spans is not None:
            out["spans"] = [list(span) for span in self.spans]
        return out

    def set_items(self, leave_out: tuple[str, ...] = ()) -> list[tuple[str, object]]:
        """``(name, value)`` of the settings that are set (not None), in field order, but for
        the names in ``leave_out``."""
        return [
            (f.name, getattr(self, f.name))
            for f in fields(self)
            if f.name not in leave_out and getattr(self, f.name) is not None
        ]


SETTING_NAMES = tuple(f.name for f in fields(Settings))
"""The names of the settings, in field order."""
