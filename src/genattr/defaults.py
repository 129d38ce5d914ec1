"""Defaults and names shared by the library and the command line (no heavy imports here, so the
command line can build its help without loading torch)."""

from __future__ import annotations

MASKS = ("attention", "replace", "delete")
"""The built-in masks (how a feature is removed: hidden from attention, replaced by a baseline token,
or deleted), the command line's choices; the registry :data:`genattr.masking.MASKS` holds them
(a test keeps the two in step) and any mask a user registers."""

DEFAULT_MASK = "attention"

BASELINE_NAMES = ("pad", "unk", "eos", "bos", "mask")
"""Names of the baseline token that ``baseline=`` accepts besides a token id."""

DEFAULT_MAX_NEW_TOKENS = 32
"""Length of the greedy continuation explained when no target is given."""
