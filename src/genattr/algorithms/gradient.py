"""Gradient methods: attributions from gradients of the target's likelihood with respect to the
prompt's input embeddings, the target teacher-forced.

The attributed function is the problem's objective: with ``log_prob`` (default)
F_t(x) = log p(y_t | y_<t, x) for target token t and F = sum_t F_t for the sequence (so positive
scores support the target, and the sequence score of a method linear in F is the sum of its
per-token rows); with ``prob``, F_t = p(y_t | y_<t, x) and F = p(y | x). The masking strategy is
not used; the ``token`` baseline is the embedding of the problem's mask token (the
``mask_token=`` argument of :func:`genattr.explain`), placed at every feature position. Other
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
from ..registry import MAX_GRADIENT_POINTS, Method, Output, Param
from ._embedding import (
    BASELINES,
    QUADRATURES,
    EmbeddedPrompt,
    completeness_gap,
    embedded,
    gradient_sums,
    objective_factor,
    quadrature,
)


def _factor(ep: EmbeddedPrompt, sequence: bool) -> Callable[[torch.Tensor, slice], torch.Tensor]:
    return lambda values, _sl: objective_factor(ep.objective, values, sequence)


def _scores_from_positions(
    ep: EmbeddedPrompt, position_level: torch.Tensor, sequence_row: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attributions to prompt positions [m, L], summed over each feature's positions, as (sequence
    scores [F], token matrix [n, F]): rows 0..n-1 are the target tokens'; the sequence scores are
    row n with ``sequence_row``, else the sum of the token rows. On the sequence-only path the one
    row is the sequence's, and there is no token matrix."""
    scores = ep.features(position_level)
    if ep.sequence_only and len(scores) == 1:
        return scores[0], None
    tokens = scores[: ep.n_target]
    if sequence_row:
        return scores[ep.n_target], tokens
    return tokens.sum(0), tokens


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
class Saliency(Method):
    """Saliency ("Deep Inside Convolutional Networks: Visualising Image Classification Models and
    Saliency Maps", Simonyan et al., 2014): the norm of the gradient of F with respect to each
    prompt token's embedding, ||dF_t / de_i||_2 (a sensitivity, never negative).

    The sequence score is the norm of the gradient of the sequence F (not the sum of the rows).

    Examples
    --------
    >>> import genattr
    >>> from genattr.testing import tiny_lm
    >>> lm = tiny_lm()
    >>> res = genattr.explain(lm, "The doctor opens the door", target=" and the nurse", method="saliency")
    >>> bool((res.scores >= 0).all()), res.token_scores.shape
    (True, (3, 5))
    """

    name = "saliency"
    family = "gradient"
    summary = "norm of the gradient of the target's log-likelihood w.r.t. each token's embedding"
    cost = "1 forward row, 1 backward pass (batched over the n target tokens for the matrix)"
    needs_gradients = True
    contrastive = True

    def attribute(self, problem: Problem) -> Output:
        ep = embedded(problem)
        sums = gradient_sums(
            ep,
            ep.embeds[None],
            _factor(ep, True),
            torch.ones(1, dtype=torch.float64),
            sequence=True,
            sequence_only=ep.sequence_only,
        )
        scores, tokens = _scores_from_positions(ep, sums.norm(dim=-1), True)
        return Output(scores, tokens)


class InputXGradient(Method):
    """Input x gradient ("Not Just a Black Box: Learning Important Features Through Propagating
    Activation Differences", Shrikumar et al., 2016; "Grad*Inp" in the AIEG paper):
    a_i = sum_d e_{i,d} dF / de_{i,d}.

    Examples
    --------
    >>> import genattr
    >>> from genattr.testing import tiny_lm
    >>> lm = tiny_lm()
    >>> res = genattr.explain(lm, "The doctor opens the door", target=" and the nurse",
    ...                       method="input_x_gradient")
    >>> bool(abs(res.token_scores.sum(0) - res.scores).max() < 1e-6)   # F = sum_t F_t
    True
    """

    name = "input_x_gradient"
    family = "gradient"
    summary = "embedding times gradient, summed over the embedding dimension"
    cost = "1 forward row, 1 backward pass (batched over the n target tokens for the matrix)"
    needs_gradients = True
    contrastive = True
    additive = True

    def attribute(self, problem: Problem) -> Output:
        ep = embedded(problem)
        seq = _own_sequence_row(ep)
        sums = gradient_sums(
            ep,
            ep.embeds[None],
            _factor(ep, seq or ep.sequence_only),
            torch.ones(1, dtype=torch.float64),
            sequence=seq or ep.sequence_only,
            sequence_only=ep.sequence_only,
        )
        scores, tokens = _scores_from_positions(ep, (sums * ep.embeds).sum(-1), seq)
        return Output(scores, tokens)


