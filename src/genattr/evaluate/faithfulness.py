"""Faithfulness of an attribution: what happens to the model's output when the features the
attribution ranks first (or last) are removed.

Three protocols from the papers, each a function of a model and an :class:`~genattr.Attribution`
(fresh or loaded from JSON). Features are removed with the attribution's own masking strategy
and baseline unless ``mask=`` says otherwise; every set of prompt variants of one protocol is
generated or scored in one batched call.

1. :func:`perturbation_curves` ("GiLOT: Interpreting Generative Language Models via Optimal
   Transport", 2024, Section 4.1). Remove 0%, 10%, ..., 100% of the features, most relevant first
   (MoRF) or least relevant first (LeRF); at each step regenerate the response greedily and take
   its discrepancy from the original response, d = 1 - cos(E(original), E(regenerated)), with E
   the model's own input embeddings mean-pooled (the default: "the embeddings of original and
   re-generated responses" of Section 4.1, "derived from the model being explained", Section 6)
   or a sentence encoder (the authors' ``evaluation.py``); or the position-aligned token distance
   of the authors' reproduction code (``aligned``, :func:`~genattr.evaluate.text.aligned_distance`).
   ``also`` names further discrepancies measured on the same regenerated responses.
   AUC is the trapezoid area under d over the fraction removed (0..1), reported in percent, as the
   paper's tables; ABPC = AUC(MoRF) - AUC(LeRF). Higher MoRF and ABPC, lower LeRF, are better.
   n features are removed at fraction f, n = round(f F) (half up).
2. :func:`erasure` (ERASER, DeYoung et al. 2020, as used by "Enhancing Integrated Gradients using
   Emphasis Factors and Attention" (AIEG, 2025), Appendix A.4, and by the review "Feature-attribution
   based explanations for fine-tuned LLMs", Section VI.A). For the explained output y-hat, at the
   top k% of features (k in 1, 5, 10, 20, 50; at least one feature, n = ceil(k F / 100)):

   * log-odds(k) = log p(y-hat | x without top k%) - log p(y-hat | x)            (lower is better)
   * comprehensiveness(k) = p(y-hat | x) - p(y-hat | x without top k%)           (higher is better)
   * sufficiency(k) = p(y-hat | x) - p(y-hat | only the top k%)                  (lower is better)
   * the review's clipped forms: comprehensiveness+ = max(0, comprehensiveness) (higher is better)
     and sufficiency+ = 1 - max(0, sufficiency) (higher is better)

   and AOPC, the mean of each over k. AIEG's Appendix A.4 prints comprehensiveness as
   p(y-hat | x without top k%) - p(y-hat | x), whose sign contradicts its own "higher is better":
   genattr follows ERASER's definition above. For a multi-token y-hat, p is the probability of the
   whole sequence (the product of its tokens' conditional probabilities).
3. :func:`similarity` ("XPrompt: Explaining Large Language Model's Generation via Joint Prompt
   Attribution", 2024, Section 5.2). Remove the top k features, regenerate greedily, and compare the
   new generation y' with the original y: BLEU (sacrebleu, 0..100), ROUGE-L precision, recall and
   F1 (rouge-score), SentenceBERT cosine, the probability ratio PR = p(y | m (.) x) / p(y | x), and
   KL = D_KL(p(y | m (.) x) || p(y | x)) in the paper's direction, computed per position along y
   (teacher-forced) between the next-token distributions and averaged over positions. Lower
   similarity, lower PR and higher KL mean a more faithful attribution. The same metrics for
   ``n_random`` random masks of the same size give the random baseline.

Examples
--------
>>> import genattr
>>> from genattr.testing import tiny_lm
>>> lm = tiny_lm()
>>> res = genattr.explain(lm, "The doctor opens the door and the nurse", target=" sings")
>>> curves = perturbation_curves(lm, res, step=0.25, max_new_tokens=3)
>>> curves.fractions, abs(curves.morf[0]) < 1e-6    # nothing removed: the same output, d = 0
([0.0, 0.25, 0.5, 0.75, 1.0], True)
>>> scores = erasure(lm, res, percents=(10, 50))
>>> len(scores["log_odds"]), bool(scores["comprehensiveness_clipped"][0] >= 0)
(2, True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.integrate import trapezoid

from ..defaults import DEFAULT_MAX_NEW_TOKENS, DEFAULT_SEED, DEFAULT_SIMILARITY_K
from ..errors import InputError
from ..masking import Masker
from ..model import LanguageModel
from ..protocols import decode
from ..result import Attribution
from .ground_truth import ranking
from .text import bleu, cosine, make_embedder, response_distances, rouge_l

ERASURE_PERCENTS = (1, 5, 10, 20, 50)


def masker_for(lm: LanguageModel, res: Attribution, mask: str | None = None, baseline=None) -> Masker:
    """A masker that removes ``res``'s features the way the attribution was made (its
    ``settings.mask`` and ``settings.mask_token``), or with the ``mask`` and ``baseline`` asked for."""
    return Masker(
        lm,
        res.prompt,
        res.features,
        mask or res.settings.mask,
        baseline if baseline is not None else res.settings.mask_token,
    )


def _without(n_features: int, removed: Sequence[int]) -> torch.Tensor:
    keep = torch.ones(n_features, dtype=torch.bool)
    keep[list(removed)] = False
    return keep


def _unique_rows(rows: list[torch.Tensor]) -> tuple[torch.Tensor, list[int]]:
    unique, inverse = torch.unique(torch.stack(rows), dim=0, return_inverse=True)
    return unique, inverse.tolist()


# --------------------------------------------------------------------- perturbation curves
def auc(curve: Sequence[float], fractions: Sequence[float]) -> float:
    """Trapezoid area under ``curve`` over the fraction removed, in percent (the papers' tables)."""
    return 100 * float(trapezoid(curve, fractions))


@dataclass
class Curves:
    """Discrepancy from the original response after removing a fraction of the features;
    ``others`` holds (MoRF, LeRF) under each further discrepancy asked for."""

    fractions: list[float]
    morf: list[float]
    lerf: list[float]
    original: str
    others: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)

    @property
    def auc_morf(self) -> float:
        return auc(self.morf, self.fractions)

    @property
    def auc_lerf(self) -> float:
        return auc(self.lerf, self.fractions)

    @property
    def abpc(self) -> float:
        return self.auc_morf - self.auc_lerf


