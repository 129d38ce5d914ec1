"""The 4-D attention masks genattr hands the model in place of the ones it would build.

A boolean pattern ``sees`` [B, Q, K] (query q attends to key k) becomes an additive mask
[B, 1, Q, K]: 0 where q sees k, the dtype's lowest value elsewhere. For a sliding-window model
(Mistral, Gemma, Qwen2 with ``use_sliding_window``) a query at position i also stops seeing keys
at positions <= i - window, as the model's own masks do; a model mixing sliding and full layers
gets one mask per layer type.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import InvalidParameterError, UnsupportedModelError

LAYER_TYPES = frozenset({"full_attention", "sliding_attention"})
"""The layer types whose masks genattr builds."""


def _sliding_window(config: Any) -> tuple[int | None, list[str] | None]:
    """(window, layer types) of a model with sliding-window attention, else (None, None); layer
    types None when every layer slides (Mistral), and kept whenever a layer is of a kind other than
    full or sliding attention (chunked, linear), which :meth:`AttentionMasks.build` refuses."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if types is not None and set(types) - LAYER_TYPES:
        return window, list(types)  # refused by AttentionMasks.build
    if window is None or (types is not None and "sliding_attention" not in types):
        return None, None
    if types is not None and all(t == "sliding_attention" for t in types):
        types = None
    return int(window), None if types is None else list(types)


def _additive_mask(sees: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The additive 4-D mask [B, 1, Q, K] of a boolean [B, Q, K] (query q attends to key k)."""
    mask = torch.zeros(sees.shape, dtype=dtype, device=device)
    mask.masked_fill_(~sees.to(device), torch.finfo(dtype).min)
    return mask[:, None]


@dataclass(frozen=True)
class AttentionMasks:
    """How one model's attention masks are built: its sliding ``window`` (None: none) and the
    ``layer_types`` that need different masks (None: every layer gets the same one)."""

    window: int | None = None
    layer_types: list[str] | None = None

    @classmethod
    def for_config(cls, config: Any) -> AttentionMasks:
        return cls(*_sliding_window(config))

    def causal(
        self, visible: torch.Tensor, query_index: torch.Tensor, dtype: torch.dtype, device: torch.device
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """Mask(s) where query ``q`` (at key index ``query_index[q]``) sees key ``k`` iff ``k <= q``
        and key ``k`` is visible or is the query itself. Distances are counted in key indices,
        which equal position differences between the visible tokens of genattr's rows (hidden
        tokens keep their positions)."""
        keys = torch.arange(visible.shape[1], device=visible.device)
        causal = keys[None, :] <= query_index[:, None]
        itself = keys[None, :] == query_index[:, None]
        sees = causal[None] & (visible[:, None, :] | itself[None])
        return self.build(sees, query_index[None], keys[None], dtype, device)

    def build(
        self,
        sees: torch.Tensor,
        query_positions: torch.Tensor,
        key_positions: torch.Tensor | None,
        dtype: torch.dtype,
        device: torch.device,
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """The model's attention mask(s) for a boolean pattern ``sees`` [B, Q, K], queries and keys
        at ``query_positions`` [B, Q] and ``key_positions`` [B, K]: one additive mask [B, 1, Q, K],
        or a dict of them by layer type."""
        unknown = set(self.layer_types or ()) - LAYER_TYPES
        if unknown:
            raise UnsupportedModelError(
                f"this model has {', '.join(sorted(unknown))} layers, whose masks genattr cannot build; "
                "genattr supports full and sliding-window attention. Use mask='replace' with a method "
                "that needs no custom mask (perturbation or gradient methods), or another model."
            )
        full = _additive_mask(sees, dtype, device)
        if self.window is None:
            return full
        if key_positions is None:
            raise InvalidParameterError(
                "a sliding-window model needs key_positions with a custom pattern sees."
            )
        near = key_positions[:, None, :] > query_positions[:, :, None] - self.window
        windowed = _additive_mask(sees & near, dtype, device)
        if self.layer_types is None:
            return windowed
        return {t: windowed if t == "sliding_attention" else full for t in set(self.layer_types)}
