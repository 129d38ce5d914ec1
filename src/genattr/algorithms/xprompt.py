"""XPrompt: the k prompt features whose joint removal most lowers the likelihood of the output.

From "XPrompt: Explaining Large Language Model's Generation via Joint Prompt Attribution"
(Chang, Cao, Wang, Chen and Lin, 2024), Section 4, Eq. 3 and Algorithm 1. Over binary masks m
(m_i = 0: feature i removed) with exactly k features removed, XPrompt maximises

    L(m) = p(y | x) - p(y | m (.) x)        subject to  |1 - m|_1 = k          (Eq. 3)

for the target y (a given continuation, or the model's greedy output). Since p(y | x) does not
depend on m and log is increasing, this is the same as minimising log p(y | m (.) x); the search
works in log-likelihood, which does not underflow for long targets (the paper's Figure 4 and
Table 4 report it in the same way), whatever the problem's ``objective`` (both rank masks alike).

Algorithm 1, with genattr's masking:

1. Gradient guidance. Relax the mask on the input embeddings: every token of feature f becomes
   e_t(m) = m_f e_t + (1 - m_f) e_b, with e_b the embedding of the masker's baseline token (the
   token that stands in for a removed feature), one variable m_f shared by the feature's tokens.
   At m = 1 this is the prompt itself; at m_f = 0 it is the prompt with feature f replaced by the
   baseline token (the ``replace`` strategy exactly; ``attention`` also hides the token and
   ``delete`` drops it, which a continuous mask cannot express: for them the relaxation guides the
   search only, every mask it visits is scored with the problem's own masking). One forward and
   backward pass gives the paper's guidance

       g = |dL/dm| at m = 1 = p(y | x) |d log p(y | m (.) x) / dm|     (Algorithm 1, line 1)

   computed as the right-hand side in float64, so that it is exact where p(y | x) is tiny.
   ``guidance='log_probability'`` uses g = |d log p(y | m (.) x) / dm| instead. The two rank the
   features alike but do not sample alike: softmax is not scale invariant, and the factor
   p(y | x), a product over the target tokens, is small on long targets (1e-3 for ten tokens of
   probability 1/2), where the paper's softmax(g) is close to uniform while the log form's is
   peaked on the features of largest gradient.
2. Initialisation: remove the k features of largest g (ties by position). The ranking is taken
   from |d log p / dm|, the same order as the paper's g whenever p(y | x) > 0, and still the
   gradient's order when p(y | x) underflows float64 (log p(y | x) < -745) and the paper's g is 0.
3. For N = ``n_iter`` iterations: draw a kept feature l with probability softmax(g) over the kept
   features and a removed feature v with probability softmax(g) over the removed ones (no
   temperature: the paper's softmax of g itself), swap them, and keep the swap if it lowers
   log p(y | m (.) x).

Step 3 reads the paper's softmax(m (.) g) and softmax((1 - m) (.) g) as softmaxes over the
support (the features with m = 1, resp. m = 0), as its text says ("sample a non-zero entry l
... and swap its value with a sampled zero entry v"): the literal vector softmax gives the other
entries weight exp(0) and would propose swaps that change nothing.

genattr additions (with the default ``guidance``, ``proposals_per_step=1`` and no ablation, the search
is Algorithm 1 exactly):

* Every mask is scored once: a proposal already seen is read from a cache, so the model work is
  the number of distinct masks visited (``diagnostics['evaluations']``). No scored mask can
  improve on the current one (each was, when scored, no better than the mask current then), so
  once every swap of the current mask is scored the search stops, the trace held flat: that is
  where Algorithm 1 would stay for good.
* ``proposals_per_step`` = P > 1 scores P swaps of the current mask in one batched forward pass
  and keeps the best improving one. The P swaps are distinct and not yet scored, drawn without
  replacement from the same distribution softmax(g_l) softmax(g_v) (Gumbel-top-P), since a
  repeated or already scored swap cannot improve. P = 1 is Algorithm 1 exactly, repeats included.
* The ablations of the paper's Table 4: ``random_init`` (w/o Initialization: the k removed
  features drawn uniformly) and ``uniform_sampling`` (w/o Probability: l and v drawn uniformly).
  With both, no gradient is computed.

Scores. ``scores[i]`` is 0 for a feature outside the chosen set S. Inside it, each chosen feature
is weighted by its marginal contribution in the set, c_i = log p(y | x without S - {i}) -
log p(y | x without S) (how much of the likelihood comes back when i alone is restored):

    scores[i] = (1 + k c_i+ / sum_{j in S} c_j+) / 2        (c+ = max(c, 0); 1 when all c_j+ = 0)

so the set's scores sum to k (1 per chosen feature on average), a chosen feature always
outranks an unchosen one (score at least 1/2), and inside the set they rank by contribution.

``extras`` holds the chosen set (``chosen``: feature indices, ``chosen_text``), its joint effect
(``log_likelihood_full`` = log p(y | x), ``log_likelihood_masked`` = log p(y | m (.) x),
``log_likelihood_drop``, ``probability_ratio`` = p(y | m (.) x) / p(y | x), the paper's PR, and
``probability_drop`` = L(m) of Eq. 3), the per-target-token log-likelihood drop
(``token_drop``), the marginal contributions ``contributions`` (c_i, in the order of
``chosen``), the ``gradient`` whose magnitude is g (dL/dm = -p(y | x) d log p(y | m (.) x) / dm
at m = 1 by default, d log p(y | m (.) x) / dm with ``guidance='log_probability'``; None when not
computed) and the search ``trace``: log p(y | m (.) x) after each iteration (entry 0 is the
initial mask), the curve of the paper's Figure 4; it never increases.

Examples
--------
>>> import genattr
>>> from genattr.testing import tiny_lm
>>> res = genattr.explain(tiny_lm(), "The doctor opens the door and the nurse", target=" sings",
...                       method="xprompt", k=2, n_iter=50, seed=0)
>>> len(res.extras["chosen"]), float(res.scores.sum())        # k features, scores summing to k
(2, 2.0)
>>> trace = res.extras["trace"]                               # log p(y | m (.) x), never increasing
>>> all(b <= a for a, b in zip(trace, trace[1:])), 0 < res.extras["probability_ratio"] <= 1
(True, True)
"""

