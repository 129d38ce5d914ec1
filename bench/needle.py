"""Long-context needle benchmark on SmolLM2-135M-Instruct (``genattr.load("smollm2")``): does
sentence-level attribution put the one sentence that holds the answer first, and at what cost?

Questions. Each question is a context of at least ``--min-tokens`` (default 2,000) chat-prompt
tokens built from a real set in data/ (SST-2 sentences, XPrompt's Alpaca instructions or
CounselChat questions, rotating; see bench/longctx.py), with one needle sentence (a made-up fact,
:data:`NEEDLES`) put at a depth (:data:`DEPTHS`: the fraction of the context's sentences before
it), then ``Question: <question> Answer in a few words.`` in the same user message (SmolLM2's
chat template, its default system message as scaffolding). The 12 needles x 5 depths give 60
questions, ordered so that any first N mix needles, depths and sources. The model answers
greedily (at most :data:`ANSWER_TOKENS` tokens); an answer is correct when it holds the needle's
answer string (case-insensitive). Only correctly answered questions are attributed, with the
model's own answer as the target.

Methods (``--methods``; features are the context's sentences, the question is kept and not scored):

- ``input_x_gradient``: input x gradient of log p(answer), sentence score = the sum over its
  tokens, ``token_scores=False`` (one forward and one backward pass);
- ``integrated_gradients``: the same with :data:`IG_STEPS` steps;
- ``lrp``: AttnLRP, where the registry has it (skipped otherwise);
- ``loo_paragraphs``: leave-one-out, hierarchical from paragraphs: ``level="spans>sentence"``
  with the paragraphs as spans and ``refine_top`` = :data:`REFINE_PARAGRAPHS` (the paragraphs
  scored, then the sentences of the best ones); the needle is ranked first when its paragraph
  is refined and it has the highest score among the refined sentences;
- ``loo_words``: word-level refinement of the 3 best sentences of ``loo_paragraphs`` (leave-one-out
  on the words inside them, ``level="spans"``), the cost of refining once the sentence ranking is
  known; it reports whether the best word lies in the needle sentence.

The gradient methods run with ``max_batch_tokens`` set to one row and with the decoder layers'
activations recomputed in the backward pass (``checkpoint_layers``, :data:`CHECKPOINT_LAYERS`):
without it one backward pass holds every layer's activations, 2.6 GB over the model's own 1 GB
for input x gradient at 2,000 tokens and about 10 GB for ``lrp`` (eager attention). All questions are
answered first, then each method runs over the correctly answered ones in turn, so that an
interrupted run leaves the earlier methods complete.

A method row records the needle's rank (for the gradient methods also by absolute score), seconds, forward and backward passes and tokens, peak
resident memory of the call (``VmHWM`` reset before it, Linux) and the load average: timings on
a shared machine are inflated. Leave-one-out rows also record the prefix-reuse floor of their
tokens (bench/longctx.py :func:`loo_floor`). Rows go to ``--out`` (default
bench/results/needle.jsonl), one JSON line per question x method, keyed
``<question>|<method>``; a rerun skips the keys already there.

Run from the repository root::

    nice -n 10 python bench/needle.py [--limit N] [--methods a,b] [--threads N] [--summary]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import statistics
import time
from pathlib import Path

import torch

import genattr
from genattr import registry
from genattr.model import Batch
from longctx import (
    Case,
    Needle,
    append,
    build,
    done_keys,
    loo_floor,
    machine,
    peak_rss_mb,
    reset_peak_rss,
    work,
)

OUT = Path(__file__).resolve().parent / "results" / "needle.jsonl"
NEEDLES = (
    Needle("Maria's favourite city is Lisbon.", "What is Maria's favourite city?", "Lisbon"),
    Needle("Leo's pet turtle is called Sheldon.", "What is Leo's pet turtle called?", "Sheldon"),
    Needle(
        "The secret ingredient in Rosa's soup is ginger.",
        "What is the secret ingredient in Rosa's soup?",
        "ginger",
    ),
    Needle(
        "Professor Okafor's favourite colour is purple.",
        "What is Professor Okafor's favourite colour?",
        "purple",
    ),
    Needle("The train to Brindale leaves at nine o'clock.", "When does the train to Brindale leave?", "nine"),
    Needle(
        "The village of Marrowby is famous for its cheese.",
        "What is the village of Marrowby famous for?",
        "cheese",
    ),
    Needle(
        "Captain Ruiz sailed to Iceland last summer.", "Where did Captain Ruiz sail last summer?", "Iceland"
    ),
    Needle("Tom's bicycle is painted bright yellow.", "What colour is Tom's bicycle?", "yellow"),
    Needle(
        "The museum's oldest clock was made in Vienna.", "Where was the museum's oldest clock made?", "Vienna"
    ),
    Needle("Grace's favourite fruit is papaya.", "What is Grace's favourite fruit?", "papaya"),
    Needle("The lighthouse keeper is named Edwin.", "What is the lighthouse keeper's name?", "Edwin"),
    Needle(
        "The school choir sang in Dublin last spring.",
        "Where did the school choir sing last spring?",
        "Dublin",
    ),
)
DEPTHS = (0.1, 0.3, 0.5, 0.7, 0.9)
SOURCE_ORDER = ("sst2", "alpaca", "counsel")
ANSWER_TOKENS = 16
IG_STEPS = 8
REFINE_PARAGRAPHS = 2
REFINE_SENTENCES = 3
CHECKPOINT_LAYERS = True
"""Whether the gradient methods recompute each layer's activations in the backward pass (memory)."""
METHODS = ("input_x_gradient", "integrated_gradients", "lrp", "loo_paragraphs", "loo_words")


