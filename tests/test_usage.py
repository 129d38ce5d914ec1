"""The usage counters in every result's diagnostics: backward passes and their tokens, counted
against the method's plan (chunks of interpolation steps) and against every call of
torch.autograd.grad that a method makes."""

from __future__ import annotations

import pytest
import torch

import genattr
from genattr.evaluate.tables import cost_table
from genattr.registry import methods

PROMPT = "The cat sat on the mat."
TARGET = " and the bird sings"
# deeplift and lrp run under a TorchFunctionMode, which torch.autograd.grad dispatches to: a spy
# on it sees each of their calls twice; their counts are checked against their plans instead.
GRADIENT_METHODS = [i.name for i in methods() if i.needs_gradients and i.name not in ("deeplift", "lrp")]


@pytest.fixture
def grad_calls(monkeypatch):
    """Every torch.autograd.grad call made while the test runs (its keyword arguments)."""
    calls: list[dict] = []
    plain = torch.autograd.grad

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return plain(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", spy)
    return calls


@pytest.mark.parametrize(("rows", "chunks"), [(10, 1), (3, 4), (1, 10)])
def test_integrated_gradients_counts_the_backward_passes_of_its_plan(
    llama, grad_calls, monkeypatch, rows, chunks
):
    """10 steps in chunks of ``rows`` rows: per chunk one pass through the head (rows x n positions
    kept) and one through the model batched over the n target tokens (rows x T tokens, T = L + n - 1,
    n times)."""
    plain = genattr.explain(llama, PROMPT, target=TARGET, method="leave_one_out")
    L, n = len(plain.prompt.input_ids), len(plain.target.ids)
    monkeypatch.setattr(llama, "max_batch_tokens", rows * (L + n) * n)  # a chunk: rows x (L + n) x n outputs
    steps = 10
    d = genattr.explain(
        llama, PROMPT, target=TARGET, method="integrated_gradients", n_steps=steps
    ).diagnostics
    assert d["forward_passes"] == 1 + chunks  # the input and the baseline in one pass, then the chunks
    assert d["backward_passes"] == 2 * chunks == len(grad_calls)
    assert d["backward_tokens"] == steps * n + steps * (L + n - 1) * n


@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_every_autograd_call_of_a_gradient_method_is_counted(llama, grad_calls, method):
    res = genattr.explain(llama, PROMPT, target=TARGET, method=method, **_small(method))
    assert res.diagnostics["backward_passes"] == len(grad_calls) > 0
    assert res.diagnostics["backward_tokens"] > 0


def _small(method: str) -> dict:
    """Keyword arguments keeping ``method`` cheap (n_steps, n_samples, n_iter, k where it takes them)."""
    params = genattr.registry.get(method).params
    kw = {key: 4 for key in ("n_steps", "n_samples") if key in params}
    if "n_iter" in params:
        kw.update(n_iter=2, k=2)
    return kw


def test_deeplift_runs_one_head_pass_and_one_batched_backward_pass(llama):
    res = genattr.explain(llama, PROMPT, target=TARGET, method="deeplift")
    L, n = len(res.prompt.input_ids), len(res.target.ids)
    d = res.diagnostics
    assert d["backward_passes"] == 2
    assert d["backward_tokens"] == n + (L + n - 1) * n


def test_xprompt_counts_its_one_mask_gradient(llama):
    res = genattr.explain(llama, PROMPT, target=TARGET, method="xprompt", k=3, n_iter=4, proposals_per_step=4)
    L, n = len(res.prompt.input_ids), len(res.target.ids)
    assert res.diagnostics["backward_passes"] == 1
    assert res.diagnostics["backward_tokens"] == L + n - 1


def test_leave_one_out_runs_no_backward_pass(llama, grad_calls):
    d = genattr.explain(llama, PROMPT, target=TARGET, method="leave_one_out").diagnostics
    assert d["backward_passes"] == d["backward_tokens"] == len(grad_calls) == 0
    assert d["forward_passes"] >= 1


def test_the_benchmark_cost_table_shows_the_backward_counters():
    rows = [
        {"method": "m", "backward_passes": 2, "backward_tokens": 300},
        {"method": "m", "backward_passes": 4, "backward_tokens": 500},
    ]
    table = cost_table(rows, ["m"])
    assert "| backward passes ↓ | **3.00** |" in table and "| backward tokens ↓ | **400.00** |" in table
