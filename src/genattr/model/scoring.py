"""Teacher-forced scoring of a continuation: its log-probabilities and next-token distributions
under every prompt variant of a batch, differentiable log-probabilities from input embeddings
(gradient methods), and attention maps (attention methods).

A row holds the prompt followed by the target's first n - 1 tokens (which a prompt variant may
mask too), so one forward pass per chunk of rows reads the n positions that predict the n target
tokens, whatever n. Log-probabilities
are computed in float32 whatever the model's dtype.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

import torch

from ..errors import EmptyTargetError, InvalidParameterError
from .batch import Batch
from .prefix import Carried, returned_cache, shared_prefixes, sharing_order

if TYPE_CHECKING:
    from .language_model import LanguageModel

TargetIds: TypeAlias = "Sequence[int] | torch.Tensor"
"""Target token ids: one sequence shared by every row, or a [B, n] tensor of per-row targets."""


def _labels(lm: LanguageModel, rows: Batch, labels: TargetIds) -> torch.Tensor:
    """``labels`` as a [B, n] tensor, one row per row of ``rows``, checked against the context window."""
    target = torch.as_tensor(labels, dtype=torch.long)
    if target.ndim == 1:
        target = target[None].expand(len(rows), -1)
    if target.ndim != 2 or target.shape[0] != len(rows):
        raise InvalidParameterError("target ids must be one sequence, or one sequence per prompt row.")
    if target.shape[1] == 0:
        raise EmptyTargetError("the target is empty; give a non-empty continuation to explain.")
    if target.shape[1] > rows.length:
        raise InvalidParameterError(
            f"{target.shape[1]} labels cannot be predicted by rows of {rows.length} positions; "
            "the rows must hold every position that predicts a label."
        )
    lm.check_length(rows.length + 1)
    return target


def teacher_forced_rows(inputs: Batch, target_ids: TargetIds) -> tuple[Batch, torch.Tensor]:
    """Prompt rows followed by the target's first n - 1 tokens, and the target as a [B, n] tensor:
    the rows whose last n positions predict the n target tokens."""
    target = torch.as_tensor(target_ids, dtype=torch.long)
    if target.ndim == 1:
        target = target[None].expand(len(inputs), -1)
    if target.ndim != 2 or target.shape[0] != len(inputs):
        raise InvalidParameterError("target ids must be one sequence, or one sequence per prompt row.")
    if target.shape[1] == 0:
        raise EmptyTargetError("the target is empty; give a non-empty continuation to explain.")
    return inputs.extended(target[:, :-1]), target


def _label_logits(
    lm: LanguageModel, rows: Batch, n: int, done: int = 0, past: Any = None, keep_cache: bool = False
) -> tuple[torch.Tensor, Any]:
    """Float32 logits [B, n, V] of the last n positions of ``rows`` (the positions that predict the
    labels), and the rows' keys and values (None unless ``past`` is given or ``keep_cache``). With
    ``past``, a cache holding each row's first ``done`` positions, only the rest is run."""
    use_cache = past is not None or keep_cache
    out = lm.forward(
        input_ids=rows.input_ids[:, done:],
        visible=rows.visible,
        positions=rows.positions[:, done:],
        cache=past,
        use_cache=use_cache,
        logits_to_keep=n,
    )
    return out.logits[:, -n:].float(), returned_cache(out) if use_cache else None


