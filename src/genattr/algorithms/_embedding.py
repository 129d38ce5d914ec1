"""Embedding and gradient plumbing shared by the gradient, attention and AIEG methods.

Every gradient method here works on the input embeddings of the prompt with the target
teacher-forced: the embeddings of the feature tokens are moved (towards a baseline, with noise,
...), the rest of the prompt (special tokens, chat scaffolding) and the target tokens keep their
own embeddings. A token-level attribution ``a[t, i]`` (target token t, prompt position i) becomes
a feature score by summing over the feature's tokens (the word-level sum of sub-tokens of
"Enhancing Integrated Gradients using Emphasis Factors and Attention", 2025).

The one expensive step, :func:`gradient_sums`, runs one batched forward pass per chunk of rows
(interpolation steps, noisy samples, ...) shared by every target token, then one backward pass
per chunk that is batched over the target tokens (``torch.autograd.grad`` with
``is_grads_batched``): the gradient of each token's log-probability with respect to each row's
embeddings, without a forward pass per target token (and with the output head differentiated
once, not once per token; see :func:`_batched_gradients`). Chunks hold at most
``lm.max_batch_tokens`` tokens counting that batching (rows x tokens x outputs); where one row's
outputs alone exceed it, its backward pass runs in groups of outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import InvalidParameterError
from ..model import Batch, LanguageModel, gradients
from ..problem import Problem
from ..protocols import CausalLM
from ..text.segment import token_owners

BASELINES = ("zero", "token")
QUADRATURES = ("gausslegendre", "riemann_trapezoid")

CONVERGENCE_TOLERANCE = 0.05
"""Relative completeness gap |sum IG - (F(x) - F(x'))| / |F(x) - F(x')| above which integrated gradients and DeepLIFT warn."""


@dataclass(frozen=True)
class Completeness:
    """How far attributions a_i miss completeness, sum_i a_i = F(x) - F(x') (integrated gradients'
    axiom, DeepLIFT's summation-to-delta): ``delta`` the convergence delta, ``relative`` it over
    the gap it should close, ``token_deltas`` [n] sum_i a_{t,i} - (F_t(x) - F_t(x')) per target
    token. See :func:`completeness_gap`."""

    delta: float
    relative: float
    token_deltas: torch.Tensor

    @property
    def converged(self) -> bool:
        """Whether ``relative`` is within :data:`CONVERGENCE_TOLERANCE`."""
        return self.relative <= CONVERGENCE_TOLERANCE

    def diagnostics(self) -> dict:
        """The result's ``convergence_delta``, ``relative_convergence_delta``, ``converged`` and
        ``convergence_delta_tokens``."""
        return {
            "convergence_delta": self.delta,
            "relative_convergence_delta": self.relative,
            "converged": self.converged,
            "convergence_delta_tokens": self.token_deltas.tolist(),
        }


def completeness_gap(
    scores: torch.Tensor, tokens: torch.Tensor | None, gap: torch.Tensor, *, per_token: bool = False
) -> Completeness:
    """The :class:`Completeness` of sequence ``scores`` [F] and token rows ``tokens`` [n, F] (None
    on the sequence-only path: no token deltas) against ``gap`` = F(x) - F(x') [n + 1] (the target
    tokens, then the sequence).

    For the sequence: delta = sum_i a_i - (F(x) - F(x')), relative = |delta| / |F(x) - F(x')|.
    With ``per_token`` (scores that aggregate the rows through their absolute values, so that
    each row's own gap counts): delta = (1/n) sum_t |sum_i a_{t,i} - (F_t(x) - F_t(x'))|,
    relative to (1/n) sum_t |F_t(x) - F_t(x')|. A zero gap counts as 1e-12.
    """
    token_deltas = gap[:0] if tokens is None else tokens.sum(1) - gap[:-1]
    if per_token:
        delta = float(token_deltas.abs().mean())
        return Completeness(delta, delta / max(float(gap[:-1].abs().mean()), 1e-12), token_deltas)
    delta = float(scores.sum() - gap[-1])
    return Completeness(delta, abs(delta) / max(float(gap[-1].abs()), 1e-12), token_deltas)


@dataclass
class EmbeddedPrompt:
    """A prompt as the gradient methods see it: embeddings, feature positions and the target.

    The T positions are the prompt's, then the teacher-forced target tokens' but the last
    (:attr:`genattr.problem.Problem.sequence_ids`); the last n of them predict the n target tokens
    explained (``target``). ``embeds`` [T, d] float32 on the model's device; ``covered`` [T] marks
    the positions of feature tokens (the only ones a baseline or noise replaces: prompt tokens,
    and output tokens when they are features too); ``membership`` [T, F] maps positions to
    features (1 where position i belongs to feature f).

    With a ``foil`` (contrastive explanation), the outputs are log p(y_t | ...) - log p(f_t | ...)
    per target token when the foil has as many tokens as the target, else one output, the
    sequence's log p(y | x) - log p(f | x); the foil follows the prompt's first ``prompt_length``
    positions, which are the only ones it shares with the target's rows. ``sequence_only``: the
    call asked for no per-token matrix (``token_scores=False``), so the methods whose sequence
    score is a gradient of the sequence's objective take one plain backward pass per chunk.
    """

    lm: LanguageModel
    ids: torch.Tensor
    embeds: torch.Tensor
    covered: torch.Tensor
    membership: torch.Tensor
    target: torch.Tensor
    baseline_id: int
    objective: str
    foil: torch.Tensor | None = None
    prompt_length: int = 0
    sequence_only: bool = False

    @property
    def length(self) -> int:
        return self.ids.shape[0]

    @property
    def n_target(self) -> int:
        """The number of outputs: one per target token, or one for a foil of another length."""
        if self.foil is not None and self.foil.shape[0] != self.target.shape[0]:
            return 1
        return self.target.shape[0]

    @property
    def row_tokens(self) -> int:
        """Tokens one row of :meth:`scored` runs (the foil's row too), for chunking under the budget."""
        return self.length + 1 + (0 if self.foil is None else self.prompt_length + self.foil.shape[0])

    @property
    def predicting(self) -> torch.Tensor:
        """The positions whose outputs predict the target tokens: the last n."""
        n = self.target.shape[0]
        return torch.arange(n) + self.length - n

    def scored(self, x: torch.Tensor, logits: bool = False) -> torch.Tensor:
        """The outputs at input embeddings ``x`` [r, T, d]: the target tokens' log-probs (logits
        with ``logits``) [r, n], or with a foil their difference from the foil's (see the class
        docstring). Differentiable; the caller chunks the rows."""
        out = self.lm.log_probs_from_embeddings(
            x, self.template(x.shape[0]), self.target, return_logits=logits
        )
        if self.foil is None:
            return out
        tail = self.lm.embed(self.foil[None, :-1]).to(x).expand(x.shape[0], -1, -1)
        ids = [*self.ids[: self.prompt_length].tolist(), *self.foil[:-1].tolist()]
        rows = Batch.from_ids(ids, x.shape[0])
        foil = self.lm.log_probs_from_embeddings(
            torch.cat([x[:, : self.prompt_length], tail], 1), rows, self.foil, return_logits=logits
        )
        if foil.shape == out.shape:
            return out - foil
        return (out.sum(1) - foil.sum(1))[:, None]

    def template(self, rows: int) -> Batch:
        """``rows`` copies of the T positions, every position visible."""
        return Batch.from_ids(self.ids.tolist(), rows)

    def baseline(self, kind: str) -> torch.Tensor:
        """The baseline x' [T, d]: the zero vector or the baseline token's embedding at feature positions."""
        if kind == "zero":
            fill = torch.zeros_like(self.embeds[0])
        else:
            fill = self.lm.embed(torch.tensor([[self.baseline_id]]))[0, 0].detach().float()
        return torch.where(self.covered[:, None], fill, self.embeds)

    def random_token_baselines(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` baselines [n, T, d]: an embedding of a uniformly drawn vocabulary token at each feature position."""
        ids = torch.randint(self.lm.vocab_size, (n, self.length), generator=generator)
        random = self.lm.embed(ids).detach().float()
        return torch.where(self.covered[None, :, None], random, self.embeds[None])

    def features(self, token_level: torch.Tensor) -> torch.Tensor:
        """Token-level attributions [..., T] -> feature scores [..., F] (sum over each feature's tokens), float64 CPU."""
        return token_level.double().cpu() @ self.membership

    @torch.no_grad()
    def values(self, rows: torch.Tensor, logits: bool = False) -> torch.Tensor:
        """Target log-probs (or logits) [R, n] given input embeddings ``rows`` [R, T, d], chunked."""
        out = []
        for sl in self.lm.chunks(rows.shape[0], self.row_tokens):
            x = rows[sl].to(self.lm.dtype)
            out.append(self.scored(x, logits))
        return torch.cat(out).double().cpu()


def embedded(problem: Problem) -> EmbeddedPrompt:
    """The :class:`EmbeddedPrompt` of a problem (prompt, features, target, baseline token, objective)."""
    lm = problem.lm
    ids = problem.sequence_ids
    owners = torch.tensor(token_owners(problem.features, len(ids)), dtype=torch.long)
    membership = torch.nn.functional.one_hot(owners + 1, problem.n_features + 1)[:, 1:].double()
    embeds = lm.embed(ids[None])[0].detach().float()
    covered = (membership.sum(1) > 0).to(embeds.device)
    target = torch.tensor(problem.target_ids, dtype=torch.long)
    foil = None if problem.foil is None else torch.tensor(problem.foil.ids, dtype=torch.long)
    return EmbeddedPrompt(
        lm,
        ids,
        embeds,
        covered,
        membership,
        target,
        problem.masker.baseline_id,
        problem.objective,
        foil,
        len(problem.prompt),
        not problem.token_scores,
    )


def quadrature(n_steps: int, method: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Points alpha_k in [0, 1] and weights w_k with sum_k w_k g(alpha_k) ~ int_0^1 g(alpha) d alpha.

    ``riemann_trapezoid``: the composite trapezoid rule, alpha_k = k / (K - 1), weights 1 / (K - 1)
    halved at both ends (needs K >= 2; exact for linear integrands). Captum's rule of that name
    uses the same points with step 1 / K, so its weights sum to 1 - 1/K and its integrals are
    (K - 1) / K times these. ``gausslegendre``: the K-point Gauss-Legendre rule mapped from
    [-1, 1] to [0, 1] (numpy's ``leggauss``, as Captum does), exact for polynomials of degree
    2K - 1.
    """
    if method == "riemann_trapezoid":
        if n_steps < 2:
            raise InvalidParameterError(
                f"the riemann_trapezoid rule needs n_steps >= 2, got {n_steps}; raise n_steps or use "
                "quadrature='gausslegendre'."
            )
        weights = torch.full((n_steps,), 1.0 / (n_steps - 1), dtype=torch.float64)
        weights[0] /= 2
        weights[-1] /= 2
        return torch.linspace(0, 1, n_steps, dtype=torch.float64), weights
    nodes, node_weights = np.polynomial.legendre.leggauss(n_steps)
    return torch.from_numpy(0.5 * (nodes + 1)), torch.from_numpy(0.5 * node_weights)


def objective_factor(objective: str, values: torch.Tensor, sequence: bool) -> torch.Tensor:
    """dF/d(log p) for each output row and sample row: [n (+1), r].

    The backward pass gives gradients of the log-probabilities ``values`` [r, n]; for the
    ``log_prob`` objective F_t = log p_t (factor 1, and the sequence F = sum_t log p_t); for
    ``prob``, F_t = p_t (factor p_t) and the sequence F = p(y) = exp(sum_t log p_t).
    """
    r, n = values.shape
    if objective == "log_prob":
        return torch.ones(n + int(sequence), r, dtype=values.dtype, device=values.device)
    tokens = values.exp().T
    if not sequence:
        return tokens
    return torch.cat([tokens, values.sum(1).exp()[None]])


ForwardHook = Callable[[torch.nn.Module, tuple, object], None]
"""A forward hook: (module, its inputs, its output) -> None."""


@contextmanager
def forward_hooks(hooks: Iterable[tuple[torch.nn.Module, ForwardHook]]) -> Iterator[None]:
    """Registers each ``(module, hook)`` as a forward hook while open, and removes every one of them
    on exit, also when the block, or registering a later hook, raises."""
    handles = []
    try:
        for module, hook in hooks:
            handles.append(module.register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def _head_input(model: CausalLM) -> Iterator[list[torch.Tensor]]:
    """Collects, while open, the inputs of every call of the model's output embedding (the head)."""
    calls: list[torch.Tensor] = []
    with forward_hooks([(model.get_output_embeddings(), lambda _m, inputs, _o: calls.append(inputs[0]))]):
        yield calls


def _batched_gradients(
    lm: LanguageModel, out: torch.Tensor, x: torch.Tensor, head: list[torch.Tensor], sequence: bool
) -> torch.Tensor:
    """d out_j / dx for every target token j (and their sum with ``sequence``): [m, r, T, d].

    When the head ran once, in two stages: one plain backward pass of sum_j out_j to the head's
    input h (out_j depends on h only at the position predicting token j, so this gives every
    d out_j / dh at once), then one backward pass from h to x batched over the tokens, each
    token's cotangent being its own position's slice. The head, the log-softmax and the gather
    are then differentiated once instead of once per token. Otherwise (a model that computes its
    logits without calling its output embedding once), one backward pass from ``out`` batched over
    one-hot cotangents. Either way the batched pass runs in groups of outputs within
    ``lm.max_batch_tokens`` (:func:`_grouped_gradients`).
    """
    r, n = out.shape
    tokens = r * x.shape[1]  # the forward pass: its rows hold the prompt and target[:-1]
    if len(head) != 1:
        selector = torch.cat([torch.eye(n), torch.ones(1, n)])[: n + int(sequence)].to(out)
        return _grouped_gradients(lm, out, x, tokens, selector[:, None, :].expand(-1, r, n))
    hidden = head[0]
    (per_position,) = gradients(
        lm, out.sum(), hidden, tokens=hidden.shape[0] * hidden.shape[1], retain_graph=True
    )
    rows = torch.arange(n, device=hidden.device) + hidden.shape[1] - n
    cotangents = torch.zeros(n + int(sequence), *hidden.shape, dtype=hidden.dtype, device=hidden.device)
    cotangents[torch.arange(n), :, rows] = per_position[:, rows].transpose(0, 1)
    if sequence:
        cotangents[n] = per_position
    return _grouped_gradients(lm, hidden, x, tokens, cotangents)


def _grouped_gradients(
    lm: LanguageModel, out: torch.Tensor, x: torch.Tensor, tokens: int, cotangents: torch.Tensor
) -> torch.Tensor:
    """d out / dx batched over the m cotangents [m, *out.shape]: [m, *x.shape], in groups of
    max(1, max_batch_tokens // tokens) outputs (``tokens`` those of the forward pass), one batched
    backward pass each, so that a long target on a long prompt stays within the memory budget
    that a pass batched over all its tokens would exceed."""
    size = lm.rows_per_chunk(tokens)
    m = cotangents.shape[0]
    parts = [
        gradients(
            lm, out, x, tokens=tokens, grad_outputs=cotangents[start : start + size], batched=True,
            retain_graph=start + size < m,
        )[0]
        for start in range(0, m, size)
    ]  # fmt: skip
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def gradient_sums(
    ep: EmbeddedPrompt,
    rows: torch.Tensor,
    factor: Callable[[torch.Tensor, slice], torch.Tensor],
    weights: torch.Tensor,
    *,
    sequence: bool = False,
    multipliers: torch.Tensor | None = None,
    clip: float | None = None,
    logits: bool = False,
    sequence_only: bool = False,
    recompute: Callable[[], AbstractContextManager[Any]] = nullcontext,
) -> torch.Tensor:
    """Weighted sums over rows of per-output gradients with respect to the prompt embeddings.

    With g_{j,r} = d(out_j)/d(rows_r) where out_j is target token j's log-probability (its
    logit with ``logits``) and, with ``sequence``, out_n = sum_j out_j, this returns

        S[j] = sum_r weights[r] * multipliers[r] * clip(factor(values)[j, r] * g_{j,r})   [m, L, d]

    ``factor`` maps a chunk's outputs out_j [r, n] and its row slice to [m, r]: it is where the
    chain rule of the objective (see :func:`objective_factor`) or AIEG's emphasis factor enters.
    ``clip`` clamps each gradient entry to [-clip, clip].

    With ``sequence_only`` (the sequence-only path: no per-token rows asked for), only the
    sequence's row is computed, S[0] = sum_r weights[r] multipliers[r] clip(factor[-1, r] g_{n,r}),
    from one plain backward pass of sum_j out_j per chunk instead of one batched over the n + 1
    outputs; ``factor`` must then give the sequence's factor as its last row (``sequence`` True).

    With ``lm.checkpoint_layers`` the forward passes keep only the decoder layers' inputs
    (:meth:`~genattr.model.LanguageModel.layer_checkpoints`, given ``recompute``).
    """
    lm = ep.lm
    n = ep.n_target
    m = 1 if sequence_only else n + int(sequence)
    sums = torch.zeros(m, *rows.shape[1:], dtype=torch.float32, device=rows.device)
    for sl in lm.chunks(rows.shape[0], ep.row_tokens * m):
        x = rows[sl].to(lm.dtype).requires_grad_(True)
        with torch.enable_grad(), lm.layer_checkpoints(recompute), _head_input(lm.model) as head:
            out = ep.scored(x, logits)
            if sequence_only:
                grads = gradients(lm, out.sum(), x, tokens=x.shape[0] * (ep.row_tokens - 1))[0][None]
            else:
                grads = _batched_gradients(lm, out, x, head, sequence)
        scale = factor(out.detach(), sl).float()
        grads = grads.float() * (scale[-1:] if sequence_only else scale)[:, :, None, None]
        if clip is not None:
            grads = grads.clamp(-clip, clip)
        if multipliers is not None:
            grads = grads * (multipliers if multipliers.ndim == 2 else multipliers[sl])
        sums += torch.einsum("r,mrld->mld", weights[sl].to(grads), grads)
    return sums
