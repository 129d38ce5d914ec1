"""Prompt variants as the model reads them, and the counters of the work done on them.

A batch holds token ids, which positions other tokens may attend to (``visible``), and explicit
position ids. A hidden position is removed from every other token's attention through a 4-D
attention mask (:mod:`genattr.model.masks`), so the positions of the remaining tokens do not move.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from ..errors import InvalidParameterError


@dataclass
class Usage:
    """Counters of the work done through a :class:`~genattr.model.LanguageModel`.

    ``forward_passes`` and ``tokens_processed`` (rows x positions run) count its forward passes;
    ``backward_passes`` counts its ``torch.autograd.grad`` calls through the model (or part of it,
    such as the output head) and ``backward_tokens`` their tokens: the differentiated forward
    pass's rows x positions times the outputs a call is batched over (see
    :func:`~genattr.model.backward.gradients`). ``seconds`` is the wall time inside both.
    """

    forward_passes: int = 0
    tokens_processed: int = 0
    seconds: float = 0.0
    backward_passes: int = 0
    backward_tokens: int = 0

    def copy(self) -> Usage:
        return replace(self)

    def since(self, earlier: Usage) -> dict:
        """The work done since ``earlier`` (a :meth:`copy`), as a result's diagnostics name it."""
        return {
            "forward_passes": self.forward_passes - earlier.forward_passes,
            "tokens_processed": self.tokens_processed - earlier.tokens_processed,
            "backward_passes": self.backward_passes - earlier.backward_passes,
            "backward_tokens": self.backward_tokens - earlier.backward_tokens,
            "model_seconds": round(self.seconds - earlier.seconds, 6),
        }


@dataclass(frozen=True)
class Batch:
    """A batch of B prompt variants of one length L (left-padded where lengths differ).

    Parameters
    ----------
    input_ids : torch.Tensor, shape (B, L), int64
        The token ids.
    visible : torch.Tensor, shape (B, L), bool
        False where position ``i`` of row ``b`` is hidden from every other token (a masked
        feature, or left padding); a hidden position still attends to itself.
    positions : torch.Tensor, shape (B, L), int64
        The position ids (hiding a token does not move the others).

    Examples
    --------
    >>> batch = Batch.left_padded([[5, 6, 7], [8, 9]], pad_id=0)
    >>> batch.input_ids.tolist(), batch.visible.tolist(), batch.positions.tolist()
    ([[5, 6, 7], [0, 8, 9]], [[True, True, True], [False, True, True]], [[0, 1, 2], [0, 0, 1]])
    >>> len(Batch.from_ids([5, 6, 7], rows=4)), batch.extended(torch.tensor([[1], [2]])).positions.tolist()
    (4, [[0, 1, 2, 3], [0, 0, 1, 2]])
    """

    input_ids: torch.Tensor
    visible: torch.Tensor
    positions: torch.Tensor

    @classmethod
    def from_ids(cls, ids: Sequence[int], rows: int = 1) -> Batch:
        """``rows`` copies of the prompt ``ids``, every position visible, positions 0..L-1."""
        t = torch.tensor(list(ids), dtype=torch.long).unsqueeze(0).expand(rows, -1).contiguous()
        return cls(
            t, torch.ones_like(t, dtype=torch.bool), torch.arange(t.shape[1]).expand(rows, -1).contiguous()
        )

    @classmethod
    def left_padded(cls, rows: Sequence[Sequence[int]], pad_id: int = 0) -> Batch:
        """Prompts of different lengths in one batch: left padding, hidden, positions from 0 per row."""
        if not rows or any(len(r) == 0 for r in rows):
            raise InvalidParameterError("every prompt row needs at least one token.")
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), int(pad_id), dtype=torch.long)
        visible = torch.zeros(len(rows), width, dtype=torch.bool)
        for i, r in enumerate(rows):
            ids[i, width - len(r) :] = torch.tensor(list(r), dtype=torch.long)
            visible[i, width - len(r) :] = True
        return cls(ids, visible, (visible.long().cumsum(1) - 1).clamp(min=0))

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def length(self) -> int:
        return self.input_ids.shape[1]

    def rows(self, index: slice | torch.Tensor) -> Batch:
        """The rows ``index`` (a slice or index tensor) as a batch."""
        return Batch(self.input_ids[index], self.visible[index], self.positions[index])

    def extended(self, continuation: torch.Tensor) -> Batch:
        """Every row followed by its continuation ids [B, m]: visible, positions continuing the row's."""
        m = continuation.shape[1]
        ids = torch.cat([self.input_ids, continuation], 1)
        visible = torch.cat([self.visible, torch.ones_like(continuation, dtype=torch.bool)], 1)
        steps = torch.arange(1, m + 1)
        positions = torch.cat([self.positions, self.positions[:, -1:] + steps[None]], 1)
        return Batch(ids, visible, positions)
