"""Bad input: each case raises a typed error from genattr.errors whose message says what to do."""

from __future__ import annotations

import shutil
import struct
import warnings

import numpy as np
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
        ({"mask_token": "mask"}, errors.UnknownMaskError, "no mask token"),
        ({"mask_token": 10**6}, errors.UnknownMaskError, "outside the vocabulary"),
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


def test_baseline_is_a_deprecated_alias_of_mask_token(llama):
    new = genattr.explain(llama, PROMPT, target=TARGET, mask="replace", mask_token="eos")
    with pytest.warns(errors.GenattrDeprecationWarning, match=r"pass mask_token=\.\.\.") as caught:
        old = genattr.explain(llama, PROMPT, target=TARGET, mask="replace", baseline="eos")
    assert caught[0].filename == __file__  # the warning points at the caller
    assert issubclass(errors.GenattrDeprecationWarning, errors.GenattrWarning)
    assert issubclass(errors.GenattrDeprecationWarning, DeprecationWarning)
    assert old.settings == new.settings and old.settings.mask_token == llama.tokenizer.eos_token_id
    np.testing.assert_array_equal(old.scores, new.scores)
    with pytest.raises(errors.InvalidParameterError, match="give mask_token only"):
        genattr.explain(llama, PROMPT, target=TARGET, mask_token="eos", baseline="eos")


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


@pytest.mark.parametrize(
    "seed, error, message",
    [
        (2**64, errors.InvalidParameterError, r"seed must be in \[0, 2\*\*64\)"),
        (-1, errors.InvalidParameterError, r"seed must be in \[0, 2\*\*64\)"),
        (True, errors.InputError, "seed must be an integer or None"),
    ],
)
def test_seed_out_of_range(llama, seed, error, message):
    with pytest.raises(error, match=message):
        genattr.explain(llama, PROMPT, target=TARGET, method="random", seed=seed)


def test_seed_none_draws_a_seed_and_records_it(llama):
    first, second = (genattr.explain(llama, PROMPT, target=TARGET, method="random", seed=None) for _ in "ab")
    assert isinstance(first.seed, int) and 0 <= first.seed < 2**64 and first.seed != second.seed
    again = genattr.explain(llama, PROMPT, target=TARGET, method="random", seed=first.seed)
    np.testing.assert_array_equal(again.scores, first.scores)
    assert not np.array_equal(second.scores, first.scores)


@pytest.mark.parametrize("device", ["cuda", "cuda:3"])
def test_a_device_this_machine_lacks(model_dirs, monkeypatch, device):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(errors.InvalidParameterError, match=f"device '{device}' is not available"):
        genattr.load(model_dirs["llama"], device=device)
    with pytest.raises(errors.InvalidParameterError, match="unknown device 'warp'"):
        genattr.load(model_dirs["llama"], device="warp")


def _corrupt(path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:  # the 8-byte little-endian header length claims far more than the file holds
        path.write_bytes(struct.pack("<Q", 2**62) + data[8:])


@pytest.mark.parametrize(
    "how, message",  # safetensors' own words differ between releases
    [
        ("truncated", "(?:file not fully covered|MetadataIncompleteBuffer)"),
        ("header", "(?i:header ?too ?large)"),
    ],
)
def test_corrupt_safetensors(model_dirs, tmp_path, how, message):
    copy = shutil.copytree(model_dirs["llama"], tmp_path / "model")
    _corrupt(copy / "model.safetensors", how)
    with pytest.raises(errors.ModelLoadError, match=f"{message}. A truncated or corrupt weights file"):
        genattr.load(copy)


def test_collecting_keeps_our_warnings_and_passes_the_others_on():
    with pytest.warns(FutureWarning, match="a peer's notice") as passed, errors.collecting() as ours:
        for _ in range(2):
            warnings.warn("steps short", errors.ConvergenceWarning, stacklevel=1)
        warnings.warn("a peer's notice", FutureWarning, stacklevel=1)
    assert [(w.category, str(w.message)) for w in ours] == [(errors.ConvergenceWarning, "steps short")] * 2
    assert [w.category for w in passed] == [FutureWarning]
    with pytest.warns(errors.ConvergenceWarning), errors.collecting(errors.LowBeamMassWarning) as ours:
        warnings.warn("steps short", errors.ConvergenceWarning, stacklevel=1)
    assert ours == []
