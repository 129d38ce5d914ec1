"""Backward passes through the model, counted in :attr:`LanguageModel.usage` as forward passes are.

Every gradient genattr takes through the model goes through :func:`gradients`, one
``torch.autograd.grad`` call each: it counts one backward pass, and as its tokens the rows x
positions of the part of the forward pass it differentiates (the whole pass, or the positions the
output head saw) times the outputs it is batched over (``is_grads_batched``: one cotangent per
output, the work of that many plain backward passes).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .language_model import LanguageModel


def gradients(
    lm: LanguageModel,
    outputs: torch.Tensor,
    inputs: torch.Tensor | Sequence[torch.Tensor],
    *,
    tokens: int,
    grad_outputs: torch.Tensor | None = None,
    batched: bool = False,
    retain_graph: bool = False,
) -> tuple[torch.Tensor, ...]:
    """``torch.autograd.grad(outputs, inputs, grad_outputs, retain_graph, is_grads_batched=batched)``,
    counted in ``lm.usage``: one backward pass, ``tokens`` x m backward tokens and its wall time.

    ``tokens`` counts the positions of the forward pass the gradient runs through (rows x
    sequence length; rows x kept positions for the output head alone); m is ``grad_outputs.shape[0]`` with ``batched`` (one backward per output,
    run as one vectorised pass), else 1.

    Examples
    --------
    >>> import torch
    >>> from genattr.testing import tiny_lm
    >>> lm = tiny_lm()
    >>> x = torch.ones(2, 3, requires_grad=True)
    >>> before = lm.usage.copy()
    >>> (g,) = gradients(lm, x * 2, x, tokens=6, grad_outputs=torch.ones(4, 2, 3), batched=True)
    >>> g.shape, lm.usage.since(before)["backward_passes"], lm.usage.since(before)["backward_tokens"]
    (torch.Size([4, 2, 3]), 1, 24)
    """
    start = time.perf_counter()
    grads = torch.autograd.grad(
        outputs, inputs, grad_outputs=grad_outputs, retain_graph=retain_graph, is_grads_batched=batched
    )
    lm.usage.seconds += time.perf_counter() - start
    lm.usage.backward_passes += 1
    outputs_batched = grad_outputs.shape[0] if batched and grad_outputs is not None else 1
    lm.usage.backward_tokens += tokens * outputs_batched
    return grads
