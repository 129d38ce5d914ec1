"""GiLOT's use cases (Section 5): the query weight of Eq. 12 on hand-computed cases, the in-context
order study against an oracle that scores and generates each prompt separately, the Table 4
correlation against numpy, and the slot probe on the zoo, where the answer hangs on a polar
word and not on a filler word by construction."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

import genattr
from genattr.errors import InvalidParameterError
from genattr.model import Batch
from genattr.usecases import ICLStudy, OrderRow, correlate, icl_orders, query_weight, slot_probe

from .conftest import naive_log_probs

EXAMPLES = ["bee seven", "ant eight", "pig six"]
LABELS = [" seven", " eight", " six"]


@pytest.fixture(scope="module")
def zoo():
    return genattr.load("zoo")


def test_query_weight_is_the_query_share_of_the_attribution(word_lm):
    prompt = "red cat sat up"
    res = genattr.explain(word_lm, prompt, target=" up", method="leave_one_out")
    res = dataclasses.replace(res, scores=np.array([1.0, 3.0, 2.0, 4.0]))
    assert [f.text for f in res.features] == ["red", "cat", "sat", "up"]
    assert query_weight(res, prompt.index("sat")) == pytest.approx(6 / 10, abs=1e-12)
    assert query_weight(res, prompt.index("red")) == pytest.approx(1.0, abs=1e-12)
    signed = dataclasses.replace(res, scores=np.array([1.0, -3.0, 2.0, 4.0]))
    with pytest.raises(InvalidParameterError, match="absolute=True"):
        query_weight(signed, prompt.index("sat"))
    assert query_weight(signed, prompt.index("sat"), absolute=True) == pytest.approx(6 / 10, abs=1e-12)
    with pytest.raises(InvalidParameterError, match="undefined"):
        query_weight(dataclasses.replace(res, scores=np.zeros(4)), 0)


def test_icl_orders_match_a_prompt_by_prompt_oracle(zoo):
    study = icl_orders(
        zoo, EXAMPLES, "query ant", " eight", LABELS, prefix="recall ", method="leave_one_out", absolute=True
    )
    assert len(study.rows) == math.factorial(3)
    assert sorted(r.order for r in study.rows) == sorted(
        (a, b, c) for a in range(3) for b in range(3) for c in range(3) if len({a, b, c}) == 3
    )
    signed = []
    for row in study.rows:
        assert row.prompt == "recall " + " ".join(EXAMPLES[i] for i in row.order) + " query ant"
        ids = genattr.Prompt.from_text(zoo.tokenizer, row.prompt).input_ids
        logp = [
            float(
                naive_log_probs(zoo, ids, zoo.tokenizer(label, add_special_tokens=False)["input_ids"]).sum()
            )
            for label in LABELS
        ]
        best = int(np.argmax(logp))
        assert row.prediction == LABELS[best]
        assert row.probability == pytest.approx(math.exp(logp[best]), rel=1e-4)
        generated = zoo.generate(Batch.from_ids(ids), 1).token_ids[0]
        assert row.correct == (zoo.tokenizer.decode(generated) in (" eight", "eight"))
        signed.append(row.probability if row.correct else -row.probability)
        res = genattr.explain(zoo, row.prompt, method="leave_one_out", level="word")
        start = len(row.prompt) - len("query ant")
        assert row.query_weight == pytest.approx(query_weight(res, start, absolute=True), abs=1e-12)
    assert study.accuracy == pytest.approx(np.mean([r.correct for r in study.rows]))
    assert study.accuracy == 1.0  # the zoo model looks the key up wherever its pair stands
    assert study.sensitivity == pytest.approx(float(np.std(signed)), abs=1e-12)
    # A sample of orders: distinct, reproducible.
    sample = icl_orders(zoo, EXAMPLES, "query ant", " eight", LABELS, prefix="recall ", max_orders=4, seed=3)
    again = icl_orders(zoo, EXAMPLES, "query ant", " eight", LABELS, prefix="recall ", max_orders=4, seed=3)
    assert len({r.order for r in sample.rows}) == 4
    assert [r.order for r in sample.rows] == [r.order for r in again.rows]
    assert [r.query_weight for r in sample.rows] == [r.query_weight for r in again.rows]


def test_icl_orders_reject_bad_settings(zoo):
    with pytest.raises(InvalidParameterError, match="not one of the labels"):
        icl_orders(zoo, EXAMPLES, "query ant", " nine", LABELS)
    with pytest.raises(InvalidParameterError, match="at least two"):
        icl_orders(zoo, EXAMPLES[:1], "query bee", " seven", LABELS)
    with pytest.raises(InvalidParameterError, match="max_orders"):
        icl_orders(zoo, EXAMPLES, "query ant", " eight", LABELS, max_orders=0)


def _study(aqw: float, correct: list[bool], probs: list[float]) -> ICLStudy:
    rows = [OrderRow((i,), "", aqw, "", p, c) for i, (c, p) in enumerate(zip(correct, probs, strict=True))]
    return ICLStudy(rows)


def test_correlate_is_pearson_over_settings():
    studies = [
        _study(0.2, [True, False, False], [0.9, 0.6, 0.7]),
        _study(0.3, [True, True, False], [0.8, 0.7, 0.9]),
        _study(0.5, [True, True, True], [0.95, 0.9, 0.85]),
        _study(0.4, [True, True, False], [0.9, 0.9, 0.5]),
    ]
    aqw = [s.query_weight for s in studies]
    accuracy = [1 / 3, 2 / 3, 1.0, 2 / 3]
    assert [s.accuracy for s in studies] == pytest.approx(accuracy)
    sensitivity = [
        np.std([0.9, -0.6, -0.7]),
        np.std([0.8, 0.7, -0.9]),
        np.std([0.95, 0.9, 0.85]),
        np.std([0.9, 0.9, -0.5]),
    ]
    assert [s.sensitivity for s in studies] == pytest.approx(sensitivity)
    out = correlate(studies)
    assert out["accuracy"][0] == pytest.approx(np.corrcoef(aqw, accuracy)[0, 1], abs=1e-12)
    assert out["sensitivity"][0] == pytest.approx(np.corrcoef(aqw, sensitivity)[0, 1], abs=1e-12)
    assert 0 < out["accuracy"][1] < 1
    with pytest.raises(InvalidParameterError, match="at least 3"):
        correlate(studies[:2])


def test_slot_probe_finds_the_word_the_answer_hangs_on(zoo):
    rows = slot_probe(
        zoo, "sentiment a {} road cloud by floor paper", ["sad", "pole", "great"], method="gilot"
    )
    by = {r.filler: r for r in rows}
    for polar in ("sad", "great"):
        assert by[polar].rank == 1 and by[polar].share > 0.5
    assert by["pole"].share < 0.05 and by["pole"].rank > 1
    for row in rows:  # the row's score is its attribution's score of the filler's feature
        (feature,) = [f for f in row.attribution.features if f.text == row.filler]
        assert row.score == pytest.approx(float(row.attribution.scores[feature.index]), abs=0)
    with pytest.raises(InvalidParameterError, match="exactly one"):
        slot_probe(zoo, "sentiment a road", ["sad"])
    with pytest.raises(InvalidParameterError, match="some text"):
        slot_probe(zoo, "sentiment a {} road", [" "])


def test_slot_probe_in_the_chat_template_scores_the_filler_in_the_users_message(qwen):
    """The chat template puts text before the message: the slot is found inside the message."""
    rows = slot_probe(
        qwen, "Write a story about a {} nurse.", ["female", "male"], method="leave_one_out", chat=True
    )
    for row in rows:
        res = row.attribution
        assert res.prompt.is_chat and res.prompt.text.startswith("<|im_start|>user\n")
        (feature,) = [f for f in res.features if f.text == row.filler]
        assert row.score == float(res.scores[feature.index])
        assert res.prompt.text[feature.start : feature.end] == row.filler
