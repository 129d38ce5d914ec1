"""Attention methods: attributions read from the attention probabilities of the model.

The row of target token t is read at the position whose output predicts y_t (the last prompt
token for y_1, then y_{t-1}: the query that decides y_t), over the prompt's positions; a
feature's score is the sum over its tokens. The maps are the attention *probabilities* of every
layer and head, read under eager attention (the core switches the model to eager attention for
the call and back to its own implementation afterwards). The sequence score of ``attention``
and ``attention_rollout`` is the mean of the per-token rows.
"""

from __future__ import annotations

from typing import cast

import torch

from ..errors import UnsupportedModelError
from ..model import gradients
from ..problem import Problem
from ..protocols import CausalLM
from ..registry import MAX_GRADIENT_POINTS, Method, Output, Param
from ._embedding import BASELINES, EmbeddedPrompt, ForwardHook, embedded, forward_hooks, objective_factor


def attention_maps(ep: EmbeddedPrompt) -> torch.Tensor:
    """Attention probabilities over the T positions (prompt, then target[:-1]): [layers, heads, T, T] float32."""
    return ep.lm.attention_maps(ep.template(1))[0]


def net_attention(maps: torch.Tensor, rows: torch.Tensor, length: int) -> torch.Tensor:
    """NetAttention ("Enhancing Integrated Gradients using Emphasis Factors and Attention", 2025, Eq. 9):
    the attention probability from each query ``rows`` [n] to the first ``length`` positions,
    averaged over layers and heads: (1/L) sum_l (1/H) sum_h A^{(l,h)}[row, :length] -> [n, length].

    Eq. 10 writes the attention as softmax(QK^T / sqrt(d)) V, a vector per token, while
    Appendix A.3 says "average attention from each layer and head"; a per-token score needs a
    scalar, so this is the averaged probability softmax(QK^T / sqrt(d)).
    """
    return maps[:, :, rows, :length].mean((0, 1))


def rollout(maps: torch.Tensor) -> torch.Tensor:
    """Attention rollout (Abnar and Zuidema, 2020, "Quantifying Attention Flow in Transformers"):
    R = A~^(L) ... A~^(1) with A~^(l) = 0.5 mean_h A^(l,h) + 0.5 I (the identity for the residual
    connection). ``maps`` [layers, heads, T, T] -> R [T, T]; every row of R sums to 1."""
    eye = torch.eye(maps.shape[-1], dtype=maps.dtype)
    out = eye
    for layer in maps:
        out = (0.5 * layer.mean(0) + 0.5 * eye) @ out
    return out


class ValueTap:
    """Records, during a forward pass under its :meth:`hooks`, each attention layer's
    value-projection input z [T, d] and its value vectors passed through the output projection,
    z W_V W_O [T, d] (biases of the value projection included, the output projection's bias left
    out), for GPT-2 style (``c_attn`` / ``c_proj``) and Llama / Qwen2 style (``v_proj`` /
    ``o_proj``, grouped-query heads repeated) attention modules."""

    def __init__(self, model: CausalLM) -> None:
        self.layers = [m for m in model.modules() if _value_modules(m) is not None]
        if not self.layers:
            raise UnsupportedModelError(
                f"bta reads the value and output projections of the attention layers, but found no "
                f"GPT-2 (c_attn/c_proj) or Llama/Qwen2 (v_proj/o_proj) attention module in "
                f"{type(model).__name__}; use attention_rollout or a gradient method for this model."
            )
        self.records: list[tuple[torch.Tensor, torch.Tensor]] = []

    def hooks(self) -> list[tuple[torch.nn.Module, ForwardHook]]:
        """The forward hooks that record, for :func:`~genattr.algorithms._embedding.forward_hooks`."""
        return [(_value_modules(layer)[0], self._hook(layer)) for layer in self.layers]

    def _hook(self, layer) -> ForwardHook:
        def hook(module, inputs, output):
            z = inputs[0][0].detach().float()
            self.records.append((z, _value_out(layer, output[0].detach().float())))

        return hook

    def perceptions(self, maps: torch.Tensor) -> list[torch.Tensor]:
        """The token-wise attention perception of every layer (see :func:`token_perception`)."""
        if len(self.records) != maps.shape[0]:
            raise UnsupportedModelError(
                f"bta found {len(self.records)} value projections for {maps.shape[0]} attention maps; "
                "this architecture is not supported."
            )
        return [token_perception(layer, z, v) for layer, (z, v) in zip(maps, self.records, strict=True)]


def _value_modules(module: torch.nn.Module):
    if hasattr(module, "v_proj") and hasattr(module, "o_proj"):
        return module.v_proj, module.o_proj
    if hasattr(module, "c_attn") and hasattr(module, "c_proj") and hasattr(module, "split_size"):
        return module.c_attn, module.c_proj
    return None


