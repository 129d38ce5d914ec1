"""The kinds of removal a :class:`~genattr.masking.Masker` can apply, by name.

A mask is a :class:`Mask` subclass registered in :data:`MASKS` under its ``name``; a user adds
one with :func:`register_mask` and asks for it by name (``mask="blank"``) like the built-ins
(``attention``, ``replace``, ``delete``: see :mod:`genattr.masking.strategies`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from ..errors import UnknownMaskError
from ..names import NameRegistry

if TYPE_CHECKING:
    import torch

    from ..model import Batch
    from .masker import Masker


class Mask:
    """How a removed feature is taken out of the prompt: subclass it, set ``name``, implement
    :meth:`inputs` and register it with :func:`register_mask`."""

    name: ClassVar[str] = ""

    def inputs(self, masker: Masker, keep: torch.Tensor) -> Batch:
        """Model inputs, one row per coalition of ``keep`` [B, F] (True = feature kept), of the
        prompt and features of ``masker`` (its ``prompt``, ``features``, ``ids``,
        ``baseline_id``, ``lm`` and :meth:`~genattr.masking.Masker.token_keep`)."""
        raise NotImplementedError


MASKS = NameRegistry("mask strategy", Mask, UnknownMaskError)
"""Every mask by name, in registration order; the built-in names are ``genattr.defaults.MASKS``."""


def register_mask(cls: type[Mask]) -> type[Mask]:
    """Class decorator: make a :class:`Mask` subclass available as ``mask=cls.name``."""
    return MASKS.register(cls)
