"""The sampling estimators on a budget, against oracles: exact Shapley values by enumeration, the
population targets of the regressions (LIME's weighted least squares and ContextCite's LASSO over
every coalition, weighted by how likely each is drawn), the KKT conditions of the LASSO, and
brute-force jackknife refits; budgets counted on the coalitions scored; standard errors checked
for calibration on both sides; a run on seconds or stopped on its top k replayed exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import genattr
from genattr.algorithms import sampling
from genattr.algorithms.perturbation import coalition_masks, shapley_from_table
from genattr.algorithms.sampling import STOP_WINDOW, STOP_Z, jackknife_stderr, top_k_settled
from genattr.algorithms.shapley import KernelShap, ShapleySampling, size_law
from genattr.algorithms.surrogate import ContextCite, Lime, held_out, lasso
from genattr.errors import InvalidParameterError

from .test_lime_oracle import TableProblem
from .test_perturbation_oracles import _constrained_least_squares

METHODS = {
    "shapley_sampling": ShapleySampling,
    "kernel_shap": KernelShap,
    "lime": Lime,
    "context_cite": ContextCite,
}


class QuadraticProblem(TableProblem):
    """TableProblem's interface on the game v(S) = sum_i w_i z_i + sum_{i<j} a_ij z_i z_j, split
    over two target tokens (interactions of order at most two)."""

    def evaluate(self, keep: torch.Tensor) -> torch.Tensor:
        self.seen.append(keep.clone())
        z = keep.double()
        first, second = z @ self.w, ((z @ self.pairs) * z).sum(1)
        return torch.stack([first + second, first, second], 1)


def _evaluated(problem: TableProblem) -> int:
    return sum(len(k) for k in problem.seen)


def _exact(problem: TableProblem) -> np.ndarray:
    F = problem.n_features
    return shapley_from_table(type(problem)(F).evaluate(coalition_masks(F)), F).numpy()


# --------------------------------------------------------------------- budgets
@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("budget", [40, 333, 1000])
def test_the_budget_is_what_is_scored_and_never_exceeded(name, budget):
    """Counted on every coalition passed to evaluate: the whole budget for the one-coalition
    units, the largest whole number of permutation pairs (2 (F - 1) each, after the two ends)."""
    F = 11
    problem = TableProblem(F, seed=1)
    out = METHODS[name](budget=budget).attribute(problem)
    used = out.diagnostics["evaluations"]
    assert used == _evaluated(problem) <= budget
    if name == "shapley_sampling":
        pairs = (budget - 2) // (2 * (F - 1))
        assert used == 2 + pairs * 2 * (F - 1) and out.diagnostics["samples"] == 2 * pairs
    else:
        assert used == budget and out.diagnostics["samples"] == budget - (2 if name == "kernel_shap" else 0)
    assert out.diagnostics["stopped"] == "budget"
    assert len(out.diagnostics["stderr"]) == F


@pytest.mark.parametrize("name", METHODS)
def test_n_samples_is_the_same_run_as_its_budget(name):
    """n_samples counts the method's own units; the budget it spends gives the same scores."""
    n = {"shapley_sampling": 6, "kernel_shap": 50, "lime": 50, "context_cite": 50}[name]
    first = METHODS[name](n_samples=n).attribute(TableProblem(7, seed=2))
    again = METHODS[name](budget=first.diagnostics["evaluations"]).attribute(TableProblem(7, seed=2))
    assert first.diagnostics["samples"] == n
    np.testing.assert_array_equal(first.scores, again.scores)
    np.testing.assert_array_equal(first.diagnostics["stderr"], again.diagnostics["stderr"])


def test_blocks_double_from_the_first_to_the_largest():
    problem = TableProblem(12)
    KernelShap(budget=2 + 64 + 128 + 256 + 512 + 1000).attribute(problem)
    assert [len(k) for k in problem.seen] == [2, 64, 128, 256, 512, 1000]
    problem = TableProblem(12)
    Lime(budget=3 * sampling.SAMPLE_BLOCK).attribute(problem)
    assert [len(k) for k in problem.seen] == [64, 128, 256, 512, 1024, 2048, 4096, 4096, 64]


