"""The flags are a contract, checked for every registered method (scikit-learn's test_common
pattern): the built-ins of ``registry.names()`` and the example method of ``docs/extending.md``,
exposed through the ``genattr.methods`` entry point of a package "installed" without pip.

Each method runs on the tiny Llama with small sample and step counts (:data:`FAST`) and must give
finite scores of the right shapes, ``token_scores`` exactly when it declares them, token rows
that sum to the scores where it declares itself additive, the diagnostics its flags promise, the
same result for the same seed (and, when deterministic, for any seed), a run without a target,
a save/load round trip, an ``aggregate`` that sums, and a typed error for each invalid value
generated from its parameters' declared domains.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest

import genattr
from genattr import errors, registry
from genattr.cli import main

from .test_cli import readme_methods_check
from .test_registry import installed

PROMPT = "The cat sat. The dog ran."
TARGET = " and the bird"
FAST = {"n_samples": 4, "n_steps": 4, "max_steps": 4, "num_beams": 2, "n_positions": 2, "n_iter": 3}
"""Small sample and step counts for the parameters of these names, wherever a method has them."""
EXAMPLE = "occlusion"
DOCS = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """The first Python block of docs/extending.md as ``example_pkg.methods``, exposed through the
    entry point its last section declares, for this module's tests."""
    code = re.search(r"```python\n(.*?)```", DOCS.read_text(), re.S).group(1)
    entry_point = re.search(r'^occlusion = "(.*)"$', DOCS.read_text(), re.M).group(1)
    files = {"example_pkg/__init__.py": "", "example_pkg/methods.py": code}
    with installed(tmp_path_factory.mktemp("site"), "example_pkg", files, {EXAMPLE: entry_point}):
        yield registry.get(EXAMPLE)


@pytest.fixture(scope="module", params=[*registry.names(), EXAMPLE])
def name(request):
    if request.param == EXAMPLE:
        request.getfixturevalue("example")
    return request.param


@pytest.fixture(scope="module")
def run(llama):
    """``run(name, seed=1, target=...)``: the method's result on :data:`PROMPT` (the target
    ignored by a method that takes none), computed once per arguments unless ``fresh``."""
    done = {}

    def run(name: str, *, seed: int = 1, target: str | None = TARGET, fresh: bool = False):
        cls = registry.get(name)
        target = target if cls.needs_target else None
        key = (name, seed, target)
        if fresh or key not in done:
            params = {k: v for k, v in FAST.items() if k in cls.params}
            with warnings.catch_warnings():  # small counts on a random model: expected warnings
                warnings.simplefilter("ignore", errors.ConvergenceWarning)
                warnings.simplefilter("ignore", errors.LowBeamMassWarning)
                done[key] = genattr.explain(
                    llama, PROMPT, target=target, method=name, seed=seed, max_new_tokens=3, **params
                )
        return done[key]

    return run


def _close(a, b) -> None:
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9 * max(1.0, float(np.abs(b).max())))


def test_scores_are_finite_with_one_per_feature_and_one_row_per_target_token(name, run):
    res = run(name)
    assert res.method == name
    assert res.scores.shape == (len(res.features),) and np.isfinite(res.scores).all()
    if res.token_scores is not None:
        assert res.token_scores.shape == (len(res.target.ids), len(res.features))
        assert np.isfinite(res.token_scores).all()


def test_token_scores_exactly_when_declared_and_rows_summing_where_additive(name, run):
    cls, res = registry.get(name), run(name)
    assert (res.token_scores is not None) == cls.token_scores
    if cls.additive:
        assert len(res.target.ids) > 1
        _close(res.token_scores.sum(0), res.scores)


def test_diagnostics_exactly_as_the_flags_promise(name, run):
    cls, res = registry.get(name), run(name)
    assert ("convergence_delta" in res.diagnostics) == cls.convergence_delta
    if cls.convergence_delta:
        assert np.isfinite(res.diagnostics["convergence_delta"])
    assert ("stderr" in res.diagnostics) == cls.standard_error
    if cls.standard_error:
        stderr = np.asarray(res.diagnostics["stderr"])
        assert stderr.shape == res.scores.shape and (stderr >= 0).all()


def _same(a, b) -> None:
    np.testing.assert_array_equal(a.scores, b.scores)
    if a.token_scores is not None or b.token_scores is not None:
        np.testing.assert_array_equal(a.token_scores, b.token_scores)


def test_the_same_seed_gives_the_same_result_and_only_a_stochastic_method_depends_on_it(name, run):
    cls, first = registry.get(name), run(name, seed=1)
    _same(first, run(name, seed=1, fresh=True))
    if cls.stochastic:
        assert first.seed == 1
        assert not np.array_equal(first.scores, run(name, seed=2).scores)
    else:
        assert first.seed is None
        _same(first, run(name, seed=2))


def test_explains_the_target_given_or_without_one_its_own_outputs(name, run, llama):
    cls = registry.get(name)
    assert run(name).target.generated == (not cls.needs_target)
    res = run(name, target=None)
    assert res.target.ids and res.target.generated
    assert res.scores.shape == (len(res.features),)
    if not cls.needs_target:
        with pytest.raises(errors.InvalidParameterError, match="takes no target"):
            genattr.explain(llama, PROMPT, target=TARGET, method=name)