def _teacher_forced(lm: LanguageModel, rows: Batch, n: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(row indices, float32 logits [r, n, V] of the last n positions) for every chunk of rows
    (the one chunking path). Rows are taken in :func:`~genattr.model.prefix.sharing_order`, so
    that rows with common prefixes fall in one chunk and share them, and the last row of a chunk
    is carried to the next (:class:`~genattr.model.prefix.Carried`)."""
    order = sharing_order(lm, rows)
    slices = list(lm.chunks(len(rows), rows.length + 1))
    carried = None
    for k, sl in enumerate(slices):
        index = order[sl]
        chunk = rows.rows(index)
        done, past = shared_prefixes(lm, chunk, n, carried)
        carry = lm.share_prefix and lm._cache_shareable is not False and k + 1 < len(slices)
        logits, cache = _label_logits(lm, chunk, n, done, past, keep_cache=carry)
        carried = Carried.last_row(chunk, cache) if carry else None
        del past, cache  # only the carried row's keys and values outlive the chunk
        yield index, logits


@torch.no_grad()
def label_log_probs(lm: LanguageModel, rows: Batch, labels: TargetIds) -> torch.Tensor:
    """log p(label_j | the row up to the position that predicts it) for every row: [B, n] float32.

    The last n positions of each row of ``rows`` predict the n labels (one sequence for every row,
    or [B, n]): for a teacher-forced target y, rows are the prompt followed by y_1..y_(n-1) and
    the labels y_1..y_n; the rows may differ anywhere, in the prompt or in the teacher-forced part.
    One forward pass per chunk of rows (per group of rows sharing a prefix), whatever n.
    """
    target = _labels(lm, rows, labels)
    out = torch.empty(target.shape, dtype=torch.float32)
    for index, logits in _teacher_forced(lm, rows, target.shape[1]):
        logp = logits.log_softmax(-1)
        out[index] = logp.gather(-1, target[index, :, None].to(logp.device)).squeeze(-1).cpu()
    return out


def target_log_probs(lm: LanguageModel, inputs: Batch, target_ids: TargetIds) -> torch.Tensor:
    """Teacher-forced log p(y_t | prompt variant, y_<t) for every row and target token: [B, n] float32.

    ``target_ids`` is one sequence shared by all rows, or a [B, n] tensor of per-row targets
    (:func:`label_log_probs` of the prompt rows followed by the target).
    """
    rows, target = teacher_forced_rows(inputs, target_ids)
    return label_log_probs(lm, rows, target)


@torch.no_grad()
def target_distributions(lm: LanguageModel, inputs: Batch, target_ids: TargetIds) -> torch.Tensor:
    """Teacher-forced next-token log-distributions at each target position: [B, n, V] float32."""
    rows, target = teacher_forced_rows(inputs, target_ids)
    target = _labels(lm, rows, target)
    out = torch.empty((*target.shape, lm.vocab_size), dtype=torch.float32)
    for index, logits in _teacher_forced(lm, rows, target.shape[1]):
        out[index] = logits.log_softmax(-1).cpu()
    return out


def log_probs_from_embeddings(
    lm: LanguageModel,
    embeds: torch.Tensor,
    rows: Batch,
    labels: TargetIds,
    output_attentions: bool = False,
    return_logits: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Differentiable log-probs of the labels predicted by the last n positions of the input
    embeddings ``embeds`` [B, T, d] (the prompt and the teacher-forced target tokens).

    ``rows`` gives the visibility and positions of the T positions (its ids are not read).
    Returns log-probs [B, n] (the labels' raw logits instead with ``return_logits``, and the
    attention maps when asked). The caller chunks rows with ``lm.chunks``, since it also runs
    the backward pass.
    """
    target = _labels(lm, rows, labels)
    n = target.shape[1]
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
def attention_maps(lm: LanguageModel, rows: Batch) -> torch.Tensor:
    """Attention probabilities of every layer and head over the T positions of ``rows``:
    [B, layers, heads, T, T] float32, read under eager attention."""
    lm.check_length(rows.length)
    maps = []
    with lm.eager_attention():
        for sl in lm.chunks(len(rows), rows.length):
            out = lm.forward(
                input_ids=rows.input_ids[sl],
                visible=rows.visible[sl],
                positions=rows.positions[sl],
                logits_to_keep=1,
                output_attentions=True,
            )
            maps.append(torch.stack([a.float().cpu() for a in out.attentions], 1))
    return torch.cat(maps, 0)