from __future__ import annotations

import math

import torch

from ..errors import InvalidParameterError
from ..model import Batch, gradients
from ..problem import Problem
from ..registry import MAX_ITERATIONS, MAX_SAMPLES, Method, Output, Param
from ..text.segment import token_owners

GUIDANCES = ("probability", "log_probability")


def relaxed_log_likelihood(problem: Problem, mask: torch.Tensor) -> torch.Tensor:
    """Differentiable log p(y | m (.) x) for continuous feature masks ``mask`` [B, F]: [B] float32.

    Every token t of feature f is embedded as m_f e_t + (1 - m_f) e_b, e_b the embedding of the
    masker's baseline token; tokens outside every feature (and the teacher-forced target) keep their
    embedding. All positions stay
    visible, so at m_f = 0 this equals the ``replace`` masking strategy. All B rows go through one
    forward pass: the caller keeps B within the memory budget (the method itself uses B = 1).
    """
    lm = problem.lm
    mask = torch.as_tensor(mask)
    if mask.ndim == 1:
        mask = mask[None]
    ids = problem.sequence_ids
    embeds = lm.embed(ids[None]).detach().float()
    base = lm.embed(torch.tensor([[problem.masker.baseline_id]])).detach().float()
    owner = torch.tensor(token_owners(problem.features, len(ids)), dtype=torch.long)
    padded = torch.cat([torch.ones(mask.shape[0], 1, dtype=mask.dtype, device=mask.device), mask], 1)
    token_mask = padded[:, owner + 1].to(device=lm.device, dtype=torch.float32)
    mixed = base + token_mask[:, :, None] * (embeds - base)
    inputs = Batch.from_ids(ids.tolist(), rows=mask.shape[0])
    return lm.log_probs_from_embeddings(mixed.to(lm.dtype), inputs, problem.target_ids).sum(1)


