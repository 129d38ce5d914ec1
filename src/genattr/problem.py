"""Problem: everything a method needs to explain one prompt -> target pair.

It bundles the model, the tokenised prompt, its features, the target, the masking strategy,
the objective and the seed, and evaluates coalitions of features in one batched call.

Objectives
----------
``log_prob`` (default)
    v(S) = sum_t log p(y_t | y_<t, x_S): the target's log-likelihood given only the features in
    S. Per target token, u_t(S) = log p(y_t | y_<t, x_S), so v = sum_t u_t and a linear method's
    per-token rows sum exactly to its sequence scores.
``prob``
    v(S) = p(y | x_S) = exp(sum_t u_t); per token, u_t(S) = p(y_t | y_<t, x_S) (rows then do
    not sum to the sequence score).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import InvalidParameterError
from .masking import Masker
from .model import LanguageModel
from .text.prompt import Prompt
from .text.segment import Feature
from .text.target import Target

OBJECTIVES = ("log_prob", "prob")
EVALUATION_PASSES = 64
"""Coalitions are turned into prompt variants this many forward passes' worth at a time (rows under
the model's ``max_batch_tokens``), so that scoring any number of coalitions holds a bounded number
of inputs; within such a group, rows sharing a prompt prefix run it once."""


@dataclass
class Problem:
    lm: LanguageModel
    prompt: Prompt
    features: list[Feature]
    target: Target | None
    masker: Masker
    objective: str = "log_prob"
    seed: int | None = 0

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise InvalidParameterError(
                f"unknown objective {self.objective!r}; choose one of {', '.join(OBJECTIVES)}."  # pragma: no mutate
            )

    @property
    def n_features(self) -> int:
        return len(self.features)

    def generator(self) -> torch.Generator:
        """A fresh random generator seeded with the problem's seed (no global randomness)."""
        return torch.Generator().manual_seed(0 if self.seed is None else int(self.seed))

    def all_kept(self, rows: int = 1) -> torch.Tensor:
        return torch.ones(rows, self.n_features, dtype=torch.bool)

    def token_log_probs(self, keep: torch.Tensor) -> torch.Tensor:
        """log p(y_t | y_<t, x_S) for each coalition row of ``keep`` [B, F]: [B, n] float32, the
        prompt variants built :data:`EVALUATION_PASSES` forward passes' worth at a time."""
        keep = torch.as_tensor(keep, dtype=torch.bool).reshape(-1, self.n_features)
        rows = self.lm.rows_per_chunk(len(self.prompt) + len(self.target.ids)) * EVALUATION_PASSES
        parts = [
            self.lm.target_log_probs(self.masker.inputs(keep[i : i + rows]), self.target.ids)
            for i in range(0, len(keep), rows)
        ]
        return torch.cat(parts) if parts else torch.empty(0, len(self.target.ids))

    def evaluate(self, keep: torch.Tensor) -> torch.Tensor:
        """Values of coalitions ``keep`` [B, F] as a [B, 1 + n] float64 matrix: column 0 is the
        sequence objective v(S), columns 1.. the per-token values u_t(S) (see module docstring).
        Repeated coalitions are scored once."""
        keep = torch.as_tensor(keep, dtype=torch.bool)
        unique, inverse = torch.unique(keep, dim=0, return_inverse=True)
        lp = self.token_log_probs(unique).double()[inverse]
        if self.objective == "log_prob":
            return torch.cat([lp.sum(1, keepdim=True), lp], 1)
        return torch.cat([lp.sum(1, keepdim=True).exp(), lp.exp()], 1)
