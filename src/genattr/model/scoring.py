"""Teacher-forced scoring of a continuation: its log-probabilities and next-token distributions
under every prompt variant of a batch, differentiable log-probabilities from prompt embeddings
(gradient methods), and attention maps (attention methods).

Every row of a batch is followed by the target's first n - 1 tokens, so one forward pass per
chunk of rows reads the n positions that predict the n target tokens, whatever n. Log-probabilities
are computed in float32 whatever the model's dtype.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

import torch

from ..errors import EmptyTargetError, InvalidParameterError
from .batch import Batch
from .prefix import shared_prefixes, sharing_order

if TYPE_CHECKING:
    from .language_model import LanguageModel

TargetIds: TypeAlias = "Sequence[int] | torch.Tensor"
"""Target token ids: one sequence shared by every row, or a [B, n] tensor of per-row targets."""


def _targets(lm: LanguageModel, inputs: Batch, target_ids: TargetIds) -> torch.Tensor:
    """``target_ids`` as a [B, n] tensor, one row per prompt row, checked against the context window."""
    target = torch.as_tensor(target_ids, dtype=torch.long)
    if target.ndim == 1:
        target = target[None].expand(len(inputs), -1)
    if target.ndim != 2 or target.shape[0] != len(inputs):
        raise InvalidParameterError("target ids must be one sequence, or one sequence per prompt row.")
    if target.shape[1] == 0:
        raise EmptyTargetError("the target is empty; give a non-empty continuation to explain.")
    lm.check_length(inputs.length + target.shape[1])
    return target


def _target_logits(
    lm: LanguageModel, inputs: Batch, target: torch.Tensor, done: int = 0, past: Any = None
) -> torch.Tensor:
    """Float32 logits [B, n, V] at the n positions that predict the n target tokens.

    With ``past``, a cache holding each row's first ``done`` positions, only the rest is run.
    """
    n = target.shape[1]
    rows = inputs.extended(target[:, :-1])
    out = lm.forward(
        input_ids=rows.input_ids[:, done:],
        visible=rows.visible,
        positions=rows.positions[:, done:],
        cache=past,
        use_cache=past is not None,
        logits_to_keep=n,
    )
    return out.logits[:, -n:].float()


def _teacher_forced(
    lm: LanguageModel, inputs: Batch, target: torch.Tensor
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(row indices, float32 logits [r, n, V] predicting the target) for every chunk of rows
    (the one chunking path). Rows are taken in :func:`~genattr.model.prefix.sharing_order`, so
    that rows with common prefixes fall in one chunk and share them."""
    n = target.shape[1]
    order = sharing_order(lm, inputs)
    for sl in lm.chunks(len(inputs), inputs.length + n):
        index = order[sl]
        rows = inputs.rows(index)
        done, past = shared_prefixes(lm, rows, n)
        yield index, _target_logits(lm, rows, target[index], done, past)


@torch.no_grad()
def target_log_probs(lm: LanguageModel, inputs: Batch, target_ids: TargetIds) -> torch.Tensor:
    """Teacher-forced log p(y_t | prompt variant, y_<t) for every row and target token: [B, n] float32.

    ``target_ids`` is one sequence shared by all rows, or a [B, n] tensor of per-row targets.
    One forward pass per chunk of rows (per group of rows sharing a prefix), whatever n.
    """
    target = _targets(lm, inputs, target_ids)
    out = torch.empty(target.shape, dtype=torch.float32)
    for rows, logits in _teacher_forced(lm, inputs, target):
        logp = logits.log_softmax(-1)
        out[rows] = logp.gather(-1, target[rows, :, None].to(logp.device)).squeeze(-1).cpu()
    return out


@torch.no_grad()
def target_distributions(lm: LanguageModel, inputs: Batch, target_ids: TargetIds) -> torch.Tensor:
    """Teacher-forced next-token log-distributions at each target position: [B, n, V] float32."""
    target = _targets(lm, inputs, target_ids)
    out = torch.empty((*target.shape, lm.vocab_size), dtype=torch.float32)
    for rows, logits in _teacher_forced(lm, inputs, target):
        out[rows] = logits.log_softmax(-1).cpu()
    return out


def log_probs_from_embeddings(
    lm: LanguageModel,
    prompt_embeds: torch.Tensor,
    inputs: Batch,
    target_ids: TargetIds,
    output_attentions: bool = False,
    return_logits: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Differentiable teacher-forced log-probs of the target given prompt embeddings [B, L, d].

    ``inputs`` gives the visibility and positions of the prompt rows (its ids are not read).
    Returns log-probs [B, n] (the target tokens' raw logits instead with ``return_logits``, and
    the attention maps when asked). The caller chunks rows with ``lm.chunks``, since it also
    runs the backward pass.
    """
    target = _targets(lm, inputs, target_ids)
    n = target.shape[1]
    rows = inputs.extended(target[:, :-1])
    embeds = torch.cat([prompt_embeds, lm.embed(target[:, :-1])], 1)
    out = lm.forward(
        inputs_embeds=embeds,
        visible=rows.visible,
        positions=rows.positions,
        logits_to_keep=n,
        output_attentions=output_attentions,
    )
    logits = out.logits[:, -n:].float()
    logp = logits if return_logits else logits.log_softmax(-1)
    picked = logp.gather(-1, target[:, :, None].to(logp.device)).squeeze(-1)
    return (picked, out.attentions) if output_attentions else picked


@torch.no_grad()
def attention_maps(lm: LanguageModel, inputs: Batch, target_ids: TargetIds) -> torch.Tensor:
    """Attention probabilities of every layer and head over prompt + target[:-1]:
    [B, layers, heads, T, T] float32, read under eager attention."""
    target = _targets(lm, inputs, target_ids)
    rows = inputs.extended(target[:, :-1])
    maps = []
    with lm.eager_attention():
        for sl in lm.chunks(len(inputs), rows.length):
            out = lm.forward(
                input_ids=rows.input_ids[sl],
                visible=rows.visible[sl],
                positions=rows.positions[sl],
                logits_to_keep=1,
                output_attentions=True,
            )
            maps.append(torch.stack([a.float().cpu() for a in out.attentions], 1))
    return torch.cat(maps, 0)
