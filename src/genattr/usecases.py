"""The use cases of generation attributions in the GiLOT paper ("GiLOT: Interpreting Generative
Language Models via Optimal Transport", Li et al., ICML 2024, Section 5 and Appendix A): how
much a model's answer rests on the query rather than on the in-context examples, and whether a
word in a slot of a prompt matters for one filler but not for another (a bias probe).

* :func:`query_weight` is the attribution-guided query weight of Eq. 12,
  aqw(a) = (a_(p+1) + ... + a_N) / (a_1 + ... + a_N), features p+1..N being the query's.
* :func:`icl_orders` runs the paper's study of Section 5.1 on one setting: every order (or a
  sample of orders) of the in-context examples, the aqw of each prompt, the accuracy of the
  model's answer over the orders and its sensitivity to them (the standard deviation of the
  top-predicted label's probability, negated where the prediction is wrong; the paper's
  footnote 4). :func:`correlate` is Table 4: Pearson's r and its p-value between aqw and
  accuracy and between aqw and sensitivity across settings (hypotheses H1 and H2).
* :func:`slot_probe` is Section 5.2: the same template filled with each filler ("a {} homemaker"
  with "male" and "female"), each prompt explained, and the filler's own attribution compared
  across fillers: a filler that moves the output much more than its counterpart marks a
  dependence the model should not have.

Any registered method can be used; GiLOT (the default) gives non-negative scores, as Eq. 12
assumes. For signed methods, pass ``absolute=True`` to :func:`query_weight` to weigh |a_i|.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .api import explain
from .defaults import DEFAULT_LEVEL, DEFAULT_SEED
from .errors import InvalidParameterError
from .model import Batch, LanguageModel
from .result import Attribution
from .text.prompt import Prompt


def query_weight(attribution: Attribution, query_start: int, *, absolute: bool = False) -> float:
    """aqw (GiLOT Eq. 12): the share of the attribution that falls on the query, the features
    starting at or after character ``query_start`` of the prompt."""
    scores = np.asarray(attribution.scores, dtype=np.float64)
    if absolute:
        scores = np.abs(scores)
    elif (scores < 0).any():
        raise InvalidParameterError(
            f"{attribution.method} gave negative scores, for which Eq. 12 is not a share; "
            "pass absolute=True to weigh their magnitudes, or use a method with non-negative scores (gilot)."
        )
    total = scores.sum()
    if total <= 0:
        raise InvalidParameterError("every feature scored 0: the query weight is undefined for this prompt.")
    query = np.array([f.start >= query_start for f in attribution.features])
    return float(scores[query].sum() / total)


@dataclass(frozen=True)
class OrderRow:
    """One order of the in-context examples: its prompt, aqw, predicted label and its probability."""

    order: tuple[int, ...]
    prompt: str
    query_weight: float
    prediction: str
    probability: float
    correct: bool


@dataclass(frozen=True)
class ICLStudy:
    """The orders of one setting (Section 5.1) and their summary: mean aqw, accuracy over the
    orders, and sensitivity, the standard deviation (ddof 0) of the signed top probability."""

    rows: list[OrderRow]

    @property
    def query_weight(self) -> float:
        return float(np.mean([r.query_weight for r in self.rows]))

    @property
    def accuracy(self) -> float:
        return float(np.mean([r.correct for r in self.rows]))

    @property
    def sensitivity(self) -> float:
        return float(np.std([r.probability if r.correct else -r.probability for r in self.rows]))


def label_log_probs(lm: LanguageModel, prompts: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    """log p(label | prompt) of every label continuation after every prompt: [prompts, labels],
    each label scored for all prompts (left-padded) in one batched teacher-forced call."""
    inputs = Batch.left_padded([Prompt.from_text(lm.tokenizer, p).input_ids for p in prompts])
    out = np.empty((len(prompts), len(labels)))
    for j, label in enumerate(labels):
        ids = lm.tokenizer(label, add_special_tokens=False)["input_ids"]
        out[:, j] = lm.target_log_probs(inputs, ids).double().sum(1).numpy()
    return out


def icl_orders(
    lm: LanguageModel,
    examples: Sequence[str],
    query: str,
    answer: str,
    labels: Sequence[str],
    *,
    prefix: str = "",
    separator: str = " ",
    method: str = "gilot",
    level: str = DEFAULT_LEVEL,
    max_orders: int | None = None,
    seed: int = DEFAULT_SEED,
    absolute: bool = False,
    **params,
) -> ICLStudy:
    """The in-context study of GiLOT Section 5.1 for one setting.

    The prompt is ``prefix`` + the ``examples`` in some order, joined by ``separator``, then the
    ``query``. For every order (all n! of them, or ``max_orders`` drawn without replacement with
    ``seed``), the prompt is explained with ``method`` (its greedy output; ``params`` pass
    through) and its aqw taken over the query's features (``absolute`` as in
    :func:`query_weight`), and the model's answer is the label of ``labels`` with the highest
    log-probability; it is correct when it equals ``answer``.
    """
    if len(examples) < 2:
        raise InvalidParameterError("give at least two in-context examples to permute.")
    if answer not in labels:
        raise InvalidParameterError(f"the answer {answer!r} is not one of the labels {list(labels)!r}.")
    n = len(examples)
    if max_orders is None or max_orders >= math.factorial(n):
        orders = list(itertools.permutations(range(n)))
    elif max_orders < 1:
        raise InvalidParameterError(f"max_orders must be at least 1, got {max_orders}.")
    else:
        rng = np.random.default_rng(seed)
        drawn: set[tuple[int, ...]] = set()
        while len(drawn) < max_orders:
            drawn.add(tuple(int(i) for i in rng.permutation(n)))
        orders = sorted(drawn)
    prompts, starts = [], []
    for order in orders:
        context = prefix + separator.join(examples[i] for i in order) + separator
        prompts.append(context + query)
        starts.append(len(context))
    scores = label_log_probs(lm, prompts, labels)
    rows = []
    for order, prompt, start, logp in zip(orders, prompts, starts, scores, strict=True):
        res = explain(lm, prompt, method=method, level=level, seed=seed, token_scores=False, **params)
        best = int(logp.argmax())
        rows.append(
            OrderRow(
                order=order,
                prompt=prompt,
                query_weight=query_weight(res, start, absolute=absolute),
                prediction=labels[best],
                probability=float(np.exp(logp[best])),
                correct=labels[best] == answer,
            )
        )
    return ICLStudy(rows)


class SettingSummary(Protocol):
    """What :func:`correlate` reads of a setting: an :class:`ICLStudy`, or a summary over several
    queries' studies (their means, as the paper averages over 20 queries per setting)."""

    @property
    def query_weight(self) -> float: ...

    @property
    def accuracy(self) -> float: ...

    @property
    def sensitivity(self) -> float: ...


