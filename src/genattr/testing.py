"""Small random causal LMs and tokenizers built here from configs, for tests, benchmarks, demos
and the library's runnable examples.

They let genattr run, and prove its loading code (:func:`genattr.load` on a saved directory),
without downloading a model: a tokenizer trained in under a second on a synthetic corpus, and a
GPT-2, Llama, Qwen2 or Gemma model initialised at random from a small config. :func:`build` saves the
pair with ``save_pretrained`` (safetensors); :func:`tiny_lm` keeps it in memory.

Three tokenizer kinds cover what real models use:

* ``byte_bpe``   byte-level BPE (GPT-2, Qwen2);
* ``sentencepiece``  BPE over ``▁``-prefixed pieces with a ``<s>`` prefix (Llama, Gemma);
* ``word``       one token per whitespace-separated word (the zoo).

Examples
--------
>>> import tempfile, genattr
>>> from genattr.testing import build
>>> with tempfile.TemporaryDirectory() as tmp:
...     lm = genattr.load(build("gpt2", tmp, seed=0))
>>> lm.vocab_size
400
>>> tiny_lm("qwen2").model.config.model_type
'qwen2'
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .model import LanguageModel

CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_SYLLABLES = (
    "ka lo mi ne ru sa ti vo pe da gu fi ho be zu ya wen tor mar lin ost ber cal dur eth fal gor hil"
).split()
_WORDS = (
    "the a an of to in on at for with and or but not is was are be have has had this that these "
    "those cat dog bird fish tree house river city road king queen child man woman doctor nurse "
    "teacher writer story book letter song music garden window door table chair morning night "
    "summer winter red blue green small large old new happy sad quiet loud quick slow bright "
    "dark warm cold runs walks sings reads writes sees finds gives takes makes keeps opens "
    "closes likes loves yes no one two three four five six seven eight nine ten"
).split()


def corpus(n_sentences: int = 400, n_pseudo: int = 0, seed: int = 0) -> list[str]:
    """A deterministic synthetic corpus: English-like sentences, plus pseudo-words for a larger vocabulary.

    Parameters
    ----------
    n_sentences : int
        Number of sentences (lines), each of 4 to 12 words and a final punctuation mark.
    n_pseudo : int
        Number of pseudo-words (2 to 4 random syllables) added to the 100 English words.
    seed : int
        Seed of the draws; the same arguments give the same corpus.

    Returns
    -------
    list of str
        ``n_sentences`` capitalised sentences.

    Examples
    --------
    >>> corpus(2, seed=0) == corpus(2, seed=0), len(corpus(5))
    (True, 5)
    """
    rng = random.Random(seed)
    words = list(_WORDS)
    for _ in range(n_pseudo):
        words.append("".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4))))
    lines = []
    for _ in range(n_sentences):
        sentence = " ".join(rng.choice(words) for _ in range(rng.randint(4, 12)))
        lines.append(sentence.capitalize() + rng.choice([".", "!", "?", ",", ";"]))
    return lines


def train_tokenizer(kind: str, lines: list[str], vocab_size: int = 400):
    """Train a ``PreTrainedTokenizerFast`` of ``kind`` on ``lines``.

    Parameters
    ----------
    kind : {"byte_bpe", "sentencepiece", "word"}
        The tokenizer family (see the module docstring).
    lines : list of str
        The training text, for example :func:`corpus`.
    vocab_size : int
        The BPE vocabulary size, special tokens included (``word`` takes every word of ``lines``).

    Returns
    -------
    transformers.PreTrainedTokenizerFast
        ``byte_bpe`` carries a ChatML chat template; ``sentencepiece`` and ``word`` prepend ``<s>``.

    Raises
    ------
    ValueError
        For an unknown ``kind``.

    Examples
    --------
    >>> tok = train_tokenizer("word", ["the cat sat"])
    >>> tok.convert_ids_to_tokens(tok("the cat")["input_ids"])
    ['<s>', 'the', 'cat']
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if kind == "byte_bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(lines, trainer)
        tok.post_processor = processors.ByteLevel(trim_offsets=True)
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok,
            eos_token="<|endoftext|>",
            unk_token="<|endoftext|>",
            additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        )
        fast.chat_template = CHATML_TEMPLATE
        return fast
    if kind == "sentencepiece":
        tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=False))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
        specials = ["<unk>", "<s>", "</s>"]
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
        tok.train_from_iterator(lines, trainer)
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
        )
    if kind == "word":
        words = []
        for line in lines:
            words += [w for w in line.split() if w not in words]
        return word_tokenizer(words)
    raise ValueError(f"unknown tokenizer kind {kind!r}")


