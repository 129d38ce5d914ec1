"""The random baseline: scores drawn at random, the floor every faithfulness metric is read against
(the "Random" baseline of "XPrompt: Explaining Large Language Model's Generation via Joint Prompt
Attribution", 2024)."""

from __future__ import annotations

import torch

from ..problem import Problem
from ..registry import Method, Output


class RandomBaseline(Method):
    """Independent standard normal scores per feature, seeded; no model call.

    Examples
    --------
    >>> import genattr
    >>> from genattr.testing import tiny_lm
    >>> lm = tiny_lm()
    >>> a = genattr.explain(lm, "The doctor opens the door", target=" and", method="random", seed=3)
    >>> b = genattr.explain(lm, "The doctor opens the door", target=" and", method="random", seed=3)
    >>> a.scores.tolist() == b.scores.tolist(), a.diagnostics["forward_passes"]
    (True, 0)
    """

    name = "random"
    family = "baseline"
    summary = "random scores (standard normal, seeded): the floor of every faithfulness metric"
    cost = "none"
    stochastic = True
    token_scores = False

    def attribute(self, problem: Problem) -> Output:
        scores = torch.randn(problem.n_features, generator=problem.generator(), dtype=torch.float64)
        return Output(scores)
