"""Problem: everything a method needs to explain one prompt -> target pair.

It bundles the model, the tokenised prompt, its features, the target, the masking strategy,
the objective and the seed, and evaluates coalitions of features in one batched call.

The objective is a name in :data:`genattr.objectives.OBJECTIVES` (``log_prob``, the default, or
``prob``, or one a user registers): it turns the target's per-token log-probabilities under a
coalition into the sequence value v(S) and the per-token values u_t(S).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .defaults import DEFAULT_OBJECTIVE, DEFAULT_SEED
from .errors import InvalidParameterError
from .masking import Masker
from .model import LanguageModel
from .objectives import OBJECTIVES
from .text.prompt import Prompt
from .text.segment import Feature
from .text.target import Target

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
    objective: str = DEFAULT_OBJECTIVE
    seed: int | None = DEFAULT_SEED

    def __post_init__(self) -> None:
        self._objective = OBJECTIVES.get(self.objective)()

    @property
    def n_features(self) -> int:
        return len(self.features)

    @property
    def target_ids(self) -> tuple[int, ...]:
        """The token ids of the target explained; a method that declares ``needs_target = False``
        is given no target, and scores none."""
        if self.target is None:
            raise InvalidParameterError(
                "this problem has no target (its method declares needs_target = False), so it has no "
                "log-probabilities to score; declare needs_target = True to be given one."
            )
        return self.target.ids

    def generator(self) -> torch.Generator:
        """A fresh random generator seeded with the problem's seed (no global randomness)."""
        return torch.Generator().manual_seed(0 if self.seed is None else int(self.seed))

    def all_kept(self, rows: int = 1) -> torch.Tensor:
        return torch.ones(rows, self.n_features, dtype=torch.bool)

    def token_log_probs(self, keep: torch.Tensor) -> torch.Tensor:
        """log p(y_t | y_<t, x_S) for each coalition row of ``keep`` [B, F]: [B, n] float32, the
        prompt variants built :data:`EVALUATION_PASSES` forward passes' worth at a time."""
        keep = torch.as_tensor(keep, dtype=torch.bool).reshape(-1, self.n_features)
        rows = self.lm.rows_per_chunk(len(self.prompt) + len(self.target_ids)) * EVALUATION_PASSES
        parts = [
            self.lm.target_log_probs(self.masker.inputs(keep[i : i + rows]), self.target_ids)
            for i in range(0, len(keep), rows)
        ]
        return torch.cat(parts) if parts else torch.empty(0, len(self.target_ids))

    def evaluate(self, keep: torch.Tensor) -> torch.Tensor:
        """Values of coalitions ``keep`` [B, F] as a [B, 1 + n] float64 matrix: column 0 is the
        sequence objective v(S), columns 1.. the per-token values u_t(S) (see module docstring).
        Repeated coalitions are scored once."""
        keep = torch.as_tensor(keep, dtype=torch.bool)
        unique, inverse = torch.unique(keep, dim=0, return_inverse=True)
        lp = self.token_log_probs(unique).double()[inverse]
        sequence, tokens = self._objective.sequence(lp), self._objective.tokens(lp)
        if sequence.shape != lp.shape[:1] or tokens.shape != lp.shape:
            raise InvalidParameterError(
                f"objective {self.objective!r} gave shapes {tuple(sequence.shape)} and {tuple(tokens.shape)} "  # pragma: no mutate
                f"for {tuple(lp.shape)} log-probabilities; sequence() must return [B], tokens() [B, n]."  # pragma: no mutate
            )
        return torch.cat([sequence[:, None], tokens], 1).double()
