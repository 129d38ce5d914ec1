"""Layer-wise relevance propagation for transformers: AttnLRP (Achtibat et al., "AttnLRP:
Attention-Aware Layer-Wise Relevance Propagation for Transformers", ICML 2024), the decomposition
family of the review "Feature-attribution based explanations for fine-tuned LLMs" (Sec. III.D).

The rules are those of :mod:`genattr.algorithms.lrp_rules`, swapped into the model for the call;
the plumbing (the prompt's embeddings, one forward pass and one backward pass batched over the
target tokens, features as sums of their tokens) is the gradient methods'
(:mod:`genattr.algorithms._embedding`).
"""

from __future__ import annotations

from typing import cast

import torch

from ..problem import Problem
from ..registry import Method, Output, Param
from ._embedding import embedded, gradient_sums, objective_factor
from .gradient import _scores_from_positions
from .lrp_rules import attnlrp


class Lrp(Method):
    """AttnLRP (Achtibat et al., ICML 2024): the relevance of the target's objective F_t (log p(y_t |
    y_<t, x) by default) propagated back through the model, layer by layer, to the prompt's input
    embeddings, with the rules of the paper:

    * linear layers: the epsilon rule, R_i = sum_j x_i w_ij R_j / (z_j + epsilon sign(z_j));
    * normalisation (LayerNorm, RMSNorm): the identity rule, the scale 1 / sigma held constant;
    * elementwise activations (SiLU, GELU, ...): the identity rule, R_in = R_out;
    * products of two input-dependent tensors (a gated MLP's act(gate) * up, attention's q k^T and
      P v): the uniform rule, each factor half of R_out;
    * attention softmax: the paper's rule, R_i = x_i (R_i^out - s_i sum_j R_j^out);
    * linear maps with constant coefficients (the rotary embedding, residual additions) pass
      relevance on in proportion (their gradient).

    A token's relevance is the sum over the embedding dimension of the relevance of its
    embedding's entries, R_i = sum_d e_{i,d} g_{i,d} with g the gradient that the rules' modified
    backward pass gives (gradient x input, as the paper's code, LXT, computes it), and a feature's
    is the sum over its tokens. One row per target token (F_t); the sequence row is the sum of
    the rows (log_prob), or with ``objective="prob"`` its own row for p(y | x).

    Which quantity is explained: the problem's objective, so that ``lrp`` ranks what the other
    methods rank. log p_t = z_y - log sum_k exp(z_k) is a log-softmax of the logits z; it gets
    the first-order rule the paper proves for softmax, R(z_k) = z_k (delta_{k,y} - p_k) for
    R(log p_t) = log p_t: the relevance entering the network is z_y - sum_k p_k z_k (the target's
    logit against the model's mean logit), the normaliser's remainder, -H(p_t) (the entropy of
    the next-token distribution), being absorbed as the softmax rule's bias term is. With
    ``from_logit=True`` the relevance starts at the target's raw logit z_y, as LXT explains it
    (a quantity blind to the competing tokens; the normaliser is then a bias absorbing its
    share). With ``objective="prob"`` the rows are p_t times the log-prob rows (the first-order
    rule at exp).

    Conservation: the relevance of every input position (features, the chat scaffolding and the
    teacher-forced target tokens) sums to the explained quantity less what the rules absorb:
    biases and the stabiliser epsilon at linear layers, the softmax rule's remainders, constant
    terms (GPT-2's position embeddings, LayerNorm's bias) and, for log p_t, -H(p_t);
    :class:`genattr.algorithms.lrp_rules.Ledger` measures each. ``diagnostics['relevance_total']``
    is that sum over every position, per target token then for the sequence.

    Departures: the paper gives the epsilon rule at linear layers; LXT applies the plain gradient
    (epsilon = 0); here ``epsilon`` defaults to 1e-6, a stabiliser that changes nothing but
    near-zero pre-activations (0 gives LXT's rule). The rules act on the ``torch`` operations and on
    the normalisation and activation classes of any model, so Llama, Qwen2, GPT-2 and Gemma run
    without model-specific code; an operation outside them (Gemma 2's soft-capping tanh, a
    written-out normalisation of an unknown class) raises
    :class:`~genattr.errors.UnsupportedModuleError` naming its module, rather than a rule being
    guessed. The model runs with eager attention for the call (the softmax rule needs the
    attention probabilities).

    References
    ----------
    Achtibat, Hatefi, Dreyer, Jain, Wiegand, Lapuschkin and Samek, "AttnLRP: Attention-Aware
    Layer-Wise Relevance Propagation for Transformers", ICML 2024, Sec. 3: the epsilon rule
    (Eq. 8), the uniform rule (Eq. 7, Propositions 3.2 and 3.3), the identity rule (Eq. 9,
    Proposition 3.4 for normalisation) and the softmax rule (Proposition 3.1), numbered as LXT's
    documentation cites them. Reference code: LXT, github.com/rachtibat/LRP-eXplains-Transformers.

    Examples
    --------
    >>> import genattr
    >>> from genattr.testing import tiny_lm
    >>> lm = tiny_lm()
    >>> res = genattr.explain(lm, "The doctor opens the door", target=" and the nurse", method="lrp")
    >>> res.token_scores.shape, bool(abs(res.token_scores.sum(0) - res.scores).max() < 1e-9)
    ((3, 5), True)
    """

    name = "lrp"
    family = "decomposition"
    summary = "AttnLRP: the target's log-probability decomposed layer by layer into relevances (epsilon, identity, uniform and softmax rules)"
    cost = "1 eager forward row, 1 backward pass batched over the n target tokens"
    needs_gradients = True
    contrastive = True
    additive = True
    params = {
        "epsilon": Param(
            1e-6,
            "stabiliser of the epsilon rule at linear layers, R_j / (z_j + epsilon sign z_j) (0: LXT's plain gradient)",
            float,
            minimum=0.0,
        ),
        "from_logit": Param(
            False, "propagate from the target's logit (as LXT does) instead of the objective", bool
        ),
    }
    epsilon: float
    from_logit: bool

    def attribute(self, problem: Problem) -> Output:
        ep = embedded(problem)
        objective = "log_prob" if self.from_logit else ep.objective
        own_row = objective != "log_prob"
        sequence = own_row or ep.sequence_only
        with ep.lm.eager_attention(), attnlrp(cast(torch.nn.Module, ep.lm.model), self.epsilon) as recompute:
            sums = gradient_sums(
                ep,
                ep.embeds[None],
                lambda values, _sl: objective_factor(objective, values, sequence),
                torch.ones(1, dtype=torch.float64),
                sequence=sequence,
                logits=self.from_logit,
                sequence_only=ep.sequence_only,
                recompute=recompute,
            )
        relevance = (sums * ep.embeds).sum(-1)
        scores, tokens = _scores_from_positions(ep, relevance, own_row)
        if tokens is not None and not own_row:
            relevance = torch.cat([relevance, relevance.sum(0, keepdim=True)])
        return Output(scores, tokens, diagnostics={"relevance_total": relevance.double().sum(-1).tolist()})
