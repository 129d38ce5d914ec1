"""AIEG: Attended Integrated and Emphasized Gradients ("Enhancing Integrated Gradients using
Emphasis Factors and Attention", 2025, Eq. 9-13 and Appendix A.3).

For target token y_t, with F(x) = p(y_t | y_<t, x) (or its logit), the path x(alpha) = x' +
alpha (x - x') from the baseline x' to the prompt's embeddings x, and N steps alpha_k = k / N:

    EF_k    = |F(x(alpha_k)) - F(x(alpha_{k-1}))| / (|F(x(alpha_k))| + |F(x(alpha_{k-1}))|)   (Eq. 12)
    a_i     = sum_d (x - x')_{i,d} (1/N) sum_{k=1..N} EF_k dF(x(alpha_k)) / dx_{i,d}            (Eq. 11, A.3)
    PosNorm = max(a_i, 0) / sum_j max(a_j, 0)                                                    (Eq. 13)
    AIEG_i  = PosNorm_i * NetAttention_i                                                         (Eq. 11)

NetAttention is the attention probability from the position predicting y_t to prompt token i,
averaged over layers and heads (Eq. 9; see :func:`genattr.algorithms.attention.net_attention`).
A word's score is the sum over its sub-tokens (Sec. 5.1); the sequence score is the mean of the
per-token rows. The paper also counts earlier generated tokens as inputs; here the target is
teacher-forced and only the prompt is attributed, so PosNorm normalises over the prompt's
feature tokens. A row with no positive integrated gradient has no PosNorm (the paper assumes
one); it is left at zero and counted in ``diagnostics['tokens_without_positive_attribution']``.

The emphasis factor needs F one step before each gradient step, so F is evaluated on the whole
grid alpha_0..alpha_N: alpha_0 in one extra forward pass, the other points in the same batched
forward passes that give the gradients (one per chunk of steps, shared by all target tokens).
"""

from __future__ import annotations

import torch

from ..problem import Problem
from ..registry import MAX_GRADIENT_POINTS, Method, Output, Param
from ._embedding import BASELINES, embedded, gradient_sums
from .attention import attention_maps, net_attention


