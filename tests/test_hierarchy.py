"""Hierarchical attribution (``level="coarse>fine"``): each pass against a direct run of it."""

from __future__ import annotations

import json

import numpy as np
import pytest

import genattr
from genattr.cli import main
from genattr.errors import InvalidParameterError, ResultFormatError, UnknownLevelError

# four sentences; the tiny tokenizer gives a whitespace-only token before the second and last
PROMPT = "The doctor came home.  The nurse sang a song. A dog barked at night.\n\nThe end came soon."
TARGET = " and the"


@pytest.fixture(scope="module")
def lm():
    return genattr.testing.tiny_lm()


def _run(lm, level="sentence>word", **kw):
    return genattr.explain(lm, PROMPT, target=TARGET, level=level, **kw)


def test_spans_refined_into_sentences_keep_the_blank_token_the_sentence_level_joins(lm):
    """Paragraph spans leave out the whitespace-only token between the paragraphs, which the
    sentence level joins to the sentence after it: every sentence is refined all the same, with
    that token. Oracle: leave-one-out of a feature does not depend on the other features (they
    stay), so refining every paragraph gives the sentence level's own scores."""
    gap = PROMPT.index("\n\n")
    spans = [(0, gap), (gap + 2, len(PROMPT))]
    res = _run(lm, level="spans>sentence", spans=spans, refine_top=2)
    direct = _run(lm, level="sentence")
    assert [f.positions for f in res.features] == [f.positions for f in direct.features]
    np.testing.assert_allclose(res.scores, direct.scores, atol=1e-5, rtol=0)


def test_passes_equal_direct_runs_for_leave_one_out(lm):
    res = _run(lm, refine_top=2)
    coarse = _run(lm, level="sentence")
    hierarchy = res.extras["hierarchy"]
    assert hierarchy["coarse"] == coarse.scores.tolist()
    assert hierarchy["coarse_features"] == [[c.start, c.end] for c in coarse.features]
    refined = set(hierarchy["refined"])
    assert len(refined) == 2
    inside = [
        i
        for i, f in enumerate(res.features)
        if any(c.index in refined and set(f.positions) <= set(c.positions) for c in coarse.features)
        and f.text not in {c.text for c in coarse.features}
    ]
    offsets = res.prompt.offsets  # a word's span with its whitespace-only tokens, which it masks too
    fine_spans = [
        (offsets[res.features[i].positions[0]][0], offsets[res.features[i].positions[-1]][1]) for i in inside
    ]
    direct = genattr.explain(lm, PROMPT, target=TARGET, level="spans", spans=fine_spans)
    assert [f.positions for f in direct.features] == [res.features[i].positions for i in inside]
    np.testing.assert_array_equal(res.scores[inside], direct.scores)
    np.testing.assert_array_equal(res.token_scores[:, inside], direct.token_scores)
    unrefined = [c for c in coarse.features if c.index not in refined]
    kept = [i for i, f in enumerate(res.features) if f.positions in {c.positions for c in unrefined}]
    np.testing.assert_array_equal(res.scores[kept], coarse.scores[[c.index for c in unrefined]])
    assert len(kept) + len(inside) == len(res.features)
    d = res.diagnostics
    for key in ("forward_passes", "tokens_processed"):
        assert d[key] == d["coarse"][key] + d["fine"][key] > d["fine"][key] > 0


def test_the_best_coarse_features_are_refined_ties_by_position(lm):
    res = _run(lm, refine_top=2)
    coarse = np.array(res.extras["hierarchy"]["coarse"])
    order = sorted(range(len(coarse)), key=lambda i: (-coarse[i], i))
    assert res.extras["hierarchy"]["refined"] == sorted(order[:2])
    spans = res.extras["hierarchy"]["coarse_features"]
    for i in res.extras["hierarchy"]["refined"]:
        start, end = spans[i]
        words = [f for f in res.features if start <= f.start and f.end <= end]
        assert len(words) > 1 and all(PROMPT[f.start : f.end] == f.text for f in words)
    assert [f.index for f in res.features] == list(range(len(res.features)))
    assert [f.start for f in res.features] == sorted(f.start for f in res.features)


def test_ties_are_broken_by_position(lm):
    from genattr import hierarchy

    real = genattr.explain

    def flat(*args, **kw):  # every coarse score equal: the first sentences are refined
        res = real(*args, **kw)
        return res if kw["level"] != "sentence" else type(res)(**{**vars(res), "scores": res.scores * 0})

    assert hierarchy.explain_hierarchical(
        flat, lm, PROMPT, TARGET, level="sentence>word", refine_top=2
    ).extras["hierarchy"]["refined"] == [0, 1]