def mask_gradient(problem: Problem) -> tuple[float, torch.Tensor]:
    """log p(y | x) and d log p(y | m (.) x) / dm at m = 1, one entry per feature [F] float64 (one
    forward and backward pass through :func:`relaxed_log_likelihood`)."""
    with torch.enable_grad():
        mask = torch.ones(1, problem.n_features, dtype=torch.float32, requires_grad=True)
        value = relaxed_log_likelihood(problem, mask).sum()
        tokens = len(problem.sequence_ids)  # one row: prompt + target[:-1]
        (grad,) = gradients(problem.lm, value, mask, tokens=tokens)
    return float(value.detach()), grad[0].double().cpu()


def guidance_gradient(log_likelihood: float, log_gradient: torch.Tensor, guidance: str) -> torch.Tensor:
    """The gradient whose magnitude is XPrompt's guidance g, from log p(y | x) and
    d log p(y | m (.) x) / dm at m = 1 (:func:`mask_gradient`):

        'probability':      dL/dm = -p(y | x) d log p(y | m (.) x) / dm   (L of Eq. 3, Algorithm 1)
        'log_probability':  d log p(y | m (.) x) / dm
    """
    if guidance == "log_probability":
        return log_gradient
    return -math.exp(log_likelihood) * log_gradient


def _bits(indices) -> int:
    """The bitmask of a set of feature indices (bit i set: feature i removed)."""
    key = 0
    for i in indices:
        key |= 1 << int(i)
    return key


def _indices(key: int) -> list[int]:
    """The feature indices set in bitmask ``key``, ascending."""
    return [i for i in range(key.bit_length()) if key >> i & 1]


class _Scorer:
    """log p(y | x without the removed features) per mask (a bitmask key), each distinct mask scored
    once, every batch of new masks in one call of :meth:`Problem.token_log_probs` (chunked by the core)."""

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        self.cache: dict[int, torch.Tensor] = {}

    def tokens(self, keys: list[int]) -> torch.Tensor:
        """Per-token log-probs [B, n] float64 of the masks ``keys``."""
        new = list(dict.fromkeys(key for key in keys if key not in self.cache))
        if new:
            keep = self.problem.all_kept(len(new))
            for row, key in enumerate(new):
                keep[row, _indices(key)] = False
            for key, lp in zip(new, self.problem.token_log_probs(keep).double(), strict=True):
                self.cache[key] = lp
        return torch.stack([self.cache[key] for key in keys])

    def __call__(self, keys: list[int]) -> torch.Tensor:
        """Sequence log-likelihoods [B] float64 of the masks ``keys``."""
        return self.tokens(keys).sum(1)

    def scored_swaps(self, key: int) -> list[tuple[int, int]]:
        """The swaps (l, v) of mask ``key`` (restore v, remove l) whose mask is already scored."""
        k, out = key.bit_count(), []
        for other in self.cache:
            diff = other ^ key
            if other.bit_count() == k and diff.bit_count() == 2:
                out.append(((diff & other).bit_length() - 1, (diff & key).bit_length() - 1))
        return out


def _draw(weights: torch.Tensor, support: torch.Tensor, gen: torch.Generator) -> int:
    """One index drawn from softmax(``weights``) restricted to ``support``."""
    logits = torch.where(support, weights, torch.tensor(-math.inf, dtype=weights.dtype))
    return int(torch.multinomial(logits.softmax(0), 1, generator=gen))


