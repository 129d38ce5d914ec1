"""How a feature is removed from the prompt.

A coalition is a boolean row ``keep[f]`` over the features; :meth:`Masker.inputs` turns a
batch of coalitions [B, F] into model :class:`~genattr.model.Batch`. Tokens outside every
feature (special tokens, chat scaffolding, context) are always kept.

Masks
-----
``strategy`` names a :class:`~genattr.masking.base.Mask` in :data:`~genattr.masking.base.MASKS`:
``attention`` (default) replaces the removed tokens by the baseline token and hides them from
every other token through the attention mask; ``replace`` replaces them only (Captum's
convention); ``delete`` deletes the feature's text and tokenises again (see
:mod:`genattr.masking.strategies`). :func:`~genattr.masking.base.register_mask` adds one.

Baselines
---------
``baseline`` is a token id or one of ``"pad"``, ``"unk"``, ``"eos"``, ``"bos"``, ``"mask"``;
by default the tokenizer's pad token, else its unk token, else its eos token.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..defaults import BASELINE_NAMES, DEFAULT_MASK
from ..errors import InvalidParameterError, UnknownMaskError
from ..model import Batch, LanguageModel
from ..protocols import Tokenizer
from ..text.prompt import Prompt
from ..text.segment import Feature, token_owners
from .base import MASKS


def resolve_baseline(tokenizer: Tokenizer, baseline: int | str | None, vocab_size: int) -> int:
    """The baseline token id for ``baseline`` (see the module docstring)."""
    if baseline is None:
        for name in ("pad", "unk", "eos"):
            token_id = getattr(tokenizer, f"{name}_token_id", None)
            if token_id is not None:
                return int(token_id)
        raise UnknownMaskError(
            "the tokenizer has no pad, unk or eos token to use as baseline; pass mask_token=<token id>."  # pragma: no mutate
        )
    if isinstance(baseline, bool):
        raise UnknownMaskError(
            f"baseline must be a token id or one of {', '.join(BASELINE_NAMES)}, not {baseline!r}."  # pragma: no mutate
        )
    if isinstance(baseline, int) or (isinstance(baseline, str) and baseline.lstrip("-").isdigit()):
        token_id = int(baseline)
        if not 0 <= token_id < vocab_size:
            raise UnknownMaskError(
                f"baseline token id {token_id} is outside the vocabulary (0..{vocab_size - 1})."  # pragma: no mutate
            )
        return token_id
    if baseline in BASELINE_NAMES:
        token_id = getattr(tokenizer, f"{baseline}_token_id", None)
        if token_id is None:
            have = [n for n in BASELINE_NAMES if getattr(tokenizer, f"{n}_token_id", None) is not None]
            raise UnknownMaskError(
                f"the tokenizer has no {baseline} token; use one of {', '.join(have) or 'none'} "  # pragma: no mutate
                "or a token id."  # pragma: no mutate
            )
        return int(token_id)
    raise UnknownMaskError(
        f"unknown baseline {baseline!r}; use a token id or one of {', '.join(BASELINE_NAMES)}."  # pragma: no mutate
    )


class Masker:
    """Builds prompt variants with features removed by the mask named ``strategy`` (see the
    module docstring).

    Parameters
    ----------
    lm : LanguageModel
        The model (its tokenizer and vocabulary size).
    prompt : Prompt
        The prompt (L tokens).
    features : sequence of Feature
        The F features a coalition keeps or removes.
    strategy : str
        A name in :data:`~genattr.masking.base.MASKS`: ``"attention"`` (default), ``"replace"``,
        ``"delete"`` or a registered one.
    baseline : int or str, optional
        The baseline token (see the module docstring).
    continuation : sequence of int
        Token ids that follow the prompt in every row (a target's first n - 1 tokens, teacher-forced);
        features may cover them too (positions from L on). Empty by default.

    Raises
    ------
    genattr.errors.UnknownMaskError
        For an unknown strategy or baseline, or a baseline token the tokenizer lacks.

    Examples
    --------
    >>> from genattr.testing import tiny_lm
    >>> lm = tiny_lm()
    >>> prompt = Prompt.from_text(lm.tokenizer, "The doctor opens the door")
    >>> masker = Masker(lm, prompt, prompt.features("word"), "attention", baseline="eos")
    >>> batch = masker.inputs(torch.tensor([[True, False, True, True, True]]))   # "doctor" removed
    >>> removed = [i for i in range(len(prompt)) if not batch.visible[0, i]]
    >>> removed == list(prompt.features("word")[1].positions)
    True
    >>> batch.input_ids[0, removed].tolist() == [masker.baseline_id] * len(removed)
    True
    """

    def __init__(
        self,
        lm: LanguageModel,
        prompt: Prompt,
        features: Sequence[Feature],
        strategy: str = DEFAULT_MASK,
        baseline: int | str | None = None,
        continuation: Sequence[int] = (),
    ) -> None:
        self.mask = MASKS.get(strategy)()
        self.lm, self.prompt, self.features, self.strategy = lm, prompt, list(features), strategy
        self.baseline_id = resolve_baseline(lm.tokenizer, baseline, lm.vocab_size)
        self.ids = torch.tensor([*prompt.input_ids, *continuation], dtype=torch.long)
        owner = torch.tensor(token_owners(self.features, len(self.ids)), dtype=torch.long)
        self._covered = (owner >= 0).nonzero().squeeze(-1)
        self._owner = owner[self._covered]

    @property
    def n_features(self) -> int:
        return len(self.features)

    @property
    def continuation(self) -> torch.Tensor:
        """The ids that follow the prompt in every row."""
        return self.ids[len(self.prompt) :]

    def token_keep(self, keep: torch.Tensor) -> torch.Tensor:
        """Per-token keep mask [B, T] (prompt and continuation) for feature coalitions ``keep`` [B, F]."""
        out = torch.ones(keep.shape[0], len(self.ids), dtype=torch.bool)
        out[:, self._covered] = keep[:, self._owner]
        return out

    def inputs(self, keep: torch.Tensor) -> Batch:
        """Model inputs for a batch of coalitions ``keep`` [B, F] (True = feature kept): the prompt
        and the continuation, T positions per row (the rows of ``delete`` may differ in length)."""
        keep = torch.as_tensor(keep, dtype=torch.bool)
        if keep.ndim == 1:
            keep = keep[None]
        inputs = self.mask.inputs(self, keep)
        if len(inputs) != keep.shape[0]:
            raise InvalidParameterError(
                f"mask {self.strategy!r} built {len(inputs)} prompt rows for {keep.shape[0]} coalitions; "  # pragma: no mutate
                "its inputs() must return one row per coalition."  # pragma: no mutate
            )
        return inputs
