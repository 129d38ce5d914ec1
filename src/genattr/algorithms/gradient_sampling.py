"""Gradient methods that average over random draws: GradientSHAP (random baselines, path points
and input noise) and SmoothGrad (input noise), on the prompt embeddings as in
:mod:`genattr.algorithms.gradient`, whose objective, baselines and reductions they share."""

from __future__ import annotations

import torch

from ..problem import Problem
from ..registry import MAX_GRADIENT_POINTS, Method, Output, Param
from ._embedding import BASELINES, completeness_gap, embedded, gradient_sums
from .gradient import _factor, _objective_values, _own_sequence_row, _scores_from_positions


class GradientShap(Method):
    """GradientSHAP ("A Unified Approach to Interpreting Model Predictions", Lundberg and Lee, 2017;
    as Captum's GradientShap computes it): expected gradients over random
    baselines and random points on the path,

        phi_i = E_{b, alpha, eps} [ sum_d (x~ - b)_{i,d} dF(b + alpha (x~ - b)) / dx_{i,d} ],  x~ = x + eps,

    with alpha ~ U(0, 1), eps ~ N(0, stdevs^2) on the feature tokens' embeddings, estimated from
    ``n_samples`` draws. ``baselines='random'`` draws the embedding of a uniformly random
    vocabulary token at each feature position; ``zero`` and ``token`` use one fixed baseline (a
    Monte Carlo estimate of integrated gradients). ``diagnostics['convergence_delta']`` is
    sum_i phi_i minus the average of F(x~) - F(b) over the draws (zero in expectation).
    """

    name = "gradient_shap"
    family = "gradient"
    summary = "expected gradients over random baselines, path points and input noise"
    cost = "per sample 1 forward row and 1 backward pass, batched over the n target tokens for the matrix"
    needs_gradients = True
    contrastive = True
    stochastic = True
    additive = True
    convergence_delta = True
    params = {
        "n_samples": Param(
            5, "random (baseline, alpha, noise) draws", int, minimum=1, maximum=MAX_GRADIENT_POINTS
        ),
        "stdevs": Param(
            0.0, "standard deviation of the Gaussian noise added to the embeddings", float, minimum=0.0
        ),
        "baselines": Param(
            "random",
            "baseline distribution: random vocabulary tokens, zero, or the baseline token",
            str,
            choices=("random", *BASELINES),
        ),
    }
    n_samples: int
    stdevs: float
    baselines: str

    def attribute(self, problem: Problem) -> Output:
        ep = embedded(problem)
        gen = problem.generator()
        k = self.n_samples
        if self.baselines == "random":
            bases = ep.random_token_baselines(k, gen)
        else:
            bases = ep.baseline(self.baselines)[None].expand(k, -1, -1)
        alphas = torch.rand(k, generator=gen).to(ep.embeds)
        noise = torch.randn(k, *ep.embeds.shape, generator=gen).to(ep.embeds) * self.stdevs
        noisy = ep.embeds[None] + noise * ep.covered[None, :, None]
        rows = bases + alphas[:, None, None] * (noisy - bases)
        seq = _own_sequence_row(ep) or ep.sequence_only
        weights = torch.full((k,), 1.0 / k, dtype=torch.float64)
        sums = gradient_sums(
            ep,
            rows,
            _factor(ep, seq),
            weights,
            sequence=seq,
            multipliers=noisy - bases,
            sequence_only=ep.sequence_only,
        )
        scores, tokens = _scores_from_positions(ep, sums.sum(-1), seq)
        ends = _objective_values(ep, torch.cat([noisy, bases]))
        gap = (ends[:k] - ends[k:]).mean(0)
        delta = completeness_gap(scores, tokens, gap).delta
        return Output(scores, tokens, diagnostics={"convergence_delta": delta})


class SmoothGrad(Method):
    """SmoothGrad (Smilkov et al., 2017, "SmoothGrad: removing noise by adding noise"): the
    gradient averaged over noisy copies of the input, reported as a per-token norm like
    ``saliency``:

        a_i = || (1/N) sum_k dF(x + eps_k) / de_i ||_2,   eps_k ~ N(0, sigma^2) on feature tokens.

    ``stdevs`` is sigma; left unset it is 15% of the spread (max - min) of the feature tokens'
    embedding entries, the noise level the paper recommends (10-20% of the input's range).
    """

    name = "smoothgrad"
    family = "gradient"
    summary = "norm of the gradient averaged over noisy copies of the embeddings"
    cost = "per sample 1 forward row and 1 backward pass, batched over the n target tokens for the matrix"
    needs_gradients = True
    contrastive = True
    stochastic = True
    params = {
        "n_samples": Param(50, "noisy samples", int, minimum=1, maximum=MAX_GRADIENT_POINTS),
        "stdevs": Param(
            None,
            "noise standard deviation (default: 15% of the embeddings' range)",
            float,
            minimum=0.0,
            optional=True,
        ),
    }
    n_samples: int
    stdevs: float | None

    def attribute(self, problem: Problem) -> Output:
        ep = embedded(problem)
        k = self.n_samples
        sigma = self.stdevs
        if sigma is None:
            values = ep.embeds[ep.covered]
            sigma = 0.15 * float(values.max() - values.min())
        noise = torch.randn(k, *ep.embeds.shape, generator=problem.generator()).to(ep.embeds) * sigma
        rows = ep.embeds[None] + noise * ep.covered[None, :, None]
        weights = torch.full((k,), 1.0 / k, dtype=torch.float64)
        sums = gradient_sums(
            ep, rows, _factor(ep, True), weights, sequence=True, sequence_only=ep.sequence_only
        )
        scores, tokens = _scores_from_positions(ep, sums.norm(dim=-1), True)
        return Output(scores, tokens, diagnostics={"stdevs": sigma})
