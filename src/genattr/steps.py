"""Per-step scores of a continuation: how the model itself saw each target token.

For a prompt x and a teacher-forced target y = (y_1..y_n), with p_t = p(. | x, y_<t) the model's
next-token distribution over the vocabulary V at step t:

* ``prob``      p_t(y_t), the probability of the target token;
* ``log_prob``  log p_t(y_t) (nats);
* ``entropy``   H(p_t) = -sum_{v in V} p_t(v) log p_t(v) (nats; terms with p_t(v) = 0 count 0);
* ``rank``      1 + |{v in V : p_t(v) > p_t(y_t)}|: 1 when y_t is the model's top choice;
  tokens tied with y_t do not count, so tied tokens share the best rank;
* ``contrast``  (with a foil f = (f_1..f_n) of the same length, aligned token by token)
  log p(y_t | x, y_<t) - log p(f_t | x, f_<t), the foil teacher-forced on its own prefix:
  positive where the model prefers the target's token to the foil's.

These are the step scores Inseq records beside an attribution (Sarti et al., "Inseq: An
Interpretability Toolkit for Sequence Generation Models", ACL 2023), and the contrast is the
log-probability difference of contrastive explanations (Yin and Neubig, "Interpreting Language
Models with Contrastive Explanations", EMNLP 2022). A foil of another length has no token-by-token
alignment: it gives no ``contrast`` key (a sequence-level contrast sum_t log p(y_t | ...) -
sum_t log p(f_t | ...) is the caller's to record).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from .errors import EmptyTargetError, InvalidParameterError, NumericalError

if TYPE_CHECKING:
    from .model import Batch, LanguageModel

STEP_SCORES = ("prob", "log_prob", "entropy", "rank")
"""The scores :func:`step_scores` always gives, in this order (``contrast`` follows with a foil)."""


def _entropy(logp: torch.Tensor) -> torch.Tensor:
    """-sum_v p(v) log p(v) of log-distributions [n, V], in float64, 0 log 0 taken as 0."""
    logp = logp.double()
    p = logp.exp()
    return -torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(-1)


def _rank(logp: torch.Tensor, picked: torch.Tensor) -> torch.Tensor:
    """1 + the number of tokens strictly more probable than the picked one, per step."""
    return 1 + (logp > picked[:, None]).sum(-1)


def _ids(lm: LanguageModel, ids: Sequence[int], what: str) -> list[int]:
    """``ids`` as a non-empty list of token ids of the model's vocabulary."""
    out = [int(i) for i in ids]
    if not out:
        raise EmptyTargetError(f"the {what} is empty; give a non-empty continuation.")
    bad = [i for i in out if not 0 <= i < lm.vocab_size]
    if bad:
        raise InvalidParameterError(
            f"{what} token ids {bad[:5]} are outside the vocabulary (0..{lm.vocab_size - 1})."
        )
    return out


def _floats(values: torch.Tensor) -> list[float]:
    return [float(v) for v in values.tolist()]


def step_scores(
    lm: LanguageModel,
    inputs: Batch,
    target_ids: Sequence[int],
    foil_ids: Sequence[int] | None = None,
) -> dict[str, list[float]]:
    """The per-step scores of the target (see the module docstring for the formulas).

    One forward pass reads the n teacher-forced next-token distributions of the target
    (:meth:`~genattr.model.LanguageModel.target_distributions`); a foil of the same length takes
    one more (:meth:`~genattr.model.LanguageModel.target_log_probs`).

    Parameters
    ----------
    lm : LanguageModel
        The model.
    inputs : genattr.model.Batch
        One row: the prompt as the model reads it.
    target_ids : sequence of int
        The n target token ids, teacher-forced.
    foil_ids : sequence of int, optional
        An alternative continuation. Of length n, it adds the per-token ``contrast``; of another
        length it adds nothing (there is no token-by-token alignment).

    Returns
    -------
    dict of str to list of float
        ``prob``, ``log_prob``, ``entropy``, ``rank`` (and ``contrast``), each a list of n Python
        floats, one per target token; ``rank`` holds integers as floats (1.0 = the top choice),
        so every value is a finite float that JSON writes and reads back unchanged.

    Raises
    ------
    genattr.errors.InvalidParameterError
        When ``inputs`` holds more or fewer than one row,
        or when a target or foil id is outside the vocabulary.
    genattr.errors.EmptyTargetError
        For an empty target or an empty foil.
    genattr.errors.NumericalError
        When the model gives a target token probability 0 (log p = -inf) or produces NaN.

    Examples
    --------
    >>> import math
    >>> from genattr.model import Batch
    >>> from genattr.testing import tiny_lm
    >>> lm = tiny_lm()
    >>> prompt = Batch.from_ids(lm.tokenizer("The doctor opens the")["input_ids"])
    >>> door = lm.tokenizer(" door and the", add_special_tokens=False)["input_ids"]
    >>> scores = step_scores(lm, prompt, door)
    >>> list(scores), [len(v) for v in scores.values()] == [len(door)] * 4
    (['prob', 'log_prob', 'entropy', 'rank'], True)
    >>> all(abs(math.exp(lp) - p) < 1e-6 for lp, p in zip(scores["log_prob"], scores["prob"]))
    True
    >>> all(0 < h <= math.log(lm.vocab_size) + 1e-6 for h in scores["entropy"])  # at most uniform's
    True
    >>> all(r == int(r) and 1 <= r <= lm.vocab_size for r in scores["rank"])
    True
    >>> foil = lm.tokenizer(" window or a", add_special_tokens=False)["input_ids"]
    >>> len(foil) == len(door) and "contrast" in step_scores(lm, prompt, door, foil)
    True
    """
    if len(inputs) != 1:
        raise InvalidParameterError(
            f"step scores are read for one prompt row, got {len(inputs)}; pass Batch.from_ids(prompt ids)."
        )
    target = torch.tensor(_ids(lm, target_ids, "target"), dtype=torch.long)
    logp = lm.target_distributions(inputs, target)[0]  # [n, V]
    picked = logp.gather(-1, target[:, None]).squeeze(-1)
    entropy = _entropy(logp)
    if not (torch.isfinite(picked).all() and torch.isfinite(entropy).all()):
        raise NumericalError(
            "the model gives a target token probability 0 or produced NaN; step scores need finite "
            "log-probabilities (check the model's outputs and dtype)."
        )
    out = {
        "prob": _floats(picked.double().exp()),
        "log_prob": _floats(picked),
        "entropy": _floats(entropy),
        "rank": _floats(_rank(logp, picked)),
    }
    if foil_ids is not None:
        foil = _ids(lm, foil_ids, "foil")
        if len(foil) == len(target):
            foil_logp = lm.target_log_probs(inputs, foil)[0]
            if not torch.isfinite(foil_logp).all():
                raise NumericalError("the model gives a foil token probability 0 or produced NaN.")
            out["contrast"] = _floats(picked.double() - foil_logp.double())
    return out
