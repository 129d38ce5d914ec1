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
    """Class decorator: make a :class:`Mask` subclass available as ``mask=cls.name``.

    Parameters
    ----------
    cls : type
        A subclass of :class:`Mask` with a ``name`` and :meth:`Mask.inputs`, which turns coalitions
        ``keep`` [B, F] into a :class:`~genattr.model.Batch` of B prompt rows.

    Returns
    -------
    type
        ``cls`` itself, so that the function works as a decorator.

    Raises
    ------
    genattr.errors.InvalidParameterError
        When ``cls`` is not a :class:`Mask` subclass, has no ``name``, or its name is taken by
        another class (a built-in is never replaced).

    Examples
    --------
    A mask that takes the removed tokens out of the token ids (rows of different lengths
    left-padded and the padding hidden):

    >>> import genattr
    >>> from genattr.model import Batch
    >>> from genattr.testing import tiny_lm
    >>> @register_mask
    ... class Drop(Mask):
    ...     name = "drop"
    ...     def inputs(self, masker, keep):
    ...         rows = [masker.ids[row].tolist() for row in masker.token_keep(keep)]
    ...         return Batch.left_padded(rows, masker.baseline_id)
    >>> res = genattr.explain(tiny_lm(), "The doctor opens the door", target=" and", mask="drop")
    >>> res.settings.mask, res.scores.shape
    ('drop', (5,))
    >>> del MASKS._classes["drop"]  # leave the registry as the other examples expect it
    """
    return MASKS.register(cls)
