"""What a real generation needs explained: attribution to earlier output tokens, one word of
interest, a span of the response (issue: targets real generations need).

Oracles: a naive loop over the raw Hugging Face model that masks each earlier output token and
re-scores the later ones; the equivalence with passing the generated prefix as part of the
prompt (the workaround that worked before); completeness of integrated gradients with the output
tokens on the path; span scores as sums of the whole response's rows.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import genattr
from genattr.errors import InputError, InvalidParameterError, ResultFormatError
from genattr.result import undefined_entries
from genattr.testing import tiny_lm
from genattr.text import Prompt
from genattr.text.target import token_boundaries

PROMPT = "The doctor opens the door"
TARGET = " and the nurse sings"


@pytest.fixture(scope="module")
def tiny():
    return tiny_lm()


def naive_rows(lm, prompt_ids, inputs, labels) -> np.ndarray:
    """log p(label_t | prompt, inputs[:t]) with the raw model, one position at a time: the inputs
    after the prompt may differ from the labels (an output token masked)."""
    out = []
    with torch.no_grad():
        for t, label in enumerate(labels):
            ids = torch.tensor([[*prompt_ids, *inputs[:t]]])
            out.append(float(lm.model(input_ids=ids).logits[0, -1].float().log_softmax(-1)[label]))
    return np.array(out)


def test_leave_one_out_on_output_tokens_equals_the_naive_masking_loop(lms, tiny):
    """Each earlier target token replaced by the mask token (``replace``), the rest teacher-forced."""
    for lm in (tiny, lms["qwen2"]):
        res = genattr.explain(lm, PROMPT, target=TARGET, level="token", mask="replace", attribute_target=True)
        ids, y, base = list(res.prompt.input_ids), list(res.target.ids), res.settings.mask_token
        n, F = len(y), len(res.features)
        full = naive_rows(lm, ids, y, y)
        assert res.token_scores.shape == (n, F + n) and res.scores.shape == (F + n,)
        for s in range(n):
            edited = [base if i == s else t for i, t in enumerate(y)]
            drop = full - naive_rows(lm, ids, edited, y)
            for t in range(n):
                if s < t:
                    assert res.token_scores[t, F + s] == pytest.approx(drop[t], abs=2e-5)
                else:
                    assert np.isnan(res.token_scores[t, F + s])
                    assert drop[t] == pytest.approx(0.0, abs=1e-6)  # causal: it cannot matter
            if s < n - 1:
                assert res.scores[F + s] == pytest.approx(drop.sum(), abs=5e-5)
        assert np.isnan(res.scores[-1])  # the last token precedes nothing explained
        plain = genattr.explain(lm, PROMPT, target=TARGET, level="token", mask="replace")
        np.testing.assert_allclose(res.token_scores[:, :F], plain.token_scores, atol=1e-5)


def _with_prefix(lm, k: int):
    """The prompt followed by the target's first k tokens, as a prompt (checked to tokenise the same)."""
    target = genattr.text.resolve_target(lm, Prompt.from_text(lm.tokenizer, PROMPT), TARGET)
    end = token_boundaries(lm.tokenizer, target)[k - 1][1]
    joined = Prompt.from_text(lm.tokenizer, PROMPT + TARGET[:end])
    plain = Prompt.from_text(lm.tokenizer, PROMPT)
    assert list(joined.input_ids) == [*plain.input_ids, *target.ids[:k]]  # the oracle's precondition
    return joined, target


@pytest.mark.parametrize(
    ("method", "kw"),
    [
        ("aieg", {"n_steps": 8}),
        ("leave_one_out", {}),
        ("integrated_gradients", {"n_steps": 8}),
        ("attention", {}),
        ("shapley_sampling", {"n_samples": 4}),
        ("deeplift", {}),
    ],
)
def test_word_of_interest_equals_the_generated_prefix_passed_as_prompt(tiny, method, kw):
    k = 2
    joined, target = _with_prefix(tiny, k)
    res = genattr.explain(tiny, PROMPT, target=TARGET, method=method, level="token", target_token=k, **kw)
    ref = genattr.explain(
        tiny, joined, target=list(target.ids[k : k + 1]), method=method, level="token", **kw
    )
    F = len(res.features)
    assert res.settings.attribute_target and res.settings.target_span == (k, k + 1)
    assert res.token_scores.shape == (1, F + len(target))
    np.testing.assert_allclose(res.token_scores[0, : F + k], ref.token_scores[0], rtol=1e-4, atol=1e-6)
    assert np.isnan(res.token_scores[0, F + k :]).all()
    word = genattr.explain(
        tiny, PROMPT, target=TARGET, method=method, level="token", target_token="nurse", **kw
    )
    assert word.settings.target_span == (2, 3)
    np.testing.assert_allclose(word.token_scores, res.token_scores, equal_nan=True, atol=1e-9)


