"""Synthetic tasks whose relevant prompt words are known by construction.

Each prompt is a sequence of words separated by single spaces, beginning with its task word;
the answer follows the prompt. ``ground_truth`` lists the positions (in ``words``) of the
words that decide the answer, which are also the indices of the prompt's word-level features
(``genattr.explain(..., level="word")``) under the zoo tokenizer.

Tasks
-----
``recall``     key-value lookup: ``recall k1 v1 k2 v2 ... query k`` -> the value of ``k``.
               G = the query key, the matching key in the list, and its value.
``either``     redundant triggers: a bag of words -> ``yes`` if a trigger word is present, else
               ``no``. G = the triggers (evaluation prompts carry one or two). Each trigger fires
               independently with probability 0.9 (a noisy OR), so the model's p(yes) is about
               0.9 with one trigger and 0.99 with two: removing one of two triggers changes
               little, removing both flips the answer.
``sentiment``  neutral fillers plus one or two polar words of one polarity -> ``positive`` or
               ``negative`` (``neutral`` when no polar word is left). G = the polar words.
``story``      a topic word picks a cluster of six interchangeable words; the answer is 6 to 8
               words sampled from the cluster; a ``shade`` word changes which words of the cluster
               are preferred (a decoy: it moves the distribution, not the meaning); fillers change
               nothing. G = the topic word.
``copy``       induction: ``copy w1 ... wn again wq`` -> the word that followed ``wq``.
               G = the query word, its earlier occurrence, and the word after it.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import InvalidParameterError

TASKS = ("recall", "either", "sentiment", "story", "copy")

KEYS = "ant bee cow doe elk fox gnu hen jay kiwi lark mole newt owl pig ram".split()
VALUES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen"
).split()
TRIGGERS = ["fire", "smoke", "alarm", "siren", "storm", "flood"]
POSITIVE = "good great happy lovely excellent wonderful nice superb".split()
NEGATIVE = "bad awful sad terrible horrible poor nasty dreadful".split()
FILLERS = (
    "the a of to in on at with from by table chair window door road hill river stone cloud "
    "paper lamp glass coat shoe clock bag box cup wall floor roof field gate path yard fence "
    "pole rope wire card"
).split()
CLUSTERS = {
    "sea": ["wave", "tide", "shore", "salt", "shell", "reef"],
    "forest": ["oak", "pine", "moss", "fern", "leaf", "bark"],
    "city": ["street", "tower", "tram", "bridge", "square", "market"],
    "kitchen": ["pan", "spoon", "knife", "bowl", "oven", "plate"],
    "space": ["star", "moon", "comet", "orbit", "planet", "rocket"],
}
SHADES = {"calm": (0.3, 0.3, 0.3, 0.034, 0.033, 0.033), "wild": (0.034, 0.033, 0.033, 0.3, 0.3, 0.3)}
UNIFORM = (1 / 6,) * 6
COPY_WORDS = (
    "bolt cask dune echo gust hive iris jade kelp lime mint node opal peak quay rune sage tusk "
    "urn vale wisp yarn zinc fjord"
).split()
ANSWERS = ("yes", "no", "positive", "negative", "neutral")
MARKERS = ("query", "again")


def vocabulary() -> list[str]:
    """Every word of every task, in a fixed order (the tokenizer's vocabulary after its specials)."""
    words = [
        *TASKS,
        *MARKERS,
        *ANSWERS,
        *KEYS,
        *VALUES,
        *TRIGGERS,
        *POSITIVE,
        *NEGATIVE,
        *FILLERS,
        *CLUSTERS,
        *SHADES,
        *(w for c in CLUSTERS.values() for w in c),
        *COPY_WORDS,
    ]
    if len(set(words)) != len(words):
        raise RuntimeError("zoo vocabulary has duplicate words")
    return words


@dataclass(frozen=True)
class Example:
    """A labelled prompt: its words, the expected answer, and the ground-truth word positions."""

    task: str
    words: tuple[str, ...]
    answer_words: tuple[str, ...]
    ground_truth: tuple[int, ...]
    info: dict = field(default_factory=dict, compare=False)

    @property
    def prompt(self) -> str:
        return " ".join(self.words)

    @property
    def answer(self) -> str:
        """The expected continuation text (with its leading space, as it follows the prompt)."""
        return " " + " ".join(self.answer_words)


def _recall(rng: random.Random) -> Example:
    n = rng.randint(3, 5)
    keys, values = rng.sample(KEYS, n), rng.sample(VALUES, n)
    q = rng.randrange(n)
    words = ["recall"]
    for k, v in zip(keys, values, strict=True):
        words += [k, v]
    words += ["query", keys[q]]
    return Example(
        "recall", tuple(words), (values[q],), tuple(sorted((1 + 2 * q, 2 + 2 * q, len(words) - 1)))
    )


TRIGGER_FIRES = 0.9


def either_answer(words: Sequence[str]) -> str:
    """The most likely answer: ``yes`` when a trigger is present."""
    return "yes" if any(w in TRIGGERS for w in words) else "no"


def either_yes_probability(words: Sequence[str]) -> float:
    """p(yes) under the noisy OR: 1 - (1 - 0.9)^(number of triggers)."""
    return 1 - (1 - TRIGGER_FIRES) ** sum(w in TRIGGERS for w in words)


def _either(rng: random.Random, triggers: int | None = None) -> Example:
    k = rng.choice((1, 2)) if triggers is None else triggers
    n = rng.randint(5, 9)
    body = rng.sample(FILLERS, n - k) + rng.sample(TRIGGERS, k)
    rng.shuffle(body)
    words = ("either", *body)
    gt = tuple(i for i, w in enumerate(words) if w in TRIGGERS)
    return Example("either", words, (either_answer(words),), gt, {"triggers": k})


def sentiment_answer(words: Sequence[str]) -> str:
    pos, neg = sum(w in POSITIVE for w in words), sum(w in NEGATIVE for w in words)
    return "positive" if pos > neg else "negative" if neg > pos else "neutral"


def _sentiment(rng: random.Random, polar: int | None = None) -> Example:
    k = rng.choice((1, 2)) if polar is None else polar
    lexicon = rng.choice((POSITIVE, NEGATIVE))
    n = rng.randint(5, 9)
    body = rng.sample(FILLERS, n - k) + rng.sample(lexicon, k)
    rng.shuffle(body)
    words = ("sentiment", *body)
    gt = tuple(i for i, w in enumerate(words) if w in POSITIVE or w in NEGATIVE)
    return Example("sentiment", words, (sentiment_answer(words),), gt, {"polar": k})


def story_weights(words: Sequence[str]) -> tuple[float, ...]:
    """The preference over a cluster's six words given the prompt's shade word (uniform if none)."""
    for w in words:
        if w in SHADES:
            return SHADES[w]
    return UNIFORM


def _story(rng: random.Random, shade: bool = True) -> Example:
    topic = rng.choice(list(CLUSTERS))
    n = rng.randint(4, 7)
    body = rng.sample(FILLERS, n) + [topic] + ([rng.choice(list(SHADES))] if shade else [])
    rng.shuffle(body)
    words = ("story", *body)
    cluster = CLUSTERS[topic]
    answer = tuple(rng.choices(cluster, weights=story_weights(words), k=rng.randint(6, 8)))
    info = {
        "topic": topic,
        "cluster": list(cluster),
        "shade": next((i for i, w in enumerate(words) if w in SHADES), None),
    }
    return Example("story", words, answer, (words.index(topic),), info)


def _copy(rng: random.Random) -> Example:
    n = rng.randint(5, 8)
    seq = rng.sample(COPY_WORDS, n)
    q = rng.randrange(n - 1)
    words = ("copy", *seq, "again", seq[q])
    return Example("copy", words, (seq[q + 1],), (1 + q, 2 + q, len(words) - 1))


_MAKERS = {"recall": _recall, "either": _either, "sentiment": _sentiment, "story": _story, "copy": _copy}


def sample(task: str, rng: random.Random, **options) -> Example:
    """One example of ``task`` drawn with ``rng``."""
    if task not in _MAKERS:
        raise InvalidParameterError(f"unknown zoo task {task!r}; choose one of {', '.join(TASKS)}.")
    return _MAKERS[task](rng, **options)


def examples(task: str, n: int, seed: int = 0, **options) -> list[Example]:
    """``n`` labelled evaluation examples of ``task``, deterministic for a given ``seed``.

    Options: ``triggers`` (1 or 2) for ``either``, ``polar`` (1 or 2) for ``sentiment``.

    >>> ex = examples("recall", 1, seed=0)[0]
    >>> ex.prompt.split()[0], len(ex.ground_truth)
    ('recall', 3)
    """
    if n < 0:
        raise InvalidParameterError(f"n must be non-negative, got {n}.")
    rng = random.Random(f"{task}:{seed}")
    return [sample(task, rng, **options) for _ in range(n)]
