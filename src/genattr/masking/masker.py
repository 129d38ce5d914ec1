"""How a feature is removed from the prompt.

A coalition is a boolean row ``keep[f]`` over the features; :meth:`Masker.inputs` turns a
batch of coalitions [B, F] into model :class:`~genattr.model.Inputs`. Tokens outside every
feature (special tokens, chat scaffolding, context) are always kept.

Strategies
----------
``attention`` (default)
    The removed token is replaced by the baseline token *and* hidden from every other token
    through the attention mask; the positions of the other tokens do not move. This is how
    GiLOT removes a token (it "masks the token and zeroes its attention"). Hiding alone would
    not do: the prediction of the first target token is read off the last prompt position, whose
    own hidden state always sees its own input, so the token is also replaced.
    Chosen as the default because it takes the feature's information out of the context without
    adding a token the model reads (``replace``) and without shifting or re-tokenising the rest
    of the prompt (``delete``).
``replace``
    The removed token is replaced by the baseline token id and stays visible, as Captum's
    ``FeatureAblation`` with a token baseline does. Use it to compare with Captum.
``delete``
    The feature's characters are deleted from the prompt text (with the spaces on one side, so
    that no double space is left; line breaks stay) and the text is tokenised again. Rows of
    different lengths are left-padded, the padding hidden. If nothing is left of the prompt, the
    baseline token stands for the empty prompt, since the model needs one position to predict from.

Baselines
---------
``baseline`` is a token id or one of ``"pad"``, ``"unk"``, ``"eos"``, ``"bos"``, ``"mask"``;
by default the tokenizer's pad token, else its unk token, else its eos token.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..defaults import BASELINE_NAMES, DEFAULT_MASK, MASKS
from ..errors import UnknownMaskError
from ..model import Inputs, LanguageModel
from ..text.prompt import Prompt
from ..text.segment import Feature


def resolve_baseline(tokenizer, baseline: int | str | None, vocab_size: int) -> int:
    """The baseline token id for ``baseline`` (see the module docstring)."""
    if baseline is None:
        for name in ("pad", "unk", "eos"):
            token_id = getattr(tokenizer, f"{name}_token_id", None)
            if token_id is not None:
                return int(token_id)
        raise UnknownMaskError(
            "the tokenizer has no pad, unk or eos token to use as baseline; pass baseline=<token id>."  # pragma: no mutate
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


def delete_spans(text: str, spans: Sequence[tuple[int, int]]) -> str:
    """``text`` without the character ``spans``, each taking one neighbouring whitespace run with it."""
    for start, end in sorted(spans, reverse=True):
        before, after = text[:start], text[end:]
        if (not before or before[-1].isspace()) and after[:1] in (" ", "\t"):
            after = after.lstrip(" \t")
        elif before[-1:] in (" ", "\t") and (not after or not after[0].isalnum()):
            before = before.rstrip(" \t")
        text = before + after
    return text


class Masker:
    """Builds prompt variants with features removed by one strategy (see the module docstring)."""

    def __init__(
        self,
        lm: LanguageModel,
        prompt: Prompt,
        features: Sequence[Feature],
        strategy: str = DEFAULT_MASK,
        baseline: int | str | None = None,
    ) -> None:
        if strategy not in MASKS:
            raise UnknownMaskError(
                f"unknown mask strategy {strategy!r}; choose one of {', '.join(MASKS)}."  # pragma: no mutate
            )
        self.lm, self.prompt, self.features, self.strategy = lm, prompt, list(features), strategy
        self.baseline_id = resolve_baseline(lm.tokenizer, baseline, lm.vocab_size)
        self.ids = torch.tensor(prompt.input_ids, dtype=torch.long)
        owner = torch.full((len(prompt),), -1, dtype=torch.long)
        for f in self.features:
            owner[list(f.tokens)] = f.index
        self._covered = (owner >= 0).nonzero().squeeze(-1)
        self._owner = owner[self._covered]

    @property
    def n_features(self) -> int:
        return len(self.features)

    def token_keep(self, keep: torch.Tensor) -> torch.Tensor:
        """Per-token keep mask [B, L] for feature coalitions ``keep`` [B, F]."""
        out = torch.ones(keep.shape[0], len(self.prompt), dtype=torch.bool)
        out[:, self._covered] = keep[:, self._owner]
        return out

    def inputs(self, keep: torch.Tensor) -> Inputs:
        """Model inputs for a batch of coalitions ``keep`` [B, F] (True = feature kept)."""
        keep = torch.as_tensor(keep, dtype=torch.bool)
        if keep.ndim == 1:
            keep = keep[None]
        if self.strategy == "delete":
            return self._deleted(keep)
        tok_keep = self.token_keep(keep)
        ids = torch.where(tok_keep, self.ids[None], torch.tensor(self.baseline_id))
        visible = tok_keep if self.strategy == "attention" else torch.ones_like(tok_keep)
        positions = torch.arange(len(self.prompt)).expand(keep.shape[0], -1).contiguous()
        return Inputs(ids, visible, positions)

    def _deleted(self, keep: torch.Tensor) -> Inputs:
        tokenizer, prompt = self.lm.tokenizer, self.prompt
        rows = []
        for row in keep.tolist():
            spans = [(f.start, f.end) for f, k in zip(self.features, row, strict=True) if not k]
            text = delete_spans(prompt.text, spans)
            ids = (
                tokenizer(text, add_special_tokens=prompt.add_special_tokens)["input_ids"]
                if text.strip()
                else []
            )
            rows.append(ids or [self.baseline_id])
        return Inputs.left_padded(rows, self.baseline_id)