@pytest.mark.parametrize(
    "params, message",
    [
        ({"n_samples": 10, "budget": 100}, "n_samples and budget are given"),
        ({"budget": 100, "budget_seconds": 1.0}, "budget and budget_seconds are given"),
        ({"n_samples": 10, "budget_seconds": 1.0}, "n_samples and budget_seconds are given"),
        ({"stop_top_k": 6}, "stop_top_k=6 must be less than the 6 features"),
    ],
)
@pytest.mark.parametrize("name", METHODS)
def test_conflicting_budgets_are_refused_before_any_coalition_is_scored(name, params, message):
    problem = TableProblem(6)
    with pytest.raises(InvalidParameterError, match=message):
        METHODS[name](**params).attribute(problem)
    assert problem.seen == []


@pytest.mark.parametrize(
    "name, smallest", [("shapley_sampling", 2 + 2 * 5), ("kernel_shap", 3), ("lime", 2), ("context_cite", 2)]
)
def test_a_budget_below_the_smallest_run_is_refused_naming_it(name, smallest):
    with pytest.raises(InvalidParameterError, match=f"less than the {smallest} the smallest run needs"):
        METHODS[name](budget=smallest - 1).attribute(TableProblem(6))
    assert METHODS[name](budget=smallest).attribute(TableProblem(6)).diagnostics["evaluations"] == smallest


class Clock:
    """A fake ``perf_counter`` that the problem's evaluations advance by ``tick`` per coalition."""

    def __init__(self, tick: float) -> None:
        self.now, self.tick = 100.0, tick

    def __call__(self) -> float:
        return self.now


class TimedProblem(TableProblem):
    clock: Clock

    def evaluate(self, keep: torch.Tensor) -> torch.Tensor:
        self.clock.now += self.clock.tick * len(keep)
        return super().evaluate(keep)


@pytest.mark.parametrize("name", METHODS)
def test_a_run_on_seconds_stops_before_its_time_and_is_replayed_by_its_evaluations(name, monkeypatch):
    clock = Clock(tick=0.001)
    monkeypatch.setattr(sampling, "perf_counter", clock)
    timed = TimedProblem(10, seed=5)
    timed.clock = clock
    out = METHODS[name](budget_seconds=0.6).attribute(timed)
    used = out.diagnostics["evaluations"]
    assert out.diagnostics["stopped"] == "seconds" and used == _evaluated(timed)
    assert 0.3 < (clock.now - 100.0) <= 0.6  # the block that would have overrun was not scored
    again = METHODS[name](budget=used).attribute(TableProblem(10, seed=5))
    np.testing.assert_array_equal(out.scores, again.scores)
    np.testing.assert_array_equal(out.token_scores, again.token_scores)
    np.testing.assert_array_equal(out.diagnostics["stderr"], again.diagnostics["stderr"])


@pytest.mark.parametrize("name", METHODS)
def test_a_run_on_seconds_on_a_model_is_replayed_exactly(llama, name):
    prompt, target = "The cat sat on the mat. Then a dog runs!", " and the bird"
    first = genattr.explain(llama, prompt, target=target, method=name, seed=3, budget_seconds=0.05)
    params = {**first.params, "budget_seconds": None, "budget": first.diagnostics["evaluations"]}
    again = genattr.explain(llama, prompt, target=target, method=name, seed=3, **params)
    np.testing.assert_array_equal(first.scores, again.scores)
    np.testing.assert_array_equal(first.token_scores, again.token_scores)
    assert again.diagnostics["evaluations"] == first.diagnostics["evaluations"]


# --------------------------------------------------------------------- early stopping
def test_the_top_k_rule_needs_the_same_set_over_the_window_and_a_gap_of_z_errors():
    """Top two {0, 2}, the gap to the third 1: it settles at the STOP_WINDOW-th check when
    STOP_Z sqrt(2) se is just below 1, not just above, not with NaN errors, not after a change."""
    scores = torch.tensor([3.0, 1.0, 2.0, 0.0], dtype=torch.float64)

    def se(threshold: float) -> torch.Tensor:
        return torch.full((4,), threshold / (STOP_Z * math.sqrt(2)), dtype=torch.float64)

    history: list = []
    settled = [top_k_settled(history, scores, se(0.99), 2) for _ in range(STOP_WINDOW + 1)]
    assert settled == [False] * (STOP_WINDOW - 1) + [True, True]
    assert history[-1] == frozenset({0, 2})
    changed = [frozenset({0, 1})] + [frozenset({0, 2})] * (STOP_WINDOW - 2)
    assert not top_k_settled(changed, scores, se(0.99), 2)
    assert not top_k_settled([frozenset({0, 2})] * STOP_WINDOW, scores, se(1.01), 2)
    assert not top_k_settled([frozenset({0, 2})] * STOP_WINDOW, scores, se(math.nan), 2)


