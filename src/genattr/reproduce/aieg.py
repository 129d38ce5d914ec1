"""Study ``aieg``: the AIEG paper's Tables 1-2 and Figure 5 on SST-2 with SmolLM2.

"Enhancing Integrated Gradients using Emphasis Factors and Attention" (AIEG, ICLR 2025
submission), Section 5 and Appendix A.4: log-odds, comprehensiveness and sufficiency when the top
k% of the words are removed (k = 20% in its tables; the curve over k is its Figure 5), for
Grad x Input, IG, IGCG, DeepLIFT, GradientSHAP, attention only and AIEG
(:func:`~genattr.evaluate.faithfulness.erasure`), and a ``random`` baseline the paper does not
have, its curves averaged over ``RANDOM_SEEDS`` seeds per example.

Setting: the SST-2 dev sentences in their order, each after :data:`~genattr.evaluate.datasets.SST2_SHOTS`
balanced demonstrations (``genattr.evaluate.datasets``, seed 0) as plain text ending in
"Sentiment:" (no chat template: the label word is the next token); SmolLM2's prediction is the
label word (" positive" or " negative") it gives the higher probability, and that predicted word
is the explained target, as the paper explains the predicted token. Features are the words of the
review sentence (the paper sums sub-tokens into words; its fine-tuned classifier reads the sentence
alone), removed by hiding them from attention (the paper pads with zeros); the demonstrations and
the template are context that is never removed, so that top k% means k% of the review's words.
The paper fine-tuned its models on the task; SmolLM2 classifies in context, and its accuracy is
reported first.

The paper's own setting, where its Table 1 comes from, is generation: a review, the model's
continuation of it, and a word of interest in the continuation, explained by every word before it
(the review's and the continuation's). Here (``sst2-generation``): each of the same SST-2
sentences as plain text, SmolLM2's greedy continuation of ``NEW_TOKENS`` tokens, and as the word of
interest the continuation's last content word (:func:`word_of_interest`; the paper picked its word
by hand), its tokens the target and every word before it a feature.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import GenattrError, InputError
from ..evaluate.benchmark import example_seed, timed_explain
from ..evaluate.datasets import records, sst2_sentence_span
from ..evaluate.faithfulness import erasure
from ..evaluate.stats import mean_interval
from ..evaluate.tables import save_png
from ..text.prompt import Prompt
from ..text.segment import word_spans
from ..usecases import label_log_probs
from .common import (
    COST_KEYS,
    SEED,
    Example,
    Study,
    Task,
    complete_examples,
    fmt_interval,
    greedy_ids,
    interval_cell,
    markdown_table,
    paired_cell,
    run_arguments,
)

NAME = "aieg"
GENERATION = "sst2-generation"
"""The data set name of the generation setting's examples."""
NEW_TOKENS = 20
"""Tokens of the continuation in which the word of interest is chosen."""
LEVEL = "spans"
MASK = "attention"
LABELS = (" positive", " negative")
PERCENTS = (1, 5, 10, 20, 50)
K = 20
"""The top-k% of the paper's tables."""
METHODS = (
    "input_x_gradient",
    "integrated_gradients",
    "ig_clipped",
    "deeplift",
    "gradient_shap",
    "attention",
    "aieg",
    "random",
)
RANDOM_SEEDS = 5
"""Seeds of the random baseline (not in the paper) per example; its curves are averaged over them."""
PARAMS: dict[str, dict] = {
    "integrated_gradients": {"n_steps": 50},
    "ig_clipped": {"n_steps": 50},
    "aieg": {"n_steps": 50},
}
DEFAULT_N = 20
"""Sentences of a full run: 1.6 CPU hours at the first sentences' 290 CPU seconds per sentence
for all methods (IG, IGCG and AIEG at 50 steps are most of it)."""
METRICS = (("log_odds", "LO ↓"), ("comprehensiveness", "Comp ↑"), ("sufficiency", "Suff ↓"))