def _value_out(layer: torch.nn.Module, out: torch.Tensor) -> torch.Tensor:
    """The value vectors [T, *] produced by the value module, through the output projection (no bias)."""
    value, proj = _value_modules(layer)
    if hasattr(layer, "v_proj"):
        head_dim, groups = cast(int, layer.head_dim), cast(int, layer.num_key_value_groups)
        v = out.view(out.shape[0], -1, head_dim).repeat_interleave(groups, 1)
        return v.reshape(out.shape[0], -1) @ proj.weight.float().T
    size = cast(int, layer.split_size)
    v = out[:, 2 * size : 3 * size]
    return v @ proj.weight.float()


def token_perception(maps: torch.Tensor, z: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Token-wise attention perception of one layer (Chen et al., 2023, "Beyond Intuition:
    Rethinking Token Attributions inside Transformers"): the head-averaged attention with each
    key column j scaled by how much the layer's value path amplifies token j,

        A~_token = mean_h A^(h) diag(||z_j W_V W_O|| / ||z_j||),

    ``maps`` [heads, T, T], ``z`` [T, d] the inputs of the value projection, ``v`` [T, d] the
    value vectors through the output projection (as in the authors' code)."""
    ratio = v.norm(dim=-1) / z.norm(dim=-1).clamp(min=1e-12)
    return maps.mean(0) * ratio[None, :]


def perception_rollout(perceptions: list[torch.Tensor]) -> torch.Tensor:
    """P^(L) = (I + A~^(L)) ... (I + A~^(1)) [T, T] (GiLOT, Eq. 11; the product runs from the last
    layer on the left to the first on the right, so that row i gives what position i's final
    state draws from each input token, as in the authors' code R <- R + A~ R)."""
    eye = torch.eye(perceptions[0].shape[-1], dtype=perceptions[0].dtype)
    out = eye
    for layer in perceptions:
        out = out + layer @ out
    return out


def attention_gradients(
    ep: EmbeddedPrompt, n_steps: int, baselines: str, logits: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """The integrated gradient of F with respect to the last layer's attention map, at the
    predicting rows and prompt columns: (1/K) sum_{k=1..K} dF(x' + k/K (x - x')) / dA^(L)
    for the per-token F_t and for the sequence F: two [n, heads, L] tensors.

    A^(L)[q, :] only affects the output at position q, so one backward pass of sum_t log p_t
    gives every token's gradient row; the objective's chain rule then scales row t by
    dF_t / d log p_t (tokens) or dF / d log p_t (sequence) at each step. With ``logits``,
    F_t is target token t's logit z_t(y_t) (and F their sum), whatever the objective.
    """
    lm, L, n = ep.lm, ep.length, ep.n_target
    base = ep.baseline(baselines)
    alphas = torch.arange(1, n_steps + 1, dtype=torch.float32, device=base.device) / n_steps
    rows = base[None] + alphas[:, None, None] * (ep.embeds - base)[None]
    tokens = sequence = torch.zeros(())
    with lm.eager_attention():
        for sl in lm.chunks(n_steps, L + 1):
            x = rows[sl].to(lm.dtype).requires_grad_(True)
            with torch.enable_grad():
                out, maps = lm.log_probs_from_embeddings(
                    x, ep.template(x.shape[0]), ep.target, output_attentions=True, return_logits=logits
                )
                (grad,) = gradients(lm, out.sum(), maps[-1], tokens=x.shape[0] * L)
            picked = grad.float()[:, :, ep.predicting.to(grad.device), :L]  # [r, heads, n, L]
            objective = "log_prob" if logits else ep.objective
            factor = objective_factor(objective, out.detach().float(), True)
            tokens = tokens + torch.einsum("tr,rhtl->thl", factor[:n], picked)
            sequence = sequence + torch.einsum("r,rhtl->thl", factor[n], picked)
    return tokens.cpu() / n_steps, sequence.cpu() / n_steps


# --------------------------------------------------------------------- methods
class Attention(Method):
    """NetAttention ("Enhancing Integrated Gradients using Emphasis Factors and Attention", 2025,
    Eq. 9; the "Attention-only" baseline there): the attention probability from the position
    predicting each target token to each prompt token, averaged over layers and heads (see
    :func:`net_attention`). The sequence score is the mean of the rows.

    References
    ----------
    "Enhancing Integrated Gradients using Emphasis Factors and Attention" (AIEG), ICLR 2025
    submission, Eq. 9.

    Examples
    --------
    >>> import genattr
    >>> from genattr.testing import tiny_lm
    >>> lm = tiny_lm()
    >>> res = genattr.explain(lm, "The doctor opens the door", target=" and the nurse", method="attention")
    >>> bool((res.token_scores >= 0).all() and (res.token_scores.sum(1) <= 1 + 1e-6).all())
    True
    """

    name = "attention"
    family = "attention"
    summary = "attention probability to each prompt token, averaged over layers and heads"
    cost = "1 eager forward pass"

    def attribute(self, problem: Problem) -> Output:
        ep = embedded(problem)
        rows = net_attention(attention_maps(ep), ep.predicting, ep.length)
        tokens = ep.features(rows)
        return Output(tokens.mean(0), tokens)


class AttentionRollout(Method):
    """Attention rollout (Abnar and Zuidema, 2020): the product over layers of the head-averaged
    attention plus the identity for the residual connection, A~ = 0.5 A + 0.5 I (see
    :func:`rollout`), read at the predicting rows and prompt columns. The sequence score is the
    mean of the rows.
    """

    name = "attention_rollout"
    family = "attention"
    summary = "attention rolled out over layers with the identity for residual connections"
    cost = "1 eager forward pass"

    def attribute(self, problem: Problem) -> Output:
        ep = embedded(problem)
        rows = rollout(attention_maps(ep))[ep.predicting, : ep.length]
        tokens = ep.features(rows)
        return Output(tokens.mean(0), tokens)


class _Bta(Method):
    """Shared by ``bta`` and ``bta_avg``: the perception rollout times the ReLU of the integrated
    attention gradient, with (``bta``) F the objective or (``bta_avg``) each step's logit."""

    family = "attention"
    needs_gradients = True
    average = False
    params = {
        "n_steps": Param(
            20,
            "steps of the integrated gradient of the last attention map",
            int,
            minimum=1,
            maximum=MAX_GRADIENT_POINTS,
        ),
        "baselines": Param(
            "zero",
            "start of the path: zero embedding (GiLOT's scaling k/K e(x)) or the baseline token",
            str,
            choices=BASELINES,
        ),
    }
    n_steps: int
    baselines: str

    def attribute(self, problem: Problem) -> Output:
        ep = embedded(problem)
        tap = ValueTap(problem.lm.model)
        with forward_hooks(tap.hooks()):
            maps = attention_maps(ep)
        perception = perception_rollout(tap.perceptions(maps))[ep.predicting, : ep.length]
        token_grads, sequence_grads = attention_gradients(
            ep, self.n_steps, self.baselines, logits=self.average
        )
        rows = perception * token_grads.clamp(min=0).mean(1)
        tokens = ep.features(rows)
        if self.average:
            return Output(tokens.mean(0), tokens)
        sequence = ep.features((perception * sequence_grads.clamp(min=0).mean(1)).sum(0))
        return Output(sequence, tokens)


class Bta(_Bta):
    """Bidirectional Transformer Attribution (Chen et al., 2023, "Beyond Intuition: Rethinking
    Token Attributions inside Transformers") for the whole target, as "GiLOT: Interpreting
    Generative Language Models via Optimal Transport" (2024) applies it (Eq. 11):

        P^(L) ⊙ ReLU( (1/K) sum_{k=1..K} dF(x' + k/K (x - x')) / dA^(L) ),
        P^(L) = (I + A~^(L)) ... (I + A~^(1)),  A~ the token-wise attention perception,

    with A^(L) the last layer's attention probabilities; the ReLU applies per head, then the
    heads are averaged (as in the authors' code). F is the target's log-likelihood (GiLOT writes
    the gradient of the loss -F; its sign is flipped so that, as everywhere in genattr, kept
    entries support the target). Token t's row is the row of the position predicting y_t, over
    the prompt's columns; since A^(L)[q, :] only affects position q's output, the sequence
    matrix has one row per target token, and the sequence score sums them.

    What is computed for A~ (see :func:`token_perception`): the head-averaged attention with
    column j scaled by ||z_j W_V W_O|| / ||z_j||, z_j the input of the value projection.
    """

    name = "bta"
    summary = "token-wise attention perception rollout times the ReLU of the integrated attention gradient"
    cost = "1 eager forward pass, then per step 1 forward row and 1 backward pass to the last attention map"
    additive = True


class BtaAvg(_Bta):
    """BTA-AVG (GiLOT, Sec. 4.2): BTA of each target step on its own, averaged over the steps,

        BTA-AVG = (1/n) sum_t P^(L)[q_t] ⊙ ReLU( (1/K) sum_k dz_t(y_t)(x' + k/K (x - x')) / dA^(L)[q_t] ),

    q_t the position predicting y_t and z_t(y_t) the target token's logit there. The paper says
    only "similar to IG-AVG, for the step-by-step loss"; the step function and the aggregation
    are those of the authors' code (``generate_bt_token_average`` in
    ``reproduce/llama_variants/interpretor.py`` of github.com/holyseven/GiLOT): each step
    differentiates the target token's logit (where the same code's BTA, IG and IG-AVG
    differentiate log-probabilities), and the step rows are added up. That is what makes
    BTA-AVG differ from BTA here: A^(L)[q, :] reaches only the output at q, so with the
    log-probability as each step's function the rows would be exactly BTA's rows and their mean
    BTA's score divided by n. IG-AVG's absolute value of each step's row would change nothing:
    the rows are products of non-negative factors. The objective of the call (``log_prob`` or
    ``prob``) does not enter: the logit is the step function. The authors' code sums where this
    averages (the same ranking) and uses 5 steps including alpha = 0; the ReLU and the head
    average are as in ``bta``.
    """

    name = "bta_avg"
    summary = "BTA-AVG: BTA of each target step's logit (the authors' code), averaged over steps"
    cost = "1 eager forward pass, then per step 1 forward row and 1 backward pass to the last attention map"
    average = True
