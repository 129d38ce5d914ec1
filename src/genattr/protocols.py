"""The tokenizer and the causal LM genattr works with, as protocols: what genattr calls on them.

A Hugging Face fast tokenizer (``PreTrainedTokenizerFast``) and causal LM (``PreTrainedModel``
with a language-modelling head) satisfy them; so does any object with these members. Where
Hugging Face declares a broader return type than genattr's calls produce (``decode`` of one list
of ids gives one string, ``apply_chat_template(..., tokenize=False)`` one string), the member
keeps Hugging Face's type, so that its classes match, and :func:`decode` and :func:`render_chat`
give the narrow one.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import Field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, cast, runtime_checkable

if TYPE_CHECKING:
    import torch
    from typing_extensions import Self


@runtime_checkable
class Tokenizer(Protocol):
    """A fast tokenizer: text to ids with character offsets, ids to text, its special tokens and,
    for chat prompts, its chat template (read with ``getattr(tokenizer, "chat_template", None)``).

    The ids of the named special tokens (``bos``, ``eos``, ``pad``, ``unk``, ``mask``) are read as
    ``getattr(tokenizer, f"{name}_token_id", None)``.
    """

    @property
    def unk_token(self) -> str | None: ...

    @property
    def unk_token_id(self) -> int | None: ...

    @property
    def eos_token_id(self) -> int | None: ...

    @property
    def pad_token_id(self) -> int | None: ...

    @property
    def all_special_ids(self) -> list[int]: ...

    @property
    def all_special_tokens(self) -> list[str]: ...

    def __call__(
        self,
        text: str,
        /,
        *,
        add_special_tokens: bool = ...,
        return_offsets_mapping: bool = ...,
        return_special_tokens_mask: bool = ...,
    ) -> Mapping[str, Any]:
        """``{"input_ids": [...]}``, with ``"offset_mapping"`` and ``"special_tokens_mask"`` when asked."""
        ...

    def decode(self, token_ids: list[int], /) -> str | list[str]: ...

    def convert_ids_to_tokens(self, ids: list[int], /) -> str | list[str]: ...

    def apply_chat_template(
        self,
        conversation: list[dict[str, str]],
        /,
        *,
        add_generation_prompt: bool = ...,
        tokenize: bool = ...,
    ) -> object: ...


class ForwardOutput(Protocol):
    """What the model's forward pass returns (a ``CausalLMOutputWithPast``): logits [B, Q, V],
    the attention probabilities of every layer (read only when asked for with
    ``output_attentions=True``; None otherwise), and the cache
    (:func:`~genattr.model.prefix.returned_cache`)."""

    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]
    logits: torch.Tensor
    attentions: tuple[torch.Tensor, ...]


@runtime_checkable
class CausalLM(Protocol):
    """A causal language model: a ``torch.nn.Module`` whose forward takes ``input_ids`` or
    ``inputs_embeds``, ``attention_mask``, ``position_ids``, ``use_cache``, the cache (as
    ``cache`` or ``past_key_values``) and, where it has them, ``logits_to_keep`` and
    ``output_attentions``, and returns a :class:`ForwardOutput`.

    ``config`` is read with ``getattr`` (``_name_or_path``, ``_attn_implementation``, the context
    length, ``sliding_window``, ``layer_types``); ``generation_config`` too, where there is one.
    """

    @property
    def config(self) -> Any: ...

    def __call__(self, **kwargs: Any) -> ForwardOutput: ...

    def forward(self, *args: Any, **kwargs: Any) -> Any: ...

    def eval(self) -> Self: ...

    def to(self, *args: Any, **kwargs: Any) -> Self: ...

    def parameters(self, recurse: bool = ...) -> Iterator[torch.nn.Parameter]: ...

    def modules(self) -> Iterator[torch.nn.Module]: ...

    def get_input_embeddings(self) -> torch.nn.Module: ...

    def get_output_embeddings(self) -> torch.nn.Module: ...

    def set_attn_implementation(self, attn_implementation: str, /) -> Any: ...


def decode(tokenizer: Tokenizer, ids: Sequence[int]) -> str:
    """The text of the token ``ids`` (one string: Hugging Face's ``decode`` declares the batch case too)."""
    return cast(str, tokenizer.decode(list(ids)))


def token_strings(tokenizer: Tokenizer, ids: Sequence[int]) -> list[str]:
    """The tokenizer's string for each of the token ``ids`` (Hugging Face's ``convert_ids_to_tokens``
    declares one string for one id too)."""
    return cast(list[str], tokenizer.convert_ids_to_tokens(list(ids)))


def render_chat(
    tokenizer: Tokenizer, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool
) -> str:
    """The chat ``messages`` rendered as text by the tokenizer's chat template (one string:
    Hugging Face's ``apply_chat_template`` declares the tokenised results too)."""
    conversation = [dict(m) for m in messages]
    return cast(
        str,
        tokenizer.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=add_generation_prompt
        ),
    )