def question(needle: Needle) -> str:
    return f"Question: {needle.question} Answer in a few words."


def cases(tokenizer, limit: int | None, min_tokens: int) -> list[Case]:
    """The first ``limit`` questions: question k has needle k mod 12 and depth (3 (k // 12) + k mod 12)
    mod 5 (every pair once over 60), its source by k mod 3, its filler order seeded by k."""
    total = len(NEEDLES) * len(DEPTHS)
    out = []
    for k in range(total if limit is None else min(limit, total)):
        n, d = k % len(NEEDLES), (3 * (k // len(NEEDLES)) + k % len(NEEDLES)) % len(DEPTHS)
        source = SOURCE_ORDER[k % len(SOURCE_ORDER)]
        needle = NEEDLES[n]
        asked = Needle(needle.fact, question(needle), needle.answer)
        key = f"q{k:02d}-n{n:02d}-d{DEPTHS[d]}-{source}-t{min_tokens}"
        out.append(build(tokenizer, source, min_tokens, asked, DEPTHS[d], seed=k, key=key))
    return out


def answer_row(lm, case: Case) -> dict:
    start = time.perf_counter()
    gen = lm.generate(Batch.from_ids(case.prompt.input_ids), ANSWER_TOKENS)
    ids = gen.token_ids[0]
    text = lm.tokenizer.decode(ids)
    return {
        "key": f"{case.key}|answer",
        "case": case.key,
        "method": "answer",
        "source": case.source,
        "source_ids": case.source_ids,
        "depth": case.depth,
        "needle": case.needle.fact,
        "expected": case.needle.answer,
        "answer_ids": ids,
        "answer": text,
        "correct": case.needle.answer.lower() in text.lower(),
        "prompt_tokens": len(case.prompt),
        "sentences": len(case.sentences),
        "paragraphs": len(case.paragraphs),
        "needle_index": case.needle_index,
        "seconds": round(time.perf_counter() - start, 3),
        **machine(),
    }


def rank_of(scores, index: int) -> int:
    """1 + the number of features scored above ``index`` (ties by position, as Attribution.top)."""
    s = scores[index]
    return 1 + sum(1 for j, v in enumerate(scores) if v > s or (v == s and j < index))


def _positions_start(prompt, spans) -> list[int]:
    return [f.positions[0] for f in prompt.features("spans", spans=spans)]


def sentence_method(lm, case: Case, answer: list[int], method: str) -> tuple[dict, object]:
    params = {"n_steps": IG_STEPS} if method == "integrated_gradients" else {}
    res = genattr.explain(
        lm, case.prompt, answer, method=method, level="spans", spans=case.sentences,
        token_scores=False, **params,
    )  # fmt: skip
    if [(f.start, f.end) for f in res.features] != case.sentences:
        raise RuntimeError("the spans level did not keep the context's sentences as features")
    scores = res.scores.tolist()
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    row = {
        "params": res.params,
        "needle_rank": rank_of(scores, case.needle_index),
        "needle_rank_abs": rank_of([abs(v) for v in scores], case.needle_index),
        "ranking": order[:10],
        **work(res.diagnostics),
    }
    return row, res


def loo_paragraphs(lm, case: Case, answer: list[int]) -> tuple[dict, object]:
    res = genattr.explain(
        lm, case.prompt, answer, method="leave_one_out", level="spans>sentence", spans=case.paragraphs,
        refine_top=REFINE_PARAGRAPHS,
    )  # fmt: skip
    h = res.extras["hierarchy"]
    refined = [case.paragraphs[i] for i in h["refined"]]
    fine = [(f, float(s)) for f, s in zip(res.features, res.scores, strict=True)
            if any(a <= f.start and f.end <= b for a, b in refined)]  # fmt: skip
    sentence_index = {span: i for i, span in enumerate(case.sentences)}
    if any((f.start, f.end) not in sentence_index for f, _ in fine):
        raise RuntimeError(
            "the sentence level cut the refined paragraphs elsewhere than the context's sentences"
        )
    fine.sort(key=lambda x: (-x[1], x[0].start))
    ranking = [sentence_index[(f.start, f.end)] for f, _ in fine]
    needle_paragraph = next(i for i, (s, e) in enumerate(case.paragraphs) if s <= case.needle_span[0] < e)
    row_tokens = len(case.prompt) + len(answer) - 1
    coarse_starts = _positions_start(case.prompt, case.paragraphs)
    fine_starts = [f.positions[0] for f, _ in fine]
    row = {
        "params": {"refine_top": REFINE_PARAGRAPHS},
        "needle_rank": 1 + ranking.index(case.needle_index) if case.needle_index in ranking else None,
        "paragraph_rank": rank_of(h["coarse"], needle_paragraph),
        "ranking": ranking,
        **work(res.diagnostics),
        "coarse": work(res.diagnostics["coarse"]),
        "fine": work(res.diagnostics["fine"]),
        "floor": loo_floor(row_tokens, coarse_starts) + loo_floor(row_tokens, fine_starts),
    }
    return row, res


def word_spans_inside(case: Case, sentences: list[int]) -> list[tuple[int, int]]:
    """Character spans of the word features inside the given context sentences, each widened to its
    tokens (a word's leading-space token included), as the hierarchy's fine pass does."""
    p = case.prompt
    spans = []
    for f in p.features("word"):
        if any(case.sentences[i][0] <= f.start and f.end <= case.sentences[i][1] for i in sentences):
            starts = [p.offsets[t][0] for t in f.positions]
            ends = [p.offsets[t][1] for t in f.positions]
            spans.append((min(f.start, *starts), max(f.end, *ends)))
    return spans


def loo_words(lm, case: Case, answer: list[int], sentences: list[int]) -> tuple[dict, object]:
    chosen = sorted(sentences[:REFINE_SENTENCES])
    spans = word_spans_inside(case, chosen)
    res = genattr.explain(lm, case.prompt, answer, method="leave_one_out", level="spans", spans=spans)
    scores = res.scores.tolist()
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))
    top = res.features[best]
    in_needle = case.needle_span[0] <= top.start and top.end <= case.needle_span[1]
    row_tokens = len(case.prompt) + len(answer) - 1
    row = {
        "params": {"sentences": chosen},
        "words": len(res.features),
        "needle_refined": case.needle_index in chosen,
        "top_word_in_needle": in_needle,
        "top_word": top.text if in_needle else None,
        **work(res.diagnostics),
        "floor": loo_floor(row_tokens, [f.positions[0] for f in res.features]),
    }
    return row, res


