"""The registries a user extends: segmentation levels, masks and objectives. A registered one works
through ``genattr.explain`` on a tiny model against an oracle computed without genattr's masking
(the model called directly on the edited token ids); an unknown name raises the typed error
listing the choices, the registered ones included."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys

import pytest
import torch

import genattr
from genattr import defaults, errors
from genattr.cli import build_parser
from genattr.masking import MASKS, Mask, register_mask
from genattr.model import Batch
from genattr.objectives import OBJECTIVES, Objective, register_objective
from genattr.text.segment import LEVELS, Level, plain_levels, register_level

from .conftest import naive_log_probs

TEXT = "The cat sat on the mat.\nThen a dog runs!"
LINES = ["The cat sat on the mat.", "Then a dog runs!"]
TARGET = " and the bird sings"


@pytest.fixture(autouse=True)
def registries(monkeypatch):
    """Each test registers into copies of the registries, so that nothing leaks into other tests."""
    for registry in (LEVELS, MASKS, OBJECTIVES):
        monkeypatch.setattr(registry, "_classes", dict(registry._classes))


class Line(Level):
    """One feature per line of the prompt."""

    name = "line"

    def find_spans(self, text, *, pattern, spans):
        return [m.span() for m in re.finditer(r"[^\n]+", text)]


class Drop(Mask):
    """The removed tokens are taken out of the token ids (no re-tokenisation), rows left-padded."""

    name = "drop"

    def inputs(self, masker, keep):
        rows = [masker.ids[row].tolist() for row in masker.token_keep(keep)]
        return Batch.left_padded(rows, masker.baseline_id)


class MeanLogProb(Objective):
    """v(S) = (1/n) sum_t log p(y_t | y_<t, x_S); per token log p(y_t | y_<t, x_S) / n."""

    name = "mean_log_prob"

    def sequence(self, log_probs):
        return log_probs.mean(1)

    def tokens(self, log_probs):
        return log_probs / log_probs.shape[1]


def _ids(lm, text=TEXT):
    return lm.tokenizer(text)["input_ids"], lm.tokenizer(TARGET, add_special_tokens=False)["input_ids"]


def test_the_registries_hold_the_built_ins_and_the_defaults_agree():
    assert tuple(LEVELS) == ("token", "word", "sentence", "regex", "spans") == tuple(genattr.LEVELS)
    assert tuple(MASKS) == defaults.MASKS == genattr.MASKS
    assert tuple(OBJECTIVES) == ("log_prob", "prob") == defaults.OBJECTIVES
    assert plain_levels() == ["token", "word", "sentence"]
    explain = build_parser()._subparsers._group_actions[0].choices["explain"]
    actions = {a.dest: a for a in explain._actions}
    assert tuple(actions["mask"].choices) == defaults.MASKS
    level = actions["level"].type  # the plain levels, and coarse>fine of two of them
    assert [level(name) for name in plain_levels()] == plain_levels() and level(
        "sentence>word"
    ) == "sentence>word"
    for bad in ("regex", "sentence>regex", "token>word>sentence"):
        with pytest.raises(argparse.ArgumentTypeError):
            level(bad)


def test_the_command_line_lists_the_levels_without_importing_torch():
    code = "import sys, genattr.cli; genattr.cli.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_registered_level_segments_and_is_explained_end_to_end(llama, tmp_path):
    assert register_level(Line) is Line
    res = genattr.explain(llama, TEXT, target=TARGET, level="line", mask="replace", method="leave_one_out")
    assert [f.text for f in res.features] == LINES and res.level == "line"
    # every maskable token in exactly one line; the line break (blank) joins the line after it
    enc = llama.tokenizer(TEXT, return_offsets_mapping=True)
    tokens = [
        [t for t, (s, e) in enumerate(enc["offset_mapping"]) if e > s and f.start <= s and e <= f.end]
        for f in res.features
    ]
    newline = [t for t, (s, e) in enumerate(enc["offset_mapping"]) if TEXT[s:e].strip() == "" and e > s]
    assert [sorted(f.positions) for f in res.features] == [tokens[0], sorted(tokens[1] + newline)]
    prompt_ids, target = _ids(llama)
    full = naive_log_probs(llama, prompt_ids, target).sum()
    for feature, score in zip(res.features, res.scores, strict=True):
        ids = [res.settings.mask_token if t in feature.positions else i for t, i in enumerate(prompt_ids)]
        expected = float(full - naive_log_probs(llama, ids, target).sum())
        assert score == pytest.approx(expected, abs=1e-4) and abs(expected) > 1e-3
    parsed = build_parser().parse_args(["explain", "--model", "m", "--level", "line", "hi"])
    assert parsed.level == "line" and "line" in plain_levels() and "line" in genattr.LEVELS
    res.save(tmp_path / "line.json")
    assert genattr.Attribution.load(tmp_path / "line.json").level == "line"


def test_an_unknown_level_lists_the_choices_with_the_registered_ones(llama):
    with pytest.raises(
        errors.UnknownLevelError, match="unknown level 'paragraph'; choose one of token, word"
    ):
        genattr.explain(llama, TEXT, target=TARGET, level="paragraph")
    register_level(Line)
    with pytest.raises(
        errors.UnknownLevelError, match=r"choose one of token, word, sentence, regex, spans, line\."
    ):
        genattr.explain(llama, TEXT, target=TARGET, level="paragraph")


def test_a_level_whose_spans_leave_the_prompt_is_refused(llama):
    @register_level
    class Beyond(Level):
        name = "beyond"

        def find_spans(self, text, *, pattern, spans):
            return [(0, len(text) + 1)]

    with pytest.raises(errors.InputError, match=r"span \(0, 41\) of level 'beyond' .* \(0\.\.40\)"):
        genattr.explain(llama, TEXT, target=TARGET, level="beyond")


def test_a_registered_mask_removes_features_its_way_end_to_end(llama, tmp_path):
    register_mask(Drop)
    res = genattr.explain(llama, TEXT, target=TARGET, level="word", mask="drop", method="leave_one_out")
    prompt_ids, target = _ids(llama)
    full = naive_log_probs(llama, prompt_ids, target).sum()
    for feature, score in zip(res.features, res.scores, strict=True):
        ids = [i for t, i in enumerate(prompt_ids) if t not in feature.positions]
        assert score == pytest.approx(float(full - naive_log_probs(llama, ids, target).sum()), abs=1e-4)
    replaced = genattr.explain(
        llama, TEXT, target=TARGET, level="word", mask="replace", method="leave_one_out"
    )
    assert abs(res.scores - replaced.scores).max() > 1e-3 and res.settings.mask == "drop"
    res.save(tmp_path / "drop.json")
    assert genattr.Attribution.load(tmp_path / "drop.json").settings.mask == "drop"


def test_an_unknown_mask_lists_the_choices_and_a_mask_must_build_one_row_per_coalition(llama):
    register_mask(Drop)
    with pytest.raises(errors.UnknownMaskError, match=r"unknown mask strategy 'blur'; .* delete, drop\."):
        genattr.explain(llama, TEXT, target=TARGET, mask="blur")

    @register_mask
    class OneRow(Mask):
        name = "one_row"

        def inputs(self, masker, keep):
            return Batch.from_ids(masker.prompt.input_ids)

    with pytest.raises(errors.InvalidParameterError, match="built 1 prompt rows for 3 coalitions"):
        genattr.explain(llama, "The cat", target=TARGET, mask="one_row", method="leave_one_out")


def test_a_registered_objective_values_coalitions_end_to_end(llama, tmp_path):
    register_objective(MeanLogProb)
    res = genattr.explain(llama, TEXT, target=TARGET, method="shapley_exact", objective="mean_log_prob")
    base = genattr.explain(llama, TEXT, target=TARGET, method="shapley_exact", objective="log_prob")
    n = len(res.target.ids)
    assert n > 1 and res.settings.objective == "mean_log_prob"
    res.save(tmp_path / "mean.json")
    assert genattr.Attribution.load(tmp_path / "mean.json").settings.objective == "mean_log_prob"
    torch.testing.assert_close(torch.tensor(res.scores), torch.tensor(base.scores) / n, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(
        torch.tensor(res.token_scores), torch.tensor(base.token_scores) / n, rtol=1e-9, atol=1e-12
    )


def test_unknown_and_gradient_less_objectives_are_refused_before_the_model_loads(llama):
    register_objective(MeanLogProb)
    with pytest.raises(
        errors.UnknownObjectiveError, match=r"unknown objective 'logit'; .* prob, mean_log_prob\."
    ):
        genattr.explain("no/such/model", TEXT, target=TARGET, objective="logit")
    with pytest.raises(
        errors.InvalidParameterError, match=r"for the objectives log_prob, prob only, not 'mean_log"
    ):
        genattr.explain("no/such/model", TEXT, target=TARGET, method="saliency", objective="mean_log_prob")
    genattr.explain(llama, "The cat", target=TARGET, method="saliency", objective="prob")


@pytest.mark.parametrize("wrong", ["sequence", "tokens"])
def test_an_objective_of_the_wrong_shape_is_refused(llama, wrong):
    @register_objective
    class Wrong(MeanLogProb):
        name = "wrong"

        def sequence(self, log_probs):
            return log_probs if wrong == "sequence" else log_probs.sum(1)

        def tokens(self, log_probs):
            return log_probs.sum(1) if wrong == "tokens" else log_probs

    with pytest.raises(errors.InvalidParameterError, match="objective 'wrong' gave shapes"):
        genattr.explain(llama, "The cat", target=TARGET, objective="wrong")


@pytest.mark.parametrize(
    "register, base, taken",
    [
        (register_level, Level, "word"),
        (register_mask, Mask, "delete"),
        (register_objective, Objective, "prob"),
    ],
)
def test_registration_refuses_a_taken_name_a_nameless_class_and_a_foreign_class(register, base, taken):
    with pytest.raises(errors.InvalidParameterError, match=f"name '{taken}' is taken"):
        register(type("Again", (base,), {"name": taken}))
    with pytest.raises(errors.InvalidParameterError, match="has no name"):
        register(type("Nameless", (base,), {}))
    with pytest.raises(errors.InvalidParameterError, match=f"subclass of {base.__name__}"):
        register(type("Foreign", (), {"name": "foreign"}))
    same = type("Fresh", (base,), {"name": "fresh"})
    assert register(same) is same and register(same) is same  # registering a class again is harmless