@pytest.mark.parametrize("name", METHODS)
def test_stop_top_k_stops_once_settled_and_is_replayed_by_its_evaluations(name):
    """On a game with two dominant features the run stops early; at that point the top two are
    the exact top two and STOP_Z errors above the third."""
    problem = TableProblem(12, seed=4)
    problem.w[[2, 5]] += 8.0
    out = METHODS[name](budget=4000, stop_top_k=2).attribute(problem)  # below the 2^12 of enumeration
    assert out.diagnostics["stopped"] == "top_k" and out.diagnostics["evaluations"] < 4000
    order = np.argsort(-out.scores.numpy(), kind="stable")
    assert set(order[:2]) == {2, 5}
    se = np.asarray(out.diagnostics["stderr"])
    gap = out.scores[order[1]] - out.scores[order[2]]
    assert gap > STOP_Z * math.hypot(se[order[1]], se[order[2]])
    replay = TableProblem(12, seed=4)
    replay.w[[2, 5]] += 8.0
    again = METHODS[name](budget=out.diagnostics["evaluations"]).attribute(replay)
    np.testing.assert_array_equal(out.scores, again.scores)


# --------------------------------------------------------------------- against exact Shapley
SHAPLEY = [
    ("shapley_sampling", {}),
    ("shapley_sampling", {"paired": False}),
    ("kernel_shap", {"sampling": "kernel"}),
    ("kernel_shap", {"sampling": "leverage"}),
    ("kernel_shap", {"paired": False}),
]


@pytest.mark.parametrize("name, params", SHAPLEY)
def test_the_error_against_exact_shapley_falls_with_the_budget(name, params):
    """Mean absolute error over seeds on a 12-feature game with interactions: 16 times the
    budget (still below the 2^12 coalitions) cuts it by well over half (1/4 expected, the error
    going as 1 / sqrt(budget))."""
    exact = _exact(TableProblem(12))[:, 0]

    def error(budget: int) -> float:
        runs = [METHODS[name](budget=budget, **params).attribute(TableProblem(12, seed=s)) for s in range(8)]
        return float(np.mean([np.abs(r.scores.numpy() - exact).mean() for r in runs]))

    small, large = error(150), error(16 * 150)
    assert large < 0.45 * small and large < 0.05 * np.abs(exact).mean()


def test_kernel_shap_on_a_budget_of_every_coalition_is_exact():
    problem = TableProblem(6)
    out = KernelShap(budget=2**6).attribute(problem)
    np.testing.assert_allclose(out.scores, _exact(problem)[:, 0], rtol=1e-9, atol=1e-12)
    assert out.diagnostics["stderr"] == [0.0] * 6 and out.diagnostics["evaluations"] == 2**6