def run_method(lm, case: Case, answer: list[int], method: str, done: dict) -> dict | None:
    if method not in ("loo_paragraphs", "loo_words") and method not in registry.names():
        return None  # lrp, where the registry does not have it
    if method == "loo_words":
        prior = done.get(f"{case.key}|loo_paragraphs")
        if prior is None:
            return None
    budget, checkpointing = lm.max_batch_tokens, lm.checkpoint_layers
    if method not in ("loo_paragraphs", "loo_words"):
        lm.max_batch_tokens = len(case.prompt) + len(answer)  # one row per backward pass (memory)
        lm.checkpoint_layers = CHECKPOINT_LAYERS
    reset_peak_rss()
    wall = time.perf_counter()
    try:
        if method == "loo_paragraphs":
            row, _ = loo_paragraphs(lm, case, answer)
        elif method == "loo_words":
            row, _ = loo_words(lm, case, answer, prior["ranking"])
        else:
            row, _ = sentence_method(lm, case, answer, method)
        row["max_batch_tokens"] = lm.max_batch_tokens
        row["checkpoint_layers"] = lm.checkpoint_layers
    finally:
        lm.max_batch_tokens, lm.checkpoint_layers = budget, checkpointing
    row["wall_seconds"] = round(time.perf_counter() - wall, 3)
    row["peak_rss_mb"] = round(peak_rss_mb(), 1)
    if "needle_rank" in row:
        row["needle_first"] = row["needle_rank"] == 1
    return {
        "key": f"{case.key}|{method}",
        "case": case.key,
        "method": method,
        "prompt_tokens": len(case.prompt),
        "target_tokens": len(answer),
        "sentences": len(case.sentences),
        "needle_index": case.needle_index,
        "threads": torch.get_num_threads(),
        **row,
        **machine(),
    }