def test_integrated_gradients_is_complete_with_the_output_tokens_on_the_path(tiny):
    """Rows sum to u_t(x) - u_t(x'), x' the prompt's features and the earlier output tokens all the
    mask token (the same reference as the prompt's)."""
    res = genattr.explain(
        tiny,
        PROMPT,
        target=TARGET,
        method="integrated_gradients",
        level="token",
        n_steps=256,
        baselines="token",
        mask_token="eos",
        attribute_target=True,
    )
    ids, y, eos = list(res.prompt.input_ids), list(res.target.ids), tiny.tokenizer.eos_token_id
    covered = {p for f in res.features for p in f.positions}
    reference = [eos if i in covered else t for i, t in enumerate(ids)]
    gap = naive_rows(tiny, ids, y, y) - naive_rows(tiny, reference, [eos] * len(y), y)
    np.testing.assert_allclose(np.nansum(res.token_scores, 1), gap, rtol=1e-2, atol=1e-3)
    assert np.nansum(res.scores) == pytest.approx(gap.sum(), rel=1e-2, abs=1e-3)


@pytest.mark.parametrize("method", ["leave_one_out", "integrated_gradients", "input_x_gradient"])
def test_a_span_scores_as_the_whole_responses_rows_summed(tiny, method):
    whole = genattr.explain(tiny, PROMPT, target=TARGET, method=method, attribute_target=True)
    a, b = 1, 3
    span = genattr.explain(
        tiny, PROMPT, target=TARGET, method=method, target_span="the nurse", attribute_target=True
    )
    assert span.span == (a, b) and span.token_scores.shape[0] == b - a
    np.testing.assert_allclose(
        span.token_scores, whole.token_scores[a:b], rtol=1e-5, atol=1e-6, equal_nan=True
    )
    F = len(span.features)
    np.testing.assert_allclose(span.prompt_scores, whole.token_scores[a:b, :F].sum(0), rtol=1e-5, atol=1e-6)
    plain = genattr.explain(tiny, PROMPT, target=TARGET, method=method, target_span=(5, 14))
    whole_plain = genattr.explain(tiny, PROMPT, target=TARGET, method=method)
    assert plain.span == (a, b) and plain.scores.shape == (F,)  # the tokens before: context, not features
    np.testing.assert_allclose(plain.token_scores, whole_plain.token_scores[a:b], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(plain.scores, whole_plain.token_scores[a:b].sum(0), rtol=1e-5, atol=1e-6)


def test_methods_that_cannot_attribute_to_output_tokens_say_so(tiny):
    with pytest.raises(InvalidParameterError, match="output-tokens"):
        genattr.explain(tiny, PROMPT, target=TARGET, method="xprompt", attribute_target=True)
    with pytest.raises(InvalidParameterError, match="target_token"):
        genattr.explain(tiny, PROMPT, method="gilot", target_token=0)
    assert "output-tokens" not in genattr.registry.get("xprompt").info().flags()
    assert "output-tokens" in genattr.registry.get("leave_one_out").info().flags()
    with pytest.raises(InvalidParameterError, match="delete"):
        genattr.explain(tiny, PROMPT, target=TARGET, mask="delete", attribute_target=True)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"target_token": "sun"}, "does not occur"),
        ({"target_token": "nur"}, "token boundaries"),
        ({"target_token": "the nurse"}, "covers 2 tokens"),
        ({"target_token": 9}, "outside the 4-token"),
        ({"target_token": True}, "token index"),
        ({"target_span": (3, 99)}, "not a character span"),
        ({"target_span": "urse"}, "token boundaries"),
        ({"target_token": 0, "target_span": "the"}, "not both"),
    ],
)
def test_bad_target_picks_are_refused_with_what_to_do(tiny, kw, message):
    with pytest.raises(InputError, match=message):
        genattr.explain(tiny, PROMPT, target=TARGET, **kw)


