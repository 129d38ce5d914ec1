"""The beam machinery GiLOT builds on: prefix sharing in the prefill (exact, fewer tokens), the tree
of beams recorded by ``beam_search``, and ``score_beam_tree`` (tree attention) against plain
beam search and against a naive oracle that calls the Hugging Face model once per prefix."""

from __future__ import annotations

import pytest
import torch

import genattr.model.prefix
from genattr.algorithms.gilot.beams import beam_search, score_beam_tree
from genattr.errors import InvalidParameterError
from genattr.masking import Masker
from genattr.text.prompt import Prompt

PROMPT = "The cat sat on the mat. Then a dog runs!"


def _leave_one_out_inputs(lm, text, strategy):
    prompt = Prompt.from_text(lm.tokenizer, text)
    features = prompt.features("word")
    keep = torch.ones(len(features) + 1, len(features), dtype=torch.bool)
    keep[torch.arange(1, len(features) + 1), torch.arange(len(features))] = False
    return Masker(lm, prompt, features, strategy).inputs(keep)


@pytest.mark.parametrize("strategy", ["attention", "replace"])
def test_shared_prefix_beam_search_equals_the_plain_one(lm, strategy, monkeypatch):
    inputs = _leave_one_out_inputs(lm, PROMPT, strategy)
    monkeypatch.setattr(lm, "share_prefix", False)
    before = lm.usage.copy()
    plain = beam_search(lm, inputs, num_beams=3, max_new_tokens=4)
    plain_tokens = lm.usage.since(before)["tokens_processed"]
    monkeypatch.setattr(lm, "share_prefix", True)
    monkeypatch.setattr(
        genattr.model.prefix, "PREFILL_CALL_TOKENS", 0
    )  # cut the prefix tree wherever it pays
    before = lm.usage.copy()
    shared = beam_search(lm, inputs, num_beams=3, max_new_tokens=4)
    shared_tokens = lm.usage.since(before)["tokens_processed"]
    torch.testing.assert_close(shared.marginals, plain.marginals, atol=1e-5, rtol=0)
    torch.testing.assert_close(shared.mass, plain.mass, atol=1e-6, rtol=1e-4)
    assert torch.equal(shared.sequences, plain.sequences)
    # Every variant runs only its positions from its removed feature on (features are words: the
    # full prompt's prefix up to the first removed token is shared, at least one token each).
    L, F = inputs.length, len(inputs) - 1
    assert shared_tokens < plain_tokens - F * 2
    assert shared_tokens >= plain_tokens - (F + 1) * L
    # Several chunks, each sharing within itself, give the same search.
    monkeypatch.setattr(lm, "max_batch_tokens", 5 * (L + 4) * 3)
    chunked = beam_search(lm, inputs, num_beams=3, max_new_tokens=4)
    torch.testing.assert_close(chunked.marginals, plain.marginals, atol=1e-5, rtol=0)
    assert torch.equal(chunked.sequences, plain.sequences)


def test_beam_tree_in_extras_traces_the_sequences(llama):
    inputs = _leave_one_out_inputs(llama, PROMPT, "attention").rows(slice(0, 3))
    out = beam_search(llama, inputs, num_beams=4, max_new_tokens=5)
    tokens, parents, logp = (out.extras[k] for k in ("beam_tokens", "beam_parents", "beam_log_probs"))
    assert tokens.shape == parents.shape == logp.shape == (3, 5, 4)
    for row in range(3):
        for i in range(4):
            path, node = [], i
            for d in range(4, -1, -1):
                path.append(int(tokens[row, d, node]))
                node = int(parents[row, d, node])
            assert path[::-1] == out.sequences[row, i].tolist()
    torch.testing.assert_close(logp[:, -1], out.sequence_log_probs)
    assert bool((parents[:, 0] == -1).all())


