"""What is explained: a given continuation, or the model's own greedy output.

A continuation text is tokenised without special tokens, exactly as it follows the prompt
(so mind its leading space: ``" Paris"``, not ``"Paris"``, for byte-level BPE models). With
``target=None`` the model's greedy continuation of the full prompt is explained (up to
``max_new_tokens`` tokens, EOS excluded). GiLOT explains the distribution over the model's
likely outputs instead and needs no target.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..defaults import DEFAULT_MAX_NEW_TOKENS
from ..errors import EmptyTargetError, InvalidParameterError
from ..model import Batch, LanguageModel
from ..protocols import Tokenizer, decode
from .prompt import Prompt


@dataclass(frozen=True)
class Target:
    """The continuation explained: n token ids, their text, one display string per token, and
    whether the model generated it (``generated``: its greedy output, or GiLOT's most probable one)
    or the user gave it."""

    ids: tuple[int, ...]
    text: str
    tokens: tuple[str, ...]
    generated: bool

    def __len__(self) -> int:
        return len(self.ids)


def _display(tokenizer: Tokenizer, ids: Sequence[int]) -> tuple[str, ...]:
    return tuple(decode(tokenizer, [i]) for i in ids)


def resolve_target(
    lm: LanguageModel,
    prompt: Prompt,
    target: str | Sequence[int] | None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> Target:
    """Turn the user's ``target`` into a :class:`Target` (see the module docstring).

    Parameters
    ----------
    lm : LanguageModel
        The model (its tokenizer, and its greedy decoding when ``target`` is None).
    prompt : Prompt
        The prompt the target follows.
    target : str or sequence of int or None
        The continuation as text (tokenised without special tokens) or token ids; None for the
        model's greedy continuation (EOS excluded).
    max_new_tokens : int
        The length limit of the greedy continuation.

    Returns
    -------
    Target

    Raises
    ------
    genattr.errors.EmptyTargetError
        For an empty target, or a greedy continuation that ends at once.
    genattr.errors.InvalidParameterError
        For token ids outside the vocabulary.
    genattr.errors.ContextLengthError
        When prompt and target exceed the context window.

    Examples
    --------
    >>> from genattr.testing import tiny_lm
    >>> lm = tiny_lm()
    >>> prompt = Prompt.from_text(lm.tokenizer, "The doctor opens the door")
    >>> resolve_target(lm, prompt, " and the nurse").tokens
    ('and', 'the', 'nurse')
    >>> generated = resolve_target(lm, prompt, None, max_new_tokens=3)
    >>> generated.generated, len(generated) <= 3
    (True, True)
    """
    tokenizer = lm.tokenizer
    if target is None:
        lm.check_length(len(prompt) + max_new_tokens, "prompt + max_new_tokens")
        generation = lm.generate(Batch.from_ids(prompt.input_ids), max_new_tokens)
        ids = generation.token_ids[0]
        if not ids:
            raise EmptyTargetError(
                "the model's greedy continuation is empty (its first token is end-of-sequence); "
                "pass target=... to explain a continuation of your choice."
            )
        return Target(tuple(ids), decode(tokenizer, ids), _display(tokenizer, ids), True)
    if isinstance(target, str):
        if not target:
            raise EmptyTargetError(
                "the target is an empty string; give a non-empty continuation, or target=None "
                "to explain the model's own greedy output."
            )
        ids = tokenizer(target, add_special_tokens=False)["input_ids"]
        if not ids:
            raise EmptyTargetError(
                f"the target {target!r} tokenises to no token; give a non-empty continuation."
            )
        text = target
    else:
        ids = [int(i) for i in target]
        if not ids:
            raise EmptyTargetError("the target token list is empty; give at least one token id.")
        bad = [i for i in ids if not 0 <= i < lm.vocab_size]
        if bad:
            raise InvalidParameterError(
                f"target token ids {bad[:5]} are outside the vocabulary (0..{lm.vocab_size - 1})."
            )
        text = decode(tokenizer, ids)
    lm.check_length(len(prompt) + len(ids))
    return Target(tuple(ids), text, _display(tokenizer, ids), False)