def test_undefined_entries_are_nan_on_disk_as_null_and_nowhere_else(tiny, tmp_path):
    res = genattr.explain(tiny, PROMPT, target=TARGET, attribute_target=True)
    back = genattr.Attribution.load(res.save(tmp_path / "r.json"))
    np.testing.assert_array_equal(back.token_scores, res.token_scores)
    np.testing.assert_array_equal(back.scores, res.scores)
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["schema_version"] == 3 and data["token_scores"][0][-1] is None
    F = len(res.features)
    data["token_scores"][1][0] = None  # a prompt entry: defined, so it cannot be null
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(ResultFormatError, match="NaN where a score is defined"):
        genattr.Attribution.load(tmp_path / "bad.json")
    data = json.loads((tmp_path / "r.json").read_text())
    data["token_scores"][0][F] = 0.0  # token 0's entry for itself: undefined, so it must be null
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(ResultFormatError, match="undefined"):
        genattr.Attribution.load(tmp_path / "bad.json")
    coarse = res.aggregate("sentence")
    assert coarse.scores.shape == (1 + len(res.target.ids),)
    np.testing.assert_array_equal(coarse.token_scores[:, 1:], res.token_scores[:, F:])
    assert coarse.scores[0] == pytest.approx(res.scores[:F].sum())


def test_undefined_entries_by_hand():
    np.testing.assert_array_equal(
        undefined_entries(4, 1, (1, 3), rows=True), [[False, False, True, True], [False, False, False, True]]
    )
    np.testing.assert_array_equal(undefined_entries(4, 1, (1, 3)), [False, False, False, True])
    assert not undefined_entries(3, 3, (0, 2), rows=True).any()


FOIL = " but a dog"


@pytest.mark.parametrize("method", ["leave_one_out", "shapley_exact", "input_x_gradient"])
def test_contrast_is_the_difference_of_target_and_foil_explanations(tiny, method):
    """Leave-one-out and the other linear-in-v methods: exactly target minus foil."""
    both = genattr.explain(tiny, PROMPT, target=" and the nurse", method=method, contrast=FOIL)
    target = genattr.explain(tiny, PROMPT, target=" and the nurse", method=method)
    foil = genattr.explain(tiny, PROMPT, target=FOIL, method=method)
    assert both.extras["contrast"] == {"foil": FOIL, "level": "token"}
    np.testing.assert_allclose(both.scores, target.scores - foil.scores, atol=1e-6)
    np.testing.assert_allclose(both.token_scores, target.token_scores - foil.token_scores, atol=1e-6)
    assert both.settings.contrast == tuple(foil.target.ids)


def test_contrastive_integrated_gradients_is_complete_up_to_the_two_runs_gaps(tiny):
    kw = {"method": "integrated_gradients", "n_steps": 64, "baselines": "token"}
    both = genattr.explain(tiny, PROMPT, target=" and the nurse", contrast=FOIL, **kw)
    target = genattr.explain(tiny, PROMPT, target=" and the nurse", **kw)
    foil = genattr.explain(tiny, PROMPT, target=FOIL, **kw)
    ids = list(both.prompt.input_ids)
    covered = {p for f in both.features for p in f.positions}
    reference = [both.settings.mask_token if i in covered else t for i, t in enumerate(ids)]

    def contrast(prompt_ids):
        y, f = list(target.target.ids), list(foil.target.ids)
        return naive_rows(tiny, prompt_ids, y, y).sum() - naive_rows(tiny, prompt_ids, f, f).sum()

    gap = contrast(ids) - contrast(reference)
    slack = abs(target.diagnostics["convergence_delta"]) + abs(foil.diagnostics["convergence_delta"])
    assert abs(both.scores.sum() - gap) <= slack + 1e-5
    assert both.diagnostics["convergence_delta"] == pytest.approx(both.scores.sum() - gap, abs=1e-5)


def test_a_foil_of_another_length_contrasts_the_sequence_only(tiny, tmp_path):
    res = genattr.explain(tiny, PROMPT, target=" and the nurse", contrast=" no", objective="prob")
    target = genattr.explain(tiny, PROMPT, target=" and the nurse", objective="prob")
    foil = genattr.explain(tiny, PROMPT, target=" no", objective="prob")
    assert res.extras["contrast"]["level"] == "sequence" and res.token_scores is None
    np.testing.assert_allclose(res.scores, target.scores - foil.scores, atol=1e-7)
    assert genattr.Attribution.load(res.save(tmp_path / "c.json")).settings == res.settings


