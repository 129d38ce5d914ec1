"""Prompts and segmentation: token, word, sentence, regex and span features for the three
tokenizer kinds, chat templates with scaffolding excluded, and the errors of bad prompts."""

from __future__ import annotations

import warnings

import pytest

from genattr import testing
from genattr.errors import (
    EmptyPromptError,
    InputError,
    NoMaskableFeaturesError,
    UnknownLevelError,
    UnknownTokensWarning,
)
from genattr.text.prompt import Prompt
from genattr.text.segment import token_owners
from genattr.zoo.tokenizer import build_tokenizer

TEXT = "The cat sat on the mat. Then a dog runs!\nIs it warm?"
WORDS = [
    "The",
    "cat",
    "sat",
    "on",
    "the",
    "mat",
    ".",
    "Then",
    "a",
    "dog",
    "runs",
    "!",
    "Is",
    "it",
    "warm",
    "?",
]
SENTENCES = ["The cat sat on the mat.", "Then a dog runs!", "Is it warm?"]


@pytest.fixture(scope="module")
def tokenizers():
    lines = testing.corpus(300)
    out = {kind: testing.train_tokenizer(kind, lines) for kind in ("byte_bpe", "sentencepiece")}
    # A word-level tokenizer sees punctuation attached to words, as the zoo's vocabulary has it.
    out["word"] = testing.train_tokenizer("word", lines + [TEXT])
    return out


def _check_partition(prompt, features):
    covered = sorted(t for f in features for t in f.positions)
    assert covered == [i for i, m in enumerate(prompt.maskable) if m]
    for i, f in enumerate(features):
        assert f.index == i
        assert prompt.text[f.start : f.end] == f.text


@pytest.mark.parametrize("level", ["token", "word", "sentence"])
def test_token_owners_name_the_one_feature_of_every_position(tokenizers, level):
    prompt = Prompt.from_text(tokenizers["sentencepiece"], TEXT)
    features = prompt.features(level)
    owners = token_owners(features, len(prompt))
    assert len(owners) == len(prompt)
    for t in range(len(prompt)):
        holding = [f.index for f in features if t in f.positions]
        assert len(holding) <= 1 and owners[t] == (holding[0] if holding else -1)
    assert owners.count(-1) == prompt.maskable.count(False)


@pytest.mark.parametrize("kind", ["byte_bpe", "sentencepiece", "word"])
def test_word_and_sentence_features_for_each_tokenizer_kind(tokenizers, kind):
    prompt = Prompt.from_text(tokenizers[kind], TEXT)
    words = prompt.features("word")
    sentences = prompt.features("sentence")
    _check_partition(prompt, words)
    _check_partition(prompt, sentences)
    assert [f.text for f in sentences] == SENTENCES
    if kind == "word":
        # "mat." is one token, so the word "mat" and its "." are one feature.
        assert [f.text for f in words] == [
            "The",
            "cat",
            "sat",
            "on",
            "the",
            "mat.",
            "Then",
            "a",
            "dog",
            "runs!",
            "Is",
            "it",
            "warm?",
        ]
    else:
        assert [f.text for f in words] == WORDS
    tokens = prompt.features("token")
    _check_partition(prompt, tokens)
    assert len(tokens) == sum(prompt.maskable)


def test_special_tokens_are_not_maskable(tokenizers):
    prompt = Prompt.from_text(tokenizers["sentencepiece"], "cat sat")
    assert prompt.tokens[0] == "<s>" and prompt.maskable[0] is False
    assert all(prompt.maskable[1:])
    assert all(0 not in f.positions for f in prompt.features("token"))


def test_regex_and_span_features_leave_the_rest_as_context(tokenizers):
    prompt = Prompt.from_text(tokenizers["byte_bpe"], TEXT)
    animals = prompt.features("regex", pattern=r"cat|dog")
    assert [f.text for f in animals] == ["cat", "dog"]
    spans = prompt.features("spans", spans=[(0, 7), (24, 40)])
    assert [f.text for f in spans] == ["The cat", "Then a dog runs!"]
    with pytest.raises(InputError, match="pattern"):
        prompt.features("regex")
    with pytest.raises(InputError, match="invalid regular expression"):
        prompt.features("regex", pattern="(")
    with pytest.raises(InputError, match="span"):
        prompt.features("spans", spans=[(5, 500)])
    with pytest.raises(NoMaskableFeaturesError):
        prompt.features("regex", pattern="zebra")
    with pytest.raises(UnknownLevelError, match="paragraph"):
        prompt.features("paragraph")


def test_chat_template_scaffolding_is_not_maskable(tokenizers):
    tok = tokenizers["byte_bpe"]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Is the cat warm?"}]
    prompt = Prompt.from_messages(tok, messages)
    assert prompt.text.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert prompt.text.endswith("<|im_start|>assistant\n")
    words = prompt.features("word")
    assert [f.text for f in words] == ["Be", "brief", ".", "Is", "the", "cat", "warm", "?"]
    maskable_text = "".join(
        prompt.text[s:e] for (s, e), m in zip(prompt.offsets, prompt.maskable, strict=True) if m
    )
    assert (
        "im_start" not in maskable_text and "user" not in maskable_text and "assistant" not in maskable_text
    )
    assert [f.text for f in prompt.features("sentence")] == ["Be brief.", "Is the cat warm?"]


