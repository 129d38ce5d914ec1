"""GiLOT against oracles: the exact output distributions by enumerating every prefix on a word-level
model (equal when the beams cover every prefix, closer as b grows), the OT cost by POT's simplex
on the full vocabulary, a model that provably ignores all but the last token (distance 0), SciPy's
divergences, and the result's structure, diagnostics and warnings."""

from __future__ import annotations

import warnings

import numpy as np
import ot as pot
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy as scipy_kl

import genattr
from genattr.algorithms.gilot import divergence
from genattr.algorithms.gilot.beams import beam_search
from genattr.errors import ConvergenceWarning, GenattrWarning, InvalidParameterError, LowBeamMassWarning
from genattr.masking import Masker
from genattr.text.prompt import Prompt

from .conftest import word_level_lm

PROMPT = "The cat sat on the mat. Then a dog runs!"
WORD_PROMPT = "red cat sat"


def _oracle_token_scores(lm, res, J, distance) -> np.ndarray:
    """L(p_m(Y_j), p_m/a(Y_j)) for every position and feature, from the enumerated distributions."""
    prompt = res.prompt
    masker = Masker(lm, prompt, res.features, "replace", res.settings.mask_token)
    full = _exact_marginals(lm, prompt.input_ids, J)
    E = lm.embedding_matrix.detach().double()
    cost = (1 - torch.nn.functional.cosine_similarity(E[:, None], E[None], dim=-1)).clamp(min=0)
    cost = cost.fill_diagonal_(0.0).numpy()  # a token costs nothing to itself (even the zero <pad> embedding)
    out = np.zeros((J, len(res.features)))
    for f in range(len(res.features)):
        keep = torch.ones(1, len(res.features), dtype=torch.bool)
        keep[0, f] = False
        masked = _exact_marginals(lm, masker.inputs(keep).input_ids[0].tolist(), J)
        for j in range(J):
            if distance == "ot":
                p, q = full[j].numpy(), masked[j].numpy()
                out[j, f] = pot.emd2(p / p.sum(), q / q.sum(), cost)
            else:
                out[j, f] = float(divergence(full[j], masked[j], distance))
    return out


