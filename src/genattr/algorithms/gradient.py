"""Gradient methods: attributions from gradients of the target's likelihood with respect to the
prompt's input embeddings, the target teacher-forced.

The attributed function is the problem's objective: with ``log_prob`` (default)
F_t(x) = log p(y_t | y_<t, x) for target token t and F = sum_t F_t for the sequence (so positive
scores support the target, and the sequence score of a method linear in F is the sum of its
per-token rows); with ``prob``, F_t = p(y_t | y_<t, x) and F = p(y | x). The masking strategy is
not used; the ``token`` baseline is the embedding of the problem's baseline token (the
``baseline=`` argument of :func:`genattr.explain`), placed at every feature position. Other
positions (special tokens, chat scaffolding) and the target tokens keep their own embeddings.

A token's attribution is reduced over the embedding dimension (a sum of ``e * grad`` terms, or a
gradient norm), and a feature's score is the sum over its tokens. Each method also gives the
per-target-token matrix (rows: target tokens), computed from one forward pass per chunk of
samples shared by all target tokens (see :mod:`genattr.algorithms._embedding`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from ..errors import ConvergenceWarning
from ..problem import Problem
from ..registry import register
from ._embedding import (
    BASELINES,
    QUADRATURES,
    EmbeddedPrompt,
    embedded,
    gradient_sums,
    objective_factor,
    quadrature,
)
from .base import Method, Output, Param


def _factor(ep: EmbeddedPrompt, sequence: bool) -> Callable[[torch.Tensor, slice], torch.Tensor]:
    return lambda values, _sl: objective_factor(ep.objective, values, sequence)


def _split(ep: EmbeddedPrompt, token_level: torch.Tensor, sequence: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-level attributions [m, L] -> (sequence scores [F], token matrix [n, F]).

    ``sequence`` is ``"row"`` (row n holds the sequence), ``"sum"`` or ``"mean"`` of the token rows.
    """
    scores = ep.features(token_level)
    n = ep.n_target
    tokens = scores[:n]
    if sequence == "row":
        return scores[n], tokens
    return (tokens.sum(0) if sequence == "sum" else tokens.mean(0)), tokens


def _objective_values(ep: EmbeddedPrompt, rows: torch.Tensor) -> torch.Tensor:
    """F at each row of prompt embeddings: [R, n + 1] (the target tokens, then the sequence)."""
    lp = ep.values(rows)
    if ep.objective == "log_prob":
        return torch.cat([lp, lp.sum(1, keepdim=True)], 1)
    return torch.cat([lp.exp(), lp.sum(1, keepdim=True).exp()], 1)


def _own_sequence_row(ep: EmbeddedPrompt) -> bool:
    """Whether the sequence attribution needs its own backward row (F not the sum of the F_t)."""
    return ep.objective != "log_prob"


# --------------------------------------------------------------------- plain gradients
@register
class Saliency(Method):
    """Saliency ("Deep Inside Convolutional Networks: Visualising Image Classification Models and
    Saliency Maps", Simonyan et al., 2014): the norm of the gradient of F with respect to each
    prompt token's embedding, ||dF_t / de_i||_2 (a sensitivity, never negative).

    The sequence score is the norm of the gradient of the sequence F (not the sum of the rows).

    >>> genattr.explain(lm, "The cat sat", target=" down", method="saliency")  # doctest: +SKIP
    """

    name = "saliency"
    family = "gradient"
    summary = "norm of the gradient of the target's log-likelihood w.r.t. each token's embedding"
    needs_gradients = True

    def attribute(self, problem: Problem) -> Output:
        ep = embedded(problem)
        sums = gradient_sums(
            ep, ep.embeds[None], _factor(ep, True), torch.ones(1, dtype=torch.float64), sequence=True
        )
        scores, tokens = _split(ep, sums.norm(dim=-1), "row")
        return Output(scores, tokens)


@register
class InputXGradient(Method):
    """Input x gradient ("Not Just a Black Box: Learning Important Features Through Propagating
    Activation Differences", Shrikumar et al., 2016; "Grad*Inp" in the AIEG paper):
    a_i = sum_d e_{i,d} dF / de_{i,d}.

    >>> genattr.explain(lm, "The cat sat", target=" down", method="input_x_gradient")  # doctest: +SKIP
    """

    name = "input_x_gradient"
    family = "gradient"
    summary = "embedding times gradient, summed over the embedding dimension"
    needs_gradients = True

    def attribute(self, problem: Problem) -> Output:
        ep = embedded(problem)
        seq = _own_sequence_row(ep)
        sums = gradient_sums(
            ep, ep.embeds[None], _factor(ep, seq), torch.ones(1, dtype=torch.float64), sequence=seq
        )
        scores, tokens = _split(ep, (sums * ep.embeds).sum(-1), "row" if seq else "sum")
        return Output(scores, tokens)


