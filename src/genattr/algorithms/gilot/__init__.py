"""GiLOT: attribution by optimal transport over the model's likely outputs.

"GiLOT: Interpreting Generative Language Models via Optimal Transport" (Li, Chen, Chai, Xiong;
ICML 2024). GiLOT explains no single continuation: it asks how removing a feature a of the
prompt moves the distribution of every output position j = 1..J,

    S(a) = (1/J) sum_{j=1..J} L(p_m(Y_j), p_{m/a}(Y_j))                                   (Eq. 1)

where p_m(Y_j) is the distribution of the j-th output token given the full prompt, with the
earlier tokens marginalised out (Eq. 3), estimated from the b most probable prefixes found by
beam search,

    p(Y_j) ~ sum_{beam in B_{j-1}} P(beam) p(Y_j | beam) / sum_{beam in B_{j-1}} P(beam),   (Eq. 5)

and p_{m/a}(Y_j) the same with feature a removed (Eq. 4). L is

* ``ot`` (default): the optimal transport cost min_{P in Pi(p, q)} <P, C> (Eq. 8) under the cost
  C_ij = 1 - cos(e_i, e_j) of the model's token embeddings (Eq. 7), on the union of the top-k
  tokens of p and q, renormalised (dynamic vocabulary compression, Sec. 3.4.3);
* ``kl``: KL(p || q) = sum_i p_i log(p_i / q_i) (Eq. 6, the paper's KLD ablation), both
  distributions smoothed as (p + eps) / (1 + V eps) so that no log of zero occurs;
* ``js``: the Jensen-Shannon divergence, and ``tv``: the total variation 1/2 sum_i |p_i - q_i|.

How it runs
-----------
The full prompt and every variant with one feature removed (by the call's masking strategy;
``attention`` replaces the tokens and hides them, as the paper does) go through **one batched
beam search** (:func:`~genattr.algorithms.gilot.beams.beam_search`): all prompts x beams advance
in one forward pass per step, p(Y_j | beam) is read off the scores of the search itself (no
second teacher-forced pass), and the prompt positions before a removed feature reuse the full
prompt's keys and values (the model's prefix sharing). With ``beams="follow"`` the variants are scored
instead on the full prompt's beams, as the authors' reproduction code does: the whole tree of
beams is teacher-forced in one pass per chunk under a tree attention mask
(:func:`~genattr.algorithms.gilot.beams.score_beam_tree`). The features x positions distance
problems are solved as batches (:mod:`genattr.algorithms.gilot.ot`).

The result's ``scores`` are S per feature, its ``token_scores`` the J x features matrix of
L(p_m(Y_j), p_{m/a}(Y_j)), its rows labelled by the full prompt's most probable output (the best
beam, ``target.generated`` True). ``diagnostics`` hold the probability mass the beams cover at
each position (the paper's confidence, Table 8; a warning below ``mass_threshold``), how the OT
solver converged, and the time split between search and distance.

Solvers: ``exact`` (default) is POT's network simplex, one problem per call in C++, the calls
spread over threads: on CPU it solves a GiLOT problem (about 100-200 tokens) exactly in about a
millisecond, while the iterative solvers need hundreds of passes of about 0.08 ms each (see
bench/gilot.py). ``sinkhorn`` (entropic, biased by at most reg * min entropy) and ``ipot``
(converges to the exact cost) run batched on the model's device: use them on a GPU, with a
larger ``ot_batch_size``.

References
----------
Li, Chen, Chai and Xiong, "GiLOT: Interpreting Generative Language Models via Optimal
Transport", ICML 2024, Eq. 1-8, Sec. 3.4.3 and Table 8.

Examples
--------
A random model spreads its probability thinly, so the beams cover little of it: the example
turns the warning off with ``mass_threshold=0``.

>>> import genattr
>>> from genattr.testing import tiny_lm
>>> lm = tiny_lm()
>>> res = genattr.explain(lm, "Write a story about a nurse", method="gilot", num_beams=3,
...                       n_positions=3, mass_threshold=0)
>>> res.token_scores.shape, len(res.diagnostics["beam_mass"]), res.target.generated
((3, 6), 3, True)
>>> bool((res.scores >= 0).all()), res.diagnostics["ot_converged"]   # OT costs are >= 0
(True, True)
>>> res = genattr.explain(lm, "Write a story about a nurse", method="gilot", num_beams=3,
...                       n_positions=3, mass_threshold=0, distance="kl", beams="follow")
>>> res.params["distance"], res.scores.shape
('kl', (6,))
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import torch

from ...errors import ConvergenceWarning, InvalidParameterError, LowBeamMassWarning
from ...model import LanguageModel
from ...problem import Problem
from ...protocols import decode
from ...registry import MAX_BEAMS, MAX_ITERATIONS, MAX_OUTPUT_POSITIONS, Method, Output, Param
from ...text.target import Target
from . import ot
from .beams import beam_search, score_beam_tree

DISTANCES = ("ot", "kl", "js", "tv")
BEAM_MODES = ("own", "follow")


def divergence(p: torch.Tensor, q: torch.Tensor, distance: str, smoothing: float = 1e-10) -> torch.Tensor:
    """L(p, q) over the last axis of p, q [..., V] for ``kl``, ``js`` or ``tv`` (float64).

    ``kl`` smooths both sides as (x + eps) / (1 + V eps) with eps = ``smoothing`` (Eq. 6 has no
    guard against q_i = 0 where p_i > 0); ``js`` and ``tv`` need none.

    >>> p = torch.tensor([0.5, 0.5, 0.0]); q = torch.tensor([0.0, 0.5, 0.5])
    >>> float(divergence(p, q, "tv")), round(float(divergence(p, q, "js")), 4)
    (0.5, 0.3466)
    """
    p, q = p.double(), q.double()
    if distance == "kl":
        V = p.shape[-1]
        p = (p + smoothing) / (1 + V * smoothing)
        q = (q + smoothing) / (1 + V * smoothing)
        return (p * (p.log() - q.log())).sum(-1)
    if distance == "js":
        m = (p + q) / 2
        return 0.5 * (torch.special.xlogy(p, p) - torch.special.xlogy(p, m)).sum(-1) + 0.5 * (
            torch.special.xlogy(q, q) - torch.special.xlogy(q, m)
        ).sum(-1)
    if distance == "tv":
        return 0.5 * (p - q).abs().sum(-1)
    raise InvalidParameterError(f"unknown distance {distance!r}; choose one of {', '.join(DISTANCES)}.")


def _unit_embeddings(lm: LanguageModel, which: str, vocab: int) -> torch.Tensor:
    matrix = lm.embedding_matrix if which == "input" else lm.output_embedding_matrix
    if matrix.shape[0] < vocab:
        raise InvalidParameterError(
            f"the {which} embedding matrix has {matrix.shape[0]} rows but the output vocabulary has {vocab} "
            "tokens; use embeddings='output'."
        )
    return ot.unit_embeddings(matrix[:vocab])


class Gilot(Method):
    """GiLOT (Li et al., ICML 2024): S(a) = (1/J) sum_j L(p_m(Y_j), p_{m/a}(Y_j)) over the beam-estimated
    distributions of the J first output positions, L an optimal transport cost between token
    distributions under the embeddings' cosine cost (see the module docstring)."""

    name = "gilot"
    family = "perturbation"
    summary = (
        "optimal transport between the output distributions (beam-marginalised, J positions) with "
        "and without each feature"
    )
    cost = "F + 1 beam searches of num_beams beams over n_positions positions, each position one forward pass"
    token_scores = True
    needs_target = False
    params = {
        "num_beams": Param(
            10,
            "beams b that estimate each position's distribution (Eq. 5)",
            int,
            minimum=1,
            maximum=MAX_BEAMS,
        ),
        "n_positions": Param(
            10, "output positions J averaged in Eq. 1", int, minimum=1, maximum=MAX_OUTPUT_POSITIONS
        ),
        "beams": Param(
            "own",
            "own: each masked prompt runs its own beam search (Eq. 4); follow: masked prompts are scored "
            "on the full prompt's beams, as the authors' reproduction code does (no search of their own)",
            str,
            choices=BEAM_MODES,
        ),
        "distance": Param("ot", "L in Eq. 1: ot (Eq. 8), kl (Eq. 6), js or tv", str, choices=DISTANCES),
        "solver": Param(
            "exact", "OT solver: exact (network simplex), sinkhorn or ipot", str, choices=ot.SOLVERS
        ),
        "top_k": Param(
            100,
            "OT on the union of each distribution's top-k tokens (None: whole vocabulary)",
            int,
            minimum=1,
            maximum=ot.MAX_TOP_K,
            optional=True,
        ),
        "embeddings": Param(
            "input", "embeddings of the OT cost: input or output", str, choices=("input", "output")
        ),
        "reg": Param(0.05, "Sinkhorn entropic regularisation", float, minimum=1e-4),
        "beta": Param(1.0, "IPOT proximal step beta", float, minimum=1e-3),
        "inner_iter": Param(
            5, "IPOT Sinkhorn sweeps per proximal step", int, minimum=1, maximum=MAX_ITERATIONS
        ),
        "tol": Param(1e-6, "Sinkhorn / IPOT tolerance on the marginal error", float, minimum=0.0),
        "max_iter": Param(1000, "Sinkhorn / IPOT iteration cap", int, minimum=1, maximum=MAX_ITERATIONS),
        "ot_batch_size": Param(32, "OT problems solved together (raise on a GPU)", int, minimum=1),
        "smoothing": Param(1e-10, "kl: additive smoothing eps of both distributions", float, minimum=1e-300),
        "mass_threshold": Param(
            0.5,
            "warn when the beams cover less probability than this at a position",
            float,
            minimum=0.0,
            maximum=1.0,
        ),
    }
    num_beams: int
    n_positions: int
    beams: str
    distance: str
    solver: str
    top_k: int | None
    embeddings: str
    reg: float
    beta: float
    inner_iter: int
    tol: float
    max_iter: int
    ot_batch_size: int
    smoothing: float
    mass_threshold: float

    def attribute(self, problem: Problem) -> Output:
        lm, F, b, J = problem.lm, problem.n_features, self.num_beams, self.n_positions
        keep = problem.all_kept(F + 1)
        keep[torch.arange(1, F + 1), torch.arange(F)] = False
        inputs = problem.masker.inputs(keep)
        started = time.perf_counter()
        if self.beams == "own":
            search = beam_search(lm, inputs, b, J)
            marginals, mass = search.marginals, search.mass
        else:
            search = beam_search(lm, inputs.rows(slice(0, 1)), b, J)
            tree = {k: v[0, : J - 1] for k, v in search.extras.items()}
            scored = score_beam_tree(
                lm,
                inputs,
                tree["beam_tokens"],
                tree["beam_parents"],
                tree["beam_log_probs"] > float("-inf"),
            )
            marginals, mass = scored.marginals, scored.mass
        searched = time.perf_counter()
        distances, ot_diagnostics = self._distances(lm, marginals[0], marginals[1:])
        finished = time.perf_counter()
        confidence = mass[0]
        diagnostics = {
            "beam_mass": confidence.tolist(),
            "beam_mass_masked_min": mass[1:].min(0).values.tolist(),
            **ot_diagnostics,
            "seconds_search": round(searched - started, 6),
            "seconds_distance": round(finished - searched, 6),
        }
        low = int(confidence.argmin())
        if float(confidence[low]) < self.mass_threshold:
            warnings.warn(
                f"gilot: the {b} beams cover only {float(confidence[low]):.3f} of the probability at "
                f"output position {low + 1} (below mass_threshold={self.mass_threshold}), so the estimated "
                "p(Y_j) is rough there (the paper's boundary case): raise num_beams or lower n_positions.",
                LowBeamMassWarning,
                stacklevel=2,
            )
        ids = search.sequences[0, 0].tolist()
        tokenizer = lm.tokenizer
        target = Target(tuple(ids), decode(tokenizer, ids), tuple(decode(tokenizer, [i]) for i in ids), True)
        return Output(distances.mean(1), distances.T, diagnostics, target=target)

    def _distances(self, lm: LanguageModel, p: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """L(p_j, q_aj) for every feature a and position j: p [J, V], q [F, J, V] -> [F, J] float64."""
        F, J, V = q.shape
        if self.distance != "ot":
            return divergence(p[None], q, self.distance, self.smoothing), {}
        device = torch.device("cpu") if self.solver == "exact" else lm.device
        unit = _unit_embeddings(lm, self.embeddings, V).to(device)
        options: dict[str, Any] = {
            "sinkhorn": {"reg": self.reg, "tol": self.tol, "max_iter": self.max_iter},
            "ipot": {
                "beta": self.beta,
                "inner_iter": self.inner_iter,
                "tol": self.tol,
                "max_iter": self.max_iter,
            },
            "exact": {},
        }[self.solver]
        result = ot.vocabulary_ot(
            p[None].expand(F, -1, -1).reshape(F * J, V).to(device),
            q.reshape(F * J, V).to(device),
            unit,
            self.top_k,
            self.solver,
            self.ot_batch_size,
            **options,
        )
        unconverged = int((~result.converged).sum())
        if unconverged:
            warnings.warn(
                f"gilot: the {self.solver} solver did not converge on {unconverged} of {F * J} OT problems "
                f"(largest marginal error {float(result.marginal_error.max()):.2e}); raise max_iter or tol.",
                ConvergenceWarning,
                stacklevel=3,
            )
        diagnostics = {
            "ot_solver": self.solver,
            "ot_converged": unconverged == 0,
            "ot_unconverged": unconverged,
            "ot_marginal_error": float(result.marginal_error.max()),
            "ot_iterations": result.iterations,
        }
        return result.cost.double().cpu().view(F, J), diagnostics