def test_scoring_a_rows_own_tree_reproduces_its_beam_search(lm):
    inputs = _leave_one_out_inputs(lm, PROMPT, "attention")
    J = 4
    search = beam_search(lm, inputs, num_beams=3, max_new_tokens=J)
    for row in (0, 2):
        tree = [search.extras[k][row, : J - 1] for k in ("beam_tokens", "beam_parents", "beam_log_probs")]
        scored = score_beam_tree(
            lm, inputs.rows(slice(row, row + 1)), tree[0], tree[1], tree[2] > float("-inf")
        )
        torch.testing.assert_close(scored.marginals[0], search.marginals[row], atol=1e-5, rtol=0)
        torch.testing.assert_close(scored.mass[0], search.mass[row], atol=1e-6, rtol=1e-4)
        torch.testing.assert_close(scored.extras["node_log_probs"][0], tree[2], atol=1e-4, rtol=0)
    before = lm.usage.copy()
    score_beam_tree(lm, inputs, tree[0], tree[1])
    assert lm.usage.since(before)["forward_passes"] == 2  # prefill + one pass over the whole tree


def _naive_tree_marginals(lm, prompt_ids, tokens, parents):
    """Oracle: one Hugging Face call per prefix, EOS absorbing, no genattr code path."""
    eos = set(lm.eos_ids)
    V = lm.vocab_size

    def next_dist(path):
        if path and path[-1] in eos:
            return torch.nn.functional.one_hot(torch.tensor(path[-1]), V).double()
        with torch.no_grad():
            return (
                lm.model(input_ids=torch.tensor([list(prompt_ids) + path])).logits[0, -1].double().softmax(-1)
            )

    D, w = tokens.shape
    paths = {}
    out = [next_dist([])]
    masses = [1.0]
    for d in range(D):
        layer = []
        for i in range(w):
            parent_path, parent_p = paths[(d - 1, int(parents[d, i]))] if d else ([], 1.0)
            tok = int(tokens[d, i])
            p = parent_p * float(next_dist(parent_path)[tok])
            paths[(d, i)] = (parent_path + [tok], p)
            layer.append((p, next_dist(parent_path + [tok])))
        total = sum(p for p, _ in layer)
        out.append(sum(p * dist for p, dist in layer) / total)
        masses.append(total)
    return torch.stack(out), torch.tensor(masses, dtype=torch.float64)


def test_score_beam_tree_matches_a_naive_oracle_under_masked_prompts(word_lm):
    lm = word_lm
    inputs = _leave_one_out_inputs(lm, "red cat sat up", "replace")
    search = beam_search(lm, inputs.rows(slice(0, 1)), num_beams=4, max_new_tokens=4)
    tokens, parents = search.extras["beam_tokens"][0, :3], search.extras["beam_parents"][0, :3]
    scored = score_beam_tree(lm, inputs, tokens, parents)
    for row in range(len(inputs)):
        marginals, mass = _naive_tree_marginals(lm, inputs.input_ids[row].tolist(), tokens, parents)
        torch.testing.assert_close(scored.marginals[row].double(), marginals, atol=1e-5, rtol=0)
        torch.testing.assert_close(scored.mass[row].double(), mass, atol=1e-6, rtol=1e-4)
    # The masked prompts weigh the same beams differently from the full prompt.
    assert float((scored.mass[1:, 1:] - scored.mass[:1, 1:]).abs().max()) > 1e-3


def test_score_beam_tree_rejects_bad_trees(llama):
    inputs = _leave_one_out_inputs(llama, PROMPT, "attention").rows(slice(0, 1))
    tokens = torch.tensor([[5, 6], [7, 8]])
    with pytest.raises(InvalidParameterError, match="depth, width"):
        score_beam_tree(llama, inputs, tokens, torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(InvalidParameterError, match="parents in"):
        score_beam_tree(llama, inputs, tokens, torch.tensor([[-1, -1], [0, 2]]))
    with pytest.raises(InvalidParameterError, match="valid node"):
        score_beam_tree(
            llama, inputs, tokens, torch.tensor([[-1, -1], [0, 1]]), torch.tensor([[1, 1], [0, 0]])
        )
