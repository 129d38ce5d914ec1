"""Bad input: each case raises a typed error from genattr.errors whose message says what to do."""

from __future__ import annotations

import pytest

import genattr
from genattr import errors

PROMPT = "The cat sat on the mat."
TARGET = " and the bird sings"


@pytest.mark.parametrize(
    "prompt, error, message",
    [
        ("", errors.EmptyPromptError, "empty"),
        ("   \n ", errors.EmptyPromptError, "whitespace"),
        ("<s></s>", errors.NoMaskableFeaturesError, "only special tokens"),
        (42, errors.InputError, "string or a list of chat messages"),
    ],
)
def test_bad_prompts(llama, prompt, error, message):
    with pytest.raises(error, match=message):
        genattr.explain(llama, prompt, target=TARGET)


def test_empty_target(llama):
    with pytest.raises(errors.EmptyTargetError, match="empty"):
        genattr.explain(llama, PROMPT, target="")
    with pytest.raises(errors.EmptyTargetError):
        genattr.explain(llama, PROMPT, target=[])


def test_prompt_plus_target_longer_than_the_context(llama):
    with pytest.raises(errors.ContextLengthError, match="context window is 256") as info:
        genattr.explain(llama, PROMPT, target=" cat" * 300)
    assert "never truncates" in str(info.value)
    with pytest.raises(errors.ContextLengthError, match="max_new_tokens"):
        genattr.explain(llama, PROMPT, target=None, max_new_tokens=500)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"method": "magic"}, errors.UnknownMethodError, "unknown method 'magic'; choose one of"),
        ({"level": "paragraph"}, errors.UnknownLevelError, "unknown level"),
        ({"mask": "blur"}, errors.UnknownMaskError, "unknown mask strategy"),
        ({"baseline": "mask"}, errors.UnknownMaskError, "no mask token"),
        ({"baseline": 10**6}, errors.UnknownMaskError, "outside the vocabulary"),
        (
            {"method": "shapley_sampling", "n_samples": 0},
            errors.InvalidParameterError,
            "n_samples must be at least 1",
        ),
        ({"method": "shapley_sampling", "n_samples": 2.5}, errors.InvalidParameterError, "must be int"),
        ({"method": "lime", "n_steps": 3}, errors.InvalidParameterError, "does not take n_steps"),
        ({"seed": "x"}, errors.InputError, "seed"),
        ({"max_new_tokens": 0}, errors.InputError, "max_new_tokens"),
    ],
)
def test_bad_arguments(llama, kwargs, error, message):
    with pytest.raises(error, match=message):
        genattr.explain(llama, PROMPT, target=TARGET, **kwargs)


def test_too_many_features_for_exact_shapley(llama):
    with pytest.raises(errors.TooManyFeaturesError, match="at most 12 features, but the prompt has 13"):
        genattr.explain(
            llama,
            "cat dog bird fish tree house river city road king queen child man",
            target=TARGET,
            method="shapley_exact",
        )


def test_every_error_is_a_genattr_error_and_a_builtin_and_every_warning_a_genattr_warning():
    for name in dir(errors):
        cls = getattr(errors, name)
        if not isinstance(cls, type) or cls in (errors.GenattrError, errors.GenattrWarning):
            continue
        if issubclass(cls, Warning):
            assert issubclass(cls, errors.GenattrWarning)
        elif issubclass(cls, Exception):
            assert issubclass(cls, errors.GenattrError)
    assert issubclass(errors.InputError, ValueError)
    assert issubclass(errors.ModelLoadError, OSError)
