"""Accuracy at equal cost: genattr's sampling estimators and Captum's ShapleyValueSampling against
exact Shapley values, at the same number of model evaluations, on the zoo model.

Prompts: zoo examples (``genattr.zoo.examples``); the zoo's tokenizer has one token per word, so
the features are the words, genattr's ``level="token"`` features, Captum's interpretable tokens
(bench/peers.py builds the Captum run and states the conventions: a removed token is replaced by
token 0, the objective is log p(answer) teacher-forced). Exact Shapley values come from all 2^F
coalitions (``shapley_exact``).

1. Versus Captum, on prompts of 11 or 12 words (2^F above every budget, so ``kernel_shap``
   samples): each row gets a budget B per column, genattr ``budget=B`` and Captum
   ``n_samples = (B - 1) // F`` permutations; the table prints the mean absolute error to the
   exact values over prompts and seeds, and the mean evaluations spent: genattr's
   ``diagnostics['evaluations']`` (coalitions scored, the two ends included), Captum's forward
   calls (counted by a hook; 1 + n_samples * F). ``context_cite`` fits a LASSO of the keep
   indicators (each feature kept with probability 1/2), not the Shapley values: its error does
   not vanish with the budget; its held-out R^2 is printed below the table.
2. The sampling choices, on prompts of 10 to 12 words and many seeds: each prompt's 2^F
   coalition values are scored once, and the estimators then read them from that table (a
   stand-in problem), so that only the draws vary. Printed: the mean squared error to the exact
   values of ``paired=True`` over ``paired=False`` (shapley_sampling) and of
   ``sampling="leverage"`` over ``"kernel"`` (kernel_shap), at equal budgets, per prompt and as
   a geometric mean over prompts.

Run from the repository root (captum from the ``bench`` extra):

    nice -n 10 .venv/bin/python bench/estimators.py [--seeds N] [--prompts N] [--budgets 100,400,1600]
                                                     [--table-seeds N] [--table-prompts N] [--skip-captum]
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch

import genattr
import genattr.zoo
import peers
from genattr.algorithms.perturbation import coalition_masks, shapley_from_table
from genattr.algorithms.shapley import KernelShap, ShapleySampling
from genattr.errors import ConvergenceWarning
from genattr.masking import Masker
from genattr.problem import Problem
from genattr.text.prompt import Prompt
from genattr.text.target import Target, resolve_target

BASELINE_ID = 0
CAPTUM = "captum ShapleyValueSampling"
RUNS = {
    "shapley_sampling (paired)": ("shapley_sampling", {"paired": True}),
    "shapley_sampling (unpaired)": ("shapley_sampling", {"paired": False}),
    "kernel_shap (leverage)": ("kernel_shap", {"sampling": "leverage"}),
    "kernel_shap (kernel)": ("kernel_shap", {"sampling": "kernel"}),
    "context_cite": ("context_cite", {}),
}
TASKS = ("recall", "copy", "story", "sentiment")


def zoo_prompts(n: int, words: tuple[int, int]) -> list[tuple[str, str]]:
    """The first ``n`` zoo examples, tasks in turn, whose prompt has ``words`` (min, max) words."""
    found = []
    pools = [genattr.zoo.examples(task, 40, seed=7) for task in TASKS]
    for i in range(40):
        for pool in pools:
            if words[0] <= len(pool[i].prompt.split()) <= words[1] and len(found) < n:
                found.append((pool[i].prompt, pool[i].answer))
    return found


def captum_shapley(lm, prompt: str, answer_ids: list[int], budget: int, seed: int) -> tuple[np.ndarray, int]:
    """Captum's ShapleyValueSampling with as many permutations as ``budget`` evaluations buy:
    (sequence scores, forward calls made)."""
    prompt_obj = Prompt.from_text(lm.tokenizer, prompt)
    F = len(peers.token_features(prompt_obj))
    runs = peers.captum_perturbation_runs(
        lm, prompt_obj, answer_ids, baseline=BASELINE_ID, n_samples=max(1, (budget - 1) // F), seed=seed
    )
    calls = []  # Captum calls model.forward itself, past the model's own hooks: count the embeddings'
    hook = lm.model.get_input_embeddings().register_forward_hook(lambda *args: calls.append(1))
    try:
        out = runs[peers.CAPTUM_SHAPLEY]()
    finally:
        hook.remove()
    return out.seq_attr.double().numpy(), len(calls)


def versus_captum(lm, args, budgets: list[int]) -> None:
    cases = zoo_prompts(args.prompts, (11, 12))
    names = [*RUNS, *([] if args.skip_captum else [CAPTUM])]
    errors = {(name, b): [] for name in names for b in budgets}
    spent = {(name, b): [] for name in names for b in budgets}
    fit = {b: [] for b in budgets}
    common = {"level": "token", "mask": "replace", "mask_token": BASELINE_ID}
    for prompt, answer in cases:
        exact = genattr.explain(lm, prompt, target=answer, method="shapley_exact", **common)
        print(
            f"F={len(exact.features)} {prompt!r} -> {answer!r}: mean |phi| {np.abs(exact.scores).mean():.3f}"
        )
        for b in budgets:
            for seed in range(args.seeds):
                for label, (method, params) in RUNS.items():
                    res = genattr.explain(
                        lm, prompt, target=answer, method=method, seed=seed, budget=b, **common, **params
                    )
                    errors[label, b].append(np.abs(res.scores - exact.scores).mean())
                    spent[label, b].append(res.diagnostics["evaluations"])
                    if method == "context_cite":
                        fit[b].append(res.diagnostics["held_out_r2"])
                if not args.skip_captum:
                    scores, calls = captum_shapley(lm, prompt, list(exact.target.ids), b, seed)
                    errors[CAPTUM, b].append(np.abs(scores - exact.scores).mean())
                    spent[CAPTUM, b].append(calls)
    print(
        f"\nmean |estimate - exact Shapley| over {len(cases)} prompts x {args.seeds} seeds "
        "(evaluations spent in brackets)"
    )
    width = max(len(n) for n in names)
    print(f"| {'method':<{width}} | " + " | ".join(f"{'budget ' + str(b):>20}" for b in budgets) + " |")
    print(f"|{'-' * (width + 2)}|" + "|".join("-" * 22 for _ in budgets) + "|")
    for name in names:
        cells = [f"{np.mean(errors[name, b]):.4f} ({np.mean(spent[name, b]):6.0f})" for b in budgets]
        print(f"| {name:<{width}} | " + " | ".join(f"{c:>20}" for c in cells) + " |")
    print(
        "\ncontext_cite held-out R^2 (mean over runs): "
        + ", ".join(f"budget {b}: {np.nanmean(fit[b]):.3f}" for b in budgets)
    )


class TableLookup:
    """What the sampling estimators use of a Problem, with coalition values read from a table of
    all 2^F coalitions [2^F, 1 + n] (row index = bitmask)."""

    def __init__(self, table: torch.Tensor, n_features: int, target: Target, seed: int) -> None:
        self.table, self.n_features, self.target, self.seed = table, n_features, target, seed

    def generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed)

    def evaluate(self, keep: torch.Tensor) -> torch.Tensor:
        return self.table[(keep.long() << torch.arange(self.n_features)).sum(1)]


def table_mse(problem: Problem, table: torch.Tensor, seeds: int, cls, budget: int, **params) -> float:
    """Mean squared error to the exact Shapley values of ``cls(budget=budget, **params)`` over
    ``seeds`` seeds, reading the coalition values from ``table``."""
    F = problem.n_features
    exact = shapley_from_table(table, F)[:, 0].numpy()
    runs = [
        cls(budget=budget, **params).attribute(TableLookup(table, F, problem.target, s)) for s in range(seeds)
    ]
    return float(np.mean([np.mean((r.scores.numpy() - exact) ** 2) for r in runs]))


def sampling_choices(lm, args, budgets: list[int]) -> None:
    """Mean squared error ratios at equal budgets: paired / unpaired, leverage / kernel."""
    pairs, leverage = {b: [] for b in budgets}, {b: [] for b in budgets}
    print(f"\nmean squared error ratios at equal budgets, {args.table_seeds} seeds per prompt and budget")
    for prompt, answer in zoo_prompts(args.table_prompts, (10, 12)):
        prompt_obj = Prompt.from_text(lm.tokenizer, prompt)
        features = prompt_obj.features("token")
        F = len(features)
        masker = Masker(lm, prompt_obj, features, "replace", BASELINE_ID)
        problem = Problem(lm, prompt_obj, features, resolve_target(lm, prompt_obj, answer), masker)
        table = problem.evaluate(coalition_masks(F))
        cells = []
        for b in budgets:
            paired = table_mse(problem, table, args.table_seeds, ShapleySampling, b, paired=True)
            pairs[b].append(
                paired / table_mse(problem, table, args.table_seeds, ShapleySampling, b, paired=False)
            )
            cell = f"{b}: paired {pairs[b][-1]:.2f}"
            if b < 2**F - 2:  # below, kernel_shap samples; from there on it enumerates
                lev = table_mse(problem, table, args.table_seeds, KernelShap, b, sampling="leverage")
                leverage[b].append(
                    lev / table_mse(problem, table, args.table_seeds, KernelShap, b, sampling="kernel")
                )
                cell += f", leverage {leverage[b][-1]:.2f}"
            cells.append(cell)
        print(f"F={F:<2} {prompt!r}: " + " | ".join(cells))

    def geomean(values: list[float]) -> str:
        return f"{np.exp(np.mean(np.log(values))):.2f}" if values else "-"

    print(
        "geometric mean over prompts, paired / unpaired (shapley_sampling): "
        + ", ".join(f"budget {b}: {geomean(pairs[b])}" for b in budgets)
    )
    print(
        "geometric mean over prompts, leverage / kernel (kernel_shap, paired): "
        + ", ".join(f"budget {b}: {geomean(leverage[b])}" for b in budgets)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8, help="seeds per prompt and budget (part 1)")
    parser.add_argument("--prompts", type=int, default=3, help="zoo prompts of 11 or 12 words (part 1)")
    parser.add_argument("--budgets", default="100,400,1600", help="model evaluations per run")
    parser.add_argument("--table-seeds", type=int, default=150, help="seeds per prompt and budget (part 2)")
    parser.add_argument("--table-prompts", type=int, default=8, help="zoo prompts of 10 to 12 words (part 2)")
    parser.add_argument("--skip-captum", action="store_true", help="do not run Captum")
    args = parser.parse_args()
    peers.quiet()
    warnings.simplefilter("ignore", ConvergenceWarning)
    torch.set_num_threads(1)
    budgets = [int(b) for b in args.budgets.split(",")]
    lm = genattr.load("zoo")
    versus_captum(lm, args, budgets)
    sampling_choices(lm, args, budgets)


if __name__ == "__main__":
    main()
