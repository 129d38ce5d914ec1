"""Backward passes through the model, counted in :attr:`LanguageModel.usage` as forward passes are,
and the decoder layers' activation checkpointing that bounds their memory.

Every gradient genattr takes through the model goes through :func:`gradients`, one
``torch.autograd.grad`` call each: it counts one backward pass, and as its tokens the rows x
positions of the part of the forward pass it differentiates (the whole pass, or the positions the
output head saw) times the outputs it is batched over (``is_grads_batched``: one cotangent per
output, the work of that many plain backward passes).

:func:`checkpointed_layers` keeps, of a forward pass that will be differentiated, only each
decoder layer's inputs, and recomputes a layer's activations when the backward pass reaches it
(``torch.utils.checkpoint``, non-reentrant): the memory of one layer's activations instead of
every layer's (at 2,000 tokens SmolLM2's eager attention probabilities alone are 144 MB a layer,
4.3 GB for its 30), for about one more forward pass. Gradients are unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.checkpoint import checkpoint

from ..errors import UnsupportedModuleError

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


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The model's list of decoder layers: its ``ModuleList`` of ``config.num_hidden_layers``
    modules (``model.layers`` in Llama, Qwen2 and Gemma, ``transformer.h`` in GPT-2)."""
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return module
    raise UnsupportedModuleError(
        f"{type(model).__name__} has no list of its {n} decoder layers to checkpoint; "
        "load the model with checkpoint_layers=False."
    )


@contextmanager
def checkpointed_layers(
    model: torch.nn.Module, recompute: Callable[[], AbstractContextManager[Any]] = nullcontext
) -> Iterator[None]:
    """While open, each decoder layer's forward under gradient keeps only its inputs, and runs again
    when the backward pass needs its activations (see the module docstring). ``recompute()`` is
    entered around every run of a layer, the first and the recomputation: a method whose forward
    pass runs under its own rules (``lrp``'s torch function mode) returns them there for the
    recomputation. Every layer's forward is restored on exit, also when the block raises.

    Examples
    --------
    >>> import torch
    >>> from genattr.testing import random_model
    >>> model, _ = random_model("llama")
    >>> ids = torch.tensor([[5, 6, 7, 8]])
    >>> def grad():
    ...     x = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    ...     model(inputs_embeds=x).logits[0, -1, 9].backward()
    ...     return x.grad
    >>> plain = grad()
    >>> with checkpointed_layers(model):
    ...     torch.allclose(grad(), plain, atol=1e-6)
    True
    """
    with swapped_forwards((layer, lambda f: _checkpointed(f, recompute)) for layer in decoder_layers(model)):
        yield


@contextmanager
def swapped_forwards(
    swaps: Iterable[tuple[torch.nn.Module, Callable[[Callable[..., Any]], Callable[..., Any]]]],
) -> Iterator[None]:
    """While open, each module's forward is ``wrap(forward)`` for its ``(module, wrap)`` in
    ``swaps``; every instance is restored on exit, also when the block or ``swaps`` raises."""
    swapped: list[tuple[torch.nn.Module, object]] = []
    try:
        for module, wrap in swaps:
            swapped.append((module, module.__dict__.get("forward")))
            module.forward = wrap(module.forward)
        yield
    finally:
        for module, before in swapped:
            if before is None:
                del module.__dict__["forward"]
            else:
                module.__dict__["forward"] = before


def _checkpointed(
    forward: Callable[..., Any], recompute: Callable[[], AbstractContextManager[Any]]
) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> Any:
        with recompute():
            return forward(*args, **kwargs)

    def layer_forward(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        return checkpoint(run, *args, use_reentrant=False, **kwargs)

    return layer_forward