@pytest.mark.parametrize("beams", ["own", "follow"])
@pytest.mark.parametrize("distance", ["ot", "kl", "tv"])
def test_gilot_equals_enumeration_when_the_beams_cover_every_prefix(word_lm, beams, distance):
    lm, J = word_lm, 3
    V = lm.vocab_size
    res = genattr.explain(
        lm,
        WORD_PROMPT,
        method="gilot",
        mask="replace",
        num_beams=V ** (J - 1),
        n_positions=J,
        beams=beams,
        distance=distance,
        top_k=None,
        mass_threshold=0.0,
    )
    oracle = _oracle_token_scores(lm, res, J, distance)
    np.testing.assert_allclose(res.token_scores, oracle, atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(res.scores, oracle.mean(0), atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(res.diagnostics["beam_mass"], np.ones(J), atol=1e-5)
    assert oracle.max() > 1e-2  # the features matter: the comparison is not between zeros


def test_gilot_approaches_enumeration_as_the_beams_grow(word_lm):
    lm, J = word_lm, 3
    V = lm.vocab_size
    errors = []
    oracle = None
    for b in (1, 4, V, V * V):
        res = genattr.explain(
            lm,
            WORD_PROMPT,
            method="gilot",
            mask="replace",
            num_beams=b,
            n_positions=J,
            distance="tv",
            mass_threshold=0.0,
        )
        oracle = _oracle_token_scores(lm, res, J, "tv") if oracle is None else oracle
        errors.append(float(np.abs(res.token_scores - oracle).max()))
    assert errors[-1] < 1e-5
    assert errors[0] > errors[1] > errors[-1] and errors[2] < errors[0]
    assert errors[0] > 1e-3


@pytest.fixture(scope="module")
def last_token_lm(tmp_path_factory):
    """A Llama with no transformer layer: its output depends only on the last token (embedding, norm,
    head), so removing any other prompt token cannot change what it writes."""
    return word_level_lm(tmp_path_factory.mktemp("last_token") / "model", layers=0, seed=0)


@pytest.mark.parametrize("distance", ["kl", "ot"])
def test_a_feature_the_model_ignores_scores_zero(last_token_lm, distance):
    res = genattr.explain(
        last_token_lm,
        "red cat sat",
        method="gilot",
        distance=distance,
        num_beams=4,
        n_positions=3,
        mass_threshold=0.0,
    )
    assert [f.text for f in res.features] == ["red", "cat", "sat"]
    assert float(np.abs(res.token_scores[:, :2]).max()) < 1e-6
    assert float(res.scores[2]) > 1e-2


def test_result_structure_target_and_diagnostics(lm):
    J, b = 4, 3
    with pytest.warns(LowBeamMassWarning, match="beams cover only"):  # random tiny models spread their mass
        res = genattr.explain(lm, PROMPT, method="gilot", num_beams=b, n_positions=J)
    F = len(res.features)
    assert res.token_scores.shape == (J, F)
    np.testing.assert_allclose(res.scores, res.token_scores.mean(0), rtol=1e-12)
    assert bool((res.token_scores >= -1e-9).all())
    prompt = Prompt.from_text(lm.tokenizer, PROMPT)
    full = beam_search(lm, genattr.Batch.from_ids(prompt.input_ids), b, J)
    assert list(res.target.ids) == full.sequences[0, 0].tolist() and res.target.generated
    np.testing.assert_allclose(res.diagnostics["beam_mass"], full.mass[0].numpy(), rtol=1e-4, atol=1e-7)
    d = res.diagnostics
    assert d["ot_solver"] == "exact" and d["ot_converged"] and d["ot_marginal_error"] < 1e-9
    assert d["seconds_search"] >= 0 and d["seconds_distance"] >= 0 and len(d["beam_mass_masked_min"]) == J
    # One batched search for all F + 1 prompts: the passes do not grow with the number of features.
    assert d["forward_passes"] <= J + 3 < F
    with warnings.catch_warnings():  # genattr's own warnings: no low-mass or convergence warning here
        warnings.simplefilter("error", GenattrWarning)
        genattr.explain(lm, PROMPT, method="gilot", num_beams=b, n_positions=J, mass_threshold=0.0)


def test_own_and_follow_agree_on_the_first_position_and_save(llama, tmp_path):
    kw = {"method": "gilot", "num_beams": 3, "n_positions": 3, "mass_threshold": 0.0}
    own = genattr.explain(llama, PROMPT, **kw)
    follow = genattr.explain(llama, PROMPT, beams="follow", **kw)
    np.testing.assert_allclose(
        own.token_scores[0], follow.token_scores[0], atol=1e-6
    )  # p(Y_1) needs no beams
    assert own.target == follow.target
    own.save(tmp_path / "gilot.json")
    loaded = genattr.Attribution.load(tmp_path / "gilot.json")
    np.testing.assert_allclose(loaded.token_scores, own.token_scores)
    assert loaded.target.ids == own.target.ids and loaded.params["beams"] == "own"


def test_iterative_solvers_agree_with_exact(llama):
    kw = {"method": "gilot", "num_beams": 2, "n_positions": 2, "top_k": 10, "mass_threshold": 0.0}
    exact = genattr.explain(llama, PROMPT, **kw)
    with pytest.warns(ConvergenceWarning, match="did not converge"):  # tol 1e-10 is out of reach in 500 steps
        ipot = genattr.explain(llama, PROMPT, solver="ipot", inner_iter=20, max_iter=500, tol=1e-10, **kw)
    np.testing.assert_allclose(ipot.token_scores, exact.token_scores, rtol=1e-3, atol=2e-5)
    assert not ipot.diagnostics["ot_converged"] and ipot.diagnostics["ot_unconverged"] > 0
    reg = 0.05
    sink = genattr.explain(llama, PROMPT, solver="sinkhorn", reg=reg, max_iter=3000, tol=1e-3, **kw)
    assert sink.diagnostics["ot_solver"] == "sinkhorn" and sink.diagnostics["ot_converged"]
    slack = 2 * sink.diagnostics["ot_marginal_error"]  # max cost 2 times the mass still misplaced
    gap = sink.token_scores - exact.token_scores  # entropic bias: 0 <= gap <= reg * log(support size)
    assert gap.min() > -slack and gap.max() < reg * np.log(20) + slack
    assert int(sink.scores.argmax()) == int(exact.scores.argmax())


def test_divergences_match_scipy():
    g = torch.Generator().manual_seed(0)
    p, q = (
        torch.rand(3, 7, generator=g, dtype=torch.float64),
        torch.rand(3, 7, generator=g, dtype=torch.float64),
    )
    p, q = p / p.sum(1, keepdim=True), q / q.sum(1, keepdim=True)
    for i in range(3):
        a, b = p[i].numpy(), q[i].numpy()
        assert float(divergence(p[i], q[i], "kl", smoothing=1e-300)) == pytest.approx(
            scipy_kl(a, b), rel=1e-9
        )
        assert float(divergence(p[i], q[i], "js")) == pytest.approx(jensenshannon(a, b) ** 2, rel=1e-9)
        assert float(divergence(p[i], q[i], "tv")) == pytest.approx(0.5 * np.abs(a - b).sum(), rel=1e-12)
    zero = torch.tensor([1.0, 0.0])
    assert np.isfinite(float(divergence(zero, torch.tensor([0.0, 1.0]), "kl")))  # smoothed: no log 0


@pytest.mark.parametrize(
    "params,match",
    [
        ({"beams": "shared"}, "beams"),
        ({"distance": "l2"}, "distance"),
        ({"solver": "simplex"}, "solver"),
        ({"top_k": 0}, "top_k"),
        ({"num_beams": 0}, "num_beams"),
        ({"mass_threshold": 1.5}, "mass_threshold"),
    ],
)
def test_bad_parameters_raise_typed_errors(llama, params, match):
    with pytest.raises(InvalidParameterError, match=match):
        genattr.explain(llama, PROMPT, method="gilot", **params)


def test_a_target_given_to_gilot_is_refused(llama):
    """GiLOT explains the model's own likely outputs: a target would be silently ignored."""
    with pytest.raises(InvalidParameterError, match="gilot takes no target"):
        genattr.explain(llama, PROMPT, target=" and", method="gilot", num_beams=2, n_positions=2)


def _exact_marginals(lm, input_ids, J, visible=None) -> torch.Tensor:
    """Oracle: p(Y_j), j = 1..J [J, V] float64, by enumerating every prefix (one batched HF call per
    depth, EOS absorbing); no beam search, no genattr code path. For the ``attention`` mask,
    ``visible`` marks the tokens kept: hidden tokens are left out of the sequence and every other
    token stays at its own position (position ids given explicitly, so the model sees the gaps).
    No position attends to a hidden token, so leaving it out changes nothing else; the one
    exception is the last prompt position, which predicts Y_1 from its own (baseline) token even
    when hidden: it is in the sequence for the first step only. No attention mask."""
    visible = [True] * len(input_ids) if visible is None else visible
    V, eos, L = lm.vocab_size, torch.tensor(lm.eos_ids), len(input_ids)
    seen = [i for i in range(L) if visible[i]]
    first = seen if visible[-1] else [*seen, L - 1]
    prefixes = torch.zeros(1, 0, dtype=torch.long)
    log_p = torch.zeros(1, dtype=torch.float64)
    out = []
    for depth in range(J):
        context = first if depth == 0 else seen
        ids = torch.cat(
            [torch.tensor([input_ids[i] for i in context]).expand(len(prefixes), -1), prefixes], 1
        )
        positions = torch.tensor(context + list(range(L, L + depth))).expand(len(prefixes), -1)
        with torch.no_grad():
            dist = lm.model(input_ids=ids, position_ids=positions).logits[:, -1].double().softmax(-1)
        if depth:
            ended = torch.isin(prefixes[:, -1], eos)
            dist[ended] = torch.nn.functional.one_hot(prefixes[ended, -1], V).double()
        out.append((log_p.exp()[:, None] * dist).sum(0))
        log_p = (log_p[:, None] + dist.log()).reshape(-1)
        prefixes = torch.cat(
            [prefixes.repeat_interleave(V, 0), torch.arange(V).repeat(len(prefixes))[:, None]], 1
        )
    return torch.stack(out)


@pytest.mark.parametrize("distance", ["ot", "tv"])
def test_gilot_with_the_default_attention_mask_equals_enumeration(word_lm, distance):
    """The default mask (baseline token, hidden from every other token) against the enumeration
    oracle with the removed tokens left out of the sequence; the ``replace`` oracle differs."""
    lm, J = word_lm, 3
    res = genattr.explain(
        lm,
        WORD_PROMPT,
        method="gilot",
        num_beams=lm.vocab_size ** (J - 1),
        n_positions=J,
        distance=distance,
        top_k=None,
        mass_threshold=0.0,
    )
    assert res.settings.mask == "attention"
    prompt = res.prompt
    masker = Masker(lm, prompt, res.features, "attention", res.settings.mask_token)
    full = _exact_marginals(lm, prompt.input_ids, J)
    E = lm.embedding_matrix.detach().double()
    cost = (1 - torch.nn.functional.cosine_similarity(E[:, None], E[None], dim=-1)).clamp(min=0)
    cost = cost.fill_diagonal_(0.0).numpy()
    oracle = np.zeros((J, len(res.features)))
    for f in range(len(res.features)):
        keep = torch.ones(1, len(res.features), dtype=torch.bool)
        keep[0, f] = False
        inputs = masker.inputs(keep)
        assert not bool(inputs.visible[0, list(res.features[f].positions)].any())
        masked = _exact_marginals(lm, inputs.input_ids[0].tolist(), J, inputs.visible[0].tolist())
        for j in range(J):
            if distance == "ot":
                p, q = full[j].numpy(), masked[j].numpy()
                oracle[j, f] = pot.emd2(p / p.sum(), q / q.sum(), cost)
            else:
                oracle[j, f] = float(divergence(full[j], masked[j], distance))
    np.testing.assert_allclose(res.token_scores, oracle, atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(res.scores, oracle.mean(0), atol=2e-5, rtol=1e-4)
    assert oracle.max() > 1e-2
    replaced = _oracle_token_scores(lm, res, J, distance)
    assert np.abs(replaced - oracle).max() > 1e-3  # hiding the token is not the same as replacing it
