"""LanguageModel: the one door through which every method reads a Hugging Face causal LM.

It holds the model and its tokenizer and offers, batched over many prompt variants at once
and chunked under one memory budget (``max_batch_tokens``):

* teacher-forced log-probabilities of a continuation, in one forward pass per chunk
  (:meth:`LanguageModel.target_log_probs`) and the next-token distributions along it
  (:meth:`LanguageModel.target_distributions`);
* greedy generation with a KV cache (:meth:`LanguageModel.generate`), and the prefill and
  forward pass with custom attention patterns that GiLOT's beam search builds on
  (:mod:`genattr.algorithms.gilot.beams`);
* input embeddings and a differentiable forward from embeddings (gradient methods), and
  attention maps with a temporary switch to eager attention (attention methods).

Prompt variants travel as :class:`Batch`: token ids, which positions other tokens may attend
to (``visible``), and explicit position ids. A hidden position is removed from every other
token's attention through a 4-D attention mask, so the positions of the remaining tokens do not
move; hidden positions still attend to themselves, so no softmax row is ever empty.

Every call counts forward passes, tokens processed and wall time in :attr:`LanguageModel.usage`;
gradients through the model (:func:`~genattr.model.backward.gradients`) count backward passes
and their tokens there too.
Log-probabilities are computed in float32 whatever the model's dtype, and NaN or infinite
logits raise :class:`~genattr.errors.NumericalError`.

The package's modules: :mod:`~genattr.model.language_model` (the class and its forward pass),
:mod:`~genattr.model.loading` (:func:`load`), :mod:`~genattr.model.batch` (:class:`Batch`,
:class:`Usage`), :mod:`~genattr.model.masks` (attention masks, sliding windows),
:mod:`~genattr.model.prefix` (shared prompt prefixes, prefill), :mod:`~genattr.model.scoring`
(teacher forcing, forward from embeddings, attention maps), :mod:`~genattr.model.decoding`
(greedy generation) and :mod:`~genattr.model.backward` (counted gradients).
"""

from __future__ import annotations

from .backward import gradients
from .batch import Batch, Usage
from .decoding import Generation
from .language_model import DEFAULT_MAX_BATCH_TOKENS, LanguageModel
from .loading import load
from .prefix import returned_cache

__all__ = [
    "DEFAULT_MAX_BATCH_TOKENS",
    "Generation",
    "Batch",
    "LanguageModel",
    "Usage",
    "gradients",
    "load",
    "returned_cache",
]
