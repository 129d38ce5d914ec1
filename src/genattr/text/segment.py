"""Feature segmentation: group prompt tokens into the features an attribution scores.

Everything here is a pure function of the prompt text, each token's character span and
whether the token may be masked, so that a saved result can be re-segmented (see
:meth:`genattr.Attribution.aggregate`) without the tokenizer.

Levels
------
``token``     every maskable token is a feature.
``word``      words are runs of word characters (letters, digits, ``_``, joined by ``'`` or
              ``-``) or runs of punctuation; sub-word pieces of one word merge into one
              feature whatever the tokenizer (byte-level BPE, sentencepiece, word-level).
              A whitespace-only token joins the feature of the word that follows it.
``sentence``  sentences end at ``.``, ``!`` or ``?`` followed by whitespace, or at a line break.
``regex``     each match of a user pattern is a feature; tokens outside every match are context
              (kept, never masked, not scored).
``spans``     user character spans ``(start, end)``, with the same rule as ``regex``.

Each level is a :class:`Level` subclass registered under its name in :data:`LEVELS`; a user adds
one with :func:`register_level` and asks for it by name (``level="line"``) like the built-ins.

A token whose characters overlap two spans merges them into one feature: a feature is never
split across tokens, since tokens are what the model sees.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from ..errors import InputError, NoMaskableFeaturesError, UnknownLevelError
from ..names import NameRegistry

WORD_PATTERN = re.compile(r"\w+(?:['’-]\w+)*|[^\w\s]+")
SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+|\s*\n\s*")


@dataclass(frozen=True)
class Feature:
    """One scored unit of the prompt.

    ``index`` is its number (features are numbered 0, 1, ... in prompt order); ``start``/``end``
    are character offsets into the prompt text (``text == prompt[start:end]``); ``positions`` are
    the indices, into the prompt's token ids, of the tokens the feature covers.
    """

    index: int
    text: str
    start: int
    end: int
    positions: tuple[int, ...]

    def to_dict(self) -> dict:
        return {
            "index": self.index,
            "text": self.text,
            "start": self.start,
            "end": self.end,
            "positions": list(self.positions),
        }


def token_owners(features: Sequence[Feature], n_tokens: int) -> list[int]:
    """The index of the feature holding each of the prompt's ``n_tokens`` positions, -1 for a
    position outside every feature (a control token, template scaffolding, context): the one map
    from tokens to features that masking, the gradient methods and aggregation read."""
    owners = [-1] * n_tokens
    for f in features:
        for t in f.positions:
            owners[t] = f.index
    return owners


def content_span(text: str, start: int, end: int) -> tuple[int, int] | None:
    """The span of ``text[start:end]`` without leading and trailing whitespace, or None if blank."""
    piece = text[start:end]
    stripped = piece.strip()
    if not stripped:
        return None
    lead = len(piece) - len(piece.lstrip())
    return start + lead, start + lead + len(stripped)


def word_spans(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in WORD_PATTERN.finditer(text)]


def sentence_spans(text: str) -> list[tuple[int, int]]:
    spans, start = [], 0
    for m in SENTENCE_BREAK.finditer(text):
        spans.append((start, m.start()))
        start = m.end()
    spans.append((start, len(text)))
    out = []
    for s, e in spans:
        c = content_span(text, s, e)
        if c is not None:
            out.append(c)
    return out


def regex_spans(text: str, pattern: str | re.Pattern) -> list[tuple[int, int]]:
    try:
        compiled = re.compile(pattern) if isinstance(pattern, str) else pattern
    except re.error as exc:
        raise InputError(f"invalid regular expression {pattern!r}: {exc}; fix the pattern.") from exc
    return [m.span() for m in compiled.finditer(text) if m.end() > m.start()]


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            self.parent[max(ri, rj)] = min(ri, rj)


def _overlapping(spans: Sequence[tuple[int, int]], starts: Sequence[int], s: int, e: int) -> list[int]:
    """Indices of the sorted, disjoint ``spans`` that overlap ``[s, e)``."""
    i = max(bisect.bisect_right(starts, s) - 1, 0)
    hits = []
    while i < len(spans) and spans[i][0] < e:
        if spans[i][1] > s:
            hits.append(i)
        i += 1
    return hits


def _group(
    text: str,
    offsets: Sequence[tuple[int, int]],
    maskable: Sequence[bool],
    spans: Sequence[tuple[int, int]],
    attach_blank: bool,
) -> list[Feature]:
    """Group maskable tokens by the spans their characters overlap (see module docstring)."""
    spans = sorted(set(spans))
    # Overlapping user spans are merged first so that the bisect lookup sees disjoint spans.
    merged: list[tuple[int, int]] = []
    for s, e in spans:
        if merged and s < merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], e))
        else:
            merged.append((s, e))
    spans = merged
    starts = [s for s, _ in spans]
    uf = _UnionFind(len(spans))
    token_span: dict[int, int] = {}
    blank: list[int] = []
    for t, (s, e) in enumerate(offsets):
        if not maskable[t]:
            continue
        content = content_span(text, s, e)
        if content is None:
            blank.append(t)
            continue
        hits = _overlapping(spans, starts, *content)
        if not hits:
            continue
        for h in hits[1:]:
            uf.union(hits[0], h)
        token_span[t] = hits[0]
    content_tokens = sorted(token_span)
    for t in blank:
        if attach_blank:
            if content_tokens:
                i = bisect.bisect_right(content_tokens, t)
                token_span[t] = token_span[content_tokens[min(i, len(content_tokens) - 1)]]
        else:
            s, e = offsets[t]
            hits = _overlapping(spans, starts, s, max(e, s + 1))
            if hits and spans[hits[0]][0] <= s and e <= spans[hits[0]][1]:
                token_span[t] = hits[0]
    groups: dict[int, list[int]] = {}
    for t, h in token_span.items():
        groups.setdefault(uf.find(h), []).append(t)
    features = []
    for members in groups.values():
        roots = {uf.find(token_span[t]) for t in members}
        span_ids = [i for i in range(len(spans)) if uf.find(i) in roots]
        start = min(spans[i][0] for i in span_ids)
        end = max(spans[i][1] for i in span_ids)
        features.append((start, end, tuple(sorted(members))))
    features.sort(key=lambda f: (f[2][0], f[0]))
    return [Feature(i, text[s:e], s, e, toks) for i, (s, e, toks) in enumerate(features)]


def _fence(text: str, offsets: Sequence[tuple[int, int]], maskable: Sequence[bool]) -> str:
    """``text`` with the characters of non-maskable tokens (special tokens, chat scaffolding)
    turned into line breaks, so that no word or sentence runs across them."""
    chars = list(text)
    for (s, e), m in zip(offsets, maskable, strict=True):
        if not m:
            chars[s:e] = "\n" * (e - s)
    return "".join(chars)


class Level:
    """A way to cut the prompt into features: subclass it, set ``name``, implement
    :meth:`find_spans` (or :meth:`features`) and register it with :func:`register_level`.

    ``fence``: spans are found in the text with the characters of control tokens turned into line
    breaks, so that none runs across them (else in the prompt text itself).
    ``attach_blank``: a whitespace-only token joins the feature of the next token with content;
    else it joins a feature only inside a span, and tokens outside every span are context.
    ``needs``: the keyword of :func:`segment` the level reads (``"pattern"``, ``"spans"``), if any.
    """

    name: ClassVar[str] = ""
    fence: ClassVar[bool] = True
    attach_blank: ClassVar[bool] = True
    needs: ClassVar[str | None] = None

    def find_spans(
        self, text: str, *, pattern: str | re.Pattern | None, spans: Sequence[tuple[int, int]] | None
    ) -> list[tuple[int, int]]:
        """Character spans ``(start, end)`` of the features in ``text``."""
        raise NotImplementedError

    def features(
        self,
        text: str,
        offsets: Sequence[tuple[int, int]],
        maskable: Sequence[bool],
        *,
        pattern: str | re.Pattern | None = None,
        spans: Sequence[tuple[int, int]] | None = None,
    ) -> list[Feature]:
        """The maskable tokens grouped by the spans of :meth:`find_spans` (see the module docstring)."""
        source = _fence(text, offsets, maskable) if self.fence else text
        found = self.find_spans(source, pattern=pattern, spans=spans)
        for s, e in found:
            if not (isinstance(s, int) and isinstance(e, int) and 0 <= s < e <= len(text)):
                raise InputError(
                    f"span ({s}, {e}) of level {self.name!r} is not a non-empty character range inside "
                    f"the prompt (0..{len(text)}); fix the span."
                )
        return _group(text, offsets, maskable, list(found), self.attach_blank)


LEVELS = NameRegistry("level", Level, UnknownLevelError)
"""Every segmentation level by name, in registration order (built-ins: see the module docstring)."""


def register_level(cls: type[Level]) -> type[Level]:
    """Class decorator: make a :class:`Level` subclass available as ``level=cls.name``.

    Parameters
    ----------
    cls : type
        A subclass of :class:`Level` with a ``name`` and :meth:`Level.find_spans` (or
        :meth:`Level.features`).

    Returns
    -------
    type
        ``cls`` itself, so that the function works as a decorator.

    Raises
    ------
    genattr.errors.InvalidParameterError
        When ``cls`` is not a :class:`Level` subclass, has no ``name``, or its name is taken by
        another class (a built-in is never replaced).

    Examples
    --------
    >>> import genattr
    >>> from genattr.testing import tiny_lm
    >>> @register_level
    ... class Clause(Level):
    ...     name = "clause"
    ...     def find_spans(self, text, *, pattern, spans):
    ...         return [m.span() for m in re.finditer("[^, ][^,]*", text)]
    >>> res = genattr.explain(tiny_lm(), "The doctor opens the door, and the nurse", target=" sings",
    ...                       level="clause")
    >>> [f.text for f in res.features]
    ['The doctor opens the door', 'and the nurse']
    >>> del LEVELS._classes["clause"]  # leave the registry as the other examples expect it
    """
    return LEVELS.register(cls)


def plain_levels() -> list[str]:
    """The levels that read no ``pattern`` or ``spans`` (the command line's choices)."""
    return [name for name, cls in LEVELS.items() if cls.needs is None]


@register_level
class Token(Level):
    """Every maskable token is a feature."""

    name = "token"

    def features(self, text, offsets, maskable, *, pattern=None, spans=None) -> list[Feature]:
        features: list[Feature] = []
        for t, (s, e) in enumerate(offsets):
            if maskable[t]:
                features.append(Feature(len(features), text[s:e], s, e, (t,)))
        return features


@register_level
class Word(Level):
    """Runs of word characters (joined by ``'`` or ``-``) or runs of punctuation."""

    name = "word"

    def find_spans(self, text, *, pattern=None, spans=None) -> list[tuple[int, int]]:
        return word_spans(text)


@register_level
class Sentence(Level):
    """Sentences, ending at ``.``, ``!`` or ``?`` before whitespace, or at a line break."""

    name = "sentence"

    def find_spans(self, text, *, pattern=None, spans=None) -> list[tuple[int, int]]:
        return sentence_spans(text)


@register_level
class Regex(Level):
    """Each match of the user's ``pattern``."""

    name = "regex"
    fence = attach_blank = False
    needs = "pattern"

    def find_spans(self, text, *, pattern=None, spans=None) -> list[tuple[int, int]]:
        if pattern is None:
            raise InputError(
                "level='regex' needs pattern=...; pass a regular expression whose matches are the features."
            )
        return regex_spans(text, pattern)


@register_level
class Spans(Level):
    """The user's character ``spans``."""

    name = "spans"
    fence = attach_blank = False
    needs = "spans"

    def find_spans(self, text, *, pattern=None, spans=None) -> list[tuple[int, int]]:
        if not spans:
            raise InputError(
                "level='spans' needs spans=[(start, end), ...] character offsets into the prompt."
            )
        return list(spans)


def segment(
    text: str,
    offsets: Sequence[tuple[int, int]],
    maskable: Sequence[bool],
    level: str = "word",
    *,
    pattern: str | re.Pattern | None = None,
    spans: Sequence[tuple[int, int]] | None = None,
) -> list[Feature]:
    """Split a tokenised prompt into features at ``level``, a name in :data:`LEVELS`."""
    features = LEVELS.get(level)().features(text, offsets, maskable, pattern=pattern, spans=spans)
    if not features:
        raise NoMaskableFeaturesError(
            f"the prompt has no maskable feature at level {level!r} (only special tokens, template scaffolding, "
            "or no match); give a prompt with ordinary text, or another level."
        )
    return features
