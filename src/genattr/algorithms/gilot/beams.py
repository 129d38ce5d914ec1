"""Beam search and beam-tree scoring over many prompts at once: GiLOT's estimate of each output
position's distribution with the earlier tokens marginalised out,

    p(Y_j) ~ sum_{beam in B_{j-1}} P(beam) p(Y_j | beam) / sum_{beam in B_{j-1}} P(beam),   (Eq. 5)

("GiLOT: Interpreting Generative Language Models via Optimal Transport", Li et al., ICML 2024),
built on the public forward pass and prefill of :class:`~genattr.model.LanguageModel` (custom
tree attention masks through ``sees`` and ``key_positions``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ...errors import InvalidParameterError
from ...model import Batch, LanguageModel, returned_cache


@dataclass
class BeamSearch:
    """The result of :func:`beam_search` for B prompts, b beams and J positions.

    ``marginals[p, j]`` is the distribution of output position ``j + 1`` given prompt ``p``,
    marginalised over the b most probable prefixes of length ``j`` (GiLOT, Eq. 5): the sum over
    beams of P(beam) p(Y | beam) with the beam probabilities renormalised to sum to 1.
    ``mass[p, j]`` is the probability those prefixes cover (1 at the first position; the
    confidence of GiLOT's Table 8). ``sequences`` are the b best sequences of length J,
    ``sequence_log_probs`` their log-probabilities.
    """

    marginals: torch.Tensor
    mass: torch.Tensor
    sequences: torch.Tensor
    sequence_log_probs: torch.Tensor
    extras: dict = field(default_factory=dict)


def absorb(logp: torch.Tensor, last: torch.Tensor, eos_ids: Sequence[int]) -> torch.Tensor:
    """Rows whose last token is EOS stay at EOS with probability 1 (an ended sequence does not go on)."""
    if not eos_ids:
        return logp
    ended = torch.isin(last, torch.tensor(eos_ids, device=last.device))
    if bool(ended.any()):
        logp = logp.clone()
        logp[ended] = float("-inf")
        logp[ended, last[ended]] = 0.0
    return logp


@torch.no_grad()
def beam_search(lm: LanguageModel, inputs: Batch, num_beams: int, max_new_tokens: int) -> BeamSearch:
    """Beam search over every row at once, returning each output position's beam-marginalised
    distribution (GiLOT, Eq. 5); see :class:`BeamSearch`.

    All rows x beams advance in one forward pass per step (per chunk of rows). The b beams
    of a row are b query tokens of that row under a tree attention mask (each sees the
    prompt, its ancestors and itself), so the prompt's keys and values are held once per row,
    not once per beam, and the cache is never reordered; prompt prefixes common to several
    rows are run once (see :meth:`~genattr.model.LanguageModel.prefill`). The distribution
    p(Y_j | beam) is the one computed during the search, so no second pass is needed. An ended
    beam (last token EOS) stays at EOS: later positions put all its mass there. ``extras`` holds
    the beams of every depth d = 1..J as a tree: ``beam_tokens`` [B, J, b], ``beam_parents``
    [B, J, b] (index of the parent beam at depth d - 1, -1 at depth 1) and ``beam_log_probs``
    [B, J, b] (-inf for a slot left empty when fewer than b prefixes exist);
    :func:`score_beam_tree` scores such a tree under other prompts.
    """
    if num_beams < 1 or max_new_tokens < 1:
        raise InvalidParameterError(
            f"num_beams and max_new_tokens must be at least 1, got {num_beams} and {max_new_tokens}."
        )
    lm.check_length(inputs.length + max_new_tokens, "prompt + output positions")
    b, J, V = num_beams, max_new_tokens, lm.vocab_size
    n = len(inputs)
    marginals = torch.empty(n, J, V, dtype=torch.float32)
    mass = torch.ones(n, J, dtype=torch.float32)
    sequences = torch.empty(n, b, J, dtype=torch.long)
    seq_logp = torch.empty(n, b, dtype=torch.float32)
    tree_tokens = torch.empty(n, J, b, dtype=torch.long)
    tree_parents = torch.full((n, J, b), -1, dtype=torch.long)
    tree_logp = torch.empty(n, J, b, dtype=torch.float32)
    for sl in lm.chunks(n, inputs.length + b * J):
        rows = inputs.rows(sl)
        r = len(rows)
        logits0, past = lm.prefill(rows)
        logp0 = logits0.float().log_softmax(-1).cpu()
        marginals[sl, 0] = logp0.exp()
        k = min(b, V)
        cum, tok = logp0.topk(k, -1)
        if k < b:
            cum = torch.cat([cum, torch.full((r, b - k), float("-inf"))], 1)
            tok = torch.cat([tok, tok[:, :1].expand(-1, b - k)], 1)
        seqs = tok[:, :, None]
        tree_tokens[sl, 0], tree_logp[sl, 0] = tok, cum
        last_pos = rows.positions[:, -1:]
        prompt_keys = rows.visible[:, None, :].expand(-1, b, -1)
        itself = torch.eye(b, dtype=torch.bool).expand(r, -1, -1)
        ancestors = itself  # [r, b, b * j]: the nodes so far that each current beam descends from
        for j in range(1, J):
            sees = torch.cat([prompt_keys, ancestors], 2)
            node_positions = last_pos + 1 + torch.arange(j).repeat_interleave(b)[None]
            out = lm.forward(
                input_ids=tok,
                visible=sees[:, 0],
                positions=(last_pos + j).expand(-1, b),
                cache=past,
                use_cache=True,
                logits_to_keep=b,
                sees=sees,
                key_positions=torch.cat([rows.positions, node_positions], 1),
            )
            past = returned_cache(out)
            logp = out.logits[:, -b:].float().log_softmax(-1).cpu().reshape(r * b, V)
            logp = absorb(logp, tok.reshape(-1), lm.eos_ids).view(r, b, V)
            weights = cum.softmax(-1)
            marginals[sl, j] = torch.einsum("rb,rbv->rv", weights, logp.exp())
            mass[sl, j] = cum.logsumexp(-1).exp()
            cum, idx = (cum[:, :, None] + logp).reshape(r, b * V).topk(b, -1)
            beam, tok = idx // V, idx % V
            seqs = torch.cat([seqs.gather(1, beam[:, :, None].expand(-1, -1, j)), tok[:, :, None]], 2)
            tree_tokens[sl, j], tree_parents[sl, j], tree_logp[sl, j] = tok, beam, cum
            parents = ancestors.gather(1, beam[:, :, None].expand(-1, -1, ancestors.shape[2]))
            ancestors = torch.cat([parents, itself], 2)
        sequences[sl] = seqs
        seq_logp[sl] = cum
    extras = {"beam_tokens": tree_tokens, "beam_parents": tree_parents, "beam_log_probs": tree_logp}
    return BeamSearch(marginals, mass, sequences, seq_logp, extras)


@torch.no_grad()
def score_beam_tree(
    lm: LanguageModel,
    inputs: Batch,
    tokens: torch.Tensor,
    parents: torch.Tensor,
    valid: torch.Tensor | None = None,
) -> BeamSearch:
    """GiLOT's beam marginals of every row over a *given* tree of prefixes (another prompt's beams)
    instead of the row's own beams: the ``follow`` mode of GiLOT's authors' reproduction code.

    ``tokens[d, i]`` is the last token of node i at depth d + 1 and ``parents[d, i]`` the index
    of its parent at depth d (ignored at depth 1); ``valid`` marks the nodes to use (default
    all). For each row p and position j = 1..D + 1, with P_p(node) the node's probability
    given the row's prompt,

        marginals[p, 0] = p(Y_1 | x_p),
        marginals[p, j] = sum_i P_p(node_ji) p(Y_{j+1} | x_p, node_ji) / sum_i P_p(node_ji),

    the sums over the valid nodes at depth j, and ``mass[p, j]`` = sum_i P_p(node_ji). The
    whole tree is scored in one forward pass per chunk of rows (after the prompt's prefill)
    under a tree attention mask: each node sees the prompt and its own ancestors, at position
    last prompt position + depth. EOS is absorbing, as in :func:`beam_search`, which this
    reproduces exactly when given a row's own tree from ``beam_search(...).extras``.
    ``sequences`` are the paths to the deepest nodes, ``sequence_log_probs`` their log P_p.
    """
    tokens, parents = (
        torch.as_tensor(tokens, dtype=torch.long),
        torch.as_tensor(parents, dtype=torch.long),
    )
    valid = torch.ones(tokens.shape, dtype=torch.bool) if valid is None else torch.as_tensor(valid).bool()
    if tokens.ndim != 2 or parents.shape != tokens.shape or valid.shape != tokens.shape:
        raise InvalidParameterError(
            f"tokens, parents and valid must all be [depth, width]; got {tuple(tokens.shape)}, "
            f"{tuple(parents.shape)} and {tuple(valid.shape)}."
        )
    D, w = tokens.shape
    V = lm.vocab_size
    if bool(((tokens < 0) | (tokens >= V)).any()) or (
        D > 1 and bool(((parents[1:] < 0) | (parents[1:] >= w)).any())
    ):
        raise InvalidParameterError(f"tree tokens must lie in 0..{V - 1} and parents in 0..{w - 1}.")
    if D and not bool(valid.any(1).all()):
        raise InvalidParameterError("every depth of the tree needs at least one valid node.")
    lm.check_length(inputs.length + D + 1, "prompt + output positions")
    N = D * w
    depth = torch.arange(D).repeat_interleave(w)
    parent_node = torch.where(depth > 0, (depth - 1) * w + parents.reshape(-1), -1)
    ancestor = torch.eye(N, dtype=torch.bool)  # ancestor[q, k]: node k is q itself or an ancestor of q
    for d in range(1, D):
        rows_d = slice(d * w, (d + 1) * w)
        ancestor[rows_d] |= ancestor[parent_node[rows_d]]
    n = len(inputs)
    marginals = torch.empty(n, D + 1, V, dtype=torch.float32)
    mass = torch.ones(n, D + 1, dtype=torch.float32)
    node_logp = torch.empty(n, D, w, dtype=torch.float32)
    for sl in lm.chunks(n, inputs.length + N):
        rows = inputs.rows(sl)
        r = len(rows)
        logits0, past = lm.prefill(rows)
        logp0 = logits0.float().log_softmax(-1).cpu()
        marginals[sl, 0] = logp0.exp()
        if D == 0:
            continue
        sees = torch.cat([rows.visible[:, None, :].expand(-1, N, -1), ancestor[None].expand(r, -1, -1)], 2)
        node_positions = rows.positions[:, -1:] + 1 + depth[None]
        out = lm.forward(
            input_ids=tokens.reshape(1, -1).expand(r, -1),
            visible=torch.cat([rows.visible, torch.ones(r, N, dtype=torch.bool)], 1),
            positions=node_positions,
            cache=past,
            use_cache=True,
            logits_to_keep=N,
            sees=sees,
            key_positions=torch.cat([rows.positions, node_positions], 1),
        )
        logp = out.logits[:, -N:].float().log_softmax(-1).cpu()
        logp = absorb(logp.reshape(r * N, V), tokens.reshape(-1).repeat(r), lm.eos_ids).view(r, D, w, V)
        cum = logp0[:, tokens[0]]
        for d in range(D):
            if d > 0:
                cum = cum[:, parents[d]] + logp[:, d - 1, parents[d], tokens[d]]
            cum = cum.masked_fill(~valid[d][None], float("-inf"))
            node_logp[sl, d] = cum
            marginals[sl, d + 1] = torch.einsum("ri,riv->rv", cum.softmax(-1), logp[:, d].exp())
            mass[sl, d + 1] = cum.logsumexp(-1).exp()
    paths = torch.empty(w, D, dtype=torch.long)
    node = torch.arange(w)
    for d in range(D - 1, -1, -1):
        paths[:, d] = tokens[d, node]
        node = parents[d, node] if d > 0 else node
    sequences = paths[None].expand(n, -1, -1).clone()
    last = node_logp[:, -1] if D else torch.zeros(n, w)
    return BeamSearch(marginals, mass, sequences, last, {"node_log_probs": node_logp})