def _fraction(flags: list[bool]) -> str:
    return f"{sum(flags)}/{len(flags)} ({sum(flags) / len(flags):.0%})" if flags else "-"


def summary(built: list[Case], rows: dict[str, dict]) -> None:
    keys = {c.key for c in built}
    answers = [r for r in rows.values() if r["method"] == "answer" and r["case"] in keys]
    correct = [r for r in answers if r["correct"]]
    print(f"questions built: {len(built)}, answered: {len(answers)}, answered correctly: {len(correct)}")
    ok = {r["case"] for r in correct}
    print(
        "| method | rows | needle first | needle first by abs(score) | top word in needle | median s | max s "
        "| median tokens (fwd + bwd) | max peak RSS MB | median load |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for method in METHODS:
        mine = [r for r in rows.values() if r["method"] == method and r["case"] in ok]
        if not mine:
            continue
        secs = [r["wall_seconds"] for r in mine]
        first = [r["needle_first"] for r in mine if "needle_first" in r]
        absolute = [r["needle_rank_abs"] == 1 for r in mine if "needle_rank_abs" in r]
        word = [r["top_word_in_needle"] for r in mine if "top_word_in_needle" in r]
        tokens = statistics.median(r["tokens_processed"] + r.get("backward_tokens", 0) for r in mine)
        print(
            f"| {method} | {len(mine)} | {_fraction(first)} | {_fraction(absolute)} | {_fraction(word)} | "
            f"{statistics.median(secs):.1f} | {max(secs):.1f} | {tokens:.0f} | "
            f"{max(r['peak_rss_mb'] for r in mine):.0f} | {statistics.median(r['load_avg'][0] for r in mine):.1f} |"
        )
    for method in ("loo_paragraphs", "loo_words"):
        mine = [r for r in rows.values() if r["method"] == method and r["case"] in ok and "floor" in r]
        if mine:
            ratio = [r["tokens_processed"] / r["floor"] for r in mine]
            print(
                f"{method}: tokens processed / prefix-reuse floor, median {statistics.median(ratio):.2f}, "
                f"max {max(ratio):.2f}"
            )


def run_all(lm, built: list[Case], methods: list[str], done: dict[str, dict], out: Path) -> None:
    """Answer every question, then run each method in turn over the correctly answered ones
    (method by method, so that an interrupted run leaves the cheaper methods complete), writing
    each row as it finishes and skipping the keys already in ``done``."""
    for case in built:
        key = f"{case.key}|answer"
        if key not in done:
            done[key] = answer_row(lm, case)
            append(out, done[key])
        print(f"{case.key}: {len(case.prompt)} tokens, correct={done[key]['correct']}", flush=True)
    for method in methods:
        for case in built:
            answer = done[f"{case.key}|answer"]
            mkey = f"{case.key}|{method}"
            if not answer["correct"] or mkey in done:
                continue
            row = run_method(lm, case, answer["answer_ids"], method, done)
            if row is None:
                continue
            done[mkey] = row
            append(out, row)
            print(
                f"{case.key} {method}: needle rank {row.get('needle_rank', '-')}, {row['wall_seconds']:.1f} s, "
                f"{row['tokens_processed']} tokens (+{row['backward_tokens']} backward), "
                f"peak {row['peak_rss_mb']:.0f} MB, load {row['load_avg'][0]}",
                flush=True,
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--limit", type=int, default=None, help="the first N questions (default all 60)")
    ap.add_argument(
        "--methods", default=",".join(METHODS), help="comma-separated, from " + ", ".join(METHODS)
    )
    ap.add_argument("--min-tokens", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default torch's)")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--summary", action="store_true", help="print the summary of the rows there, run nothing")
    args = ap.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        ap.error(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = genattr.load("smollm2")
    built = cases(lm.tokenizer, args.limit, args.min_tokens)
    done = done_keys(args.out)
    if not args.summary:
        run_all(lm, built, methods, done, args.out)
    summary(built, done)


if __name__ == "__main__":
    main()
