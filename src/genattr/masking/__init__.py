"""How a feature is removed from the prompt (see :mod:`.masker`)."""

from __future__ import annotations

from .masker import Masker, delete_spans, resolve_baseline

__all__ = ["Masker", "delete_spans", "resolve_baseline"]