PAPER_NAMES = {
    "input_x_gradient": "Grad*Inp",
    "integrated_gradients": "IG",
    "ig_clipped": "IGCG",
    "deeplift": "DeepLIFT",
    "gradient_shap": "GradShap",
    "attention": "Attn.-Only",
    "aieg": "AIEG",
    "random": "not in the paper",
}
PAPER_TABLE1 = {  # AIEG Table 1 (SST-2), LLaMA column: LO, Comp, Suff at k = 20%
    "input_x_gradient": (-0.360, 0.148, 0.445),
    "integrated_gradients": (-1.180, 0.310, 0.415),
    "ig_clipped": (-1.040, 0.295, 0.418),
    "deeplift": (-0.174, 0.064, 0.469),
    "gradient_shap": (-0.685, 0.224, 0.434),
    "attention": (-0.177, 0.187, 0.445),
    "aieg": (-1.510, 0.395, 0.355),
}


def methods() -> list[str]:
    return list(METHODS)


def examples(n: int | None = None) -> list[Example]:
    """The first ``n`` SST-2 dev sentences as in-context prompts, with their gold label word."""
    return [Example(f"sst2:{r['id']}", "sst2", r["prompt"], r["target"]) for r in records("sst2", n, SEED)]


def generation_examples(n: int | None = None) -> list[Example]:
    """The same ``n`` SST-2 dev sentences alone, as plain text for the model to continue."""
    found = []
    for r in records("sst2", n, SEED):
        start, end = sst2_sentence_span(r["prompt"])
        found.append(Example(f"{GENERATION}:{r['id']}", GENERATION, r["prompt"][start:end]))
    return found


def word_of_interest(continuation: str) -> tuple[int, int] | None:
    """The character span of the continuation's last content word: at least four letters, not an
    English stop word (scikit-learn's list), and not the continuation's final word, which the token
    budget may have cut; None when there is none.

    >>> text = " and the actors are wonderful in every scene"
    >>> s, e = word_of_interest(text); text[s:e]
    'wonderful'
    """
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    words = word_spans(continuation)[:-1]
    for start, end in reversed(words):
        word = continuation[start:end]
        if len(word) >= 4 and word.isalpha() and word.lower() not in ENGLISH_STOP_WORDS:
            return start, end
    return None


def generation_case(lm, sentence: str) -> tuple[str, str]:
    """(context, word): the sentence and the model's greedy continuation up to the word of
    interest, and that word with the space before it, the explained target."""
    prompt = Prompt.from_text(lm.tokenizer, sentence)
    continuation = lm.tokenizer.decode(list(greedy_ids(lm, prompt, NEW_TOKENS)))
    span = word_of_interest(continuation)
    if span is None:
        raise InputError(f"the continuation {continuation!r} has no content word to explain.")
    start, end = span
    cut = start - 1 if continuation[start - 1 : start].isspace() else start
    return sentence + continuation[:cut], continuation[cut:end]


def settings(model: str, dtype: str | None, method: str, dataset: str = "sst2") -> dict:
    generation = dataset == GENERATION
    return {
        "study": NAME,
        "model": model,
        "dtype": dtype,
        "seed": SEED,
        "prompt": "plain text, the review and its continuation" if generation else "plain text, in-context",
        "level": "words before the word of interest" if generation else "words of the review sentence",
        "mask": MASK,
        "target": f"word of interest in {NEW_TOKENS} greedy tokens" if generation else "predicted label word",
        "percents": list(PERCENTS),
        "params": PARAMS.get(method, {}),
    }


def tasks(model: str, dtype: str | None, n: int | None, chosen: Sequence[str] | None) -> list[Task]:
    unknown = [m for m in chosen or () if m not in METHODS]
    if unknown:
        raise InputError(f"{NAME} has no method {unknown}; choose from {', '.join(METHODS)}.")
    ms = [m for m in METHODS if chosen is None or m in chosen]
    chosen_examples = [*examples(n), *generation_examples(n)]
    return [Task(m, ex, settings(model, dtype, m, ex.dataset)) for ex in chosen_examples for m in ms]


def sentence_words(prompt: str) -> list[tuple[int, int]]:
    """The character spans of the words of the prompt's review sentence, the study's features."""
    start, end = sst2_sentence_span(prompt)
    return [(start + a, start + b) for a, b in word_spans(prompt[start:end])]