def word_tokenizer(words: list[str]):
    """A word-level ``PreTrainedTokenizerFast``: one token per whitespace-separated word of ``words``,
    after ``<pad> <unk> <s> </s> <mask>``, with ``<s>`` prepended to every prompt.

    Parameters
    ----------
    words : list of str
        The vocabulary after the five special tokens, in id order (ids 5, 6, ...).

    Returns
    -------
    transformers.PreTrainedTokenizerFast

    Examples
    --------
    >>> word_tokenizer(["red", "blue"])("blue red")["input_ids"]
    [2, 6, 5]
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<pad>", "<unk>", "<s>", "</s>", "<mask>", *words])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        mask_token="<mask>",
    )


ARCHITECTURES = {"gpt2": "byte_bpe", "llama": "sentencepiece", "qwen2": "byte_bpe", "gemma": "sentencepiece"}


def model_config(
    arch: str,
    vocab_size: int,
    *,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    context: int = 256,
    tokenizer=None,
):
    """A small config of architecture ``arch``, without dropout.

    Parameters
    ----------
    arch : {"gpt2", "llama", "qwen2", "gemma"}
        The architecture (Gemma: version 1, GELU-gated MLP, RMSNorm scaled by 1 + w, scaled
        embeddings).
    vocab_size : int
        Rows of the embedding and output matrices (``len(tokenizer)``).
    hidden, layers, heads, context : int
        Hidden size d, number of layers, attention heads (Llama, Qwen2 and Gemma use ``heads // 2`` key-value
        heads) and the context window in tokens.
    tokenizer : transformers.PreTrainedTokenizerBase, optional
        Its ``bos``, ``eos`` and ``pad`` token ids are copied into the config.

    Returns
    -------
    transformers.PretrainedConfig

    Raises
    ------
    ValueError
        For an unknown ``arch``.

    Examples
    --------
    >>> model_config("llama", 100, hidden=16, layers=1, heads=2).num_key_value_heads
    1
    """
    from transformers import GemmaConfig, GPT2Config, LlamaConfig, Qwen2Config

    special = {}
    if tokenizer is not None:
        special = {
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        }
    if arch == "gpt2":
        return GPT2Config(
            vocab_size=vocab_size,
            n_embd=hidden,
            n_layer=layers,
            n_head=heads,
            n_positions=context,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            **special,
        )
    common = {
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": max(1, heads // 2),
        "max_position_embeddings": context,
        "tie_word_embeddings": False,
        **special,
    }
    if arch == "llama":
        return LlamaConfig(**common)
    if arch == "qwen2":
        return Qwen2Config(**common)
    if arch == "gemma":
        return GemmaConfig(**common, head_dim=hidden // heads)
    raise ValueError(f"unknown architecture {arch!r}; choose gpt2, llama, qwen2 or gemma")


def build(
    arch: str,
    out: str | os.PathLike,
    *,
    seed: int = 0,
    vocab_size: int = 400,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    context: int = 256,
    n_pseudo: int = 0,
    n_sentences: int = 400,
    tokenizer_kind: str | None = None,
) -> Path:
    """Build a random model of ``arch`` with a tokenizer trained here, save both to ``out``.

    Parameters
    ----------
    arch : {"gpt2", "llama", "qwen2", "gemma"}
        The architecture (see :func:`model_config`).
    out : str or os.PathLike
        The directory to write (created if missing): config, ``model.safetensors`` and tokenizer files.
    seed : int
        Seed of the corpus and of the weights' initialisation (the global torch generator is left
        as it was).
    vocab_size, hidden, layers, heads, context : int
        Sizes of the tokenizer and model (see :func:`train_tokenizer`, :func:`model_config`).
    n_pseudo, n_sentences : int
        The training corpus (see :func:`corpus`).
    tokenizer_kind : str, optional
        The tokenizer family; by default the one of ``arch`` (:data:`ARCHITECTURES`).

    Returns
    -------
    pathlib.Path
        ``out``, ready for :func:`genattr.load`.

    Examples
    --------
    See the module docstring.
    """
    model, tokenizer = random_model(
        arch,
        seed=seed,
        vocab_size=vocab_size,
        hidden=hidden,
        layers=layers,
        heads=heads,
        context=context,
        n_pseudo=n_pseudo,
        n_sentences=n_sentences,
        tokenizer_kind=tokenizer_kind,
    )
    out = Path(out)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def random_model(
    arch: str,
    *,
    seed: int = 0,
    vocab_size: int = 400,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    context: int = 256,
    n_pseudo: int = 0,
    n_sentences: int = 400,
    tokenizer_kind: str | None = None,
):
    """A random model of ``arch`` and a tokenizer trained here, in memory: ``(model, tokenizer)``.

    The parameters are those of :func:`build`, which saves this pair.
    """
    import torch
    from transformers import AutoModelForCausalLM

    kind = tokenizer_kind or ARCHITECTURES[arch]
    tokenizer = train_tokenizer(kind, corpus(n_sentences, n_pseudo, seed), vocab_size)
    config = model_config(
        arch, len(tokenizer), hidden=hidden, layers=layers, heads=heads, context=context, tokenizer=tokenizer
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    return model, tokenizer


def tiny_lm(arch: str = "llama", *, seed: int = 0, **sizes) -> LanguageModel:
    """A random model of ``arch`` and a tokenizer trained here, built in memory in about a second
    and wrapped by :func:`genattr.load`: the model of the library's runnable examples.

    Its scores mean nothing about language; they exercise every code path a real model does.

    Parameters
    ----------
    arch : {"llama", "gpt2", "qwen2", "gemma"}
        The architecture.
    seed : int
        Seed of the corpus and of the weights (see :func:`build`).
    **sizes
        The other keywords of :func:`build` (``vocab_size``, ``hidden``, ``layers``, ...).

    Returns
    -------
    genattr.LanguageModel
        On the CPU, in float32.

    Examples
    --------
    >>> import genattr
    >>> lm = genattr.testing.tiny_lm()
    >>> res = genattr.explain(lm, "The cat sat on the", target=" mat", method="leave_one_out")
    >>> [f.text for f in res.features]
    ['The', 'cat', 'sat', 'on', 'the']
    """
    from .model import load

    model, tokenizer = random_model(arch, seed=seed, **sizes)
    return load(model=model, tokenizer=tokenizer, device="cpu")
