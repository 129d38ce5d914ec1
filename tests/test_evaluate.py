"""Faithfulness protocols and the benchmark runner: exact values on hand-computed cases, sign
conventions, offline text metrics, a method beating the random baseline on the zoo, resuming
an interrupted benchmark, and malformed data reported."""

from __future__ import annotations

import dataclasses
import json
import math
import socket

import numpy as np
import pytest
import torch

import genattr
from genattr.cli import main
from genattr.evaluate import faithfulness as F
from genattr.evaluate.benchmark import Item, load_items, run_benchmark
from genattr.evaluate.text import SentenceEncoder, bleu, cosine, rouge_l
from genattr.zoo import examples


@pytest.fixture(scope="module")
def zoo():
    return genattr.load("zoo")


@pytest.fixture(scope="module")
def recall_results(zoo):
    exs = examples("recall", 8, seed=4)
    loo = [genattr.explain(zoo, ex.prompt, target=ex.answer) for ex in exs]
    rnd = [
        genattr.explain(zoo, ex.prompt, target=ex.answer, method="random", seed=i) for i, ex in enumerate(exs)
    ]
    return exs, loo, rnd


def test_auc_and_abpc_on_a_hand_computed_curve():
    curves = F.Curves([0.0, 0.5, 1.0], [0.0, 1.0, 1.0], [0.0, 0.0, 1.0], "x")
    assert curves.auc_morf == pytest.approx(75.0)
    assert curves.auc_lerf == pytest.approx(25.0)
    assert curves.abpc == pytest.approx(50.0)


def test_reversing_the_ranking_swaps_morf_and_lerf(zoo, recall_results):
    _, loo, _ = recall_results
    res = loo[0]
    assert len(set(res.scores.tolist())) == len(res.scores)  # no ties, so the reversal is exact
    curves = F.perturbation_curves(zoo, res, max_new_tokens=3)
    assert curves.morf[0] == curves.lerf[0] == pytest.approx(0.0, abs=1e-12)
    assert curves.morf[-1] == pytest.approx(curves.lerf[-1])
    flipped = F.perturbation_curves(zoo, _with_scores(res, -res.scores), max_new_tokens=3)
    assert flipped.morf == pytest.approx(curves.lerf) and flipped.lerf == pytest.approx(curves.morf)
    assert flipped.abpc == pytest.approx(-curves.abpc)


def _with_scores(res, scores):
    return dataclasses.replace(res, scores=scores, token_scores=None, extras={})


def test_erasure_values_and_signs_equal_direct_scoring(zoo, recall_results):
    exs, loo, _ = recall_results
    res = loo[0]
    out = F.erasure(zoo, res, percents=(10, 50))
    masker = F.masker_for(zoo, res)
    order = np.argsort(-res.scores, kind="stable")
    n = len(res.features)
    for i, pct in enumerate((10, 50)):
        top = order[: max(1, math.ceil(pct * n / 100))]
        keep = torch.ones(3, n, dtype=torch.bool)
        keep[1, top] = False
        keep[2] = False
        keep[2, top] = True
        lp = zoo.target_log_probs(masker.inputs(keep), list(res.target.ids)).double().sum(1)
        p = lp.exp()
        assert out["log_odds"][i] == pytest.approx(float(lp[1] - lp[0]), abs=1e-5)
        assert out["comprehensiveness"][i] == pytest.approx(float(p[0] - p[1]), abs=1e-5)
        assert out["sufficiency"][i] == pytest.approx(float(p[0] - p[2]), abs=1e-5)
        assert out["sufficiency_clipped"][i] == pytest.approx(1 - max(0.0, float(p[0] - p[2])), abs=1e-5)
    # Removing the features that carry the answer makes it less likely: comprehensiveness > 0 and
    # log-odds < 0, ERASER's sign convention (AIEG's printed formula has the opposite sign).
    assert out["comprehensiveness"][0] > 0.5 and out["log_odds"][0] < -1
    assert out["aopc_comprehensiveness"] == pytest.approx(np.mean(out["comprehensiveness"]))


def test_leave_one_out_beats_random_by_a_clear_margin(zoo, recall_results):
    _, loo, rnd = recall_results
    comp = [np.mean([F.erasure(zoo, r)["aopc_comprehensiveness"] for r in rs]) for rs in (loo, rnd)]
    abpc = [np.mean([F.perturbation_curves(zoo, r, max_new_tokens=3).abpc for r in rs]) for rs in (loo, rnd)]
    assert comp[0] > comp[1] + 0.3, comp
    assert abpc[0] > abpc[1] + 30, abpc


def test_text_metrics_are_maximal_on_identical_texts():
    text = "the cat sat on the mat"
    assert bleu(text, text) == pytest.approx(100.0)
    assert rouge_l(text, text) == {"rouge_l_precision": 1.0, "rouge_l_recall": 1.0, "rouge_l_f1": 1.0}
    assert bleu("dogs bark loudly", text) == pytest.approx(0.0)
    assert rouge_l("the dog", text)["rouge_l_precision"] == pytest.approx(0.5)
    assert cosine(np.zeros(3), np.zeros(3)) == 1.0 and cosine(np.zeros(3), np.ones(3)) == 0.0


