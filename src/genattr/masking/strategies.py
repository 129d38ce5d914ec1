"""The built-in masks: ``attention`` (the default), ``replace`` and ``delete``.

``attention`` takes the feature's information out of the context without adding a token the
model reads (as ``replace`` does) and without shifting or re-tokenising the rest of the prompt
(as ``delete`` does); hence the default.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import InvalidParameterError
from ..model import Batch
from .base import Mask, register_mask
from .masker import Masker


def _baseline_inputs(masker: Masker, keep: torch.Tensor, hide: bool) -> Batch:
    """The prompt with every removed token replaced by the baseline token, hidden from every other
    token through the attention mask when ``hide``; positions unchanged."""
    tok_keep = masker.token_keep(keep)
    ids = torch.where(tok_keep, masker.ids[None], torch.tensor(masker.baseline_id))
    visible = tok_keep if hide else torch.ones_like(tok_keep)
    positions = torch.arange(len(masker.ids)).expand(keep.shape[0], -1).contiguous()
    return Batch(ids, visible, positions)


@register_mask
class Attention(Mask):
    """The removed token is replaced by the baseline token *and* hidden from every other token
    through the attention mask; the positions of the other tokens do not move. This is how GiLOT
    removes a token (it "masks the token and zeroes its attention"). Hiding alone would not do:
    the prediction of the first target token is read off the last prompt position, whose own
    hidden state always sees its own input, so the token is also replaced."""

    name = "attention"

    def inputs(self, masker: Masker, keep: torch.Tensor) -> Batch:
        return _baseline_inputs(masker, keep, hide=True)


@register_mask
class Replace(Mask):
    """The removed token is replaced by the baseline token id and stays visible, as Captum's
    ``FeatureAblation`` with a token baseline does. Use it to compare with Captum."""

    name = "replace"

    def inputs(self, masker: Masker, keep: torch.Tensor) -> Batch:
        return _baseline_inputs(masker, keep, hide=False)


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


@register_mask
class Delete(Mask):
    """The feature's characters are deleted from the prompt text (with the spaces on one side, so
    that no double space is left; line breaks stay) and the text is tokenised again. Rows of
    different lengths are left-padded, the padding hidden. If nothing is left of the prompt, the
    baseline token stands for the empty prompt, since the model needs one position to predict from.
    The continuation (teacher-forced target tokens) follows every row as it is: deleting one of
    its tokens would move the positions that predict the rest, so features over it are refused."""

    name = "delete"

    def inputs(self, masker: Masker, keep: torch.Tensor) -> Batch:
        tokenizer, prompt = masker.lm.tokenizer, masker.prompt
        if any(t >= len(prompt) for f in masker.features for t in f.positions):
            raise InvalidParameterError(
                "mask='delete' re-tokenises the prompt text and cannot remove an output token; use "  # pragma: no mutate
                "mask='attention' or mask='replace' to attribute to output tokens."  # pragma: no mutate
            )
        rows = []
        for row in keep.tolist():
            spans = [(f.start, f.end) for f, k in zip(masker.features, row, strict=True) if not k]
            text = delete_spans(prompt.text, spans)
            ids = (
                tokenizer(text, add_special_tokens=prompt.add_special_tokens)["input_ids"]
                if text.strip()
                else []
            )
            rows.append([*(ids or [masker.baseline_id]), *masker.continuation.tolist()])
        return Batch.left_padded(rows, masker.baseline_id)