# --------------------------------------------------------------------- integrated gradients
FIRST_STEPS = 32
"""The first step count of the adaptive schedule (``n_steps`` unset), doubled from there."""


class _IntegratedGradients(Method):
    """Shared by ``integrated_gradients``, ``integrated_gradients_avg`` and ``ig_clipped``.

    The step count: a given ``n_steps`` is used as is. Left unset, the integral is computed with
    32, 64, 128, ... steps (each rung from scratch: Gauss-Legendre nodes are not nested) until
    the relative convergence delta is at most :data:`CONVERGENCE_TOLERANCE`, the last rung being
    ``max_steps`` (256). Measured on the zoo model (15 prompts, 3 per task, seed 0; token
    baseline, Gauss-Legendre), the share of prompts whose relative delta exceeds 5% and the
    largest delta are: 16 steps 100% (up to 210%), 32 steps 73% (52%), 50 steps 40% (16%),
    64 steps 27% (15%), 128 steps none (2.1%); the error does not fall monotonically with the
    steps (Gauss-Legendre's high order pays off on smooth integrands only; the trapezoid rule
    leaves 7% of the prompts over 5% at 64 steps and none at 128).
    No fixed count short of 128 converges there, and 128 steps cost 4 times what a quarter of
    the prompts need; the schedule stops at 32 steps on those, at 64 on about half, and at 128
    on the rest (about 110 steps on average, at most 2 times the count it stops at). Where even
    ``max_steps`` misses, a ConvergenceWarning says so. ``diagnostics['n_steps']`` is the
    count used, ``diagnostics['steps_tried']`` the rungs run and
    ``diagnostics['relative_convergence_delta_tried']`` the relative delta at each.
    Each step is a forward and a backward pass batched over the target tokens: on a large model
    pass ``n_steps`` (and accept the delta it reports) rather than let the schedule run.
    """

    family = "gradient"
    needs_gradients = True
    contrastive = True
    additive = True
    convergence_delta = True
    average = False
    params = {
        "n_steps": Param(
            None,
            "interpolation steps of the path integral (unset: doubled from 32 until converged, up to max_steps)",
            int,
            minimum=1,
            maximum=MAX_GRADIENT_POINTS,
            optional=True,
        ),
        "max_steps": Param(
            256,
            "the most steps the adaptive schedule (n_steps unset) may reach",
            int,
            minimum=2,
            maximum=MAX_GRADIENT_POINTS,
        ),
        "quadrature": Param("gausslegendre", "quadrature rule (Captum's `method`)", str, choices=QUADRATURES),
        "baselines": Param(
            "token",
            "baseline x': the baseline token's embedding (default) or the zero embedding",
            str,
            choices=BASELINES,
        ),
    }
    n_steps: int | None
    max_steps: int
    quadrature: str
    baselines: str

    def attribute(self, problem: Problem) -> Output:
        ep = embedded(problem)
        x, base = ep.embeds, ep.baseline(self.baselines)
        ends = _objective_values(ep, torch.stack([x, base]))
        gap = ends[0] - ends[1]
        tried: list[float] = []
        for n_steps in self._step_counts():
            scores, tokens = self._integral(ep, x, base, n_steps)
            gap_left = completeness_gap(scores, tokens, gap, per_token=self.average)
            tried.append(gap_left.relative)
            if gap_left.converged:
                break
        if not gap_left.converged and self._clip() is None:
            self._warn(n_steps, gap_left.delta, gap_left.relative)
        if self.average and tokens is not None:  # IG-AVG always computes its rows
            scores = tokens.abs().mean(0)
        diagnostics = {
            "n_steps": n_steps,
            **gap_left.diagnostics(),
            "steps_tried": self._step_counts()[: len(tried)],
            "relative_convergence_delta_tried": tried,
            "objective_input": ends[0].tolist(),
            "objective_baseline": ends[1].tolist(),
        }
        return Output(scores, tokens, diagnostics=diagnostics)

    def _step_counts(self) -> list[int]:
        """``[n_steps]``, or the adaptive schedule 32, 64, ... below ``max_steps``, then ``max_steps``."""
        if self.n_steps is not None:
            return [self.n_steps]
        counts = [FIRST_STEPS]
        while counts[-1] * 2 < self.max_steps:
            counts.append(counts[-1] * 2)
        return [c for c in counts if c < self.max_steps] + [self.max_steps]

    def _integral(
        self, ep: EmbeddedPrompt, x: torch.Tensor, base: torch.Tensor, n_steps: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Signed IG with ``n_steps`` points on :meth:`_path`: (sequence scores [F], token rows
        [n, F], None on the sequence-only path)."""
        rows, weights, steps = self._path(ep, x, base, n_steps)
        # IG-AVG's score is made of the rows, and clipped IG clips each token's gradient
        only = ep.sequence_only and not self.average and self._clip() is None
        seq = (_own_sequence_row(ep) or only) and not self.average
        sums = gradient_sums(
            ep,
            rows,
            _factor(ep, seq),
            weights,
            sequence=seq,
            multipliers=steps,
            clip=self._clip(),
            sequence_only=only,
        )
        return _scores_from_positions(ep, sums.sum(-1), seq)

    def _path(
        self, ep: EmbeddedPrompt, x: torch.Tensor, base: torch.Tensor, n_steps: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The points p_k [K, T, d], weights w_k [K] and steps s_k ([T, d] or [K, T, d]) of the sum
        sum_k w_k s_k . grad F(p_k): here the straight line p_k = x' + alpha_k (x - x') at the
        quadrature's nodes, with s_k = x - x'."""
        alphas, weights = quadrature(n_steps, self.quadrature)
        return base[None] + alphas.to(x)[:, None, None] * (x - base)[None], weights, x - base

    def _advice(self) -> str:
        """What the ConvergenceWarning tells the user to do."""
        advice = "raise max_steps" if self.n_steps is None else "raise n_steps (or leave it unset)"
        if self.baselines == "zero":
            advice += ", or use baselines='token' (a zero embedding is a hard path for models that normalise their inputs)"
        return advice

    def _warn(self, n_steps: int, delta: float, relative: float) -> None:
        warnings.warn(
            f"{self.name}: the attributions miss F(x) - F(x') by {relative:.0%} (convergence delta "
            f"{delta:.4g}) with n_steps={n_steps}; {self._advice()}.",
            ConvergenceWarning,
            stacklevel=3,
        )

    def _clip(self) -> float | None:
        return None


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
    same rule names and conventions), or, with ``n_steps`` unset, as many as it takes to bring
    the relative convergence delta under 5% (doubling from 32 up to ``max_steps``; the count
    used is ``diagnostics['n_steps']``); the baseline replaces the feature tokens' embeddings only.
    It is, by default, the embedding of the call's mask token (``mask_token=`` of explain):
    the zero embedding of the papers is a hard path for models that normalise their inputs
    (RMSNorm, LayerNorm), whose output is flat along most of it and jumps near 0, so that the
    quadrature misses most of F(x) - F(x') (on the zoo model, a median gap of 58% at 50 steps
    against 4% with the token baseline); ``baselines="zero"`` gives the papers' setting.

    References
    ----------
    Sundararajan, Taly and Yan, "Axiomatic Attribution for Deep Networks", ICML 2017.
    Li, Chen, Chai and Xiong, "GiLOT: Interpreting Generative Language Models via Optimal
    Transport", ICML 2024, Eq. 9-10.

    Examples
    --------
    >>> import genattr
    >>> from genattr.testing import tiny_lm
    >>> lm = tiny_lm()
    >>> res = genattr.explain(lm, "The doctor opens the door", target=" and the nurse",
    ...                       method="integrated_gradients", n_steps=64, baselines="zero")
    >>> gap = res.diagnostics["convergence_delta"]        # sum_i IG_i - (F(x) - F(x'))
    >>> bool(abs(gap) < 1e-3), res.diagnostics["n_steps"]
    (True, 64)
    """

    name = "integrated_gradients"
    summary = "integrated gradients of the sequence log-likelihood along the straight path from a baseline"
    cost = "per step 1 forward row and 1 backward pass, batched over the n target tokens for the matrix (token_scores=False: 1 output); steps double from 32 unless n_steps"


class IntegratedGradientsAvg(_IntegratedGradients):
    """IG-AVG ("GiLOT: Interpreting Generative Language Models via Optimal Transport", 2024, Sec. 4.2):
    integrated gradients of each target step's own function F_t = log p(y_t | y_<t, x), one row
    per target token (the rows of ``integrated_gradients``), and as the sequence score the mean
    over the steps of their absolute values:

        IG-AVG_i = (1/n) sum_t |IG_{t,i}|,   IG_{t,i} = sum_d (x - x')_{i,d} int_0^1 dF_t / dx_{i,d} d alpha.

    The paper says only that it "calculates the average input token attributions across all
    steps"; the absolute value before the average is what the authors' code does
    (``generate_ig_average`` in ``reproduce/llama_variants/interpretor.py`` and ``generate_ig_avg``
    in ``interpreter.py`` of github.com/holyseven/GiLOT: each step's attribution
    |sum_d IG * e| is added over the steps), and what makes IG-AVG differ from IG: without it
    the mean of the rows is IG's sequence score divided by n, the same ranking. A feature that
    supports one step and opposes another scores by both here, where IG lets them cancel. The
    scores are magnitudes (never negative); the per-token rows keep their signs. The absolute
    value applies to the step's attribution of each feature (the sum over its tokens), which is
    the authors' token-level operation when ``level="token"``. The authors' code sums over the
    steps where this averages (the same ranking), uses the right Riemann rule with 5 steps and the
    zero baseline; here ``n_steps``, ``quadrature`` and ``baselines`` are those of
    ``integrated_gradients``.

    Completeness holds per row; ``diagnostics['convergence_delta']`` is the mean over steps of
    |sum_i IG_{t,i} - (F_t(x) - F_t(x'))| and ``relative_convergence_delta`` divides it by the
    mean of |F_t(x) - F_t(x')|.
    """

    name = "integrated_gradients_avg"
    summary = (
        "IG-AVG: mean over target steps of the absolute integrated gradients of each step's log-probability"
    )
    cost = "per step 1 forward row and 1 backward pass batched over the n target tokens"
    additive = False
    average = True


class IntegratedGradientsClipped(_IntegratedGradients):
    """IGCG, integrated gradients with clipped gradients ("Enhancing Integrated Gradients using
    Emphasis Factors and Attention", 2025, Appendix A.2 and Sec. 5.1): every entry of the
    gradient dF/dx at every interpolation step is clamped to [-threshold, threshold] before the
    path integral (the paper used 1,000,000).

    The paper states the rule for the recurrence Jacobian dh_t/dh_{t-1} of an RNN; a transformer
    has no such recurrence, so the clip applies to the gradient with respect to the input
    embeddings, the quantity IG integrates. Completeness then holds only when nothing is clipped
    (and no ConvergenceWarning is raised): with ``n_steps`` unset, a clip that binds runs the
    step schedule to ``max_steps``, so pass ``n_steps`` when clipping.
    """

    name = "ig_clipped"
    summary = "IGCG: integrated gradients with each gradient entry clipped at a threshold"
    cost = "per step 1 forward row and 1 backward pass batched over the n target tokens"
    params = {
        **_IntegratedGradients.params,
        "threshold": Param(
            1e6, "gradient entries are clamped to [-threshold, threshold]", float, minimum=0.0
        ),
    }
    threshold: float

    def _clip(self) -> float | None:
        return self.threshold
