"""LIME against an independent weighted ridge regression (NumPy normal equations) on the coalitions it
sampled, with the exponential kernel on the cosine distance written out here, on a game with
interactions (where the kernel changes the fit); and its sampling distribution: the full prompt
first, then the number of removed features uniform in 1..F and which ones uniform."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genattr.algorithms.surrogate import Lime
from genattr.text.target import Target


class TableProblem:
    """A stand-in for :class:`genattr.problem.Problem` whose coalition values are a fixed game:
    column 0 the sequence value, columns 1.. two per-token values summing to it."""

    def __init__(self, n_features: int, seed: int = 0) -> None:
        self.n_features, self.seed, self.seen = n_features, seed, []
        self.target = Target((7, 8), " a b", (" a", " b"), False)  # two target tokens
        self.n_outputs = 2  # one per-token column each
        g = torch.Generator().manual_seed(100 + n_features)
        self.w = torch.randn(n_features, generator=g, dtype=torch.float64)
        self.pairs = torch.randn(n_features, n_features, generator=g, dtype=torch.float64).triu(1)

    def generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed)

    def all_kept(self, rows: int = 1) -> torch.Tensor:
        return torch.ones(rows, self.n_features, dtype=torch.bool)

    def evaluate(self, keep: torch.Tensor) -> torch.Tensor:
        self.seen.append(keep.clone())
        z = keep.double()
        first = z @ self.w  # additive part on the first token
        second = 0.4 + ((z @ self.pairs) * z).sum(1) - 1.5 * z.prod(1)  # interactions on the second
        return torch.stack([first + second, first, second], 1)


def _oracle(keep: torch.Tensor, values: torch.Tensor, width: float, alpha: float) -> np.ndarray:
    """argmin_{b, c} sum_z pi(z) (v(z) - b - z . c)^2 + alpha |c|^2, pi(z) = exp(-d^2 / (2 w^2)) with
    d = 1 - cos(1, z) = 1 - sqrt(|z| / F); returns c [F, m]."""
    Z = keep.numpy().astype(np.float64)
    n, F = Z.shape
    d = 1 - np.sqrt(Z.sum(1) / F)
    pi = np.exp(-(d**2) / (2 * width**2))
    X = np.hstack([np.ones((n, 1)), Z])
    penalty = alpha * np.diag([0.0] + [1.0] * F)
    A = X.T @ (pi[:, None] * X) + penalty
    return np.linalg.solve(A, X.T @ (pi[:, None] * values.numpy()))[1:]


@pytest.mark.parametrize("F,width,alpha", [(5, 0.25, 1.0), (6, 0.6, 0.0), (4, 0.1, 0.3)])
def test_lime_equals_the_kernel_weighted_ridge_on_its_coalitions(F, width, alpha):
    problem = TableProblem(F, seed=F)
    out = Lime(n_samples=60, kernel_width=width, alpha=alpha).attribute(problem)
    keep = torch.cat(problem.seen)  # every block of coalitions scored
    coef = _oracle(keep, problem.evaluate(keep), width, alpha)
    np.testing.assert_allclose(out.scores, coef[:, 0], rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(out.token_scores, coef[:, 1:].T, rtol=1e-7, atol=1e-9)
    # the kernel matters on this game: uniform weights give another fit
    assert np.abs(_oracle(keep, problem.evaluate(keep), 1e6, alpha)[:, 0] - coef[:, 0]).max() > 1e-2


def test_lime_intercept_is_the_fitted_value_of_the_empty_coalition():
    problem = TableProblem(5)
    out = Lime(n_samples=40, alpha=0.0).attribute(problem)
    keep = torch.cat(problem.seen)  # every block of coalitions scored
    Z = keep.numpy().astype(np.float64)
    d = 1 - np.sqrt(Z.sum(1) / 5)
    pi = np.exp(-(d**2) / (2 * 0.25**2))
    X = np.hstack([np.ones((len(Z), 1)), Z])
    beta = np.linalg.solve(X.T @ (pi[:, None] * X), X.T @ (pi * problem.evaluate(keep)[:, 0].numpy()))
    assert out.diagnostics["intercept"] == pytest.approx(beta[0], rel=1e-7, abs=1e-9)


def test_lime_samples_the_full_prompt_then_uniform_sizes_and_uniform_members():
    F, n = 4, 8001
    problem = TableProblem(F, seed=3)
    Lime(n_samples=n).attribute(problem)
    keep = torch.cat(problem.seen)  # every block of coalitions scored
    assert keep.shape == (n, F) and bool(keep[0].all())
    removed = (~keep[1:]).long()
    sizes = removed.sum(1)
    assert int(sizes.min()) == 1 and int(sizes.max()) == F
    counts = torch.bincount(sizes, minlength=F + 1)[1:].double()
    expected, sd = (n - 1) / F, ((n - 1) * (1 / F) * (1 - 1 / F)) ** 0.5
    assert float((counts - expected).abs().max()) < 5 * sd
    for s in range(1, F):  # within a size, every feature is removed equally often
        rows = removed[sizes == s].double()
        share = rows.mean(0)
        sd = (s / F * (1 - s / F) / len(rows)) ** 0.5
        assert float((share - s / F).abs().max()) < 5 * sd