def compute(lm, task: Task) -> dict:
    """The explained target (the predicted label, or the word of interest of the continuation),
    the method's explanation of it and the erasure metrics at each k."""
    extra: dict
    try:
        if task.example.dataset == GENERATION:
            text, target = generation_case(lm, task.example.text)
            spans, extra = word_spans(text), {"word": target.strip()}
        else:
            text = task.example.text
            log_probs = label_log_probs(lm, [text], LABELS)[0]
            target = LABELS[int(log_probs.argmax())]
            spans = sentence_words(text)
            extra = {
                "prediction": target,
                "correct": target == task.example.target,
                "p_prediction": float(np.exp(log_probs.max())),
            }
        if task.method == "random":
            seeds = [example_seed(SEED, f"{task.example.id}#{r}") for r in range(RANDOM_SEEDS)]
        else:
            seeds = [example_seed(SEED, task.example.id)]
        runs = [
            _erased(lm, text, target, spans, task.method, seed, task.settings["params"]) for seed in seeds
        ]
    except GenattrError as exc:
        return {"error": str(exc)}
    at_k = PERCENTS.index(K)
    curves = {key: np.mean([run[key] for run in runs], axis=0).tolist() for key, _ in METRICS}
    costs = {key: float(np.mean([run[key] for run in runs])) for key in COST_KEYS}
    return {
        **costs,
        "protocol_seconds": sum(run["protocol_seconds"] for run in runs),  # the compute spent
        "n_features": runs[0]["n_features"],
        **extra,
        **curves,
        **{f"{key}_at_k": curves[key][at_k] for key, _ in METRICS},
    }


def _erased(
    lm, text: str, target: str, spans: list[tuple[int, int]], method: str, seed: int, params: dict
) -> dict:
    """One explanation's cost and feature count, the erasure curves of its ranking and the
    seconds they took."""
    res, cost = timed_explain(
        lm,
        text,
        target=target,
        method=method,
        level=LEVEL,
        spans=spans,
        mask=MASK,
        seed=seed,
        token_scores=False,
        **params,
    )
    started = time.perf_counter()
    scores = erasure(lm, res, percents=PERCENTS)
    return {
        **cost,
        "protocol_seconds": time.perf_counter() - started,
        "n_features": len(res.features),
        **{key: scores[key] for key, _ in METRICS},
    }


# --------------------------------------------------------------------- the document's section
def _table(rows: list[dict], ms: list[str], done: list[str], paper_setting: bool) -> str:
    header = [
        "method",
        *[label for _, label in METRICS],
        "time per example (s)",
        "paper (LLaMA): LO / Comp / Suff",
    ]
    body = []
    for m in ms:
        cells = [interval_cell(rows, m, f"{key}_at_k", done) for key, _ in METRICS]
        paper = PAPER_TABLE1.get(m)
        body.append(
            [
                f"`{m}` ({PAPER_NAMES[m]})",
                *cells,
                interval_cell(rows, m, "seconds", done),
                " / ".join(f"{v:.3f}" for v in paper) if paper and paper_setting else "",
            ]
        )
    return markdown_table(header, body)


def _paired(rows: list[dict], ms: list[str], done: list[str]) -> str:
    body = [
        [f"`aieg` - `{m}`", *[paired_cell(rows, "aieg", m, f"{key}_at_k", done) for key, _ in METRICS]]
        for m in ms
        if m != "aieg"
    ]
    return markdown_table(["difference", *[label for _, label in METRICS]], body)


def _plot(rows: list[dict], ms: list[str], done: list[str], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 3.8))
    axes = fig.subplots(1, len(METRICS))
    for ax, (key, label) in zip(axes, METRICS, strict=True):
        for i, m in enumerate(ms):
            curves = [r[key] for r in rows if r["method"] == m and r["example"] in done]
            ax.plot(PERCENTS, np.mean(curves, 0), marker="o", label=m, color=f"C{i % 10}")
        ax.set_title(label)
        ax.set_xlabel("top k% of words removed")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, frameon=False)
    fig.tight_layout()
    save_png(fig, path)