# --------------------------------------------------------------------- integrated gradients
CONVERGENCE_TOLERANCE = 0.05
"""Relative completeness gap |sum IG - (F(x) - F(x'))| / |F(x) - F(x')| above which IG warns."""


class _IntegratedGradients(Method):
    """Shared by ``integrated_gradients``, ``integrated_gradients_avg`` and ``ig_clipped``."""

    family = "gradient"
    needs_gradients = True
    convergence_check = True
    average = False
    params = {
        "n_steps": Param(50, "interpolation steps of the path integral", int, minimum=1),
        "quadrature": Param("gausslegendre", "quadrature rule (Captum's `method`)", str, choices=QUADRATURES),
        "baselines": Param(
            "token",
            "baseline x': the baseline token's embedding (default) or the zero embedding",
            str,
            choices=BASELINES,
        ),
    }

    def attribute(self, problem: Problem) -> Output:
        ep = embedded(problem)
        alphas, weights = quadrature(self.n_steps, self.quadrature)
        x, base = ep.embeds, ep.baseline(self.baselines)
        delta = x - base
        rows = base[None] + alphas.to(x)[:, None, None] * delta[None]
        seq = _own_sequence_row(ep) and not self.average
        sums = gradient_sums(
            ep, rows, _factor(ep, seq), weights, sequence=seq, multipliers=delta, clip=self._clip()
        )
        token_level = sums.sum(-1)
        scores, tokens = _split(ep, token_level, "row" if seq else ("mean" if self.average else "sum"))
        ends = _objective_values(ep, torch.stack([x, base]))
        gap = ends[0] - ends[1]
        totals = torch.cat([tokens.sum(1), scores.sum()[None]])
        if self.average:
            gap[-1] = gap[:-1].mean()
        deltas = totals - gap
        relative = float(deltas[-1].abs() / gap[-1].abs().clamp(min=1e-12))
        diagnostics = {
            "convergence_delta": float(deltas[-1]),
            "relative_convergence_delta": relative,
            "converged": relative <= CONVERGENCE_TOLERANCE,
            "convergence_delta_tokens": deltas[:-1].tolist(),
            "objective_input": ends[0].tolist(),
            "objective_baseline": ends[1].tolist(),
        }
        if relative > CONVERGENCE_TOLERANCE and self._clip() is None:
            advice = "raise n_steps" + (
                ", or use baselines='token' (a zero embedding is a hard path for models that normalise their inputs)"
                if self.baselines == "zero"
                else ""
            )
            warnings.warn(
                f"{self.name}: the attributions miss F(x) - F(x') by {relative:.0%} (convergence delta "
                f"{float(deltas[-1]):.4g}) with n_steps={self.n_steps}; {advice}.",
                ConvergenceWarning,
                stacklevel=2,
            )
        return Output(scores, tokens, diagnostics=diagnostics)

    def _clip(self) -> float | None:
        return None


@register
class IntegratedGradients(_IntegratedGradients):
    """Integrated gradients (Sundararajan et al., 2017, "Axiomatic Attribution for Deep Networks")
    on the prompt embeddings, for the whole-sequence log-likelihood as in "GiLOT: Interpreting
    Generative Language Models via Optimal Transport" (2024), Eq. 9-10:

        IG_i = sum_d (x_{i,d} - x'_{i,d}) int_0^1 dF(x' + alpha (x - x')) / dx_{i,d} d alpha,

    with F = sum_t log p(y_t | y_<t, x) (the negative of GiLOT's loss, so positive = supports the
    target). GiLOT's Eq. 10 as printed averages the gradient summed over the embedding dimension
    without the factor (x - x'); this is standard IG, which satisfies completeness:
    sum_i IG_i = F(x) - F(x'). ``diagnostics['convergence_delta']`` is sum_i IG_i - (F(x) - F(x'))
    (``relative_convergence_delta`` divides it by |F(x) - F(x')|; per token in
    ``convergence_delta_tokens``). By linearity the per-token rows (token t: F_t) sum to the
    sequence scores. The integral uses ``n_steps`` points of the ``quadrature`` rule (Captum's
    ``method``, renamed because ``method`` names the attribution method in :func:`genattr.explain`;
    same rule names and conventions); the baseline replaces the feature tokens' embeddings only.
    It is, by default, the embedding of the call's baseline token (``baseline=`` of explain):
    the zero embedding of the papers is a hard path for models that normalise their inputs
    (RMSNorm, LayerNorm), whose output is flat along most of it and jumps near 0, so that the
    quadrature misses most of F(x) - F(x') (on the zoo model, a median gap of 58% at 50 steps
    against 4% with the token baseline); ``baselines="zero"`` gives the papers' setting.

    >>> genattr.explain(lm, "The cat sat", target=" down", method="integrated_gradients",
    ...                 n_steps=64, baselines="zero")                            # doctest: +SKIP
    """

    name = "integrated_gradients"
    summary = "integrated gradients of the sequence log-likelihood along the straight path from a baseline"


