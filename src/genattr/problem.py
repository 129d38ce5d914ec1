"""Problem: everything a method needs to explain one prompt -> target pair.

It bundles the model, the tokenised prompt, its features, the target, the masking strategy,
the objective and the seed, and evaluates coalitions of features in one batched call
(:meth:`Problem.evaluate`).

The objective is a name in :data:`genattr.objectives.OBJECTIVES` (``log_prob``, the default, or
``prob``, or one a user registers): it turns the target's per-token log-probabilities under a
coalition into the sequence value v(S) and the per-token values (see :class:`Problem`).
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
    """Everything a method needs to explain one prompt -> target pair, and the one way to score
    coalitions of features.

    A coalition S is a boolean row ``keep`` [F] over the F features (True = kept); the prompt
    x_S keeps the features in S and removes the others by the ``masker``'s mask (tokens outside
    every feature always stay). With u_t(S) = log p(y_t | y_<t, x_S) the target's per-token
    log-probabilities under x_S, the objective gives the sequence value v(S) and per-token values;
    for the default ``log_prob``

        v(S) = sum_{t=1..n} u_t(S),

    and for ``prob`` v(S) = exp(sum_t u_t(S)) = p(y | x_S) (see :mod:`genattr.objectives`).
    Perturbation and surrogate methods (leave-one-out, Shapley, LIME, XPrompt) are functions of
    v on the coalitions they choose; leave-one-out, for example, scores feature i by
    v(all) - v(all without i).

    Parameters
    ----------
    lm : LanguageModel
        The model.
    prompt : Prompt
        The tokenised prompt (L tokens).
    features : list of Feature
        The F features, numbered 0..F-1.
    target : Target or None
        The teacher-forced continuation y_1..y_m; None for methods that explain the model's likely
        outputs (GiLOT), which then may not call :meth:`evaluate`.
    masker : Masker
        How a removed feature is taken out (mask and baseline token). Every row it builds holds the
        prompt followed by y_1..y_(m-1) (a masker built without that continuation is rebuilt with
        it), and features may cover those output tokens too (attribution to earlier output
        tokens: a coalition then masks them as it masks prompt tokens).
    objective : str
        A name in :data:`genattr.objectives.OBJECTIVES`.
    seed : int or None
        Seed of :meth:`generator`, for stochastic methods.
    explained_from : int
        The index of the first target token explained: the n = m - ``explained_from`` tokens
        y_(explained_from+1)..y_m are scored (the u_t above), the ones before are teacher-forced
        context only (a span of the response, or one word of interest).
    foil : Target, optional
        A contrastive explanation: why the model wrote y rather than the foil f. With u'_t(S) =
        log p(f_t | f_<t, x_S), the objective O gives v(S) = O(u(S)) - O(u'(S)) (the log-probability
        difference for ``log_prob``, the probability difference for ``prob``); per token
        O_t(u(S)) - O_t(u'(S)) when f has as many tokens as y (aligned), else one column, the
        sequence's (see :attr:`n_outputs`).
    token_scores : bool
        Whether the call asked for the per-token matrix; without it, the methods that can spare
        the work (the gradient family's sequence-only path) do.

    Examples
    --------
    >>> import torch
    >>> from genattr.masking import Masker
    >>> from genattr.testing import tiny_lm
    >>> from genattr.text import Prompt, resolve_target
    >>> lm = tiny_lm()
    >>> prompt = Prompt.from_text(lm.tokenizer, "The doctor opens the door")
    >>> features = prompt.features("word")
    >>> problem = Problem(lm, prompt, features, resolve_target(lm, prompt, " and the"),
    ...                   Masker(lm, prompt, features, "attention"))
    >>> keep = problem.all_kept(3)
    >>> keep[1, 0] = keep[2, :] = False          # rows: every feature, all but "The", none
    >>> values = problem.evaluate(keep)           # [B, 1 + n]: v(S), then u_1(S) .. u_n(S)
    >>> values.shape, values.dtype
    (torch.Size([3, 3]), torch.float64)
    >>> torch.allclose(values[:, 0], values[:, 1:].sum(1))   # log_prob: v(S) = sum_t u_t(S)
    True
    """

    lm: LanguageModel
    prompt: Prompt
    features: list[Feature]
    target: Target | None
    masker: Masker
    objective: str = DEFAULT_OBJECTIVE
    seed: int | None = DEFAULT_SEED
    explained_from: int = 0
    foil: Target | None = None
    token_scores: bool = True

    def __post_init__(self) -> None:
        self._objective = OBJECTIVES.get(self.objective)()
        if self.target is None:
            return
        if self.foil is not None:
            if self.explained_from or any(t >= len(self.prompt) for f in self.features for t in f.positions):
                raise InvalidParameterError(
                    "a foil contrasts whole responses: it cannot be combined with output tokens as "
                    "features or a part of the response; drop attribute_target, target_token and target_span."
                )
            m = self.masker
            self._foil_masker = Masker(
                m.lm, m.prompt, m.features, m.strategy, m.baseline_id, continuation=self.foil.ids[:-1]
            )
        if not 0 <= self.explained_from < len(self.target):
            raise InvalidParameterError(
                f"explained_from={self.explained_from} is not a token of the {len(self.target)}-token target."
            )
        forced = list(self.target.ids[:-1])
        held = self.masker.continuation.tolist()
        if not held and forced:
            m = self.masker
            self.masker = Masker(m.lm, m.prompt, m.features, m.strategy, m.baseline_id, continuation=forced)
        elif held != forced:
            raise InvalidParameterError(
                "the masker's continuation is not the target's first tokens; build it with "
                "continuation=target.ids[:-1], or with none."
            )

    @property
    def n_features(self) -> int:
        return len(self.features)

    @property
    def target_ids(self) -> tuple[int, ...]:
        """The ids of the n target tokens explained (from ``explained_from`` on); a method that
        declares ``needs_target = False`` is given no target, and scores none."""
        if self.target is None:
            raise InvalidParameterError(
                "this problem has no target (its method declares needs_target = False), so it has no "
                "log-probabilities to score; declare needs_target = True to be given one."
            )
        return self.target.ids[self.explained_from :]

    @property
    def n_outputs(self) -> int:
        """The per-token columns of :meth:`evaluate`: one per target token explained, or 1 (the
        sequence's contrast) with a foil of another length than the target."""
        if self.foil is not None and len(self.foil) != len(self.target_ids):
            return 1
        return len(self.target_ids)

    @property
    def sequence_ids(self) -> torch.Tensor:
        """The T token ids every row holds before masking: the prompt, then the target's first m - 1
        tokens; its last n positions predict the n tokens explained."""
        return self.masker.ids

    def generator(self) -> torch.Generator:
        """A fresh random generator seeded with the problem's seed (no global randomness)."""
        return torch.Generator().manual_seed(0 if self.seed is None else int(self.seed))

    def all_kept(self, rows: int = 1) -> torch.Tensor:
        """``rows`` coalitions that keep every feature: a [rows, F] boolean tensor of True."""
        return torch.ones(rows, self.n_features, dtype=torch.bool)

    def token_log_probs(self, keep: torch.Tensor) -> torch.Tensor:
        """log p(y_t | y_<t, x_S) for each coalition row of ``keep`` [B, F]: [B, n] float32, the
        prompt variants built :data:`EVALUATION_PASSES` forward passes' worth at a time."""
        return self._log_probs(self.masker, self.target_ids, keep)

    def _log_probs(self, masker: Masker, labels: tuple[int, ...], keep: torch.Tensor) -> torch.Tensor:
        keep = torch.as_tensor(keep, dtype=torch.bool).reshape(-1, self.n_features)
        rows = self.lm.rows_per_chunk(len(masker.ids) + 1) * EVALUATION_PASSES
        parts = [
            self.lm.label_log_probs(masker.inputs(keep[i : i + rows]), labels)
            for i in range(0, len(keep), rows)
        ]
        return torch.cat(parts) if parts else torch.empty(0, len(labels))

    def evaluate(self, keep: torch.Tensor) -> torch.Tensor:
        """Values of the coalitions ``keep`` under the objective.

        Repeated coalitions are scored once; the prompt variants are built and scored in groups
        of :data:`EVALUATION_PASSES` forward passes' worth of rows.

        Parameters
        ----------
        keep : torch.Tensor or array_like of bool, shape (B, F)
            One coalition per row, True where the feature is kept.

        Returns
        -------
        torch.Tensor, shape (B, 1 + n_outputs), float64
            Column 0 the sequence value v(S), then the per-token values (u_t(S) for ``log_prob``;
            with a foil, their contrast, see ``foil``); see the class docstring.

        Raises
        ------
        genattr.errors.InvalidParameterError
            When a registered objective returns values of the wrong shape.
        """
        keep = torch.as_tensor(keep, dtype=torch.bool)
        unique, inverse = torch.unique(keep, dim=0, return_inverse=True)
        sequence, tokens = self._values(self.token_log_probs(unique).double()[inverse])
        if self.foil is not None:
            foil_sequence, foil_tokens = self._values(
                self._log_probs(self._foil_masker, self.foil.ids, unique).double()[inverse]
            )
            sequence = sequence - foil_sequence
            tokens = tokens - foil_tokens if self.n_outputs == tokens.shape[1] else sequence[:, None]
        return torch.cat([sequence[:, None], tokens], 1).double()

    def _values(self, lp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The objective's sequence values [B] and per-token values [B, n] of log-probs ``lp`` [B, n]."""
        sequence, tokens = self._objective.sequence(lp), self._objective.tokens(lp)
        if sequence.shape != lp.shape[:1] or tokens.shape != lp.shape:
            raise InvalidParameterError(
                f"objective {self.objective!r} gave shapes {tuple(sequence.shape)} and {tuple(tokens.shape)} "  # pragma: no mutate
                f"for {tuple(lp.shape)} log-probabilities; sequence() must return [B], tokens() [B, n]."  # pragma: no mutate
            )
        return sequence, tokens
