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
    """The settings of one call, as they took effect (frozen). None means "not set".

    Parameters
    ----------
    level : str
        How the prompt was cut into features (a name in :data:`genattr.LEVELS`).
    mask : str
        How a feature was removed (a name in :data:`genattr.masking.MASKS`).
    mask_token : int or str, optional
        The token that stood in for a removed one: a token id, or the name of one such as ``"eos"``
        (``baseline`` is its deprecated former name, read-only).
    objective : str
        What a coalition of features was scored by (a name in :data:`genattr.objectives.OBJECTIVES`).
    max_new_tokens : int, optional
        The length limit of the greedy continuation explained; None when the target was given.
    pattern : str, optional
        The regular expression's text, for ``level="regex"`` (a compiled pattern is stored as its text).
    spans : tuple of (int, int), optional
        The character spans, for ``level="spans"`` (stored as a tuple of pairs).
    seed : int, optional
        The seed of a stochastic method; None for a deterministic one.
    attribute_target : bool
        Whether the output tokens were features too (one column each after the prompt's).
    target_span : (int, int), optional
        The target tokens [a, b) explained when ``target_token`` or ``target_span`` picked some;
        None when every target token was.
    contrast : tuple of int, optional
        The foil's token ids, for a contrastive explanation.
    token_scores : bool
        Whether the per-token matrix was asked for (False: the sequence scores only).

    Examples
    --------
    >>> import re
    >>> s = Settings(level="regex", pattern=re.compile("[a-z]+"), seed=3)
    >>> s.pattern, s.set_items(leave_out=("mask",))
    ('[a-z]+', [('level', 'regex'), ('objective', 'log_prob'), ('pattern', '[a-z]+'), ('seed', 3)])
    >>> Settings(level="spans", spans=[[0, 3]]).to_dict()["spans"]
    [[0, 3]]
    """

    level: str = DEFAULT_LEVEL
    mask: str = DEFAULT_MASK
    mask_token: int | str | None = None
    objective: str = DEFAULT_OBJECTIVE
    max_new_tokens: int | None = None
    pattern: str | None = None
    spans: tuple[tuple[int, int], ...] | None = None
    seed: int | None = None
    attribute_target: bool = False
    target_span: tuple[int, int] | None = None
    contrast: tuple[int, ...] | None = None
    token_scores: bool = True

    def __post_init__(self) -> None:
        # a compiled pattern is recorded as its text, spans as a tuple of (start, end) pairs
        object.__setattr__(self, "pattern", getattr(self.pattern, "pattern", self.pattern))
        if self.spans is not None:
            object.__setattr__(self, "spans", tuple((start, end) for start, end in self.spans))
        if self.target_span is not None:
            object.__setattr__(self, "target_span", tuple(int(v) for v in self.target_span))
        if self.contrast is not None:
            object.__setattr__(self, "contrast", tuple(int(v) for v in self.contrast))

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
        for name in ("target_span", "contrast"):
            if out[name] is not None:
                out[name] = list(out[name])
        return out

    def set_items(self, leave_out: tuple[str, ...] = ()) -> list[tuple[str, object]]:
        """``(name, value)`` of the settings that are set (not None, a flag not at its default), in
        field order, but for the names in ``leave_out``."""
        return [
            (f.name, value)
            for f in fields(self)
            if f.name not in leave_out
            and (value := getattr(self, f.name)) is not None
            and not (isinstance(value, bool) and value == f.default)
        ]


SETTING_NAMES = tuple(f.name for f in fields(Settings))
"""The names of the settings, in field order."""
