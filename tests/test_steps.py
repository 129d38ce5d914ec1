"""Per-step scores (genattr.steps) against brute force on the raw Hugging Face model, by enumeration
of a small vocabulary, and their place in a result (validation, JSON round trip)."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

import genattr
from genattr.errors import EmptyTargetError, InputError, InvalidParameterError, ResultFormatError
from genattr.model import Batch, load
from genattr.steps import STEP_SCORES, step_scores
from genattr.testing import random_model, tiny_lm

PROMPT = "The doctor opens the door and"
TARGET = " the nurse sings a"
FOIL = " a bird runs the"


SHARPEN = {"gpt2": 6.0, "qwen2": 20.0}  # GPT-2's output layer is its (tied) input embedding too


@pytest.fixture(scope="module", params=["tiny_lm", "gpt2", "qwen2"])
def model(request):
    """tiny_lm() (a Llama, near-uniform next-token distributions) and random GPT-2 and Qwen2
    models whose output layer is scaled up, so that their distributions are far from uniform."""
    if request.param == "tiny_lm":
        return tiny_lm()
    network, tokenizer = random_model(request.param, seed=1)
    network.get_output_embeddings().weight.data *= SHARPEN[request.param]
    return load(model=network, tokenizer=tokenizer, device="cpu")


def ids(lm, text: str, special: bool = False) -> list[int]:
    return lm.tokenizer(text, add_special_tokens=special)["input_ids"]


def brute_force(lm, prompt_ids, target_ids, shift: int = 0) -> dict[str, list[float]]:
    """Oracle: one plain forward pass of the Hugging Face model on prompt + target, the softmax,
    entropy and rank written out by hand in float64, the rank by sorting. ``shift`` reads the
    distributions ``shift`` positions off (for the off-by-one check)."""
    sequence = torch.tensor([list(prompt_ids) + list(target_ids)])
    with torch.no_grad():
        logits = lm.model(input_ids=sequence).logits[0].double().numpy()
    out: dict[str, list[float]] = {name: [] for name in STEP_SCORES}
    for t, y in enumerate(target_ids):
        z = logits[len(prompt_ids) - 1 + t + shift]
        e = np.exp(z - z.max())
        p = e / e.sum()
        order = np.argsort(-p, kind="stable")
        out["prob"].append(float(p[y]))
        out["log_prob"].append(math.log(p[y]))
        out["entropy"].append(float(-sum(q * math.log(q) for q in p if q > 0)))
        out["rank"].append(float(1 + min(i for i, v in enumerate(order) if p[v] == p[y])))
    return out


def same_length_foil(lm) -> list[int]:
    """The foil's tokens, repeated or cut to the target's length."""
    return (ids(lm, FOIL) * 3)[: len(ids(lm, TARGET))]


def close(got, expected, *, rel: float = 1e-5, abs: float = 1e-6) -> bool:
    return len(got) == len(expected) and all(
        math.isclose(g, e, rel_tol=rel, abs_tol=abs) for g, e in zip(got, expected, strict=True)
    )


def test_step_scores_match_brute_force_on_the_raw_model(model):
    prompt, target = ids(model, PROMPT, special=True), ids(model, TARGET)
    got = step_scores(model, Batch.from_ids(prompt), target)
    want = brute_force(model, prompt, target)
    assert list(got) == list(STEP_SCORES) and len(target) >= 3
    for name in ("prob", "log_prob", "entropy"):
        assert close(got[name], want[name]), (name, got[name], want[name])
    assert got["rank"] == want["rank"]
    assert all(isinstance(v, float) for values in got.values() for v in values)
    assert json.loads(json.dumps(got)) == got  # plain floats: JSON gives them back unchanged


def test_the_greedy_continuation_has_rank_one_and_the_largest_probability(model):
    prompt = ids(model, PROMPT, special=True)
    greedy = model.generate(Batch.from_ids(prompt), max_new_tokens=4, stop_at_eos=False).token_ids[0]
    got = step_scores(model, Batch.from_ids(prompt), greedy)
    want = brute_force(model, prompt, greedy)
    assert got["rank"] == [1.0] * 4 and close(got["prob"], want["prob"])


def test_an_off_by_one_position_would_not_match(model):
    """The oracle tells apart the distributions one position early or late, so the test above
    fails for a step read at the wrong position."""
    prompt, target = ids(model, PROMPT, special=True), ids(model, TARGET)
    got = step_scores(model, Batch.from_ids(prompt), target)
    for shift in (-1, 1):
        shifted = brute_force(model, prompt, target[:-1] if shift > 0 else target, shift)
        n = len(shifted["prob"])
        assert not close(got["prob"][:n], shifted["prob"]) and not close(
            got["entropy"][:n], shifted["entropy"]
        )


def test_contrast_is_the_difference_of_teacher_forced_log_probs(model):
    prompt, target, foil = ids(model, PROMPT, special=True), ids(model, TARGET), same_length_foil(model)
    got = step_scores(model, Batch.from_ids(prompt), target, foil)
    want = [
        y - f
        for y, f in zip(
            brute_force(model, prompt, target)["log_prob"],
            brute_force(model, prompt, foil)["log_prob"],
            strict=True,
        )
    ]
    assert list(got) == [*STEP_SCORES, "contrast"] and close(got["contrast"], want, abs=1e-4)
    assert any(abs(c) > 1e-3 for c in got["contrast"])
    same = step_scores(model, Batch.from_ids(prompt), target, target)["contrast"]
    assert close(same, [0.0] * len(target), abs=1e-6)


def test_one_forward_pass_and_one_more_for_a_foil_of_the_same_length(model):
    prompt, target = Batch.from_ids(ids(model, PROMPT, special=True)), ids(model, TARGET)
    passes = []
    for foil in (None, same_length_foil(model), ids(model, FOIL)[: len(target) - 1]):
        before = model.usage.forward_passes
        out = step_scores(model, prompt, target, foil)
        passes.append((model.usage.forward_passes - before, "contrast" in out))
    assert passes == [(1, False), (2, True), (1, False)]  # a foil of another length gives no contrast


def test_enumerating_the_vocabulary_sums_to_one_and_ranks_by_probability(word_lm):
    """On a 15-token vocabulary: the second step's probabilities of every token sum to 1, their
    entropy and ranks are those of that enumerated distribution, and the first step, teacher-forced
    on the same prefix, does not depend on the second token."""
    prompt = Batch.from_ids(ids(word_lm, "red blue cat", special=True))
    first = ids(word_lm, "dog")[0]
    rows = [step_scores(word_lm, prompt, [first, v]) for v in range(word_lm.vocab_size)]
    p = np.array([r["prob"][1] for r in rows])
    assert math.isclose(p.sum(), 1.0, abs_tol=1e-5)
    assert all(math.isclose(r["entropy"][1], -(p * np.log(p)).sum(), abs_tol=1e-5) for r in rows)
    assert [r["rank"][1] for r in rows] == [1.0 + (p > q).sum() for q in p]
    assert sorted(r["rank"][1] for r in rows) == [float(i) for i in range(1, 16)]  # no ties here
    assert len({r["prob"][0] for r in rows}) == 1 and len({r["entropy"][0] for r in rows}) == 1
    alone = step_scores(word_lm, prompt, [first])
    extended = Batch.from_ids([*prompt.input_ids[0].tolist(), first])
    for v, r in enumerate(rows):
        assert math.isclose(r["prob"][0], alone["prob"][0], rel_tol=1e-5)
        assert math.isclose(r["prob"][1], step_scores(word_lm, extended, [v])["prob"][0], rel_tol=1e-4)


def test_ties_share_the_best_rank():
    from genattr.steps import _rank

    logp = torch.log(torch.tensor([[0.4, 0.2, 0.2, 0.2], [0.1, 0.3, 0.3, 0.3]]))
    assert _rank(logp, logp[:, 2]).tolist() == [2, 1]
    assert _rank(logp, logp[:, 0]).tolist() == [1, 4]


def test_bad_input_raises_typed_errors():
    lm = tiny_lm()
    prompt = ids(lm, PROMPT, special=True)
    with pytest.raises(InvalidParameterError, match="one prompt row, got 2"):
        step_scores(lm, Batch.from_ids(prompt, rows=2), [5])
    with pytest.raises(EmptyTargetError, match="target is empty"):
        step_scores(lm, Batch.from_ids(prompt), [])
    with pytest.raises(EmptyTargetError, match="foil is empty"):
        step_scores(lm, Batch.from_ids(prompt), [5], [])
    with pytest.raises(InvalidParameterError, match="outside the vocabulary"):
        step_scores(lm, Batch.from_ids(prompt), [5, lm.vocab_size])
    with pytest.raises(InvalidParameterError, match="foil token ids"):
        step_scores(lm, Batch.from_ids(prompt), [5], [-1])


# --------------------------------------------------------------------------- in a result
@pytest.fixture(scope="module")
def result():
    lm = tiny_lm()
    res = genattr.explain(lm, PROMPT, target=TARGET)
    steps = step_scores(lm, Batch.from_ids(res.prompt.input_ids), res.target.ids, same_length_foil(lm))
    return dataclasses.replace(res, step_scores=steps)


def test_step_scores_round_trip_through_json(result, tmp_path):
    assert set(result.step_scores) == {*STEP_SCORES, "contrast"}
    back = genattr.Attribution.load(result.save(tmp_path / "r.json"))
    assert back.step_scores == result.step_scores
    data = result.to_dict()
    del data["step_scores"]  # a file written before step scores existed
    assert genattr.Attribution.from_dict(data).step_scores == {}
    assert result.aggregate("sentence").step_scores == result.step_scores  # the target is the same


@pytest.mark.parametrize(
    "steps, message",
    [
        ([1.0], "must be a dict"),
        ({1: [0.0] * 4}, "names must be strings"),
        ({"prob": [0.5]}, "list of 4 values"),
        ({"prob": "0.50"}, "list of 4 values"),
        ({"prob": [0.5, 0.5, math.nan, 0.5]}, "not a finite number"),
        ({"prob": [0.5, 0.5, 10**400, 0.5]}, "not a finite number"),
        ({"prob": [0.5, 0.5, "0.5", 0.5]}, "not a finite number"),
        ({"rank": [1, 2, True, 3]}, "not a finite number"),
    ],
)
def test_a_result_refuses_bad_step_scores(result, steps, message):
    assert len(result.target.ids) == 4
    with pytest.raises(InputError, match=message):
        dataclasses.replace(result, step_scores=steps)


def test_numpy_and_integer_step_scores_are_stored_as_floats(result):
    res = dataclasses.replace(result, step_scores={"rank": np.array([1, 2, 3, 4]), "p": (0.5,) * 4})
    assert res.step_scores == {"rank": [1.0, 2.0, 3.0, 4.0], "p": [0.5] * 4}
    assert all(type(v) is float for values in res.step_scores.values() for v in values)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda d: d.update(step_scores=[]),
        lambda d: d["step_scores"]["prob"].pop(),
        lambda d: d["step_scores"]["prob"].__setitem__(0, None),
        lambda d: d["step_scores"]["prob"].__setitem__(0, "0.5"),
        lambda d: d["step_scores"]["prob"].__setitem__(0, 10**400),
        lambda d: d["step_scores"].update(prob={"0": 1}),
    ],
)
def test_tampered_step_scores_fail_with_a_clear_error(result, tmp_path, tamper):
    data = result.to_dict()
    tamper(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ResultFormatError, match="step_scores|step score 'prob'"):
        genattr.Attribution.load(path)
