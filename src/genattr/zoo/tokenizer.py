"""The zoo's word-level tokenizer: one token per word of the tasks' vocabulary.

It is the ``tokenizers`` WordLevel model wrapped in ``PreTrainedTokenizerFast``, with
``<pad>``, ``<unk>``, ``<s>`` (prepended to every prompt), ``</s>`` (ends every answer) and
``<mask>``, and a small chat template that renders the messages' contents after ``<s>``,
separated by spaces, exactly as a plain prompt is written.
"""

from __future__ import annotations

from .tasks import vocabulary

SPECIALS = ("<pad>", "<unk>", "<s>", "</s>", "<mask>")
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ message['content'] }}"
    "{% if not loop.last %} {% endif %}{% endfor %}"
)


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate([*SPECIALS, *vocabulary()])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        mask_token="<mask>",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast
