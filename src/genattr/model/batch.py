"""Prompt variants as the model reads them, and the counters of the work done on them.

A batch holds token ids, which positions other tokens may attend to (``visible``), and explicit
position ids. A hidden position is removed from every other token's attention through a 4-D
attention mask (:mod:`genattr.model.masks`), so the positions of the remaining tokens do not move.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import InvalidParameterError


@dataclass
class Usage:
    """Counters of the work done through a :class:`~genattr.model.LanguageModel`."""

    forward_passes: int = 0
    tokens_processed: int = 0
    seconds: float = 0.0

    def copy(self) -> Usage:
        return Usage(self.forward_passes, self.tokens_processed, self.seconds)

    def since(self, earlier: Usage) -> dict:
        return {
            "forward_passes": self.forward_passes - earlier.forward_passes,
            "tokens_processed": self.tokens_processed - earlier.tokens_processed,
            "model_seconds": round(self.seconds - earlier.seconds, 6),
        }


@dataclass(frozen=True)
class Batch:
    """A batch of prompt variants of one length (left-padded where lengths differ).

    ``visible[b, i]`` is False where position ``i`` of row ``b`` is hidden from every other
    token (a masked feature, or left padding); ``positions`` are the position ids.
    """

    input_ids: torch.Tensor
    visible: torch.Tensor
    positions: torch.Tensor

    @classmethod
    def from_ids(cls, ids: Sequence[int], rows: int = 1) -> Batch:
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
        return Batch(self.input_ids[index], self.visible[index], self.positions[index])

    def extended(self, continuation: torch.Tensor) -> Batch:
        """Every row followed by its continuation ids [B, m]: visible, positions continuing the row's."""
        m = continuation.shape[1]
        ids = torch.cat([self.input_ids, continuation], 1)
        visible = torch.cat([self.visible, torch.ones_like(continuation, dtype=torch.bool)], 1)
        steps = torch.arange(1, m + 1)
        positions = torch.cat([self.positions, self.positions[:, -1:] + steps[None]], 1)
        return Batch(ids, visible, positions)
