"""Speed of XPrompt against leave-one-out on the benchmark model (bench/common.py), in one process.

For each example (a prompt cut from the synthetic corpus, word features, a fixed continuation)
it times ``genattr.explain`` with ``leave_one_out`` and with ``xprompt`` (Algorithm 1 with
``n_iter`` iterations, and the batched variant with the same number of proposals), and prints
per example: seconds, forward passes, model evaluations (prompt variants scored), and the
log-likelihood drop when the k features each method puts first are removed together (for
leave-one-out, its top k by score). XPrompt has no peer library, so leave-one-out, the baseline
of the XPrompt paper (Captum's formulation), is the reference.

    .venv/bin/python bench/xprompt.py --examples 4 --k 3 --n-iter 100 --proposals 8 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
from functools import partial

import torch

import genattr
from common import load_model, time_calls, token_exact_texts
from genattr.masking import Masker
from genattr.problem import Problem
from genattr.text.prompt import Prompt
from genattr.text.target import resolve_target


def joint_drop(lm, prompt: str, target: str, removed: list[int]) -> float:
    """log p(y | x) - log p(y | x without the features ``removed``), default masking, word level."""
    p = Prompt.from_text(lm.tokenizer, prompt)
    features = p.features("word")
    problem = Problem(lm, p, features, resolve_target(lm, p, target), Masker(lm, p, features))
    keep = problem.all_kept(2)
    keep[1, removed] = False
    values = problem.evaluate(keep)[:, 0]
    return float(values[0] - values[1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--examples", type=int, default=4, help="examples (prompts of 24, 32, 40, ... tokens)"
    )
    parser.add_argument("--target-tokens", type=int, default=8)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--n-iter", type=int, default=100)
    parser.add_argument("--proposals", type=int, default=8, help="proposals_per_step of the batched run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load_model(device=args.device)
    batched_iter = -(-args.n_iter // args.proposals)
    runs = {
        "leave_one_out": {},
        f"xprompt P=1 N={args.n_iter}": {"k": args.k, "n_iter": args.n_iter},
        f"xprompt P={args.proposals} N={batched_iter}": {
            "k": args.k,
            "n_iter": batched_iter,
            "proposals_per_step": args.proposals,
        },
    }
    print(f"model {lm.name} on {lm.device}, {torch.get_num_threads()} threads; k={args.k}, word features")
    print(f"{'example':>8} {'F':>3} {'method':<22} {'seconds':>8} {'passes':>7} {'evals':>6} {'drop k':>8}")
    ratios: dict[str, list[float]] = {name: [] for name in runs}
    for e in range(args.examples):
        prompt, target = token_exact_texts(lm.tokenizer, 24 + 8 * e, args.target_tokens)
        calls = {
            name: partial(
                genattr.explain, lm, prompt, target=target, method=name.split()[0], seed=0, **params
            )
            for name, params in runs.items()
        }
        seconds = {}
        for name, (timing, res) in time_calls(calls, args.repeats).items():
            seconds[name] = timing.median
            if res.method == "xprompt":
                removed = res.extras["chosen"]
                evals = res.diagnostics["evaluations"] + res.diagnostics["gradient_passes"]
            else:
                removed = [f.index for f, _ in res.top(args.k)]
                evals = len(res.features) + 1
            drop = joint_drop(lm, prompt, target, removed)
            print(
                f"{e:>8} {len(res.features):>3} {name:<22} {timing.median:>8.3f} "
                f"{res.diagnostics['forward_passes']:>7} {evals:>6} {drop:>8.3f}"
            )
        for name in runs:
            ratios[name].append(seconds[name] / seconds["leave_one_out"])
    print("\nmedian time per example relative to leave_one_out (same process, same model):")
    for name, values in ratios.items():
        print(f"  {name:<22} x{statistics.median(values):.2f}")


if __name__ == "__main__":
    main()
