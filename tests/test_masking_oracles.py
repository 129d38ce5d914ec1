"""Masking and problem evaluation against values known by hand: deleted text on every whitespace
case, the baseline resolution order and its refusals, the model inputs each strategy builds
(ids, visibility, positions, padding), and coalition values (repeats scored once, both objectives,
the seed)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from genattr.errors import InvalidParameterError, UnknownMaskError
from genattr.masking import Masker, delete_spans, resolve_baseline
from genattr.problem import Problem
from genattr.text.prompt import Prompt
from genattr.text.target import resolve_target


@pytest.mark.parametrize(
    "text,spans,expected",
    [
        ("a b c", [(2, 3)], "a c"),
        ("a b c", [(0, 1)], "b c"),
        ("a b c", [(4, 5)], "a b"),
        ("a  b", [(3, 4)], "a"),
        ("a\tb c", [(2, 3)], "a\tc"),
        ("x y.", [(2, 3)], "x."),
        ("cat, dog", [(0, 3)], ", dog"),
        ("cat, dog", [(5, 8)], "cat,"),
        ("a\nb", [(2, 3)], "a\n"),
        ("a\nb c", [(2, 3)], "a\nc"),
        ("one two three four", [(4, 7), (14, 18)], "one three"),
        ("one two three four", [(14, 18), (4, 7)], "one three"),
        ("one two", [(0, 3), (4, 7)], ""),
        ("ab", [(0, 1)], "b"),
        ("MAX b.", [(4, 5)], "MAX."),
        ("a XY", [(0, 1)], "XY"),
        ("a\tXY", [(0, 1)], "XY"),
        ("xy\tz w", [(3, 4)], "xy\tw"),
        ("xy\nz w", [(3, 4)], "xy\nw"),
        ("a b \nc", [(2, 3)], "a \nc"),
        ("x ab", [(2, 3)], "x b"),
        ("a\tb.", [(2, 3)], "a."),
        ("a\n b.", [(3, 4)], "a\n."),
    ],
)
def test_delete_spans_takes_one_neighbouring_whitespace_run(text, spans, expected):
    assert delete_spans(text, spans) == expected


def _tokenizer(**ids):
    return SimpleNamespace(**{f"{n}_token_id": ids.get(n) for n in ("pad", "unk", "eos", "bos", "mask")})


def test_default_baseline_is_pad_then_unk_then_eos():
    assert resolve_baseline(_tokenizer(pad=4, unk=5, eos=6), None, 10) == 4
    assert resolve_baseline(_tokenizer(unk=5, eos=6), None, 10) == 5
    assert resolve_baseline(_tokenizer(eos=6), None, 10) == 6
    assert resolve_baseline(_tokenizer(pad=0, eos=6), None, 10) == 0
    with pytest.raises(UnknownMaskError, match="no pad, unk or eos"):
        resolve_baseline(_tokenizer(bos=1), None, 10)


def test_baseline_ids_and_names():
    tok = _tokenizer(pad=4, eos=6, bos=1)
    assert resolve_baseline(tok, 0, 10) == 0 and resolve_baseline(tok, 9, 10) == 9
    assert resolve_baseline(tok, "7", 10) == 7 and resolve_baseline(tok, "eos", 10) == 6
    assert resolve_baseline(tok, "bos", 10) == 1 and resolve_baseline(tok, "pad", 10) == 4
    for bad in (10, -1, "-1", "10"):
        with pytest.raises(UnknownMaskError, match=r"outside the vocabulary \(0..9\)"):
            resolve_baseline(tok, bad, 10)
    with pytest.raises(UnknownMaskError, match="not True"):
        resolve_baseline(tok, True, 10)
    with pytest.raises(UnknownMaskError, match="no mask token; use one of pad, eos, bos"):
        resolve_baseline(tok, "mask", 10)
    with pytest.raises(UnknownMaskError, match="unknown baseline 'zero'"):
        resolve_baseline(tok, "zero", 10)
    bare = SimpleNamespace(eos_token_id=6)  # a tokenizer without the other attributes at all
    assert resolve_baseline(bare, None, 10) == 6
    with pytest.raises(UnknownMaskError, match="no unk token; use one of eos"):
        resolve_baseline(bare, "unk", 10)


PROMPT = "red blue green cat dog"  # BOS + five word features on the word-level model


def _masker(lm, strategy="attention", baseline=None, text=PROMPT):
    prompt = Prompt.from_text(lm.tokenizer, text)
    return Masker(lm, prompt, prompt.features("word"), strategy, baseline)


@pytest.mark.parametrize("strategy", ["attention", "replace"])
def test_replacing_strategies_build_ids_visibility_and_positions(word_lm, strategy):
    m = _masker(word_lm, strategy, baseline="eos")
    ids = list(m.prompt.input_ids)
    eos = word_lm.tokenizer.eos_token_id
    keep = torch.tensor([[True] * 5, [False, True, True, False, True], [False] * 5])
    inputs = m.inputs(keep)
    assert inputs.input_ids.tolist() == [
        ids,
        [ids[0], eos, ids[2], ids[3], eos, ids[5]],
        [ids[0]] + [eos] * 5,
    ]
    hidden = torch.tensor([[True] * 6, [True, False, True, True, False, True], [True] + [False] * 5])
    expected = hidden if strategy == "attention" else torch.ones(3, 6, dtype=torch.bool)
    assert inputs.visible.tolist() == expected.tolist()
    assert inputs.positions.tolist() == [list(range(6))] * 3
    assert m.token_keep(keep).tolist() == hidden.tolist()
    one = m.inputs(torch.tensor([False, True, True, False, True]))  # a single coalition as a row
    assert one.input_ids.tolist() == inputs.input_ids[1:2].tolist()
    assert m.n_features == 5 and m.baseline_id == eos


def test_delete_strategy_retokenises_and_left_pads(word_lm):
    m = _masker(word_lm, "delete", baseline="eos")
    pad = m.baseline_id
    ids = list(m.prompt.input_ids)
    keep = torch.tensor([[True] * 5, [True, False, True, True, False], [False] * 5])
    inputs = m.inputs(keep)
    short = word_lm.tokenizer("red green cat")["input_ids"]
    assert inputs.input_ids.tolist() == [ids, [pad, pad] + short, [pad] * 5 + [pad]]
    assert inputs.visible.tolist() == [[True] * 6, [False, False] + [True] * 4, [False] * 5 + [True]]
    assert inputs.positions[1, 2:].tolist() == [0, 1, 2, 3]


def test_unknown_strategy_is_refused(word_lm):
    with pytest.raises(UnknownMaskError, match="unknown mask strategy 'hide'"):
        _masker(word_lm, "hide")


def _problem(lm, objective="log_prob", seed=0):
    m = _masker(lm)
    target = resolve_target(lm, m.prompt, " up down")
    return Problem(lm, m.prompt, m.features, target, m, objective, seed)


def test_evaluate_scores_each_distinct_coalition_once_in_the_callers_order(word_lm, monkeypatch):
    problem = _problem(word_lm)
    keep = torch.tensor([[True] * 5, [False, True, True, True, True], [True] * 5, [False] * 5])
    direct = problem.token_log_probs(keep).double()
    rows = []
    real = problem.token_log_probs
    monkeypatch.setattr(problem, "token_log_probs", lambda k: rows.append(len(k)) or real(k))
    values = problem.evaluate(keep)
    assert rows == [3]
    assert values.dtype == torch.float64 and values.shape == (4, 3)
    torch.testing.assert_close(values[:, 1:], direct, atol=1e-6, rtol=0)
    torch.testing.assert_close(values[:, 0], direct.sum(1), atol=1e-6, rtol=0)
    assert float(values[0, 0] - values[1, 0]) != 0.0


def test_probability_objective_exponentiates_sequence_and_tokens(word_lm):
    keep = torch.tensor([[True] * 5, [False, False, True, True, True]])
    lp = _problem(word_lm).evaluate(keep)
    prob = _problem(word_lm, "prob").evaluate(keep)
    torch.testing.assert_close(prob, lp.exp(), rtol=1e-9, atol=0)
    with pytest.raises(InvalidParameterError, match="unknown objective 'logit'"):
        _problem(word_lm, "logit")


def test_generator_is_seeded_by_the_problem_and_none_means_zero(word_lm):
    draw = [torch.rand(3, generator=_problem(word_lm, seed=s).generator()) for s in (0, None, 1)]
    assert torch.equal(draw[0], draw[1]) and not torch.equal(draw[0], draw[2])
    assert torch.equal(draw[0], torch.rand(3, generator=torch.Generator().manual_seed(0)))
    problem = _problem(word_lm)
    assert problem.all_kept(3).tolist() == [[True] * 5] * 3 and problem.all_kept().shape == (1, 5)
    assert problem.n_features == 5


def test_delete_strategy_keeps_the_prompts_choice_of_special_tokens(word_lm):
    prompt = Prompt.from_text(word_lm.tokenizer, PROMPT, add_special_tokens=False)
    m = Masker(word_lm, prompt, prompt.features("word"), "delete")
    inputs = m.inputs(torch.tensor([[True, False, True, True, True]]))
    assert (
        inputs.input_ids[0].tolist()
        == word_lm.tokenizer("red green cat dog", add_special_tokens=False)["input_ids"]
    )


def test_coalitions_as_integers_score_like_booleans_and_none_score_to_an_empty_table(word_lm):
    problem = _problem(word_lm)
    as_bool = torch.tensor([[True, False, True, False, True], [False, True, True, True, False]])
    as_int = as_bool.long()  # 1 = kept, 0 = removed, as a user may write them
    torch.testing.assert_close(problem.token_log_probs(as_int), problem.token_log_probs(as_bool))
    torch.testing.assert_close(problem.evaluate(as_int), problem.evaluate(as_bool))
    assert not torch.equal(problem.evaluate(as_bool)[0], problem.evaluate(as_bool)[1])
    empty = problem.token_log_probs(torch.zeros(0, problem.n_features, dtype=torch.bool))
    assert empty.shape == (0, len(problem.target.ids)) and empty.dtype == torch.float32