def test_contrast_is_refused_where_it_is_not_defined(tiny):
    with pytest.raises(InvalidParameterError, match="flags those that do: contrast"):
        genattr.explain(tiny, PROMPT, target=TARGET, method="attention", contrast=FOIL)
    with pytest.raises(InvalidParameterError, match="objective='log_prob'"):
        genattr.explain(tiny, PROMPT, target=TARGET, method="saliency", contrast=FOIL, objective="prob")
    with pytest.raises(InvalidParameterError, match="whole responses"):
        genattr.explain(tiny, PROMPT, target=TARGET, contrast=FOIL, attribute_target=True)


def test_every_result_with_a_target_carries_its_step_scores(tiny):
    res = genattr.explain(tiny, PROMPT, target=TARGET, contrast=" but a dog is")
    ids, y = list(res.prompt.input_ids), list(res.target.ids)
    np.testing.assert_allclose(res.step_scores["log_prob"], naive_rows(tiny, ids, y, y), atol=1e-5)
    foil = list(genattr.explain(tiny, PROMPT, target=" but a dog is").target.ids)
    assert len(foil) == len(y)
    expected = naive_rows(tiny, ids, y, y) - naive_rows(tiny, ids, foil, foil)
    np.testing.assert_allclose(res.step_scores["contrast"], expected, atol=1e-5)
    assert set(genattr.explain(tiny, PROMPT, target=TARGET).step_scores) == {
        "prob",
        "log_prob",
        "entropy",
        "rank",
    }
    before = tiny.usage.copy()
    counted = genattr.explain(tiny, PROMPT, target=TARGET).diagnostics["forward_passes"]
    assert (
        tiny.usage.since(before)["forward_passes"] == counted + 1
    )  # the step scores' pass: not the method's cost


def test_a_second_prompt_moves_no_score_and_gives_the_step_contrast(tiny):
    other = "The nurse opens the door"
    res = genattr.explain(tiny, PROMPT, target=TARGET, contrast_prompt=other)
    plain = genattr.explain(tiny, PROMPT, target=TARGET)
    np.testing.assert_array_equal(res.scores, plain.scores)  # a constant of the coalitions
    y = list(res.target.ids)
    other_ids = list(Prompt.from_text(tiny.tokenizer, other).input_ids)
    expected = naive_rows(tiny, res.prompt.input_ids, y, y) - naive_rows(tiny, other_ids, y, y)
    np.testing.assert_allclose(res.step_scores["contrast"], expected, atol=1e-5)
    assert res.extras["contrast"] == {"prompt": other, "level": "token"}
    with pytest.raises(InvalidParameterError, match="not both"):
        genattr.explain(tiny, PROMPT, target=TARGET, contrast=FOIL, contrast_prompt=other)


def test_the_views_draw_the_output_tokens_as_features(tiny):
    import dataclasses
    import re

    from rich.console import Console

    res = genattr.explain(tiny, PROMPT, target=TARGET, level="token", attribute_target=True)
    hostile = dataclasses.replace(res.target, tokens=("<b>x</b>", *res.target.tokens[1:]))
    res = dataclasses.replace(res, target=hostile)
    from genattr.render.html import render_html

    page = render_html([res])
    n, F = len(res.target.ids), len(res.features)
    assert page.count('class="ga-undef"') == int(np.isnan(res.token_scores).sum()) == n * (n + 1) // 2
    assert page.count('class="ga-f ga-out"') == n  # each output token coloured by its score
    assert "<b>x</b>" not in page and "out 1: &lt;b&gt;x&lt;/b&gt;" in page
    body = page.split('class="ga-matrix"')[1].split("<tbody>")[1].split("</tbody>")[0]
    cells = re.findall(r"<tr><th>[^<]*</th>(.*?)</tr>", body)
    assert len(cells) == n and all(row.count("<td") == F + n for row in cells)
    console = Console(record=True, width=400)
    res.show(console=console)
    text = console.export_text()
    assert "out 4:" in text and text.count("·") >= n * (n + 1) // 2
