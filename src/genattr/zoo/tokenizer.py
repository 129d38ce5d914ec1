"""The zoo's word-level tokenizer: one token per word of the tasks' vocabulary.

It is the ``tokenizers`` WordLevel model wrapped in ``PreTrainedTokenizerFast``, with
``<pad>``, ``<unk>``, ``<s>`` (prepended to every prompt), ``</s>`` (ends every answer) and
``<mask>``, and a small chat template that renders the messages' contents after ``<s>``,
separated by spaces, exactly as a plain prompt is written.
"""

from __future__ import annotations

from .tasks import vocabulary

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ message['content'] }}"
    "{% if not loop.last %} {% endif %}{% endfor %}"
)


def build_tokenizer():
    from ..testing import word_tokenizer

    fast = word_tokenizer(vocabulary())
    fast.chat_template = CHAT_TEMPLATE
    return fast