@register
class IntegratedGradientsAvg(_IntegratedGradients):
    """IG-AVG ("GiLOT: Interpreting Generative Language Models via Optimal Transport", 2024, Sec. 4.2):
    integrated gradients of each step's loss log p(y_t | y_<t, x) (one attribution row per target
    token), averaged over the target tokens for the sequence score.

    The rows are those of ``integrated_gradients``; only the sequence score differs (the mean of
    the rows instead of their sum, since IG is linear in F). Completeness holds per row; the
    sequence delta compares with the mean over tokens of F_t(x) - F_t(x').
    """

    name = "integrated_gradients_avg"
    summary = "IG-AVG: integrated gradients of each target step's log-probability, averaged over steps"
    average = True


@register
class IntegratedGradientsClipped(_IntegratedGradients):
    """IGCG, integrated gradients with clipped gradients ("Enhancing Integrated Gradients using
    Emphasis Factors and Attention", 2025, Appendix A.2 and Sec. 5.1): every entry of the
    gradient dF/dx at every interpolation step is clamped to [-threshold, threshold] before the
    path integral (the paper used 1,000,000).

    The paper states the rule for the recurrence Jacobian dh_t/dh_{t-1} of an RNN; a transformer
    has no such recurrence, so the clip applies to the gradient with respect to the input
    embeddings, the quantity IG integrates. Completeness then holds only when nothing is clipped.
    """

    name = "ig_clipped"
    summary = "IGCG: integrated gradients with each gradient entry clipped at a threshold"
    params = {
        **_IntegratedGradients.params,
        "threshold": Param(
            1e6, "gradient entries are clamped to [-threshold, threshold]", float, minimum=0.0
        ),
    }

    def _clip(self) -> float | None:
        return self.threshold


# --------------------------------------------------------------------- sampling methods
@register
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
    needs_gradients = True
    stochastic = True
    convergence_check = True
    params = {
        "n_samples": Param(5, "random (baseline, alpha, noise) draws", int, minimum=1),
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

    def attribute(self, problem: Problem) -> Output:
        ep = embedded(problem)
        gen = problem.generator()
        k = self.n_samples
        if self.baselines == "random":
            bases = ep.random_token_baselines(k, gen)
        else:
            bases = ep.baseline(self.baselines)[None].expand(k, -1, -1)
        noise = torch.randn(k, *ep.embeds.shape, generator=gen).to(ep.embeds) * self.stdevs
        noisy = ep.embeds[None] + noise * ep.covered[None, :, None]
        alphas = torch.rand(k, generator=gen).to(ep.embeds)
        rows = bases + alphas[:, None, None] * (noisy - bases)
        seq = _own_sequence_row(ep)
        weights = torch.full((k,), 1.0 / k, dtype=torch.float64)
        sums = gradient_sums(ep, rows, _factor(ep, seq), weights, sequence=seq, multipliers=noisy - bases)
        scores, tokens = _split(ep, sums.sum(-1), "row" if seq else "sum")
        ends = _objective_values(ep, torch.cat([noisy, bases]))
        gap = (ends[:k] - ends[k:]).mean(0)
        delta = float(scores.sum() - gap[-1])
        return Output(scores, tokens, diagnostics={"convergence_delta": delta})


@register
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
    needs_gradients = True
    stochastic = True
    params = {
        "n_samples": Param(50, "noisy samples", int, minimum=1),
        "stdevs": Param(
            None,
            "noise standard deviation (default: 15% of the embeddings' range)",
            float,
            minimum=0.0,
            optional=True,
        ),
    }

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
        sums = gradient_sums(ep, rows, _factor(ep, True), weights, sequence=True)
        scores, tokens = _split(ep, sums.norm(dim=-1), "row")
        return Output(scores, tokens, diagnostics={"stdevs": sigma})