def test_save_and_load_give_back_the_result(name, run, tmp_path):
    res = run(name)
    back = genattr.Attribution.load(res.save(tmp_path / "res.json"))
    assert back.to_dict() == res.to_dict()
    _same(back, res)


def test_aggregate_sums_the_scores_of_each_sentence(name, run):
    res = run(name)
    coarse = res.aggregate("sentence")
    assert [f.text for f in coarse.features] == ["The cat sat.", "The dog ran."]
    for sentence, score in zip(coarse.features, coarse.scores, strict=True):
        inside = [f.index for f in res.features if sentence.start <= f.start and f.end <= sentence.end]
        assert len(inside) > 1
        _close(score, res.scores[inside].sum())
        if res.token_scores is not None:
            _close(coarse.token_scores[:, sentence.index], res.token_scores[:, inside].sum(1))
    assert (coarse.token_scores is None) == (res.token_scores is None)


def _invalid_values(param: registry.Param) -> list:
    """Values outside ``param``'s declared domain: another type, None where it is not optional,
    just past each bound, and a string that is not one of the choices."""
    kinds = param.kinds
    values: list = [object()]
    if int in kinds and float not in kinds:
        values.append(2.5)
    if bool not in kinds and (int in kinds or float in kinds):
        values.append(True)
    if not param.optional:
        values.append(None)
    if param.minimum is not None:
        values.append(param.minimum - 1)
    if param.maximum is not None:
        values.append(param.maximum + 1)
    if param.choices is not None and str in kinds:
        values.append("no such choice")
    return values


def _valid_values(param: registry.Param) -> list:
    """The default, the bounds and every choice: values in the declared domain."""
    bounds = [b for b in (param.minimum, param.maximum) if b is not None]
    return [param.default, *bounds, *(param.choices or ())]


def test_parameters_accept_their_domain_and_refuse_what_lies_outside(name):
    cls = registry.get(name)
    for key, param in cls.params.items():
        for value in _valid_values(param):
            assert cls(**{key: value}).values[key] == value
        for value in _invalid_values(param):
            with pytest.raises(errors.InvalidParameterError, match=f"{name}: {key} must be"):
                cls(**{key: value})
    with pytest.raises(errors.InvalidParameterError, match="does not take no_such_parameter"):
        cls(no_such_parameter=1)


def test_info_describes_the_class(name):
    cls = registry.get(name)
    assert next(info for info in registry.methods() if info.name == name) == cls.info()
    assert cls.family and cls.summary


# --------------------------------------------------------------------- the example of docs/extending.md
def test_the_example_is_listed_by_the_cli_and_reported_apart_by_the_readme_check(example, capsys):
    assert main(["methods"]) == 0
    line = next(row for row in capsys.readouterr().out.splitlines() if row.startswith(f"{EXAMPLE} "))
    assert "perturbation" in line and "token-scores, additive" in line and "(from example_pkg)" in line
    assert readme_methods_check() == [EXAMPLE]


def test_the_example_is_mean_leave_one_out_over_the_windows_covering_each_feature(example, llama):
    """Oracle: leave-one-out removing one window as a group gives each window's drop; a feature's
    occlusion score is the mean of the drops of the windows that cover it."""
    one = genattr.explain(llama, PROMPT, target=TARGET, method=EXAMPLE, window=1)
    loo = genattr.explain(llama, PROMPT, target=TARGET, method="leave_one_out")
    _close(one.scores, loo.scores)
    F, width = len(loo.features), 3
    drops = [
        genattr.explain(
            llama, PROMPT, target=TARGET, method="leave_one_out", groups=[list(range(s, s + width))]
        )
        for s in range(F - width + 1)
    ]
    expected = [np.mean([d.scores[i] for s, d in enumerate(drops) if s <= i < s + width]) for i in range(F)]
    _close(genattr.explain(llama, PROMPT, target=TARGET, method=EXAMPLE, window=width).scores, expected)


def test_the_output_tokens_and_contrast_flags_hold(name, llama):
    """A method flagged output-tokens gives [rows, F + n] with NaN exactly where undefined; one
    flagged contrast explains a foil; a method without a flag refuses the option with a typed error."""
    cls = registry.get(name)
    info = cls.info()
    params = {k: v for k, v in FAST.items() if k in cls.params}
    target = TARGET if cls.needs_target else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", errors.GenattrWarning)
        if info.output_tokens:
            res = genattr.explain(llama, PROMPT, target=target, method=name, attribute_target=True, **params)
            n, F = len(res.target.ids), len(res.features)
            assert res.scores.shape == (F + n,) and np.isnan(res.scores[F:]).sum() == 1
            if res.token_scores is not None:
                assert np.isnan(res.token_scores[:, F:]).sum() == n * (n + 1) // 2
        else:
            with pytest.raises(errors.InvalidParameterError):
                genattr.explain(llama, PROMPT, target=target, method=name, attribute_target=True, **params)
        if info.contrastive:
            res = genattr.explain(llama, PROMPT, target=target, method=name, contrast=" but a", **params)
            assert res.extras["contrast"]["foil"] == " but a" and res.settings.contrast
        else:
            with pytest.raises(errors.InvalidParameterError):
                genattr.explain(llama, PROMPT, target=target, method=name, contrast=" but a", **params)