def correlate(studies: Sequence[SettingSummary]) -> dict[str, tuple[float, float]]:
    """GiLOT Table 4 over settings: Pearson's (r, p-value) of accuracy and of sensitivity against aqw."""
    from scipy.stats import pearsonr

    if len(studies) < 3:
        raise InvalidParameterError(f"a correlation needs at least 3 settings, got {len(studies)}.")
    aqw = [s.query_weight for s in studies]
    out = {}
    for name in ("accuracy", "sensitivity"):
        values = [getattr(s, name) for s in studies]
        if np.ptp(values) == 0 or np.ptp(aqw) == 0:
            out[name] = (float("nan"), float("nan"))
            continue
        r, p = pearsonr(aqw, values)
        out[name] = (float(r), float(p))
    return out


@dataclass(frozen=True)
class SlotRow:
    """One filler of a probe's slot: its score (the sum over the features inside the slot), its
    share of the total |attribution| and its rank among the features (1 = most important)."""

    filler: str
    score: float
    share: float
    rank: int
    attribution: Attribution


def slot_probe(
    lm: LanguageModel,
    template: str,
    fillers: Sequence[str],
    *,
    method: str = "gilot",
    level: str = DEFAULT_LEVEL,
    target: str | None = None,
    chat: bool = False,
    **params,
) -> list[SlotRow]:
    """GiLOT Section 5.2: fill the one ``{}`` of ``template`` with each filler, explain each
    prompt with ``method`` (the greedy output, or ``target``), and report how much the filler
    itself mattered. The paper reads a large score for "male" in "a male homemaker" beside a
    small one for "female" in "a female homemaker" as an implicit association of the role.
    With ``chat`` the filled template is the user's message in the model's chat template."""
    if template.count("{}") != 1:
        raise InvalidParameterError(
            "the template needs exactly one '{}' slot, e.g. 'a story about a {} homemaker'."
        )
    if not fillers:
        raise InvalidParameterError("give at least one filler for the slot.")
    head, tail = template.split("{}")
    rows = []
    for filler in fillers:
        if not filler.strip():
            raise InvalidParameterError("a filler must contain some text.")
        text = head + filler + tail
        prompt = (
            Prompt.from_messages(lm.tokenizer, [{"role": "user", "content": text}])
            if chat
            else Prompt.from_text(lm.tokenizer, text)
        )
        # where the filled template starts in the prompt (the chat template may strip its ends)
        start = prompt.text.rfind(text.strip()) - (len(text) - len(text.lstrip()))
        res = explain(lm, prompt, target=target, method=method, level=level, token_scores=False, **params)
        first, stop = start + len(head), start + len(head) + len(filler)
        inside = [i for i, f in enumerate(res.features) if f.start < stop and f.end > first]
        if not inside:
            raise InvalidParameterError(f"no {level}-level feature covers the filler {filler!r}.")
        scores = np.asarray(res.scores, dtype=np.float64)
        score = float(scores[inside].sum())
        total = float(np.abs(scores).sum())
        rank = 1 + int((scores > scores[inside].max()).sum())
        rows.append(SlotRow(filler, score, abs(score) / total if total else 0.0, rank, res))
    return rows
