"""AIEG against its definition (Eq. 9-13 and Appendix A.3 of "Enhancing Integrated Gradients using
Emphasis Factors and Attention") computed naively: one forward and one backward pass per step and
per target token, attention read from the Hugging Face model directly; and the properties the
paper states: EF in [0, 1] and 0 where F is flat, PosNorm summing to 1, non-negative scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import genattr
from genattr.algorithms.aieg import EmphasisPath, emphasis_factor, pos_norm
from genattr.model import Batch

PROMPT = "The cat sat on the mat."
TARGET = " and the bird sings"


def test_emphasis_factor_lies_in_unit_interval_and_vanishes_where_flat():
    gen = torch.Generator().manual_seed(0)
    current, previous = torch.randn(1000, generator=gen) * 3, torch.randn(1000, generator=gen) * 3
    ef = emphasis_factor(current, previous)
    assert bool(((ef >= 0) & (ef <= 1)).all())
    assert emphasis_factor(torch.tensor([2.0, 0.0, -1.5]), torch.tensor([2.0, 0.0, -1.5])).tolist() == [
        0,
        0,
        0,
    ]
    torch.testing.assert_close(
        emphasis_factor(torch.tensor([1.0, 2.0, -1.0]), torch.tensor([0.0, 1.0, 1.0])),
        torch.tensor([1.0, 1 / 3, 1.0]),
    )


@pytest.mark.parametrize("logits", [False, True])
def test_emphasis_path_is_eq_12_whatever_the_chunks_and_refuses_them_out_of_order(logits):
    K, n = 7, 3
    grid = -torch.rand(K + 1, n, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    f = (grid if logits else grid.exp()).float().double()  # F(x(alpha_k)), k = 0..K

    def run(cuts: list[int]) -> tuple[EmphasisPath, torch.Tensor]:
        path = EmphasisPath(grid[0], K, logits)
        factors = [
            path.factor(grid[1 + a : 1 + b].float(), slice(a, b))
            for a, b in zip(cuts[:-1], cuts[1:], strict=True)
        ]
        return path, torch.cat(factors, 1)

    whole, whole_factor = run([0, K])
    expected = (f[1:] - f[:-1]).abs() / (f[1:].abs() + f[:-1].abs())
    torch.testing.assert_close(whole.emphasis, expected, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(whole.values, f)
    torch.testing.assert_close(
        whole_factor.double(), (expected if logits else expected * f[1:]).T, rtol=1e-6, atol=1e-7
    )
    pieces, pieces_factor = run([0, 2, 3, K])
    assert torch.equal(pieces.emphasis, whole.emphasis) and torch.equal(pieces_factor, whole_factor)
    fresh = EmphasisPath(grid[0], K, logits)
    with pytest.raises(RuntimeError, match="in order"):
        fresh.factor(grid[4:6].float(), slice(3, 5))


def test_pos_norm_keeps_positives_and_sums_to_one():
    a = torch.tensor([[0.5, -1.0, 1.5, 0.0], [-1.0, -2.0, -0.1, 0.0]])
    out = pos_norm(a)
    torch.testing.assert_close(out[0], torch.tensor([0.25, 0.0, 0.75, 0.0]))
    torch.testing.assert_close(out[1], torch.zeros(4))


def _naive_aieg(lm, res, n_steps: int, logits: bool) -> tuple[np.ndarray, np.ndarray]:
    """AIEG rows [n, F] and EF [N, n] with one single-row forward and backward per (step, token)."""
    ids, target = [*res.prompt.input_ids, *res.target.ids[:-1]], list(res.target.ids)
    positions = [f.positions[0] for f in res.features]
    x = lm.embed(torch.tensor([ids]))[0].detach()
    base = x.clone()
    base[positions] = 0.0
    n, L = len(target), len(ids)

    def f_and_grad(alpha: float, t: int):
        row = (base + alpha * (x - base))[None].clone().requires_grad_(True)
        out = lm.log_probs_from_embeddings(row, Batch.from_ids(ids), target, return_logits=logits)[0, t]
        value = out if logits else out.exp()
        (g,) = torch.autograd.grad(value, row)
        return float(value.detach()), g[0]

    rows, efs = [], np.zeros((n_steps, n))
    for t in range(n):
        total = torch.zeros_like(x)
        previous, _ = f_and_grad(0.0, t)
        for k in range(1, n_steps + 1):
            value, grad = f_and_grad(k / n_steps, t)
            ef = abs(value - previous) / (abs(value) + abs(previous))
            efs[k - 1, t] = ef
            total += ef * grad / n_steps
            previous = value
        a = ((x - base) * total).sum(-1)[positions].clamp(min=0)
        rows.append(a / a.sum())
    with torch.no_grad():
        lm.model.set_attn_implementation("eager")
        try:
            full = torch.tensor([ids])
            maps = torch.stack(lm.model(input_ids=full, output_attentions=True).attentions)[:, 0]
        finally:
            lm.model.set_attn_implementation("sdpa")
    attention = maps.mean((0, 1))[torch.arange(n) + L - n][:, positions]
    return (torch.stack(rows) * attention).double().numpy(), efs


@pytest.mark.parametrize("target_score", ["prob", "logit"])
def test_aieg_equals_its_definition(lm, target_score):
    res = genattr.explain(
        lm, PROMPT, target=TARGET, method="aieg", level="token", n_steps=4, target_score=target_score
    )
    expected, efs = _naive_aieg(lm, res, 4, target_score == "logit")
    np.testing.assert_allclose(np.array(res.extras["emphasis_factor"]), efs, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(res.token_scores, expected, rtol=1e-3, atol=1e-6 * np.abs(expected).max())
    np.testing.assert_allclose(res.scores, expected.mean(0), rtol=1e-3, atol=1e-6 * np.abs(expected).max())


def test_aieg_properties_on_every_architecture(lm):
    res = genattr.explain(lm, PROMPT, target=TARGET, method="aieg", n_steps=16)
    pos = np.array(res.extras["pos_norm"])
    ef = np.array(res.extras["emphasis_factor"])
    assert ef.shape == (16, len(res.target.ids)) and (ef >= 0).all() and (ef <= 1).all()
    assert (res.token_scores >= 0).all() and (res.scores >= 0).all()
    complete = pos.sum(1) > 0
    assert complete.sum() == len(res.target.ids) - res.diagnostics["tokens_without_positive_attribution"]
    np.testing.assert_allclose(pos.sum(1)[complete], 1.0, atol=1e-6)  # PosNorm sums to 1 before attention
    word = genattr.explain(lm, PROMPT, target=TARGET, method="aieg", n_steps=16, level="token")
    np.testing.assert_allclose(
        word.token_scores,
        np.array(word.extras["pos_norm"]) * np.array(word.extras["net_attention"]),
        atol=1e-9,
    )
    np.testing.assert_allclose(res.scores, res.token_scores.mean(0), atol=1e-12)
    # word level sums the sub-token scores of the token level
    members = np.zeros((len(word.features), len(res.features)))
    for f in res.features:
        for g in word.features:
            if set(g.positions) <= set(f.positions):
                members[g.index, f.index] = 1
    np.testing.assert_allclose(word.token_scores @ members, res.token_scores, atol=1e-9)


def test_aieg_is_zero_where_the_path_is_flat(word_lm):
    """Baseline token = every prompt token: x' = x, F is constant along the path, so EF = 0 (up to
    the float32 noise between batches of different sizes) and nothing is attributed."""
    red = word_lm.tokenizer.convert_tokens_to_ids("red")
    res = genattr.explain(
        word_lm, "red red red", target="cat sat", method="aieg", mask_token=red, baselines="token", n_steps=5
    )
    assert np.array(res.extras["emphasis_factor"]).max() < 1e-6
    assert res.diagnostics["tokens_without_positive_attribution"] == 2
    np.testing.assert_array_equal(res.token_scores, 0)
