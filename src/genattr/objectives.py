"""Objectives: the value of a coalition S of features, read off the target's per-token
log-probabilities u_t(S) = log p(y_t | y_<t, x_S) (as Inseq's step functions are read off a step).

An objective gives the sequence value v(S) and one value per target token; it is an
:class:`Objective` subclass registered in :data:`OBJECTIVES` under its name, and
:func:`register_objective` adds one (then ``objective="name"`` works like the built-ins).

``log_prob`` (default)
    v(S) = sum_t u_t(S): the target's log-likelihood given only the features in S; per token
    u_t(S), so v = sum_t u_t and a linear method's per-token rows sum exactly to its sequence scores.
``prob``
    v(S) = p(y | x_S) = exp(sum_t u_t); per token p(y_t | y_<t, x_S) = exp(u_t) (rows then do
    not sum to the sequence score).

The gradient methods differentiate the built-in objectives by their own chain rule; an objective a
user registers serves the methods that score coalitions (``gradients`` is False for it).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from .errors import UnknownObjectiveError
from .names import NameRegistry


class Objective:
    """Values of coalitions from their per-token log-probabilities: subclass it, set ``name``,
    implement :meth:`sequence` and :meth:`tokens`, and register it with :func:`register_objective`.

    ``gradients``: the gradient methods know the objective's chain rule (the built-ins only).
    """

    name: ClassVar[str] = ""
    gradients: ClassVar[bool] = False

    def sequence(self, log_probs: torch.Tensor) -> torch.Tensor:
        """v(S) for each row of per-token log-probabilities ``log_probs`` [B, n]: [B]."""
        raise NotImplementedError

    def tokens(self, log_probs: torch.Tensor) -> torch.Tensor:
        """The per-token values [B, n] of ``log_probs`` [B, n]."""
        raise NotImplementedError


OBJECTIVES = NameRegistry("objective", Objective, UnknownObjectiveError)
"""Every objective by name, in registration order."""


def register_objective(cls: type[Objective]) -> type[Objective]:
    """Class decorator: make an :class:`Objective` subclass available as ``objective=cls.name``.

    Parameters
    ----------
    cls : type
        A subclass of :class:`Objective` with a ``name``, :meth:`Objective.sequence` (log-probs
        [B, n] -> v [B]) and :meth:`Objective.tokens` ([B, n] -> [B, n]).

    Returns
    -------
    type
        ``cls`` itself, so that the function works as a decorator.

    Raises
    ------
    genattr.errors.InvalidParameterError
        When ``cls`` is not an :class:`Objective` subclass, has no ``name``, or its name is taken
        by another class (a built-in is never replaced).

    Examples
    --------
    The mean log-probability per target token, v(S) = (1/n) sum_t log p(y_t | y_<t, x_S):

    >>> import genattr
    >>> from genattr.testing import tiny_lm
    >>> @register_objective
    ... class MeanLogProb(Objective):
    ...     name = "mean_log_prob"
    ...     def sequence(self, log_probs):
    ...         return log_probs.mean(1)
    ...     def tokens(self, log_probs):
    ...         return log_probs / log_probs.shape[1]
    >>> lm = tiny_lm()
    >>> mean = genattr.explain(lm, "The doctor opens the door", target=" and the", objective="mean_log_prob")
    >>> total = genattr.explain(lm, "The doctor opens the door", target=" and the")
    >>> bool(abs(mean.scores * 2 - total.scores).max() < 1e-6)  # leave-one-out is linear in v
    True
    >>> del OBJECTIVES._classes["mean_log_prob"]  # leave the registry as the other examples expect it
    """
    return OBJECTIVES.register(cls)


def gradient_objectives() -> list[str]:
    """The objectives the gradient methods can differentiate."""
    return [name for name, cls in OBJECTIVES.items() if cls.gradients]


@register_objective
class LogProb(Objective):
    """v(S) = sum_t log p(y_t | y_<t, x_S), per token log p(y_t | y_<t, x_S)."""

    name = "log_prob"
    gradients = True

    def sequence(self, log_probs: torch.Tensor) -> torch.Tensor:
        return log_probs.sum(1)

    def tokens(self, log_probs: torch.Tensor) -> torch.Tensor:
        return log_probs


@register_objective
class Prob(Objective):
    """v(S) = p(y | x_S) = exp(sum_t log p(y_t | y_<t, x_S)), per token p(y_t | y_<t, x_S)."""

    name = "prob"
    gradients = True

    def sequence(self, log_probs: torch.Tensor) -> torch.Tensor:
        return log_probs.sum(1).exp()

    def tokens(self, log_probs: torch.Tensor) -> torch.Tensor:
        return log_probs.exp()
