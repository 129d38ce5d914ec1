"""Faithfulness protocols against oracles by construction and against direct model calls.

* erasure: a model whose log-likelihood of the target is a table over which features are present,
  so every metric (and its clipped form, on cases of both signs) is known by hand;
* perturbation curves: a model whose greedy response names the set of removed features, so the
  number removed at each fraction (round half up) and the MoRF/LeRF order are read off the curves;
* similarity: the KL divergence (the paper's direction, D_KL(masked || original)) and the
  probability ratio recomputed from Hugging Face calls, one per position, no genattr code path.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

import genattr
from genattr.evaluate import faithfulness as F
from genattr.evaluate import text as T
from genattr.model import Generation

PROMPT = "red blue green cat dog"  # five word features on the word-level model
SCORES = [5.0, 4.0, 3.0, 2.0, 1.0]  # ranking 0, 1, 2, 3, 4


def _attribution(lm, scores=SCORES, target=" up down"):
    res = genattr.explain(lm, PROMPT, target=target, method="random")
    return dataclasses.replace(res, scores=np.array(scores), token_scores=None, diagnostics={}, extras={})


def _present(res, input_ids: torch.Tensor, visible: torch.Tensor) -> list[list[bool]]:
    """For each row of model inputs, which features are still in the prompt (token unchanged and visible)."""
    ids = res.prompt.input_ids
    return [
        [all(int(row[t]) == ids[t] and bool(vis[t]) for t in f.positions) for f in res.features]
        for row, vis in zip(input_ids, visible, strict=True)
    ]


# --------------------------------------------------------------------- erasure
W = [-0.5, 0.9, -0.2, -0.4, 0.1]  # log p(y | x_S) = C + sum_{i in S} W_i + PAIR [0, 1 in S]
C, PAIR = -2.0, 0.25


def _table_log_likelihood(present: list[bool]) -> float:
    return C + sum(w for w, p in zip(W, present, strict=True) if p) + PAIR * (present[0] and present[1])


def test_erasure_equals_hand_computed_values_on_a_table_model(word_lm, monkeypatch):
    res = _attribution(word_lm)
    n_target = len(res.target.ids)
    assert n_target == 2

    def table_log_probs(inputs, target_ids):
        values = [_table_log_likelihood(p) for p in _present(res, inputs.input_ids, inputs.visible)]
        split = torch.tensor([[0.3, 0.7]], dtype=torch.float64)  # the sequence value over two tokens
        return (torch.tensor(values, dtype=torch.float64)[:, None] * split).float()

    monkeypatch.setattr(word_lm, "target_log_probs", table_log_probs)
    percents = (1, 20, 20.1, 40, 60)
    out = F.erasure(word_lm, res, percents=percents)

    full = _table_log_likelihood([True] * 5)
    expected = {k: [] for k in ("log_odds", "comprehensiveness", "sufficiency")}
    expected |= {"comprehensiveness_clipped": [], "sufficiency_clipped": []}
    for n in (1, 1, 2, 2, 3):  # ceil(k F / 100), at least one feature
        without = _table_log_likelihood([i >= n for i in range(5)])
        only = _table_log_likelihood([i < n for i in range(5)])
        comp = math.exp(full) - math.exp(without)
        suff = math.exp(full) - math.exp(only)
        expected["log_odds"].append(without - full)
        expected["comprehensiveness"].append(comp)
        expected["sufficiency"].append(suff)
        expected["comprehensiveness_clipped"].append(max(0.0, comp))
        expected["sufficiency_clipped"].append(1 - max(0.0, suff))
    # the table has removals that raise the likelihood and ones that lower it, for both metrics
    assert min(expected["comprehensiveness"]) < -0.01 < 0.01 < max(expected["comprehensiveness"])
    assert min(expected["sufficiency"]) < -0.01 < 0.01 < max(expected["sufficiency"])
    assert out["percents"] == list(percents)
    for key, values in expected.items():
        np.testing.assert_allclose(out[key], values, rtol=1e-5, atol=1e-6, err_msg=key)
        assert out[f"aopc_{key}"] == pytest.approx(np.mean(values), rel=1e-5, abs=1e-6)


def test_erasure_needs_the_explained_output(word_lm):
    res = _attribution(word_lm)
    res.target = None
    with pytest.raises(genattr.errors.InputError, match="target"):
        F.erasure(word_lm, res)


# --------------------------------------------------------------------- perturbation curves
def test_perturbation_curves_remove_round_half_up_counts_in_ranking_order(word_lm, monkeypatch):
    res = _attribution(word_lm, scores=[2.0, 5.0, 1.0, 4.0, 3.0])  # ranking 1, 3, 4, 0, 2
    best = [1, 3, 4, 0, 2]
    # One response token per removed set that the protocol may ask for: the empty set, each MoRF and
    # LeRF prefix, and the whole prompt; any other removed set fails the test.
    sets = (
        [frozenset()]
        + [frozenset(best[:n]) for n in range(1, 5)]
        + [frozenset(best[-n:]) for n in range(1, 5)]
    )
    sets.append(frozenset(range(5)))
    token = {s: 5 + i for i, s in enumerate(sets)}  # ten distinct word tokens
    asked = []

    def naming_generate(inputs, max_new_tokens, **kwargs):
        removed = [
            frozenset(i for i, p in enumerate(row) if not p)
            for row in _present(res, inputs.input_ids, inputs.visible)
        ]
        asked.extend(removed)
        ids = [[token[s]] for s in removed]
        return Generation(ids, [[0.0]] * len(ids), [False] * len(ids))

    monkeypatch.setattr(word_lm, "generate", naming_generate)
    curves = F.perturbation_curves(word_lm, res, step=0.1, max_new_tokens=2, embedder="model")

    E = word_lm.embedding_matrix.detach().double()

    def d(s):
        a, b = E[token[frozenset()]], E[token[s]]
        return float(1 - a @ b / (a.norm() * b.norm()))

    counts = [0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]  # n = round(f F), half up: 0.5 -> 1, 1.5 -> 2, ...
    np.testing.assert_allclose(curves.fractions, [i / 10 for i in range(11)], atol=1e-12)
    np.testing.assert_allclose(curves.morf, [d(frozenset(best[:n])) for n in counts], atol=1e-6)
    np.testing.assert_allclose(curves.lerf, [d(frozenset(best[5 - n :])) for n in counts], atol=1e-6)
    assert len({round(d(s), 4) for s in sets}) == len(sets)  # every removed set gives its own discrepancy
    assert set(asked) <= set(sets) and curves.original == word_lm.tokenizer.decode([token[frozenset()]])
    trapezoids = [(a + b) / 2 * 0.1 for a, b in zip(curves.morf[:-1], curves.morf[1:], strict=True)]
    assert curves.auc_morf == pytest.approx(100 * sum(trapezoids), rel=1e-9)


def test_aligned_distance_is_the_mean_aligned_half_cosine_distance():
    """Hand-made embeddings: e1 = (1, 0), e2 = (0, 1), e3 = (-1, 0), e4 = (1, 1)."""
    E = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [1.0, 1.0]])
    assert T.aligned_distance(E, [1, 2], [1, 2]) == 0.0
    # positions: (e1, e3) -> (1 - (-1)) / 2 = 1; (e2, e4) -> (1 - 1/sqrt 2) / 2; the third is unpaired
    expected = (1 + (1 - 2**-0.5) / 2) / 2
    assert T.aligned_distance(E, [1, 2, 3], [3, 4]) == pytest.approx(expected, abs=1e-12)
    assert T.aligned_distance(E, [3, 4], [1, 2, 3]) == pytest.approx(expected, abs=1e-12)
    assert T.aligned_distance(E, [], []) == 0.0 and T.aligned_distance(E, [], [1]) == 1.0


def test_further_discrepancies_are_measured_on_the_same_responses(word_lm, monkeypatch):
    """``also`` adds curves without generating again, each equal to a run with that discrepancy."""
    res = _attribution(word_lm)
    calls = []
    generate = word_lm.generate

    def counting(*args, **kwargs):
        calls.append(1)
        return generate(*args, **kwargs)

    monkeypatch.setattr(word_lm, "generate", counting)
    both = F.perturbation_curves(word_lm, res, step=0.25, max_new_tokens=3, also=("aligned",))
    assert len(calls) == 1 and set(both.others) == {"aligned"}
    alone = F.perturbation_curves(word_lm, res, step=0.25, max_new_tokens=3, embedder="aligned")
    model = F.perturbation_curves(word_lm, res, step=0.25, max_new_tokens=3)
    assert both.others["aligned"] == (alone.morf, alone.lerf)
    assert (both.morf, both.lerf) == (model.morf, model.lerf)
    assert alone.morf != model.morf  # the two discrepancies differ on these responses
    with pytest.raises(genattr.errors.InputError, match="discrepancy"):
        F.perturbation_curves(word_lm, res, step=0.25, max_new_tokens=3, also=("bleu",))


@pytest.mark.parametrize("step", [0.0, -0.1, 0.3, 1.5])
def test_perturbation_curves_refuse_a_step_that_does_not_divide_one(word_lm, step):
    with pytest.raises(genattr.errors.InputError, match="step"):
        F.perturbation_curves(word_lm, _attribution(word_lm), step=step)


# --------------------------------------------------------------------- similarity
def _greedy(lm, ids: list[int], n: int) -> list[int]:
    out = []
    with torch.no_grad():
        for _ in range(n):
            t = int(lm.model(input_ids=torch.tensor([ids + out])).logits[0, -1].argmax())
            if t in lm.eos_ids:
                break
            out.append(t)
    return out


def _distributions(lm, ids: list[int], y: list[int]) -> torch.Tensor:
    """log p(. | ids, y_<t) for t = 1..len(y), one Hugging Face call per position: [n, V] float64."""
    rows = []
    with torch.no_grad():
        for t in range(len(y)):
            logits = lm.model(input_ids=torch.tensor([ids + y[:t]])).logits[0, -1]
            rows.append(logits.double().log_softmax(-1))
    return torch.stack(rows)


def test_similarity_kl_and_probability_ratio_equal_direct_model_calls(word_lm):
    lm = word_lm
    res = _attribution(lm, scores=[1.0, 5.0, 2.0, 3.0, 4.0])  # top two: features 1 and 4
    out = F.similarity(lm, res, k=2, max_new_tokens=4, n_random=0, encoder="model", mask="replace")
    ids = list(res.prompt.input_ids)
    masked = list(ids)
    for f in (1, 4):
        for t in res.features[f].positions:
            masked[t] = res.settings.mask_token
    y = _greedy(lm, ids, 4)
    assert out["original"] == lm.tokenizer.decode(y) and len(y) >= 2
    assert out["masked"] == lm.tokenizer.decode(_greedy(lm, masked, 4))
    p_log, q_log = _distributions(lm, masked, y), _distributions(lm, ids, y)
    kl = float((p_log.exp() * (p_log - q_log)).sum(-1).mean())  # D_KL(p(. | m x) || p(. | x))
    reverse = float((q_log.exp() * (q_log - p_log)).sum(-1).mean())
    assert abs(kl - reverse) > 0.1 * kl  # the two directions are told apart on this case
    assert out["kl"] == pytest.approx(kl, rel=1e-4, abs=1e-6)
    target = torch.tensor(y)[:, None]
    ratio = math.exp(float(p_log.gather(1, target).sum() - q_log.gather(1, target).sum()))
    assert out["probability_ratio"] == pytest.approx(ratio, rel=1e-4)
    assert out["k"] == 2 and not any(key.startswith("random_") for key in out)


def test_similarity_random_baseline_is_the_mean_over_random_masks_of_size_k(word_lm):
    lm = word_lm
    res = _attribution(lm)
    out = F.similarity(lm, res, k=2, max_new_tokens=3, n_random=3, seed=7, encoder="model", mask="replace")
    gen = torch.Generator().manual_seed(7)
    draws = [torch.randperm(5, generator=gen)[:2].tolist() for _ in range(3)]
    singles = []
    for removed in draws:  # each random mask scored as a top-k mask of an attribution ranking it first
        scores = [1.0] * 5
        for i in removed:
            scores[i] = 2.0
        singles.append(
            F.similarity(
                lm,
                _attribution(lm, scores),
                k=2,
                max_new_tokens=3,
                n_random=0,
                encoder="model",
                mask="replace",
            )
        )
    for key in ("kl", "probability_ratio", "bleu", "model_cosine", "rouge_l_f1"):
        assert out[f"random_{key}"] == pytest.approx(np.mean([s[key] for s in singles]), rel=1e-5, abs=1e-9)


@pytest.mark.parametrize("k", [0, 6])
def test_similarity_refuses_k_outside_the_features(word_lm, k):
    with pytest.raises(genattr.errors.InputError, match="k must be between 1"):
        F.similarity(word_lm, _attribution(word_lm), k=k, encoder="model")


def test_masker_follows_the_attribution_unless_told_otherwise(word_lm):
    res = _attribution(word_lm)
    res.settings = dataclasses.replace(res.settings, mask="replace", mask_token="eos")
    eos = word_lm.tokenizer.eos_token_id
    m = F.masker_for(word_lm, res)
    assert (m.strategy, m.baseline_id) == ("replace", eos)
    m = F.masker_for(word_lm, res, "delete", 4)
    assert (m.strategy, m.baseline_id) == ("delete", 4)
    m = F.masker_for(word_lm, res, baseline=0)
    assert (m.strategy, m.baseline_id) == ("replace", 0)
    res.settings = genattr.Settings()
    m = F.masker_for(word_lm, res)
    assert (m.strategy, m.baseline_id) == ("attention", word_lm.tokenizer.pad_token_id)
    assert [f.index for f in m.features] == list(range(5))


def test_similarity_refuses_an_empty_original_generation(word_lm, monkeypatch):
    res = _attribution(word_lm)
    monkeypatch.setattr(
        word_lm, "generate", lambda inputs, n, **kw: Generation([[]] + [[5]] * (len(inputs) - 1), [], [])
    )
    with pytest.raises(genattr.errors.InputError, match="empty"):
        F.similarity(word_lm, res, k=1, n_random=0, encoder="model")


def test_curves_area_and_abpc_on_an_uneven_curve():
    curves = F.Curves([0.0, 0.25, 0.5, 0.75, 1.0], [0.0, 0.4, 0.4, 0.8, 1.0], [0.0, 0.0, 0.2, 0.2, 0.6], "y")
    morf = 0.25 * (0.2 + 0.4 + 0.6 + 0.9)
    lerf = 0.25 * (0.0 + 0.1 + 0.2 + 0.4)
    assert curves.auc_morf == pytest.approx(100 * morf, rel=1e-12)
    assert curves.auc_lerf == pytest.approx(100 * lerf, rel=1e-12)
    assert curves.abpc == pytest.approx(100 * (morf - lerf), rel=1e-12)


def test_mean_kl_counts_zero_probabilities_as_zero():
    p_log = torch.tensor([[0.0, -math.inf], [math.log(0.25), math.log(0.75)]], dtype=torch.float64)
    q_log = torch.tensor(
        [[math.log(0.5), math.log(0.5)], [math.log(0.5), math.log(0.5)]], dtype=torch.float64
    )
    expected = (math.log(2) + 0.25 * math.log(0.5) + 0.75 * math.log(1.5)) / 2
    assert F._mean_kl(p_log, q_log) == pytest.approx(expected, rel=1e-12)


def test_similarity_removes_up_to_every_feature(word_lm):
    out = F.similarity(word_lm, _attribution(word_lm), k=5, max_new_tokens=2, n_random=1, encoder="model")
    assert out["k"] == 5 and out["random_kl"] == pytest.approx(out["kl"], rel=1e-9)  # one mask of all five


def test_protocol_defaults(word_lm, monkeypatch):
    """Each protocol's documented defaults, read off the calls it makes."""
    res = _attribution(word_lm)
    calls = []
    generate, embedder = word_lm.generate, F.make_embedder
    monkeypatch.setattr(
        word_lm,
        "generate",
        lambda inputs, n, **kw: calls.append(("generate", len(inputs), n)) or generate(inputs, n, **kw),
    )
    for module in (F, T):
        monkeypatch.setattr(
            module, "make_embedder", lambda kind, lm: calls.append(("embedder", kind)) or embedder(kind, lm)
        )
    curves = F.perturbation_curves(word_lm, res)
    assert curves.fractions == pytest.approx([i / 10 for i in range(11)])
    assert calls[0][2] == 20 and calls[1] == ("embedder", "model")
    calls.clear()
    out = F.similarity(word_lm, res)
    assert out["k"] == 3 and calls[0] == ("generate", 1 + 1 + 5, 20) and calls[1] == ("embedder", "sentence")
    gen = torch.Generator().manual_seed(0)
    draws = [sorted(torch.randperm(5, generator=gen)[:3].tolist()) for _ in range(5)]
    kl = []
    for removed in draws:
        scores = [1.0] * 5
        for i in removed:
            scores[i] = 2.0
        kl.append(
            F.similarity(word_lm, _attribution(word_lm, scores), k=3, n_random=0, encoder="model")["kl"]
        )
    assert out["random_kl"] == pytest.approx(np.mean(kl), rel=1e-6)
    assert F.erasure(word_lm, res)["percents"] == [1, 5, 10, 20, 50]