def _results(
    rows: list[dict], ms: list[str], done: list[str], out: Path, link: str, generation: bool
) -> list[str]:
    """The table at k = 20%, AIEG's paired differences and the curves over k of one setting."""
    name = f"{NAME}-k-generation.png" if generation else f"{NAME}-k.png"
    _plot(rows, ms, done, out / name)
    where = "the word of interest" if generation else "the predicted label"
    paper = (
        "the paper's column is its Table 1 (SST-2, this setting), for its fine-tuned LLaMA, padding removed "
        "words with zeros"
        if generation
        else "the paper's Table 1 is in the generation setting below"
    )
    return [
        f"Means over examples with 95% BCa intervals of the change in {where} at k = {K}%; {paper}.\n",
        _table(rows, ms, done, generation),
        f"Paired differences, AIEG against each method at k = {K}% (**bold**: the 95% paired bootstrap "
        "interval excludes 0; lower LO and Suff, higher Comp, are better):\n",
        _paired(rows, ms, done),
        f"![Log-odds, comprehensiveness and sufficiency over k (Figure 5)]({link}/{name})\n",
    ]


def _failed(rows: list[dict]) -> list[str]:
    failed = sorted(f"`{r['method']}` on {r['example']}: {r['error']}" for r in rows if "error" in r)
    return ["Rows that failed:\n\n" + "\n".join(f"- {f}" for f in failed) + "\n"] if failed else []


def section(rows: list[dict], out: Path, link: str) -> str:
    ms = [m for m in METHODS if any(r["method"] == m for r in rows)]
    hours = sum(r.get("seconds", 0) + r.get("protocol_seconds", 0) for r in rows) / 3600
    parts = [
        f"Compute: {hours:.2f} hours over {len(rows)} rows (explanations and erasure, the rows' own times).\n",
        *_failed(rows),
    ]
    classified = [r for r in rows if r["dataset"] != GENERATION]
    done = complete_examples(classified, ms, "log_odds")
    parts.append(f"### In-context classification: the predicted label (k = {K}%, Tables 1-2, Figure 5)\n")
    if done:
        first = {r["example"]: r for r in classified if "correct" in r}
        accuracy = mean_interval([float(first[e]["correct"]) for e in done])
        words = np.mean([first[e]["n_features"] for e in done])
        parts += [
            f"Sentences complete for every method: {len(done)}, {words:.1f} words each on average: the "
            "features are the review sentence's words, after the demonstrations and the template, which are "
            f"never removed. The model's in-context accuracy on them: {fmt_interval(accuracy)} (chance 0.5).\n",
            *_results(classified, ms, done, out, link, generation=False),
        ]
    else:
        parts.append("No sentence has a row of every method yet.\n")
    generated = [r for r in rows if r["dataset"] == GENERATION]
    done = complete_examples(generated, ms, "log_odds")
    parts.append(f"### Generation: a word of interest in the continuation (k = {K}%, Table 1's setting)\n")
    if done:
        first = {r["example"]: r for r in generated if "word" in r}
        words = np.mean([first[e]["n_features"] for e in done])
        chosen = ", ".join(f"{e}: {first[e]['word']}" for e in done)
        parts += [
            f"Sentences complete for every method: {len(done)}, {words:.1f} words before the word of interest on "
            f"average (the review's and the continuation's, all features). The words of interest: {chosen}.\n",
            *_results(generated, ms, done, out, link, generation=True),
        ]
    else:
        parts.append("No sentence has a row of every method yet.\n")
    return "\n".join(parts)


def arguments(rows: list[dict]) -> str:
    """``--n`` counts sentences, each in both settings."""
    by_sentence = [{**r, "example": "sst2:" + r["example"].split(":", 1)[1]} for r in rows]
    return run_arguments([ex.id for ex in examples()], by_sentence, METHODS)


STUDY = Study(
    NAME,
    "AIEG Tables 1-2 and Figure 5: erasure on SST-2",
    tasks,
    compute,
    section,
    methods,
    arguments,
    DEFAULT_N,
)
