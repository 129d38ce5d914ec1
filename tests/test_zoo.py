"""The model zoo: deterministic labelled examples, the word-level tokenizer, the shipped model's
validity (accuracy, interventions, the story decoy), the training code, and the ground-truth
metrics on hand-computed cases."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch

import genattr
from genattr.evaluate import ground_truth
from genattr.masking import Masker
from genattr.text.prompt import Prompt
from genattr.zoo import TASKS, examples, model_path
from genattr.zoo.tasks import CLUSTERS, SHADES, vocabulary
from genattr.zoo.tokenizer import build_tokenizer
from genattr.zoo.train import TrainConfig, train, training_row
from genattr.zoo.validity import EVAL_SEED, accuracy, intervention_drops


@pytest.fixture(scope="module")
def zoo():
    return genattr.load("zoo")


@pytest.fixture(scope="module")
def card():
    return json.loads((model_path() / "card.json").read_text())


# --------------------------------------------------------------------- examples and tokenizer
@pytest.mark.parametrize("task", TASKS)
def test_examples_are_deterministic_and_ground_truth_indexes_word_features(task):
    a, b, c = examples(task, 20, seed=1), examples(task, 20, seed=1), examples(task, 20, seed=2)
    assert a == b and a != c
    tok = build_tokenizer()
    for ex in a:
        assert ex.words[0] == task
        features = Prompt.from_text(tok, ex.prompt).features("word")
        assert [f.text for f in features] == list(ex.words)
        assert ex.ground_truth and all(0 < i < len(ex.words) for i in ex.ground_truth)
        assert ex.answer.startswith(" ")


def test_ground_truth_is_what_the_task_defines():
    ex = examples("recall", 1, seed=3)[0]
    query = ex.words[-1]
    key_pos = ex.words.index(query)
    assert ex.ground_truth == (key_pos, key_pos + 1, len(ex.words) - 1)
    assert ex.answer_words == (ex.words[key_pos + 1],)
    ex = examples("copy", 1, seed=3)[0]
    q = ex.words.index(ex.words[-1])
    assert ex.ground_truth == (q, q + 1, len(ex.words) - 1) and ex.answer_words == (ex.words[q + 1],)
    for ex in examples("either", 20, seed=3, triggers=2):
        assert len(ex.ground_truth) == 2 and ex.answer_words == ("yes",)
    for ex in examples("story", 10, seed=3):
        assert ex.words[ex.ground_truth[0]] in CLUSTERS and ex.words[ex.info["shade"]] in SHADES
        assert 6 <= len(ex.answer_words) <= 8 and set(ex.answer_words) <= set(ex.info["cluster"])


def test_tokenizer_is_one_token_per_word_with_a_chat_template():
    tok = build_tokenizer()
    words = vocabulary()
    ids = tok(" ".join(words), add_special_tokens=False)["input_ids"]
    assert len(ids) == len(words) and tok.unk_token_id not in ids
    assert {tok.pad_token, tok.unk_token, tok.bos_token, tok.eos_token, tok.mask_token} == {
        "<pad>",
        "<unk>",
        "<s>",
        "</s>",
        "<mask>",
    }
    ex = examples("either", 1, seed=0)[0]
    chat = Prompt.from_messages(tok, [{"role": "user", "content": ex.prompt}])
    plain = Prompt.from_text(tok, ex.prompt)
    assert chat.input_ids == plain.input_ids


# --------------------------------------------------------------------- the shipped model
def test_shipped_model_is_small_and_loads_without_network(zoo):
    weights = model_path() / "model.safetensors"
    assert weights.stat().st_size < 8 * 2**20
    assert zoo.model.config.model_type == "llama"


def test_shipped_model_reproduces_its_card(zoo, card):
    n = card["evaluation"]["examples_per_task"]
    assert card["evaluation"]["seed"] == EVAL_SEED
    for task in TASKS:
        acc = accuracy(zoo, task, n)
        assert acc == pytest.approx(card["evaluation"]["greedy_accuracy"][task], abs=1e-12)
        assert acc >= 0.97, f"{task}: held-out greedy accuracy {acc:.3f} < 0.97"


@pytest.mark.parametrize("task", TASKS)
def test_removing_the_ground_truth_matters_five_times_more_than_random_words(zoo, task):
    rng = random.Random(0)
    drops = [intervention_drops(zoo, ex, rng=rng) for ex in examples(task, 40, seed=99)]
    truth, rand = np.mean([d[0] for d in drops]), np.mean([d[1] for d in drops])
    assert truth > 1.0
    assert truth >= 5 * max(rand, 0.0), f"{task}: drop(G) {truth:.3f} vs drop(random) {rand:.3f}"


def test_story_shade_shifts_synonyms_but_keeps_the_cluster(zoo):
    tok = zoo.tokenizer
    shifts, inside = [], []
    for ex in examples("story", 20, seed=5):
        prompt = Prompt.from_text(tok, ex.prompt)
        features = prompt.features("word")
        keep = torch.ones(2, len(features), dtype=torch.bool)
        keep[1, ex.info["shade"]] = False
        first = tok(ex.answer, add_special_tokens=False)["input_ids"][:1]
        dist = zoo.target_distributions(Masker(zoo, prompt, features).inputs(keep), first)[:, 0].exp()
        cluster = tok.convert_tokens_to_ids(ex.info["cluster"])
        p, q = dist[0, cluster], dist[1, cluster]
        inside.append(float(q.sum()))
        shifts.append(float(0.5 * (p / p.sum() - q / q.sum()).abs().sum()))
    assert min(inside) > 0.9  # without the shade the model still writes the topic's words
    assert np.mean(shifts) > 0.2  # but the preferred synonyms change


# --------------------------------------------------------------------- training code
def test_a_short_training_run_exercises_the_training_code(tmp_path):
    cfg = TrainConfig(steps=25, batch_size=8, hidden=16, layers=1, heads=2, warmup=5)
    model, tokenizer, history = train(cfg, log=lambda *_: None)
    assert history[0]["loss"] > history[-1]["loss"]
    again, _, _ = train(cfg, log=lambda *_: None)
    for p, q in zip(model.parameters(), again.parameters(), strict=True):
        assert torch.equal(p, q)  # deterministic for a seed
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert genattr.load(tmp_path).vocab_size == len(tokenizer)


def test_training_rows_supervise_only_the_answer():
    tok = build_tokenizer()
    vocab = tok.get_vocab()
    rng = random.Random(0)
    for _ in range(50):
        ids, visible, positions, loss = training_row(rng, vocab, augment=1.0)
        supervised = [ids[i + 1] for i, flag in enumerate(loss) if flag]
        assert supervised[-1] == vocab["</s>"]
        assert len(ids) == len(visible) == len(positions) == len(loss)
        assert positions == sorted(positions)


# --------------------------------------------------------------------- ground-truth metrics
def test_ground_truth_metrics_on_hand_computed_cases():
    s = [0.9, 0.1, 0.5, 0.5, -1.0]
    assert ground_truth.recall_at_k(s, {0, 4}) == 0.5
    assert ground_truth.auroc(s, {0, 4}) == pytest.approx((3 + 0) / 6)
    assert ground_truth.pointing_game(s, {0, 4}) == 1.0
    assert ground_truth.joint_success(s, {0, 4}) == 0.0
    assert ground_truth.joint_success(s, {0, 2}) == 1.0  # tie between 2 and 3 broken by position
    assert ground_truth.auroc(s, {2}) == pytest.approx((2 + 0.5) / 4)  # beats 0.1 and -1.0, ties 0.5
    assert math.isnan(ground_truth.auroc([1.0, 2.0], {0, 1}))
    with pytest.raises(genattr.errors.InputError):
        ground_truth.metrics(s, set())
    records = [
        {"method": "m", "task": "t", **ground_truth.metrics(s, {0, 4})},
        {"method": "m", "task": "t", **ground_truth.metrics(s, {0, 2})},
    ]
    summary = ground_truth.summarize(records)
    assert summary[("m", "t")]["joint_success"] == 0.5 and summary[("m", "t")]["n"] == 2
    assert "| `m` | 0.75 |" in ground_truth.markdown_table(records)


def test_leave_one_out_recovers_the_recall_ground_truth(zoo):
    hits = [
        ground_truth.recall_at_k(genattr.explain(zoo, ex.prompt, target=ex.answer), ex.ground_truth)
        for ex in examples("recall", 30, seed=11)
    ]
    assert np.mean(hits) >= 0.9
