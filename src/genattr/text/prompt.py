"""The prompt being explained: its text, tokens, character offsets and what may be masked.

A :class:`Prompt` is built from plain text (tokenised the way the tokenizer does by default,
its own special tokens included, so results compare with peers that tokenise the same way)
or from chat messages (rendered with the tokenizer's chat template). Control tokens (BOS, EOS,
PAD and the other special tokens, chat template scaffolding) are never maskable; only the text
of the messages is. A word the tokenizer does not know (read as its unknown token) is text like
any other: it is maskable and becomes a feature, and an :class:`~genattr.errors.UnknownTokensWarning`
says how many such words the prompt holds.

Examples
--------
>>> from genattr.testing import tiny_lm
>>> tokenizer = tiny_lm().tokenizer           # a Llama-style (sentencepiece) tokenizer
>>> prompt = Prompt.from_text(tokenizer, "The cat sat on the mat.")
>>> prompt.tokens
('<s>', '▁The', '▁cat', '▁s', 'at', '▁on', '▁the', '▁ma', 't', '.')
>>> [(f.text, f.positions) for f in prompt.features("word")][2:]   # sub-word pieces merge into words
[('sat', (3, 4)), ('on', (5,)), ('the', (6,)), ('mat', (7, 8)), ('.', (9,))]
>>> chat = Prompt.from_messages(tiny_lm("qwen2").tokenizer, [{"role": "user", "content": "The cat sat."}])
>>> print(chat.text)
<|im_start|>user
The cat sat.<|im_end|>
<|im_start|>assistant
<BLANKLINE>
>>> [f.text for f in chat.features("word")]     # only the message's text is maskable
['The', 'cat', 'sat', '.']
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import EmptyPromptError, InputError, NoMaskableFeaturesError, UnknownTokensWarning
from ..protocols import Tokenizer, render_chat, token_strings
from .segment import Feature, content_span, segment

SHOWN_UNKNOWN_WORDS = 10
"""How many unknown words the warning quotes (it always counts them all)."""


def _encode(tokenizer: Tokenizer, text: str, add_special_tokens: bool) -> Mapping[str, Any]:
    try:
        enc = tokenizer(
            text,
            add_special_tokens=add_special_tokens,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
        )
    except NotImplementedError as exc:
        raise InputError(
            "genattr needs a fast tokenizer (one that reports character offsets); "
            "load the tokenizer with use_fast=True."
        ) from exc
    return enc


def control_tokens(
    tokenizer: Tokenizer,
    text: str,
    ids: Sequence[int],
    offsets: Sequence[tuple[int, int]],
    special_tokens_mask: Sequence[int],
) -> list[bool]:
    """Which tokens are the tokenizer's control tokens (never maskable, never features).

    A token is a control token when the tokenizer added it (``special_tokens_mask``), when its id
    is a special id other than the unknown token's, or when its characters spell a special token
    (``<|im_start|>`` written by a chat template). The last rule decides the unknown token's id:
    some tokenizers reuse a control token as their unknown token (SmolLM2's ``unk_token_id`` is
    its ``<|endoftext|>``), so that id is a control token where the text spells it, and an unknown
    word (ordinary text the tokenizer cannot spell) everywhere else.
    """
    special_ids = set(tokenizer.all_special_ids)
    spelled = set(tokenizer.all_special_tokens)
    unk = tokenizer.unk_token_id
    return [
        bool(added) or (i in special_ids and (i != unk or text[s:e] in spelled))
        for i, added, (s, e) in zip(ids, special_tokens_mask, offsets, strict=True)
    ]


def _warn_unknown(
    tokenizer: Tokenizer,
    text: str,
    ids: Sequence[int],
    offsets: Sequence[tuple[int, int]],
    maskable: Sequence[bool],
) -> None:
    """Warn with the number of word features (see :mod:`genattr.text.segment`) holding an unknown token."""
    unk = tokenizer.unk_token_id
    unknown = {
        t
        for t, (i, m, (s, e)) in enumerate(zip(ids, maskable, offsets, strict=True))
        if m and i == unk and content_span(text, s, e) is not None
    }
    if not unknown:
        return
    words = [f.text for f in segment(text, offsets, maskable, "word") if unknown.intersection(f.positions)]
    shown = ", ".join(map(repr, words[:SHOWN_UNKNOWN_WORDS]))
    more = f" and {len(words) - SHOWN_UNKNOWN_WORDS} more" if len(words) > SHOWN_UNKNOWN_WORDS else ""
    warnings.warn(
        f"the tokenizer did not know {len(words)} word(s) of the prompt ({shown}{more}): the model reads "
        f"each as the unknown token {tokenizer.unk_token!r}, so it cannot tell them apart. They are "
        "features all the same; their scores are those of the unknown token in their place.",
        UnknownTokensWarning,
        stacklevel=4,
    )


_SENTINEL = "\x00genattr-system\x00"


def default_system_message(
    tokenizer: Tokenizer, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = True
) -> str | None:
    """The system message the chat template inserts when ``messages`` have none, or None.

    With a sentinel system message the template renders ``before + sentinel + after``; the
    template adds a default system message exactly when the rendering without one is
    ``before + s + after`` with a non-empty ``s`` (then ``s`` is that message).
    """
    from jinja2 import TemplateError

    if any(m["role"] == "system" for m in messages):
        return None
    render = [dict(m) for m in messages]
    plain = render_chat(tokenizer, render, add_generation_prompt)
    try:
        marked = render_chat(
            tokenizer, [{"role": "system", "content": _SENTINEL}, *render], add_generation_prompt
        )
    except TemplateError:  # a template without a system role has no default system message either
        return None
    if marked.count(_SENTINEL) != 1:
        return None
    before, after = marked.split(_SENTINEL)
    inner = plain[len(before) : len(plain) - len(after)]
    if len(plain) > len(before) + len(after) and plain.startswith(before) and plain.endswith(after) and inner:
        return inner
    return None


@dataclass(frozen=True)
class Prompt:
    """A tokenised prompt.

    ``text`` is exactly the string given to the tokenizer (for chat input, the rendered
    template); ``offsets[i]`` is the character span of token ``i`` in it (``(0, 0)`` for
    special tokens the tokenizer adds); ``maskable[i]`` says whether token ``i`` may be removed.
    """

    text: str
    input_ids: tuple[int, ...]
    offsets: tuple[tuple[int, int], ...]
    tokens: tuple[str, ...]
    maskable: tuple[bool, ...]
    add_special_tokens: bool = True
    is_chat: bool = False

    @classmethod
    def from_text(cls, tokenizer: Tokenizer, text: str, *, add_special_tokens: bool = True) -> Prompt:
        """Tokenise plain ``text`` as the tokenizer does by default.

        Parameters
        ----------
        tokenizer : transformers.PreTrainedTokenizerFast
            A fast tokenizer (character offsets are needed).
        text : str
            The prompt.
        add_special_tokens : bool
            Whether the tokenizer adds its special tokens (a BOS for Llama); they are never maskable.

        Returns
        -------
        Prompt

        Raises
        ------
        genattr.errors.EmptyPromptError
            For an empty or whitespace-only ``text``.
        genattr.errors.NoMaskableFeaturesError
            When no token of ``text`` may be masked.
        """
        if not isinstance(text, str):
            raise InputError(
                f"prompt must be a string or a list of chat messages, not {type(text).__name__}."
            )
        if not text.strip():
            raise EmptyPromptError("the prompt is empty or only whitespace; give some text to explain.")
        return cls._tokenised(tokenizer, text, add_special_tokens)

    @classmethod
    def from_messages(
        cls,
        tokenizer: Tokenizer,
        messages: Sequence[Mapping[str, str]],
        *,
        add_generation_prompt: bool = True,
        include_default_system: bool = False,
    ) -> Prompt:
        """Render chat ``messages`` with the tokenizer's chat template.

        Only the characters of each message's ``content`` are maskable: the template's role
        markers, separators and special tokens stay in place whatever is removed. A system message
        the template adds by itself (SmolLM2's "You are a helpful AI assistant...") is scaffolding
        too, unless ``include_default_system``: then its text is a feature like the user's
        (the rendered prompt is the same either way).

        Parameters
        ----------
        tokenizer : transformers.PreTrainedTokenizerFast
            A fast tokenizer with a chat template.
        messages : sequence of mapping
            ``[{"role": "user", "content": "..."}, ...]``.
        add_generation_prompt : bool
            End the prompt with the template's opening of the assistant's turn.
        include_default_system : bool
            Make the system message the template adds by itself maskable.

        Returns
        -------
        Prompt
            With ``is_chat`` True (see the module docstring's example).

        Raises
        ------
        genattr.errors.InputError
            For malformed messages or a tokenizer without a chat template.
        genattr.errors.EmptyPromptError
            When every message is empty.
        """
        if not messages or not all(
            isinstance(m, Mapping) and "content" in m and "role" in m for m in messages
        ):
            raise InputError("chat input must be a non-empty list of {'role': ..., 'content': ...} messages.")
        if not any(str(m["content"]).strip() for m in messages):
            raise EmptyPromptError("every chat message is empty; give some text to explain.")
        if getattr(tokenizer, "chat_template", None) is None:
            raise InputError(
                "this tokenizer has no chat template; pass the prompt as a string, "
                "or set tokenizer.chat_template."
            )
        messages = [dict(m) for m in messages]
        text = render_chat(tokenizer, messages, add_generation_prompt)
        if include_default_system:
            default = default_system_message(tokenizer, messages, add_generation_prompt=add_generation_prompt)
            if default:
                messages = [{"role": "system", "content": default}, *messages]
        content_spans, cursor = [], 0
        for m in messages:
            content = str(m["content"])
            for candidate in (content, content.strip()):
                pos = text.find(candidate, cursor) if candidate else -1
                if pos >= 0:
                    content_spans.append((pos, pos + len(candidate)))
                    cursor = pos + len(candidate)
                    break
            else:
                if content.strip():
                    raise InputError(
                        f"the chat template rewrites message content ({content[:40]!r}...), so its "
                        "characters cannot be located; pass the rendered prompt as a string."
                    )
        return cls._tokenised(tokenizer, text, False, content_spans)

    @classmethod
    def _tokenised(
        cls,
        tokenizer: Tokenizer,
        text: str,
        add_special_tokens: bool,
        content_spans: list[tuple[int, int]] | None = None,
    ) -> Prompt:
        """Tokenise ``text``; a token is maskable when it is no control token, covers characters, and
        (for chat input) lies inside one of the messages' ``content_spans``."""
        enc = _encode(tokenizer, text, add_special_tokens)
        ids = list(enc["input_ids"])
        offsets = [tuple(o) for o in enc["offset_mapping"]]
        control = control_tokens(tokenizer, text, ids, offsets, enc["special_tokens_mask"])
        maskable = []
        for is_control, (s, e) in zip(control, offsets, strict=True):
            ok = not is_control and e > s
            if ok and content_spans is not None:
                inner = content_span(text, s, e) or (s, e)
                ok = any(cs <= inner[0] and inner[1] <= ce for cs, ce in content_spans)
            maskable.append(ok)
        _warn_unknown(tokenizer, text, ids, offsets, maskable)
        prompt = cls(
            text,
            tuple(ids),
            tuple(offsets),
            tuple(token_strings(tokenizer, ids)),
            tuple(maskable),
            add_special_tokens,
            content_spans is not None,
        )
        prompt._require_maskable()
        return prompt

    def _require_maskable(self) -> None:
        if not any(self.maskable):
            raise NoMaskableFeaturesError(
                "the prompt has no maskable token: it holds only special tokens (BOS, EOS, PAD and other "
                "control tokens) or chat template scaffolding; give a prompt with ordinary text."
            )

    def __len__(self) -> int:
        return len(self.input_ids)

    def features(
        self,
        level: str = "word",
        *,
        pattern: str | re.Pattern | None = None,
        spans: Sequence[tuple[int, int]] | None = None,
    ) -> list[Feature]:
        """The prompt's features at ``level`` (see :mod:`genattr.text.segment`).

        Parameters
        ----------
        level : str
            A name in :data:`genattr.LEVELS` (``"token"``, ``"word"``, ``"sentence"``, ``"regex"``,
            ``"spans"`` or a registered one).
        pattern, spans : optional
            For ``level="regex"`` and ``level="spans"``, as in :func:`genattr.explain`.

        Returns
        -------
        list of Feature
            Numbered 0, 1, ... in prompt order; each holds its text, character span and token positions.

        Raises
        ------
        genattr.errors.UnknownLevelError
            For a level that is not registered.
        genattr.errors.NoMaskableFeaturesError
            When the level finds no feature.
        """
        return segment(self.text, self.offsets, self.maskable, level, pattern=pattern, spans=spans)

    def to_dict(self) -> dict:
        return {
            "text": self.text,
            "input_ids": list(self.input_ids),
            "offsets": [list(o) for o in self.offsets],
            "tokens": list(self.tokens),
            "maskable": list(self.maskable),
            "add_special_tokens": self.add_special_tokens,
            "is_chat": self.is_chat,
        }


__all__ = ["Feature", "Prompt"]
