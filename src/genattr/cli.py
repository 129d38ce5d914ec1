"""The ``genattr`` command line: explain | methods | models | render | benchmark | demo | reproduce.

Exit status 0 on success, 2 with a one-line message on bad input (never a traceback for the
errors of :mod:`genattr.errors`, and for a bad argument one line instead of the usage block).
Output files are checked for writability before any model loads. torch and transformers are imported only by the commands that
need them, and transformers' logging and progress bars stay silent unless ``--verbose``. torch's
idle threads sleep rather than spin unless ``OMP_WAIT_POLICY`` says otherwise (:func:`wait_passively`).

    genattr explain --model PATH --method leave_one_out --target " Paris" "The capital of France is"
    genattr explain --model PATH --data prompts.jsonl --out results.jsonl [--ray local]
    genattr methods
    genattr models
    genattr render out.json [more.json ...] --html out.html
    genattr benchmark --model zoo --methods leave_one_out,random --data zoo:recall --out runs/b1 --n 10
    genattr demo --model zoo
    genattr reproduce gilot-table1 bias --n 2
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ._version import __version__
from .cli_args import (
    _fixed_seed,
    _level,
    _mask_token,
    _mask_token_option,
    _param,
    _param_value,
    _seed,
    _target_span,
    _target_token,
)
from .cli_data import (
    add_dataset_options,
    add_ray_options,
    check_dataset_args,
    cluster_option,
    run_data_command,
)
from .defaults import (
    BASELINE_NAMES,
    DEFAULT_LEVEL,
    DEFAULT_MASK,
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_METHOD,
    DEFAULT_SEED,
    DEFAULT_SIMILARITY_K,
    MASKS,
)
from .errors import GenattrError, InputError, InvalidParameterError
from .registry import FLAGS
from .text.segment import plain_levels


def _configure_transformers(verbose: bool) -> None:
    """Silence transformers' and the hub's logging and progress bars (weight loading, GGUF
    conversion, downloads) unless ``verbose``, here and, through the environment, in the Ray
    workers a run starts after this."""
    if verbose:
        return
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read by Ray's workers too
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    disable_progress_bars()


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (exit status 2), not the usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def cmd_explain(args: argparse.Namespace) -> int:
    from . import registry
    from .api import explain
    from .files import check_writable, write_atomic
    from .model import load
    from .progress import progress_bar

    method_cls = registry.get(args.method)  # an unknown name fails before the model loads
    check_dataset_args(args)
    if args.target is not None and not method_cls.needs_target:
        raise InvalidParameterError(
            f"{args.method} takes no --target: it explains the model's own likely outputs "
            "(the no-target flag of `genattr methods`); drop --target."
        )
    if args.include_system and not args.chat:
        raise InputError("--include-system concerns the chat template: use it with --chat.")
    if args.step_scores and args.quiet:
        raise InputError(
            "--step-scores prints a table after the attribution: drop --quiet (or save with --json)."
        )
    params = {key: _param_value(method_cls, key, text) for key, text in args.param or []}
    mask_token = _mask_token_option(args)
    if args.data is not None:
        _configure_transformers(args.verbose)
        return run_data_command(args, params, mask_token)
    for out in (args.json, args.html):
        if out:
            check_writable(out)
    _configure_transformers(args.verbose)
    lm = load(args.model, device=args.device, dtype=args.dtype, checkpoint_layers=args.checkpoint_layers)
    prompt = args.prompt
    if args.chat:
        from .text.prompt import Prompt

        messages = [{"role": "user", "content": args.prompt}]
        prompt = Prompt.from_messages(lm.tokenizer, messages, include_default_system=args.include_system)
    with progress_bar("scoring", not args.quiet) as bar:
        res = explain(
            lm,
            prompt,
            target=args.target,
            method=args.method,
            level=args.level,
            mask=args.mask,
            mask_token=mask_token,
            seed=args.seed,
            max_new_tokens=args.max_new_tokens,
            params=params,
            progress=bar,
            attribute_target=True if args.attribute_target else None,
            target_token=args.target_token,
            target_span=args.target_span,
            contrast=args.contrast,
            token_scores=not args.sequence_only,
            refine_top=args.refine_top,
        )
    if not args.quiet:
        from .render.terminal import print_attribution

        print_attribution(res, steps=args.step_scores)
        if args.step_scores and not res.step_scores:
            print(f"genattr: {res.method} gave no step scores for this target.", file=sys.stderr)
    if args.json:
        res.save(args.json)
    if args.html:
        write_atomic(Path(args.html), res.to_html(title=f"genattr: {res.method}"))
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from . import registry

    if args.markdown:
        print(registry.markdown_table())
        return 0
    for info in registry.methods():
        print(info.line())
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from .catalog import models_table

    print(models_table())
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    from .dataset import read_results
    from .files import check_writable, write_atomic
    from .render.viewer import render_viewer
    from .result import Attribution

    if args.html:
        check_writable(args.html)
    results = [
        res
        for path in args.files
        for res in (read_results(path) if path.endswith(".jsonl") else [Attribution.load(path)])
    ]
    if args.html:
        title = f"genattr: {', '.join(dict.fromkeys(res.method for res in results))}"
        write_atomic(Path(args.html), render_viewer(results, title=title))
    if args.terminal or not args.html:
        for res in results:
            res.show()
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    from . import registry
    from .evaluate.benchmark import load_items, run_benchmark
    from .model import load
    from .progress import progress_bar

    _configure_transformers(args.verbose)

    methods = (
        registry.names()
        if args.methods == "all"
        else [m.strip() for m in args.methods.split(",") if m.strip()]
    )
    items, problems = load_items([d.strip() for d in args.data.split(",") if d.strip()], args.n, args.seed)
    for problem in problems:
        print(f"genattr: {_safe(problem)}", file=sys.stderr)
    if not items:
        raise InputError("no usable example in --data; see the messages above.")
    lm = load(args.model, device=args.device, dtype=args.dtype)
    with progress_bar("benchmark", not args.quiet) as bar:
        result = run_benchmark(
            lm,
            methods,
            items,
            args.out,
            metrics=[m.strip() for m in args.metrics.split(",")],
            seed=args.seed,
            progress=bar,
            level=args.level,
            mask=args.mask,
            max_new_tokens=args.max_new_tokens,
            k=args.k,
            cluster=cluster_option(args),
            threads=args.threads,
        )
    if not args.quiet:
        print(_safe(result["table"], layout=True))
        print(_safe(result["cost"], layout=True))
    print(f"wrote {args.out}/table.md, table.csv, cost.md, curves.png and rows.jsonl", file=sys.stderr)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo
    from .files import check_writable

    check_writable(args.out)
    _configure_transformers(args.verbose)
    run_demo(out=args.out, quick=args.quick, model=args.model, include_system=args.include_system)
    return 0


VERBOSE_HELP = "show transformers' own logging and progress bars (model loading, GGUF conversion)"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="genattr", description="Explain what a language model wrote in terms of its prompt."
    )
    parser.add_argument("--version", action="version", version=f"genattr {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    ex = sub.add_parser("explain", help="attribute a continuation to the prompt's features")
    ex.add_argument("prompt", nargs="?", help="the prompt text (or --data FILE for many)")
    ex.add_argument(
        "--chat",
        action="store_true",
        help="send the prompt as the user's message through the model's chat template (for chat "
        "models such as smollm2); the template's scaffolding is not a feature",
    )
    ex.add_argument(
        "--include-system",
        action="store_true",
        help="with --chat: make the system message the template adds by itself a feature",
    )
    ex.add_argument(
        "--model",
        default="zoo",
        help="a model name (zoo, the default; smollm2: see `genattr models`), a GGUF "
        "file, a local model directory or a hub id",
    )
    ex.add_argument(
        "--method", default=DEFAULT_METHOD, metavar="NAME", help="attribution method (see `genattr methods`)"
    )
    group = ex.add_mutually_exclusive_group()
    group.add_argument("--target", help="the continuation to explain (default: the model's greedy output)")
    group.add_argument(
        "--max-new-tokens",
        type=int,
        default=DEFAULT_MAX_NEW_TOKENS,
        help="length of the greedy output explained when no --target is given",
    )
    ex.add_argument(
        "--attribute-target",
        action="store_true",
        help="attribute each output token to the earlier output tokens too (one column each)",
    )
    pick = ex.add_mutually_exclusive_group()
    pick.add_argument(
        "--target-token",
        type=_target_token,
        default=None,
        help="explain one output token: its index, or a substring of the response that is one token",
    )
    pick.add_argument(
        "--target-span",
        type=_target_span,
        default=None,
        help="explain a part of the response: a substring, or START:END character offsets",
    )
    ex.add_argument("--contrast", default=None, help="a foil: why the target rather than this continuation")
    ex.add_argument(
        "--sequence-only",
        action="store_true",
        help="no per-token matrix (token_scores=False): gradient methods then take one backward pass per step",
    )
    ex.add_argument(
        "--level", default=DEFAULT_LEVEL, type=_level, help="a level, or coarse>fine (sentence>word)"
    )
    ex.add_argument(
        "--refine-top",
        type=int,
        default=None,
        help="with --level coarse>fine: how many of the best coarse features to refine (default 3)",
    )
    ex.add_argument("--mask", default=DEFAULT_MASK, choices=MASKS)
    ex.add_argument(
        "--mask-token",
        type=_mask_token,
        default=None,
        help=f"the token that stands in for a removed feature: an id or one of {', '.join(BASELINE_NAMES)}",
    )
    ex.add_argument(
        "--baseline", type=_mask_token, default=None, help="deprecated: the former name of --mask-token"
    )
    ex.add_argument(
        "--seed",
        type=_seed,
        default=DEFAULT_SEED,
        help="seed of a stochastic method: an integer in [0, 2**64), or random (drawn and recorded)",
    )
    ex.add_argument(
        "--param",
        "-p",
        type=_param,
        action="append",
        metavar="KEY=VALUE",
        help="a method parameter, e.g. -p n_samples=50 (repeatable)",
    )
    ex.add_argument("--device", default=None)
    ex.add_argument("--dtype", default=None)
    ex.add_argument(
        "--checkpoint-layers",
        action="store_true",
        help="recompute each layer's activations in backward passes: gradient methods and lrp on "
        "long prompts in far less memory, for about one more forward pass; same scores",
    )
    ex.add_argument("--json", help="write the result as JSON to this file")
    ex.add_argument("--html", help="write a self-contained HTML page to this file")
    ex.add_argument(
        "--step-scores",
        action="store_true",
        help="after the attribution, print how the model saw each target token: p, log p, entropy, rank",
    )
    ex.add_argument("--quiet", "-q", action="store_true", help="no terminal output or progress bar")
    ex.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    add_dataset_options(ex)
    ex.set_defaults(func=cmd_explain)

    me = sub.add_parser(
        "methods",
        help="list the registered methods",
        description="List the registered methods: name, family, flags, summary.",
        epilog="flags:\n" + "\n".join(f"  {flag:<13} {meaning}" for flag, meaning in FLAGS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    me.add_argument("--markdown", action="store_true", help="print the README's table of methods")
    me.set_defaults(func=cmd_methods)

    mo = sub.add_parser("models", help="list the models loadable by name (--model NAME), installed or not")
    mo.set_defaults(func=cmd_models)

    re_ = sub.add_parser("render", help="render saved results")
    re_.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="JSON files of `genattr explain --json`, or .jsonl results files of `explain --data`",
    )
    re_.add_argument("--html", help="write one interactive page of all the results (grouped by prompt)")
    re_.add_argument("--terminal", action="store_true", help="also print it in the terminal")
    re_.set_defaults(func=cmd_render)

    be = sub.add_parser("benchmark", help="faithfulness and ground-truth benchmark of methods")
    be.add_argument(
        "--model",
        default="zoo",
        help="a model name (zoo, the default; see `genattr models`), a GGUF file, "
        "a model directory or a hub id",
    )
    be.add_argument("--methods", default="all", help="comma-separated method names, or all")
    be.add_argument(
        "--data",
        required=True,
        help="comma-separated zoo:TASK specs, prompt sets (gilot, xprompt-alpaca, sst2, counsel-chat) and/or JSONL files",
    )
    be.add_argument("--metrics", default="curves,erasure,similarity,ground_truth")
    be.add_argument("--out", required=True, help="output directory (resumable)")
    be.add_argument("--n", type=int, default=None, help="examples per dataset (zoo: default 10)")
    be.add_argument("--seed", type=_fixed_seed, default=DEFAULT_SEED, help="an integer in [0, 2**64)")
    be.add_argument("--level", default=DEFAULT_LEVEL, choices=plain_levels())
    be.add_argument(
        "--mask", default=None, choices=MASKS, help="masking strategy (default: the library default)"
    )
    be.add_argument(
        "--max-new-tokens",
        type=int,
        default=DEFAULT_MAX_NEW_TOKENS,
        help="length of the greedy outputs explained and compared by the faithfulness protocols",
    )
    be.add_argument(
        "--k", type=int, default=DEFAULT_SIMILARITY_K, help="features removed in the similarity protocol"
    )
    be.add_argument("--device", default=None)
    be.add_argument("--dtype", default=None)
    be.add_argument("--quiet", "-q", action="store_true")
    be.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    add_ray_options(be)
    be.set_defaults(func=cmd_benchmark)

    de = sub.add_parser("demo", help="run the demo on the embedded default model")
    de.add_argument("--out", default="demo.html", help="the HTML report to write")
    de.add_argument("--quick", action="store_true", help="fewer examples, fewer steps")
    de.add_argument(
        "--model",
        default="smollm2",
        help="smollm2 (default): explain a real answer; zoo: every method against ground truth",
    )
    de.add_argument(
        "--include-system",
        action="store_true",
        help="make the chat template's default system message a feature",
    )
    de.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    de.set_defaults(func=cmd_demo)

    from .reproduce.cli import add_parser as add_reproduce

    add_reproduce(sub, _configure_transformers)
    return parser


def _safe(text: str, *, layout: bool = False) -> str:
    """``text`` with control characters and bidi overrides shown as escapes (render.visible)."""
    from .render import visible

    return visible(text, layout=layout)


def wait_passively() -> None:
    """Let torch's idle OpenMP threads sleep instead of spinning (``OMP_WAIT_POLICY=PASSIVE``),
    unless the environment already sets a wait policy or torch is already loaded.

    By default GNU OpenMP spins for 300,000 iterations at the end of every parallel region; when
    other processes hold the cores, the spinning threads take the CPU that the thread they wait
    for needs, and every operation waits. Measured with ``bench/real.py --contended`` (SmolLM2,
    10 greedy answers, 2 torch threads on a shared 2-core machine at load 4): 105 s spinning
    against 37 s passive, and 169 s against 65 s with one more core kept busy; Hugging Face's own
    ``generate`` alike. The wait policy is read once, by the OpenMP runtime torch loads; only the
    command line sets it: a program that imports genattr keeps its own policy.
    """
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv: Sequence[str] | None = None) -> int:
    wait_passively()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except GenattrError as exc:
        print(f"genattr: error: {_safe(' '.join(str(exc).split()))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("genattr: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