def test_a_fine_pass_on_another_output_drops_token_scores_with_a_warning(lm):
    from genattr import hierarchy

    real = genattr.explain

    def drifted(*args, **kw):  # GiLOT's beams may tie differently in the fine pass's batch
        res = real(*args, **kw)
        if kw["level"] != "spans":
            return res
        other = type(res.target)(res.target.ids[::-1], "x", res.target.tokens[::-1], True)
        return type(res)(**{**vars(res), "target": other})

    with pytest.warns(genattr.errors.GenattrWarning, match="another output"):
        res = hierarchy.explain_hierarchical(drifted, lm, PROMPT, " and the", level="sentence>word")
    assert res.token_scores is None and res.scores.shape == (len(res.features),)


def test_refining_every_unit_equals_the_fine_level(lm):
    res = _run(lm, refine_top=10)
    word = _run(lm, level="word")
    assert [(f.text, f.start, f.end, f.positions) for f in res.features] == [
        (f.text, f.start, f.end, f.positions) for f in word.features
    ]
    np.testing.assert_array_equal(res.scores, word.scores)
    np.testing.assert_array_equal(res.token_scores, word.token_scores)


@pytest.mark.parametrize(
    "method, kw",
    [
        ("shapley_sampling", {"n_samples": 4}),
        ("gilot", {"num_beams": 2, "n_positions": 2, "mass_threshold": 0}),
    ],
)
def test_other_methods_give_consistent_shapes(lm, method, kw):
    target = None if method == "gilot" else TARGET
    res = genattr.explain(lm, PROMPT, target=target, method=method, level="sentence>word", refine_top=1, **kw)
    coarse = genattr.explain(lm, PROMPT, target=target, method=method, level="sentence", **kw)
    assert res.extras["hierarchy"]["coarse"] == coarse.scores.tolist()
    n_words = len(coarse.features[res.extras["hierarchy"]["refined"][0]].text.split())
    assert len(res.features) >= len(coarse.features) - 1 + n_words
    assert res.scores.shape == (len(res.features),)
    assert res.token_scores.shape == (len(res.target.ids), len(res.features))
    assert res.settings.seed == coarse.settings.seed and res.params == coarse.params


def test_json_round_trip(lm, tmp_path):
    res = _run(lm, method="shapley_sampling", n_samples=4, refine_top=1)
    back = genattr.Attribution.load(res.save(tmp_path / "r.json"))
    assert back.level == "sentence>word" and back.extras == json.loads(json.dumps(res.extras))
    np.testing.assert_array_equal(back.scores, res.scores)
    assert [f.positions for f in back.features] == [f.positions for f in res.features]
    data = json.loads((tmp_path / "r.json").read_text())
    data["settings"]["level"] = "sentence>word>token"
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(ResultFormatError, match="more than two stages"):
        genattr.Attribution.load(tmp_path / "bad.json")
    data["settings"]["level"] = "sentence>para"
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(ResultFormatError, match="level 'para'"):
        genattr.Attribution.load(tmp_path / "bad.json")


@pytest.mark.parametrize(
    "kw, error, message",
    [
        ({"level": "word", "refine_top": 2}, InvalidParameterError, "needs a level 'coarse>fine'"),
        ({"refine_top": 0}, InvalidParameterError, "refine_top must be an integer >= 1"),
        ({"refine_top": 1.5}, InvalidParameterError, "refine_top must be an integer >= 1"),
        ({"level": "sentence>word>token"}, InvalidParameterError, "two stages"),
        ({"level": "sentence>para"}, UnknownLevelError, "unknown level 'para'"),
        ({"target_token": 0}, InvalidParameterError, "drop target_token"),
        ({"attribute_target": True}, InvalidParameterError, "drop attribute_target"),
        ({"contrast": " or"}, InvalidParameterError, "drop contrast"),
        ({"level": "word>sentence"}, genattr.errors.InputError, "straddles coarse features"),
    ],
)
def test_bad_inputs_raise_typed_errors(lm, kw, error, message):
    with pytest.raises(error, match=message):
        _run(lm, **{"level": "sentence>word", **kw})


def test_cli_level_and_refine_top(tmp_path, capsys):
    out = tmp_path / "r.json"
    argv = ["explain", "--model", "zoo", "--level", "sentence>word", "--refine-top", "1", "--quiet"]
    prompt = "recall bee seven\nant eight pig\nsix query bee"  # three zoo sentences, one a line
    assert main([*argv, "--target", " seven", "--json", str(out), prompt]) == 0
    data = json.loads(out.read_text())
    assert data["settings"]["level"] == "sentence>word"
    assert (
        len(data["extras"]["hierarchy"]["coarse"]) == 3 and len(data["extras"]["hierarchy"]["refined"]) == 1
    )
    assert len(data["features"]) == 2 + 3
    with pytest.raises(SystemExit):
        main(["explain", "--level", "sentence>regex", "hi"])
    assert "invalid choice: 'sentence>regex'" in capsys.readouterr().err