def perturbation_curves(
    lm: LanguageModel,
    res: Attribution,
    *,
    step: float = 0.1,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    embedder: str = "model",
    mask: str | None = None,
    also: Sequence[str] = (),
) -> Curves:
    """MoRF and LeRF curves of ``res`` (see the module docstring) under the discrepancy
    ``embedder`` (``model``, ``sentence`` or ``aligned``), and in ``Curves.others`` under each of ``also``."""
    if not 0 < step <= 1 or abs(round(1 / step) * step - 1) > 1e-9:
        raise InputError(
            f"step must divide 1 into equal parts (0.1, 0.2, 0.25, ...), got {step}."  # pragma: no mutate
        )
    F = len(res.features)
    fractions = [i * step for i in range(round(1 / step) + 1)]
    counts = [int(math.floor(f * F + 0.5)) for f in fractions]
    best_first = ranking(res.scores)
    worst_first = best_first[::-1]
    rows = (
        [_without(F, [])]
        + [_without(F, best_first[:c]) for c in counts]
        + [_without(F, worst_first[:c]) for c in counts]
    )
    unique, index = _unique_rows(rows)
    generation = lm.generate(masker_for(lm, res, mask).inputs(unique), max_new_tokens)
    texts = [decode(lm.tokenizer, ids) for ids in generation.token_ids]
    n = len(counts)
    curves = {}
    for kind in dict.fromkeys([embedder, *also]):
        distances = response_distances(kind, lm, generation.token_ids, texts, index[0])
        d = [distances[i] for i in index[1:]]
        curves[kind] = (d[:n], d[n:])
    morf, lerf = curves.pop(embedder)
    return Curves(fractions, morf, lerf, texts[index[0]], curves)