def test_protocols_remove_features_with_the_mask_asked_for(word_lm, monkeypatch):
    res = _attribution(word_lm)  # made with the default attention mask
    seen = []
    generate, log_probs = word_lm.generate, word_lm.target_log_probs
    monkeypatch.setattr(
        word_lm, "generate", lambda inputs, n, **kw: seen.append(inputs) or generate(inputs, n, **kw)
    )
    monkeypatch.setattr(
        word_lm, "target_log_probs", lambda inputs, t: seen.append(inputs) or log_probs(inputs, t)
    )
    F.perturbation_curves(word_lm, res, step=0.5, max_new_tokens=2, mask="replace")
    F.erasure(word_lm, res, percents=(40,), mask="replace")
    assert len(seen) == 2 and all(bool(inputs.visible.all()) for inputs in seen)  # replaced, never hidden
    seen.clear()
    F.perturbation_curves(word_lm, res, step=0.5, max_new_tokens=2)
    F.erasure(word_lm, res, percents=(40,))
    assert len(seen) == 2 and not any(bool(inputs.visible.all()) for inputs in seen)


def test_perturbation_curves_with_one_step_and_a_sentence_encoder(word_lm):
    curves = F.perturbation_curves(
        word_lm, _attribution(word_lm), step=1.0, max_new_tokens=2, embedder="sentence"
    )
    assert curves.fractions == [0.0, 1.0] and curves.morf[0] == pytest.approx(0.0, abs=1e-6)
    assert curves.morf[1] == pytest.approx(curves.lerf[1], abs=1e-12)  # removing everything, either way