def test_paired_permutations_are_exact_on_a_game_of_pairwise_interactions():
    """Oracle: in pi and reversed pi, feature i follows j exactly once, so each pairwise
    interaction is split in half: one pair of permutations gives the Shapley values."""
    problem = QuadraticProblem(7, seed=3)
    exact = _exact(problem)
    one_pair = ShapleySampling(n_samples=2).attribute(problem)
    np.testing.assert_allclose(one_pair.scores, exact[:, 0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(one_pair.token_scores, exact[:, 1:].T, rtol=1e-12, atol=1e-12)
    unpaired = ShapleySampling(n_samples=2, paired=False).attribute(QuadraticProblem(7, seed=3))
    assert np.abs(unpaired.scores.numpy() - exact[:, 0]).max() > 1e-3


@pytest.mark.parametrize("name", ["shapley_sampling", "kernel_shap"])
def test_paired_sampling_has_a_lower_variance_at_equal_evaluations(name):
    """Squared error against exact Shapley over 40 seeds, on the game with interactions of every
    order, at the same budget: pairs lower it."""
    exact = _exact(TableProblem(10))[:, 0]

    def mse(paired: bool) -> float:
        errors = [
            METHODS[name](budget=450, paired=paired).attribute(TableProblem(10, seed=s)).scores.numpy()
            - exact
            for s in range(40)
        ]
        return float(np.mean(np.square(errors)))

    assert mse(True) < 0.8 * mse(False)


def test_leverage_sampling_draws_sizes_uniformly_in_complementary_pairs_and_weights_by_kernel_over_p():
    """The sizes are uniform on 1..F-1; the fit is the constrained least squares (KKT oracle) on the
    drawn coalitions weighted by pi(z) / p(z) = (F - 1)^2 / (|z| (F - |z|))."""
    F, n = 12, 4000  # below the 2^12 - 2 proper coalitions: sampled
    problem = TableProblem(F, seed=6)
    out = KernelShap(n_samples=n, sampling="leverage").attribute(problem)
    inner = torch.cat(problem.seen[1:])
    assert len(inner) == n and torch.equal(inner[1::2], ~inner[0::2])
    counts = np.bincount(inner.sum(1).numpy(), minlength=F)[1:]
    sd = math.sqrt(n * (1 / (F - 1)) * (1 - 1 / (F - 1)) * 2)  # pairs: s and F - s drawn together
    assert np.all(np.abs(counts - n / (F - 1)) < 5 * sd)
    sizes = inner.sum(1).double().numpy()
    weights = (F - 1) ** 2 / (sizes * (F - sizes))
    p, w = size_law(F, "leverage")
    np.testing.assert_allclose(w.numpy(), (F - 1) ** 2 / (np.arange(1, F) * (F - np.arange(1, F))))
    np.testing.assert_allclose(p.numpy(), np.full(F - 1, 1 / (F - 1)))
    ends = problem.evaluate(torch.stack([torch.zeros(F, dtype=torch.bool), torch.ones(F, dtype=torch.bool)]))
    v = problem.evaluate(inner).numpy()
    e = ends.numpy()
    phi = _constrained_least_squares(
        inner.numpy().astype(float), v[:, 0] - e[0, 0], weights, e[1, 0] - e[0, 0]
    )
    np.testing.assert_allclose(out.scores, phi, rtol=1e-7, atol=1e-9)


# --------------------------------------------------------------------- standard errors
def _lime_population(problem: TableProblem) -> np.ndarray:
    """LIME's target as its samples grow (alpha = 0): the least squares over every coalition z
    weighted by P(z) pi(z), P(z) = 1 / (F C(F, F - |z|)) for |z| < F."""
    F = problem.n_features
    keep = coalition_masks(F)
    values = problem.evaluate(keep)[:, 0].numpy()
    sizes = keep.sum(1).numpy()
    P = np.array([1 / (F * math.comb(F, F - s)) if s < F else 0.0 for s in sizes])
    pi = np.exp(-((1 - np.sqrt(sizes / F)) ** 2) / (2 * 0.25**2))
    X = np.hstack([np.ones((len(keep), 1)), keep.numpy().astype(float)])
    W = P * pi
    return np.linalg.solve(X.T @ (W[:, None] * X), X.T @ (W * values))[1:]


def _lasso_population(problem: TableProblem) -> np.ndarray:
    """ContextCite's target as its ablations grow (keep_prob 1/2: every coalition alike): the
    LASSO over the table of all 2^F coalitions."""
    F = problem.n_features
    keep = coalition_masks(F)
    return lasso(keep, problem.evaluate(keep)[:, :1], 0.01)[0][:, 0].numpy()


CALIBRATION = [
    ("shapley_sampling", {"n_samples": 40}, _exact),
    ("shapley_sampling", {"n_samples": 40, "paired": False}, _exact),
    ("kernel_shap", {"n_samples": 120, "sampling": "kernel"}, _exact),
    ("kernel_shap", {"n_samples": 120, "sampling": "leverage"}, _exact),
    ("lime", {"n_samples": 200, "alpha": 0.0}, _lime_population),
    ("context_cite", {"n_samples": 200}, _lasso_population),
]


@pytest.mark.parametrize("name, params, target", CALIBRATION)
def test_the_standard_errors_are_calibrated_on_both_sides(name, params, target):
    """Over 60 seeds and 8 features, |estimate - target| / stderr is below 1 for about 68% (too
    few: errors too small; too many: too large) and below 3 for nearly all."""
    truth = target(TableProblem(8))
    truth = truth[:, 0] if truth.ndim == 2 else truth
    z = []
    for seed in range(60):
        out = METHODS[name](**params).attribute(TableProblem(8, seed=seed))
        z.append(np.abs(out.scores.numpy() - truth) / np.asarray(out.diagnostics["stderr"]))
    z = np.concatenate(z)
    assert 0.55 < np.mean(z < 1) < 0.82
    assert np.mean(z < 3) > 0.95


def test_the_jackknife_errors_of_kernel_shap_and_lime_are_brute_force_refits():
    """Oracle: group g holds the units u with u mod 16 = g (a complementary pair is one unit);
    each group is left out in turn and the fit redone from scratch (KKT system, NumPy ridge)."""
    F = 8
    problem = TableProblem(F, seed=7)
    out = KernelShap(n_samples=70, sampling="kernel").attribute(problem)  # unit weights
    ends, inner = problem.seen[0], torch.cat(problem.seen[1:])
    e, v = problem.evaluate(ends).numpy(), problem.evaluate(inner).numpy()
    Z = inner.numpy().astype(float)
    group = (np.arange(len(Z)) // 2) % 16
    fits = [
        _constrained_least_squares(
            Z[group != g], v[group != g, 0] - e[0, 0], np.ones((group != g).sum()), e[1, 0] - e[0, 0]
        )
        for g in range(16)
    ]
    expected = jackknife_stderr(out.scores, [torch.tensor(f) for f in fits])
    np.testing.assert_allclose(out.diagnostics["stderr"], expected.numpy(), rtol=1e-6)
    spread = np.std(fits, axis=0) * math.sqrt(15)  # the formula written out once
    np.testing.assert_allclose(expected.numpy(), spread, rtol=1e-10)

    problem = TableProblem(F, seed=8)
    out = Lime(n_samples=50, alpha=0.5).attribute(problem)
    keep = torch.cat(problem.seen)
    v = problem.evaluate(keep).numpy()[:, 0]
    Z = keep.numpy().astype(float)
    pi = np.exp(-((1 - np.sqrt(Z.sum(1) / F)) ** 2) / (2 * 0.25**2))
    group = np.arange(len(Z)) % 16

    def ridge(rows):
        X = np.hstack([np.ones((rows.sum(), 1)), Z[rows]])
        A = X.T @ (pi[rows, None] * X) + 0.5 * np.diag([0.0] + [1.0] * F)
        return np.linalg.solve(A, X.T @ (pi[rows] * v[rows]))[1:]

    fits = [ridge(group != g) for g in range(16)]
    expected = jackknife_stderr(torch.tensor(ridge(group >= 0)), [torch.tensor(f) for f in fits])
    np.testing.assert_allclose(out.diagnostics["stderr"], expected.numpy(), rtol=1e-6)


# --------------------------------------------------------------------- ContextCite
def _sparse_linear_game() -> QuadraticProblem:
    """v(S) = sum_i w_i z_i with w_1 = w_4 = w_7 = 0 (no interactions)."""
    problem = QuadraticProblem(10, seed=1)
    problem.pairs.zero_()
    problem.w[[1, 4, 7]] = 0.0
    return problem


def test_context_cite_recovers_a_sparse_linear_game_and_predicts_held_out_ablations():
    """Oracle by construction: on a linear game the LASSO's coefficients are w up to its
    shrinkage (alpha / Var(z_i) = 4 alpha at keep_prob 1/2), the zeros are exact, and the
    held-out ablations are predicted exactly."""
    problem = _sparse_linear_game()
    w = problem.w.numpy()
    tiny = ContextCite(n_samples=300, alpha=1e-6).attribute(problem)
    np.testing.assert_allclose(tiny.scores, w, atol=1e-4)
    assert tiny.diagnostics["held_out"] == 75
    assert tiny.diagnostics["held_out_r2"] == pytest.approx(1.0, abs=1e-8)
    assert tiny.diagnostics["held_out_pearson"] == pytest.approx(1.0, abs=1e-8)
    assert tiny.diagnostics["intercept"] == pytest.approx(0.0, abs=1e-4)
    alpha = 1e-3
    sparse = ContextCite(n_samples=300, alpha=alpha).attribute(_sparse_linear_game())
    assert sparse.diagnostics["nonzero"] == 7 and (sparse.scores.numpy()[[1, 4, 7]] == 0).all()
    np.testing.assert_allclose(sparse.scores, w - 4 * alpha * np.sign(w), atol=1.5 * alpha)
    assert sparse.diagnostics["held_out_r2"] == pytest.approx(1.0, abs=1e-4)


def test_context_cite_is_the_lasso_of_its_fitted_ablations_checked_on_the_rest():
    """Oracle: the KKT conditions of min 1/(2N) |y - b - Z c|^2 + alpha |c|_1 on the ablations
    that were not held out (every fourth: floor(n / 4) of the first n), and the held-out R^2,
    Pearson and Spearman correlations recomputed from the rest."""
    from scipy.stats import pearsonr, spearmanr

    F, n, alpha = 8, 120, 0.05
    problem = TableProblem(F, seed=9)
    out = ContextCite(n_samples=n, alpha=alpha, keep_prob=0.3).attribute(problem)
    keep = torch.cat(problem.seen)
    assert len(keep) == n and abs(float(keep.double().mean()) - 0.3) < 0.05
    out_rows = held_out(torch.arange(n), 0.25).numpy()
    assert out_rows.sum() == 30 and [held_out(torch.arange(k), 0.25).sum() for k in (3, 4, 7, 8)] == [
        0,
        1,
        1,
        2,
    ]
    y = problem.evaluate(keep).numpy()[:, 0]
    Z = keep.numpy().astype(float)
    c, b = out.scores.numpy(), out.diagnostics["intercept"]
    residual = y[~out_rows] - b - Z[~out_rows] @ c
    gradient = Z[~out_rows].T @ residual / (~out_rows).sum()
    assert abs(residual.mean()) < 1e-6
    active = c != 0
    assert active.any() and (~active).any()
    np.testing.assert_allclose(gradient[active], alpha * np.sign(c[active]), atol=1e-5)
    assert np.all(np.abs(gradient[~active]) <= alpha + 1e-5)
    predicted, actual = b + Z[out_rows] @ c, y[out_rows]
    r2 = 1 - ((actual - predicted) ** 2).sum() / ((actual - actual.mean()) ** 2).sum()
    assert out.diagnostics["held_out_r2"] == pytest.approx(r2, rel=1e-9)
    assert out.diagnostics["held_out_pearson"] == pytest.approx(pearsonr(predicted, actual)[0], rel=1e-9)
    assert out.diagnostics["held_out_spearman"] == pytest.approx(spearmanr(predicted, actual)[0], rel=1e-9)


def test_context_cite_token_rows_are_each_tokens_lasso():
    problem = TableProblem(6, seed=2)
    out = ContextCite(n_samples=40, held_out=0.0).attribute(problem)
    keep = torch.cat(problem.seen)
    coef = lasso(keep, problem.evaluate(keep), 0.01)[0].numpy()
    np.testing.assert_allclose(out.token_scores, coef[:, 1:].T, rtol=1e-10, atol=1e-12)
    assert np.isnan(out.diagnostics["held_out_r2"]) and out.diagnostics["held_out"] == 0


def test_context_cite_is_registered_with_its_flags():
    info = next(i for i in genattr.methods() if i.name == "context_cite")
    assert info.flags() == ["stochastic", "token-scores", "stderr", "output-tokens", "contrast"]
    for name in ("shapley_sampling", "kernel_shap", "lime"):
        assert "stderr" in next(i for i in genattr.methods() if i.name == name).flags()


@pytest.mark.parametrize("name", METHODS)
def test_the_units_drawn_do_not_depend_on_the_blocks(name, monkeypatch):
    """The stream draws DRAW_CHUNK units at a time whatever a block takes: smaller blocks score
    the same coalitions in the same order (unpaired permutations: a block scores its
    permutations, then their reverses)."""
    params = {"n_samples": 24, "paired": False} if name == "shapley_sampling" else {"n_samples": 300}
    default = TableProblem(10, seed=11)
    METHODS[name](**params).attribute(default)
    monkeypatch.setattr(sampling, "FIRST_BLOCK", 7)
    monkeypatch.setattr(sampling, "SAMPLE_BLOCK", 40)
    small = TableProblem(10, seed=11)
    METHODS[name](**params).attribute(small)
    assert len(small.seen) > len(default.seen) > 1
    torch.testing.assert_close(torch.cat(small.seen), torch.cat(default.seen), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["shapley_sampling", "kernel_shap"])
def test_one_feature_is_the_whole_difference_without_error(name):
    problem = TableProblem(1)
    out = METHODS[name](budget=50).attribute(problem)
    v = problem.evaluate(torch.tensor([[False], [True]])).numpy()
    np.testing.assert_allclose(out.scores, [v[1, 0] - v[0, 0]], rtol=1e-12)
    np.testing.assert_allclose(out.token_scores, (v[1, 1:] - v[0, 1:])[:, None], rtol=1e-12)
    assert out.diagnostics["stderr"] == [0.0] and out.diagnostics["evaluations"] == 2