def emphasis_factor(current: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """EF = |F - F_prev| / (|F| + |F_prev|) elementwise (Eq. 12), 0 where both are 0; lies in [0, 1]
    by the triangle inequality, and is 0 exactly where F does not change."""
    denominator = current.abs() + previous.abs()
    ratio = (current - previous).abs() / torch.where(
        denominator > 0, denominator, torch.ones_like(denominator)
    )
    return torch.where(denominator > 0, ratio, torch.zeros_like(ratio))


def pos_norm(attributions: torch.Tensor) -> torch.Tensor:
    """PosNorm (Eq. 13) over the last dimension: the positive part divided by its sum, so each row
    sums to 1 (rows without a positive entry stay 0)."""
    positive = attributions.clamp(min=0)
    total = positive.sum(-1, keepdim=True)
    return positive / torch.where(total > 0, total, torch.ones_like(total))


class EmphasisPath:
    """F along the path x(alpha_k), k = 0..K, and the emphasis factor of each step, filled in as
    :func:`~genattr.algorithms._embedding.gradient_sums` scores the steps chunk by chunk.

    ``values[k]`` [K + 1, n] is F(x(alpha_k)) (row 0, the baseline's, given; a row is NaN until its
    step is scored), ``emphasis[k - 1]`` [K, n] is EF_k, ``scored`` the number of steps scored.
    EF_k needs F one step back, so the chunks must come in path order: :meth:`factor` refuses a
    chunk that does not start at the first step not yet scored. ``start`` [n] is the baseline's
    log-probabilities (logits with ``logits``).
    """

    def __init__(self, start: torch.Tensor, n_steps: int, logits: bool) -> None:
        self.logits = logits
        self.values = torch.full((n_steps + 1, start.shape[-1]), torch.nan, dtype=torch.float64)
        self.values[0] = self._objective(start).float()
        self.emphasis = torch.full((n_steps, start.shape[-1]), torch.nan, dtype=torch.float64)
        self.scored = 0

    def _objective(self, values: torch.Tensor) -> torch.Tensor:
        """F from the model's log-probabilities (the probability) or logits (the logit itself)."""
        return values if self.logits else values.exp()

    def factor(self, values: torch.Tensor, sl: slice) -> torch.Tensor:
        """The factor EF_k dF/d(log p) (EF_k with logits) [n, r] of steps ``sl`` (0-based: step
        sl.start + 1 first), whose log-probabilities (logits) are ``values`` [r, n]."""
        if sl.start != self.scored:
            raise RuntimeError(
                f"aieg: path steps {sl.start + 1}..{sl.stop} came before step {self.scored + 1}; "
                "the emphasis factor needs F one step back, so the steps must be scored in order."
            )
        f = self._objective(values.float())
        before = torch.cat([self.values[sl.start].to(f)[None], f[:-1]])
        ef = emphasis_factor(f, before)
        self.values[sl.start + 1 : sl.stop + 1] = f.double().cpu()
        self.emphasis[sl] = ef.double().cpu()
        self.scored = sl.stop
        return (ef if self.logits else ef * f).T


class Aieg(Method):
    """AIEG (see the module docstring for the formulas): integrated gradients whose every step is
    weighted by the emphasis factor EF (how much F changes over that step), kept positive and
    normalised (PosNorm), times NetAttention.

    ``extras`` holds the feature-level ``pos_norm`` and ``net_attention`` matrices [n, F] whose
    product is ``token_scores``, and the ``emphasis_factor`` [n_steps, n] of every step and token.

    References
    ----------
    "Enhancing Integrated Gradients using Emphasis Factors and Attention" (AIEG), ICLR 2025
    submission, Eq. 9-13 and Appendix A.3.

    Examples
    --------
    >>> import genattr
    >>> from genattr.testing import tiny_lm
    >>> lm = tiny_lm()
    >>> import numpy as np
    >>> res = genattr.explain(lm, "The doctor opens the door", target=" and the nurse",
    ...                       method="aieg", n_steps=10)
    >>> pos_norm, net_attention = np.array(res.extras["pos_norm"]), np.array(res.extras["net_attention"])
    >>> bool(abs(pos_norm * net_attention - res.token_scores).max() < 1e-6)
    True
    >>> np.shape(res.extras["emphasis_factor"])          # [n_steps, target tokens]
    (10, 3)
    """

    name = "aieg"
    family = "gradient"
    summary = "AIEG: emphasis-weighted integrated gradients, positive part normalised, times attention"
    cost = "N + 1 forward rows, N backward passes batched over the n target tokens, 1 eager forward pass for the attention"
    needs_gradients = True
    params = {
        "n_steps": Param(
            50, "steps N of the path (alpha = k / N)", int, minimum=1, maximum=MAX_GRADIENT_POINTS
        ),
        "baselines": Param(
            "zero",
            "baseline x': zero embedding (the paper's default) or the baseline token",
            str,
            choices=BASELINES,
        ),
        "target_score": Param(
            "prob", "F: the target token's probability or its logit", str, choices=("prob", "logit")
        ),
    }
    n_steps: int
    baselines: str
    target_score: str

    def attribute(self, problem: Problem) -> Output:
        ep = embedded(problem)
        logits = self.target_score == "logit"
        K = self.n_steps
        x, base = ep.embeds, ep.baseline(self.baselines)
        path = EmphasisPath(ep.values(base[None], logits=logits)[0], K, logits)
        alphas = torch.arange(1, K + 1, dtype=torch.float32, device=x.device) / K
        rows = base[None] + alphas[:, None, None] * (x - base)[None]
        sums = gradient_sums(
            ep,
            rows,
            path.factor,
            torch.full((K,), 1.0 / K, dtype=torch.float64),
            multipliers=x - base,
            logits=logits,
        )
        integrated = sums.sum(-1).cpu() * ep.covered.cpu()
        normalised = pos_norm(integrated)
        attention = net_attention(attention_maps(ep), ep.predicting, ep.length)
        tokens = ep.features(normalised * attention)
        without = int((normalised.sum(-1) == 0).sum())
        return Output(
            tokens.mean(0),
            tokens,
            diagnostics={"tokens_without_positive_attribution": without},
            extras={
                "pos_norm": ep.features(normalised).tolist(),
                "net_attention": ep.features(attention).tolist(),
                "emphasis_factor": path.emphasis.tolist(),
            },
        )