def _fresh_swaps(
    weights: torch.Tensor, removed: torch.Tensor, scorer: _Scorer, n: int, gen: torch.Generator
) -> list[tuple[int, int]]:
    """Up to ``n`` distinct swaps (l, v) of the mask ``removed`` whose masks are not yet scored, drawn
    without replacement with probability softmax(g_l) softmax(g_v) (l kept, v removed), by the
    Gumbel-top-n trick in log space. Empty when every swap is already scored."""
    kept_idx, removed_idx = (~removed).nonzero().flatten(), removed.nonzero().flatten()
    logits = weights[kept_idx][:, None] + weights[removed_idx][None, :]
    row = torch.full((len(removed),), -1, dtype=torch.long)
    row[kept_idx] = torch.arange(len(kept_idx))
    col = torch.full((len(removed),), -1, dtype=torch.long)
    col[removed_idx] = torch.arange(len(removed_idx))
    for out, back in scorer.scored_swaps(_bits(removed_idx)):
        logits[row[out], col[back]] = -math.inf
    available = int(torch.isfinite(logits).sum())
    if available == 0:
        return []
    uniform = torch.rand(logits.shape, generator=gen, dtype=torch.float64).clamp_min(1e-300)
    picked = (logits - torch.log(-torch.log(uniform))).flatten().topk(min(n, available)).indices
    width = len(removed_idx)
    return [(int(kept_idx[i // width]), int(removed_idx[i % width])) for i in picked.tolist()]


def _search(
    score: _Scorer, key: int, current: float, weights: torch.Tensor, n_iter: int, P: int, gen: torch.Generator
) -> tuple[int, list[float], int, int]:
    """Steps 3-12 of Algorithm 1 from mask ``key`` (log-likelihood ``current``): up to ``n_iter``
    iterations of P swap proposals, the best kept when it lowers the log-likelihood. Returns the
    final mask, the trace (one entry per iteration run, after the initial one), the accepted swaps
    and the proposals made. Stops early once every swap of the current mask is scored."""
    F = len(weights)
    removed = torch.zeros(F, dtype=torch.bool)
    removed[_indices(key)] = True
    k = int(removed.sum())
    trace, accepted, proposals = [current], 0, 0
    for _ in range(n_iter if k < F else 0):
        if P == 1:
            swaps = [(_draw(weights, ~removed, gen), _draw(weights, removed, gen))]
            if key ^ _bits(swaps[0]) in score.cache and len(score.scored_swaps(key)) == k * (F - k):
                break
        else:
            swaps = _fresh_swaps(weights, removed, score, P, gen)
            if not swaps:
                break
        candidates = [key ^ _bits(swap) for swap in swaps]
        values = score(candidates)
        proposals += len(swaps)
        best = int(values.argmin())
        if float(values[best]) < current:
            key, current, accepted = candidates[best], float(values[best]), accepted + 1
            removed[list(swaps[best])] = ~removed[list(swaps[best])]
        trace.append(current)
    return key, trace, accepted, proposals


class XPrompt(Method):
    """XPrompt (Chang et al., 2024; Eq. 3, Algorithm 1): the k features whose joint removal most
    lowers p(y | x), by gradient-guided initialisation and probabilistic swap search.

    See :mod:`genattr.algorithms.xprompt` for the relaxation, the sampling, the scores and the
    extras. ``diagnostics`` count the distinct masks scored (``evaluations``), the swap
    ``proposals`` made, the ``accepted`` swaps, the ``iterations`` run before the search stopped
    at a mask whose every swap is scored and none improves (``stopped_early``), and the
    ``gradient_passes``.

    References
    ----------
    Chang, Cao, Wang, Chen and Lin, "XPrompt: Explaining Large Language Model's Generation via
    Joint Prompt Attribution", 2024, Section 4.

    Examples
    --------
    See :mod:`genattr.algorithms.xprompt`.
    """

    name = "xprompt"
    family = "search"
    summary = "the k features whose joint removal most lowers p(y|x): gradient-guided swap search"
    cost = "per iteration proposals_per_step forward rows, plus 1 forward row and 1 backward pass for the mask gradient"
    needs_gradients = True
    stochastic = True
    token_scores = False
    output_tokens = False  # it searches for a joint mask of the prompt, not of the output
    params = {
        "k": Param(3, "number of features removed together (1 <= k <= features)", int, minimum=1),
        "n_iter": Param(
            100, "swap iterations N (0 keeps the initial mask)", int, minimum=0, maximum=MAX_ITERATIONS
        ),
        "proposals_per_step": Param(
            1,
            "distinct new swaps scored per iteration in one batch; the best improving one is kept",
            int,
            minimum=1,
            maximum=MAX_SAMPLES,
        ),
        "guidance": Param(
            "probability",
            "g of Algorithm 1: |dL/dm| of L = p(y|x) - p(y|m x) (probability) or |d log p(y|m x)/dm|",
            str,
            choices=GUIDANCES,
        ),
        "random_init": Param(False, "ablation: initial removed set drawn uniformly, not by gradient", bool),
        "uniform_sampling": Param(False, "ablation: swap features drawn uniformly, not by gradient", bool),
    }
    k: int
    n_iter: int
    proposals_per_step: int
    guidance: str
    random_init: bool
    uniform_sampling: bool

    def _guidance(self, problem: Problem) -> tuple[torch.Tensor, torch.Tensor]:
        """The gradient whose magnitude is g (:func:`guidance_gradient`) and the features ranked
        by |d log p(y | m (.) x) / dm|, largest first (ties by position): steps 1 and 2."""
        log_likelihood, log_gradient = mask_gradient(problem)
        ranking = torch.argsort(-log_gradient.abs(), stable=True)
        return guidance_gradient(log_likelihood, log_gradient, self.guidance), ranking

    def attribute(self, problem: Problem) -> Output:
        F, k = problem.n_features, self.k
        if k > F:
            raise InvalidParameterError(
                f"xprompt: k={k} but the prompt has only {F} maskable features at this level; "  # pragma: no mutate
                f"pass k <= {F} or a finer level (level='token')."  # pragma: no mutate
            )
        gen = problem.generator()
        use_gradient = not (self.random_init and self.uniform_sampling)
        gradient, ranking = self._guidance(problem) if use_gradient else (None, None)
        order = torch.randperm(F, generator=gen) if self.random_init or ranking is None else ranking
        key = _bits(order[:k])
        weights = (
            gradient.abs()
            if gradient is not None and not self.uniform_sampling
            else torch.zeros(F, dtype=torch.float64)
        )

        score = _Scorer(problem)
        full, initial = score([0, key]).tolist()
        key, trace, accepted, proposals = _search(
            score, key, initial, weights, self.n_iter, self.proposals_per_step, gen
        )
        current, iterations = trace[-1], len(trace) - 1
        trace += [current] * (self.n_iter + 1 - len(trace))

        chosen = _indices(key)
        restored = score([key ^ (1 << i) for i in chosen])
        contributions = restored - current
        positive = contributions.clamp(min=0)
        share = k * positive / positive.sum() if positive.sum() > 0 else torch.ones(k, dtype=torch.float64)
        scores = torch.zeros(F, dtype=torch.float64)
        scores[chosen] = (1 + share) / 2
        extras = {
            "chosen": chosen,
            "chosen_text": [problem.features[i].text for i in chosen],
            "log_likelihood_full": full,
            "log_likelihood_masked": current,
            "log_likelihood_drop": full - current,
            "probability_ratio": math.exp(current - full),
            "probability_drop": math.exp(full) - math.exp(current),
            "token_drop": (score.tokens([0])[0] - score.tokens([key])[0]).tolist(),
            "contributions": contributions.tolist(),
            "gradient": None if gradient is None else gradient.tolist(),
            "trace": trace,
        }
        diagnostics = {
            "evaluations": len(score.cache),
            "proposals": proposals,
            "accepted": accepted,
            "iterations": iterations,
            "stopped_early": iterations < self.n_iter and k < F,
            "gradient_passes": int(use_gradient),
        }
        return Output(scores, None, diagnostics=diagnostics, extras=extras)
