"""How a feature is removed from the prompt: :class:`Masker` builds the prompt variants of a
batch of coalitions with one :class:`Mask` of :data:`MASKS` (see :mod:`.masker`,
:mod:`.strategies`); :func:`register_mask` adds a mask."""

from __future__ import annotations

from .base import MASKS, Mask, register_mask
from .masker import Masker, resolve_baseline
from .strategies import Attention, Delete, Replace, delete_spans

__all__ = [
    "MASKS",
    "Attention",
    "Delete",
    "Mask",
    "Masker",
    "Replace",
    "delete_spans",
    "register_mask",
    "resolve_baseline",
]