def test_chat_errors(tokenizers):
    with pytest.raises(InputError, match="no chat template"):
        Prompt.from_messages(tokenizers["sentencepiece"], [{"role": "user", "content": "hi"}])
    with pytest.raises(InputError, match="role"):
        Prompt.from_messages(tokenizers["byte_bpe"], [{"content": "hi"}])
    with pytest.raises(EmptyPromptError):
        Prompt.from_messages(tokenizers["byte_bpe"], [{"role": "user", "content": "  "}])


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_prompts_are_rejected(tokenizers, text):
    with pytest.raises(EmptyPromptError, match="empty"):
        Prompt.from_text(tokenizers["byte_bpe"], text)


def test_prompt_of_only_special_tokens_is_rejected(tokenizers):
    with pytest.raises(NoMaskableFeaturesError, match="only special tokens"):
        Prompt.from_text(tokenizers["byte_bpe"], "<|endoftext|><|im_start|>")
    with pytest.raises(NoMaskableFeaturesError):
        Prompt.from_text(tokenizers["sentencepiece"], "<s></s>")


def test_whitespace_only_tokens_join_the_next_word(tokenizers):
    prompt = Prompt.from_text(tokenizers["byte_bpe"], "cat  \n\n  dog")
    words = prompt.features("word")
    assert [f.text for f in words] == ["cat", "dog"]
    _check_partition(prompt, words)


def _without_unknown_warning(tokenizer, text):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnknownTokensWarning)
        return Prompt.from_text(tokenizer, text)


def test_unknown_words_are_features_on_the_word_level_tokenizer():
    """The zoo's vocabulary is lower-case task words: "Write", "haiku", "about" and "tea." are
    <unk>, yet each is a feature, and the warning counts the four words."""
    zoo = build_tokenizer()
    with pytest.warns(
        UnknownTokensWarning, match=r"did not know 4 word\(s\).*'Write', 'haiku', 'about', 'tea\.'"
    ):
        prompt = Prompt.from_text(zoo, "Write a haiku about tea.")
    assert [f.text for f in prompt.features("word")] == ["Write", "a", "haiku", "about", "tea."]
    assert prompt.tokens[0] == "<s>" and not prompt.maskable[0]
    assert prompt.tokens.count("<unk>") == 4


def test_a_prompt_of_only_unknown_words_is_explained_not_rejected(tokenizers):
    """Emoji, Hebrew and CJK words are all <unk> to the zoo's tokenizer (and, with no byte
    fallback, to the sentencepiece one): features, not "special tokens"."""
    text = "🍵 שלום 茶"
    for tokenizer in (build_tokenizer(), tokenizers["sentencepiece"]):
        with pytest.warns(UnknownTokensWarning, match=r"did not know 3 word\(s\)"):
            prompt = Prompt.from_text(tokenizer, text)
        assert [f.text for f in prompt.features("word")] == ["🍵", "שלום", "茶"]


def test_byte_level_bpe_knows_every_word_and_keeps_its_eos_a_control_token(tokenizers):
    """The byte-level BPE spells any text in bytes, so nothing is unknown; its unknown token is its
    EOS (as SmolLM2's), and that EOS written in the text stays a control token."""
    tok = tokenizers["byte_bpe"]
    assert tok.unk_token_id == tok.eos_token_id
    prompt = _without_unknown_warning(tok, "tea 🍵 שלום 茶<|endoftext|>")
    assert [f.text for f in prompt.features("word")] == ["tea", "🍵", "שלום", "茶"]
    assert prompt.tokens[-1] == "<|endoftext|>" and not prompt.maskable[-1]


def _byte_bpe_without_full_alphabet():
    """A byte-level BPE trained without the 256-byte alphabet, whose unknown token is its EOS:
    bytes it never saw (an emoji's) come out as <|endoftext|>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False)
    tok.train_from_iterator(testing.corpus(100), trainer)
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", unk_token="<|endoftext|>")


def test_unknown_token_that_is_also_eos_is_a_feature_only_where_it_stands_for_a_word():
    tok = _byte_bpe_without_full_alphabet()
    with pytest.warns(UnknownTokensWarning, match=r"did not know 1 word\(s\) of the prompt \('🍵'\)"):
        prompt = Prompt.from_text(tok, "tea 🍵 cat<|endoftext|>")
    eos = [t for t, token in enumerate(prompt.tokens) if token == "<|endoftext|>"]
    assert len(eos) == 5  # the emoji's four bytes, then the EOS written in the text
    assert [prompt.maskable[t] for t in eos] == [True] * 4 + [False]
    words = prompt.features("word")
    assert [f.text for f in words] == ["tea", "🍵", "cat"]
    assert words[1].positions == tuple(eos[:4])
    with pytest.raises(NoMaskableFeaturesError, match="only special tokens"):
        Prompt.from_text(tok, "<|endoftext|>")


def test_unknown_words_in_chat_messages_are_features():
    zoo = build_tokenizer()
    with pytest.warns(UnknownTokensWarning, match=r"did not know 1 word\(s\)"):
        prompt = Prompt.from_messages(zoo, [{"role": "user", "content": "a 茶"}])
    assert [f.text for f in prompt.features("word")] == ["a", "茶"]