def test_sentence_encoder_loads_with_no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    vectors = SentenceEncoder()(
        [[1], [2], [3], []], ["a cat sleeps", "a cat is sleeping", "stock prices fell", ""]
    )
    assert vectors.shape == (4, 384)
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.2
    assert cosine(vectors[0], vectors[0]) == pytest.approx(1.0) and not vectors[3].any()


def test_kl_direction_and_value():
    p = torch.tensor([[0.5, 0.5]]).log()
    q = torch.tensor([[0.9, 0.1]]).log()
    expected = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert F._mean_kl(p, q) == pytest.approx(expected)
    assert F._mean_kl(q, p) != pytest.approx(expected)


def test_similarity_on_the_zoo(zoo, recall_results):
    _, loo, _ = recall_results
    res = loo[1]
    out = F.similarity(zoo, res, k=3, max_new_tokens=3, encoder="model", n_random=4, seed=1)
    again = F.similarity(zoo, res, k=3, max_new_tokens=3, encoder="model", n_random=4, seed=1)
    assert out == again
    assert out["original"] != out["masked"] and out["bleu"] == 0.0
    assert out["probability_ratio"] < 1e-2 < out["random_probability_ratio"]
    assert out["kl"] > out["random_kl"]


def test_evaluation_works_on_a_saved_result(zoo, recall_results, tmp_path):
    _, loo, _ = recall_results
    path = loo[2].save(tmp_path / "r.json")
    back = genattr.Attribution.load(path)
    assert F.erasure(zoo, back) == F.erasure(zoo, loo[2])


def test_interrupted_benchmark_resumes_to_the_same_tables(zoo, tmp_path):
    items, _ = load_items(["zoo:recall", "zoo:either"], n=2, seed=3)
    methods = ["leave_one_out", "random"]
    settings = {"metrics": ["curves", "erasure", "ground_truth"], "max_new_tokens": 3}
    whole = run_benchmark(zoo, methods, items, tmp_path / "whole", **settings)

    calls = []

    def stop_after_three(row):
        calls.append(row)
        if len(calls) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_benchmark(zoo, methods, items, tmp_path / "cut", on_row=stop_after_three, **settings)
    rows = tmp_path / "cut" / "rows.jsonl"
    assert len(rows.read_text().splitlines()) == 3
    with rows.open("a") as handle:  # a row cut short by the interruption
        handle.write('{"method": "random", "exam')
    resumed = run_benchmark(zoo, methods, items, tmp_path / "cut", **settings)
    assert resumed["table"] == whole["table"]
    assert (tmp_path / "cut" / "table.md").read_text() == (tmp_path / "whole" / "table.md").read_text()
    assert len(rows.read_text().splitlines()) == len(items) * len(methods)
    assert (tmp_path / "whole" / "curves.png").stat().st_size > 1000


def test_jsonl_data_reports_malformed_lines_and_maps_spans(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text(
        "\n".join(
            [
                json.dumps(
                    {
                        "prompt": "recall ant one bee two query bee",
                        "target": " two",
                        "ground_truth": [[12, 15]],
                    }
                ),
                "{not json",
                json.dumps({"target": " x"}),
                json.dumps({"prompt": "copy a b again a", "ground_truth": [[50, 60]]}),
                json.dumps({"prompt": "either fire door", "target": ""}),
            ]
        )
        + "\n"
    )
    items, problems = load_items([str(data)])
    assert [i.prompt for i in items] == ["recall ant one bee two query bee"]
    assert [p.split(": skipped")[0] for p in problems] == [f"{data}:{n}" for n in (2, 3, 4, 5)]
    assert "prompt" in problems[1] and "character spans" in problems[2] and "target" in problems[3]


def test_benchmark_command(tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    data.write_text(
        json.dumps(
            {
                "prompt": "recall ant one bee two query bee",
                "target": " two",
                "ground_truth": [[15, 18], [19, 22], [29, 32]],
            }
        )
        + "\n"
        + "oops\n"
    )
    out = tmp_path / "out"
    code = main(
        [
            "benchmark",
            "--data",
            str(data),
            "--methods",
            "leave_one_out,random",
            "--out",
            str(out),
            "--metrics",
            "erasure,ground_truth",
            "--quiet",
        ]
    )
    assert code == 0
    assert "data.jsonl:2: skipped" in capsys.readouterr().err
    table = (out / "table.md").read_text()
    assert "recall@|G| ↑ | **1.00** |" in table
    assert main(["benchmark", "--data", "zoo:nope", "--out", str(out)]) == 2


def test_items_from_the_zoo_are_deterministic():
    a, _ = load_items(["zoo:copy"], n=3, seed=1)
    b, _ = load_items(["zoo:copy"], n=3, seed=1)
    assert a == b and all(isinstance(i, Item) and i.ground_truth for i in a)
