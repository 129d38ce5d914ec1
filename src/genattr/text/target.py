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
from ..errors import EmptyTargetError, InputError, InvalidParameterError
from ..model import Batch, LanguageModel
from ..protocols import Tokenizer, decode
from .prompt import Prompt
from .segment import Feature


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


def token_boundaries(tokenizer: Tokenizer, target: Target) -> list[tuple[int, int]]:
    """The character span of each target token in ``target.text``: from the tokenizer's offsets
    when the text tokenises to the target's ids, else from the decoded prefixes (a generated
    target's text is the decoding of its ids, and decoding ids[:s] gives its first s tokens' text).

    Raises
    ------
    genattr.errors.InputError
        When neither way gives spans that tile the text (a tokenizer whose decoding of a prefix
        is not a prefix of the whole text).
    """
    enc = tokenizer(target.text, add_special_tokens=False, return_offsets_mapping=True)
    if list(enc["input_ids"]) == list(target.ids):
        return [(int(s), int(e)) for s, e in enc["offset_mapping"]]
    ends = [len(decode(tokenizer, target.ids[: s + 1])) for s in range(len(target))]
    if decode(tokenizer, target.ids) != target.text or ends != sorted(ends):
        raise InputError(
            "the target's text cannot be split into its tokens' characters with this tokenizer; "
            "give target_token or target_span as token indices instead."
        )
    return list(zip([0, *ends[:-1]], ends, strict=True))


def _token_range(
    tokenizer: Tokenizer, target: Target, span: str | tuple[int, int], what: str
) -> tuple[int, int]:
    """The tokens [a, b) whose characters are ``span`` (a substring: its first occurrence; or a
    character span (start, end) of ``target.text``), which must start and end on token boundaries."""
    text = target.text
    if isinstance(span, str):
        if not span or (start := text.find(span)) < 0:
            raise InputError(f"{what} {span!r} does not occur in the response {text!r}.")
        end = start + len(span)
    else:
        start, end = (int(v) for v in span)
        if not 0 <= start < end <= len(text):
            raise InputError(
                f"{what} {tuple(span)!r} is not a character span of the {len(text)}-character response; "
                "give 0 <= start < end <= len(response)."
            )
    bounds = token_boundaries(tokenizer, target)
    first = [i for i, (s, e) in enumerate(bounds) if s <= start < e and not text[s:start].strip()]
    last = [i for i, (s, e) in enumerate(bounds) if s < end <= e and end == e]
    if not first or not last:
        cut = ", ".join(repr(text[s:e]) for s, e in bounds)
        raise InputError(
            f"{what} {text[start:end]!r} does not start and end on token boundaries of the response "
            f"(its tokens: {cut}); widen it to whole tokens."
        )
    return first[0], last[0] + 1


def explained_tokens(
    tokenizer: Tokenizer,
    target: Target,
    target_token: int | str | None = None,
    target_span: str | tuple[int, int] | None = None,
) -> tuple[int, int]:
    """The target tokens [a, b) to explain: every one by default; the one ``target_token`` (a token
    index, negative from the end, or a substring of the response that is one token: its first
    occurrence); or the tokens ``target_span`` covers (a substring, first occurrence, or a
    character span (start, end) of the response text, starting and ending on token boundaries).

    Examples
    --------
    >>> from genattr.testing import tiny_lm
    >>> lm = tiny_lm()
    >>> prompt = Prompt.from_text(lm.tokenizer, "The doctor opens the door")
    >>> target = resolve_target(lm, prompt, " and the nurse")
    >>> explained_tokens(lm.tokenizer, target), explained_tokens(lm.tokenizer, target, target_token=-1)
    ((0, 3), (2, 3))
    >>> explained_tokens(lm.tokenizer, target, target_span="the nurse")
    (1, 3)

    Raises
    ------
    genattr.errors.InputError
        For both given, an index outside the target, or a substring or span that is absent or
        does not fall on token boundaries (one token for ``target_token``).
    """
    n = len(target)
    if target_token is not None and target_span is not None:
        raise InputError("give target_token (one token) or target_span (a part of the response), not both.")
    if target_span is not None:
        return _token_range(tokenizer, target, target_span, "target_span")
    if target_token is None:
        return 0, n
    if isinstance(target_token, str):
        a, b = _token_range(tokenizer, target, target_token, "target_token")
        if b - a != 1:
            raise InputError(
                f"target_token {target_token!r} covers {b - a} tokens of the response; give one token, "
                "or explain them together with target_span=..."
            )
        return a, b
    if isinstance(target_token, bool) or not isinstance(target_token, int):
        raise InputError(f"target_token must be a token index or a substring, not {target_token!r}.")
    if not -n <= target_token < n:
        raise InputError(
            f"target_token={target_token} is outside the {n}-token response (indices {-n}..{n - 1})."
        )
    return target_token % n, target_token % n + 1


def output_token_features(prompt: Prompt, target: Target, first_index: int, count: int) -> list[Feature]:
    """One feature per output token y_1..y_count, numbered from ``first_index``: token s sits at
    position L + s of the rows (after the prompt's L tokens); its characters are given in the
    prompt's text followed by the output tokens' display strings."""
    features, start = [], len(prompt.text)
    for s in range(count):
        text = target.tokens[s]
        features.append(Feature(first_index + s, text, start, start + len(text), (len(prompt) + s,)))
        start += len(text)
    return features