# --------------------------------------------------------------------- erasure
def erasure(
    lm: LanguageModel,
    res: Attribution,
    *,
    percents: Sequence[float] = ERASURE_PERCENTS,
    mask: str | None = None,
) -> dict:
    """ERASER-style log-odds, comprehensiveness and sufficiency at each top-k% and their AOPC."""
    if res.target is None or not res.target.ids:
        raise InputError(
            "erasure needs the attribution's explained output (its target tokens)."  # pragma: no mutate
        )
    F = len(res.features)
    order = ranking(res.scores)
    counts = [min(F, max(1, math.ceil(p * F / 100))) for p in percents]
    rows = [_without(F, [])]
    for c in counts:
        rows += [_without(F, order[:c]), ~_without(F, order[:c])]
    unique, index = _unique_rows(rows)
    lp = lm.target_log_probs(masker_for(lm, res, mask).inputs(unique), list(res.target.ids)).double().sum(1)
    lp = lp[index]
    full, without, only = lp[0], lp[1::2], lp[2::2]
    p_full, p_without, p_only = full.exp(), without.exp(), only.exp()
    out: dict[str, list[float] | float] = {
        "percents": list(percents),
        "log_odds": (without - full).tolist(),
        "comprehensiveness": (p_full - p_without).tolist(),
        "sufficiency": (p_full - p_only).tolist(),
        "comprehensiveness_clipped": (p_full - p_without).clamp(min=0).tolist(),
        "sufficiency_clipped": (1 - (p_full - p_only).clamp(min=0)).tolist(),
    }
    for key in (
        "log_odds",
        "comprehensiveness",
        "sufficiency",
        "comprehensiveness_clipped",
        "sufficiency_clipped",
    ):
        out[f"aopc_{key}"] = float(np.mean(out[key]))
    return out


# --------------------------------------------------------------------- generation similarity
def _mean_kl(p_log: torch.Tensor, q_log: torch.Tensor) -> float:
    """Mean over positions of D_KL(P || Q) for log-distributions [n, V] (0 log 0 = 0)."""
    p = p_log.double().exp()
    terms = torch.where(p > 0, p * (p_log.double() - q_log.double()), torch.zeros((), dtype=torch.float64))
    return float(terms.sum(-1).mean())


def similarity(
    lm: LanguageModel,
    res: Attribution,
    *,
    k: int = DEFAULT_SIMILARITY_K,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    n_random: int = 5,
    seed: int = DEFAULT_SEED,
    encoder: str = "sentence",
    mask: str | None = None,
) -> dict:
    """XPrompt's generation-similarity metrics at ``k`` for the top-k features and, averaged, for
    ``n_random`` random k-subsets (keys prefixed ``random_``)."""
    F = len(res.features)
    if not 1 <= k <= F:
        raise InputError(
            f"k must be between 1 and the number of features ({F}), got {k}."  # pragma: no mutate
        )
    gen = torch.Generator().manual_seed(seed)
    top = _without(F, ranking(res.scores)[:k])
    randoms = [_without(F, torch.randperm(F, generator=gen)[:k].tolist()) for _ in range(n_random)]
    masker = masker_for(lm, res, mask)
    rows = torch.stack([_without(F, []), top, *randoms])
    generation = lm.generate(masker.inputs(rows), max_new_tokens)
    y = generation.token_ids[0]
    if not y:
        raise InputError(
            "the model's original generation is empty (it wrote EOS first); similarity "  # pragma: no mutate
            "needs a non-empty generation to compare with."  # pragma: no mutate
        )
    texts = [decode(lm.tokenizer, ids) for ids in generation.token_ids]
    lp = lm.target_distributions(masker.inputs(rows), y)
    vectors = make_embedder(encoder, lm)(generation.token_ids, texts)
    per_row = []
    for i in range(1, len(rows)):
        seq = float(
            (
                lp[i].gather(-1, torch.tensor(y)[:, None]).sum()
                - lp[0].gather(-1, torch.tensor(y)[:, None]).sum()
            ).exp()
        )
        per_row.append(
            {
                "bleu": bleu(texts[i], texts[0]),
                **rouge_l(texts[i], texts[0]),
                f"{encoder}_cosine": cosine(vectors[i], vectors[0]),
                "probability_ratio": seq,
                "kl": _mean_kl(lp[i], lp[0]),
            }
        )
    out = {"k": k, "original": texts[0], "masked": texts[1], **per_row[0]}
    if per_row[1:]:
        for key in per_row[0]:
            out[f"random_{key}"] = float(np.mean([r[key] for r in per_row[1:]]))
    return out
