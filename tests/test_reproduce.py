"""``genattr reproduce`` on a tiny random chat model: rows resumed and reused only under the same
settings, the document rebuilt from the rows alone to the same bytes, the random baseline's
seeds averaged, the prompt order stable, and the gender probe's slot read off its attribution."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from genattr import registry
from genattr.cli import main
from genattr.evaluate.stats import mean_interval
from genattr.reproduce import STUDIES, aieg, bias, gilot_ablations, gilot_table1, icl, report, xprompt
from genattr.reproduce.common import Task, fmt_interval


@pytest.fixture(scope="module")
def chat_model(model_dirs):
    return str(model_dirs["qwen2"])  # a ChatML template, as SmolLM2's


def _reproduce(model: str, out, *args: str) -> int:
    return main(["reproduce", *args, "--model", model, "--out", str(out), "--quiet"])


def _files(out) -> dict[str, bytes]:
    doc = report.doc_path(out)
    return {p.name: p.read_bytes() for p in [doc, *sorted(out.rglob("*"))] if p.is_file()}


def test_a_run_resumes_and_the_document_is_rebuilt_from_the_rows_alone(chat_model, tmp_path, capsys):
    out = tmp_path / "real-model"
    args = ("gilot-table1", "bias", "--n", "2", "--methods", "leave_one_out,random")
    assert _reproduce(chat_model, out, *args) == 0
    rows = [json.loads(line) for line in (out / "rows" / "gilot-table1.jsonl").read_text().splitlines()]
    assert [(r["method"], r["example"]) for r in rows] == [
        (m, e.id) for e in gilot_table1.examples(2) for m in ("leave_one_out", "random")
    ]
    bias_rows = (out / "rows" / "bias.jsonl").read_text().splitlines()
    assert len(bias_rows) == 2  # one role, both genders; bias has no random baseline
    first = _files(out)
    assert {"real-model.md", "gilot-table1-curves.png", "gilot-table1-curves-aligned.png"} <= set(first)
    capsys.readouterr()

    assert _reproduce(chat_model, out, *args) == 0  # resumed: nothing to compute
    assert "4 rows, 4 already stored" in capsys.readouterr().err
    assert _files(out) == first
    assert _reproduce(chat_model, out, "all", "--report-only") == 0
    assert _files(out) == first

    doc = first["real-model.md"].decode()
    loo = [r["auc_morf"] for r in rows if r["method"] == "leave_one_out" and "abpc" in r]
    assert loo and f"| `leave_one_out` | {fmt_interval(mean_interval(loo))} |" in doc
    failed = [r for r in rows if "error" in r]  # the tiny model's 256-token window refuses a long prompt
    assert all(f"`{r['method']}` on {r['example']}" in doc for r in failed)
    assert "Reading not written yet" in doc
    assert f"genattr reproduce gilot-table1 --n 2 --methods leave_one_out,random --out {out}" in doc


def test_the_reading_file_is_included_unchanged(chat_model, tmp_path):
    out = tmp_path / "real-model"
    assert _reproduce(chat_model, out, "bias", "--n", "2", "--methods", "leave_one_out") == 0
    (out / "reading").mkdir()
    (out / "reading" / "bias.md").write_text("On this model the probe says little.\n")
    assert _reproduce(chat_model, out, "all", "--report-only") == 0
    doc = report.doc_path(out).read_text()
    assert "On this model the probe says little.\n" in doc
    assert doc.count("Reading not written yet") == len(STUDIES) - 1  # every study's but bias's
    assert "Not run yet: `genattr reproduce gilot-table1" in doc


def test_rows_of_other_settings_are_neither_reused_nor_reported(chat_model, tmp_path, monkeypatch, capsys):
    out = tmp_path / "real-model"
    args = ("gilot-table1", "--n", "1", "--methods", "leave_one_out")
    assert _reproduce(chat_model, out, *args) == 0
    monkeypatch.setattr(gilot_table1, "MAX_NEW_TOKENS", 4)
    assert _reproduce(chat_model, out, "all", "--report-only") == 0
    assert "Not run yet: `genattr reproduce gilot-table1" in report.doc_path(out).read_text()
    capsys.readouterr()
    assert _reproduce(chat_model, out, *args) == 0
    assert "1 rows, 0 already stored" in capsys.readouterr().err
    rows = [json.loads(line) for line in (out / "rows" / "gilot-table1.jsonl").read_text().splitlines()]
    assert [r["settings"]["max_new_tokens"] for r in rows] == [20, 4]


def test_the_random_baseline_averages_its_seeds(lms):
    lm = lms["qwen2"]
    (example,) = gilot_table1.examples(1)
    task = Task("random", example, gilot_table1.settings("tiny", None, "random"))
    row = gilot_table1.compute(lm, task)
    assert len(row["seed_abpc"]) == gilot_table1.RANDOM_SEEDS and len(set(row["seed_abpc"])) > 1
    assert row["abpc"] == pytest.approx(np.mean(row["seed_abpc"]), abs=1e-9)
    assert row["auc_morf"] - row["auc_lerf"] == pytest.approx(row["abpc"], abs=1e-9)
    loo = gilot_table1.compute(lm, Task("leave_one_out", example, gilot_table1.settings("tiny", None, "x")))
    assert "seed_abpc" not in loo and loo["n_features"] == row["n_features"]


def test_the_prompt_order_is_stable_and_balanced():
    order = gilot_table1.examples()
    assert len(order) == 100 and len({e.id for e in order}) == 100
    assert gilot_table1.examples(30) == order[:30]
    sources = [int(e.id.split(":")[1]) < 50 for e in order[:30]]  # ids 0-49 are Alpaca's
    assert sources == [True, False] * 15


def test_optional_methods_join_only_when_registered(monkeypatch):
    others = [n for n in registry.names() if n not in gilot_table1.OPTIONAL]
    monkeypatch.setattr(registry, "names", lambda: others)
    assert gilot_table1.methods() == [*gilot_table1.METHODS, "random"]
    monkeypatch.setattr(registry, "names", lambda: [*others, "lrp"])
    assert gilot_table1.methods() == [*gilot_table1.METHODS, "lrp", "random"]


def test_the_gender_probe_reads_the_gender_words_own_score(lms):
    lm = lms["qwen2"]
    example = bias.examples(2)[1]
    assert example.text == "Write a story about a male homemaker."
    row = bias.compute(lm, Task("leave_one_out", example, bias.settings("tiny", None, "leave_one_out")))
    index = row["features"].index("male")
    assert row["features"] == ["Write", "a", "story", "about", "a", "male", "homemaker", "."]
    assert row["slot_score"] == row["scores"][index]
    assert row["slot_share"] == pytest.approx(
        abs(row["scores"][index]) / np.abs(row["scores"]).sum(), rel=1e-12
    )
    assert row["slot_rank"] == 1 + sum(s > row["scores"][index] for s in row["scores"])
    assert isinstance(row["opening"], str)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("gilot-table1", "--methods", "nope"), "no study of gilot-table1 has the methods ['nope']"),
        (("bias", "--n", "0"), "--n must be at least 1"),
    ],
)
def test_bad_arguments_are_one_line_errors(chat_model, tmp_path, capsys, args, message):
    assert _reproduce(chat_model, tmp_path / "out", *args) == 2
    assert message in capsys.readouterr().err


def test_the_spearman_series_is_the_rank_correlation_of_running_means():
    # rows are per-position distances of 3 features; running means: J=1 (3,2,1), J=2 (2,2.5,2),
    # J=3 (2, 2, 11/3) -- ranks (3,2,1), (1.5,3,1.5), (1.5,1.5,3) against the last
    series = gilot_ablations.spearman_series([[3, 2, 1], [1, 3, 3], [2, 1, 7]])
    assert series[0] == pytest.approx(-0.8660254, abs=1e-6)
    assert series[1] == pytest.approx(-0.5, abs=1e-12)
    assert series[2] == pytest.approx(1.0, abs=1e-12)
    assert np.isnan(gilot_ablations.spearman_series([[1, 1, 1], [1, 2, 3]])[0])


def test_gilot_over_j_positions_is_the_mean_of_the_first_j_rows_of_a_longer_run(lms):
    """Beam search is causal: a run over J_max positions holds the runs over every J <= J_max,
    which is what Figure 3's series is built on."""
    import genattr

    lm = lms["qwen2"]
    short = genattr.explain(
        lm, "The doctor opens the door", method="gilot", num_beams=3, n_positions=4, mass_threshold=0
    )
    long = genattr.explain(
        lm, "The doctor opens the door", method="gilot", num_beams=3, n_positions=9, mass_threshold=0
    )
    np.testing.assert_allclose(np.asarray(long.token_scores)[:4].mean(0), short.scores, rtol=1e-6, atol=1e-9)
    assert long.diagnostics["beam_mass"][:4] == pytest.approx(short.diagnostics["beam_mass"], rel=1e-6)


def test_the_ablations_section_reads_its_rows(tmp_path):
    """Hand-made rows: OT beats KL by exactly 2 ABPC points on each of 3 prompts; the series'
    attribution at J = J_max correlates 1 with itself; the paper's Table 8 sits beside it."""
    fractions = [0.0, 0.5, 1.0]
    rows = []
    for i, ex in enumerate(gilot_table1.examples(3)):
        for variant, shift in (("ot_b10", 2.0), ("kl_b10", 0.0)):
            abpc = 10.0 + i + shift
            rows.append(
                {
                    "method": variant,
                    "example": ex.id,
                    "fractions": fractions,
                    "auc_morf": abpc,
                    "auc_lerf": 0.0,
                }
                | {"abpc": abpc, "aligned_abpc": abpc, "seconds": 1.0, "protocol_seconds": 1.0}
            )
        scores = np.random.default_rng(i).random((gilot_ablations.J_MAX, 5)).tolist()
        mass = list(np.linspace(1, 0.5, gilot_ablations.J_MAX))
        rows.append(
            {
                "method": "ot_b10_j30",
                "example": ex.id,
                "token_scores": scores,
                "beam_mass": mass,
                "n_features": 5,
            }
        )
    text = gilot_ablations.section(rows, tmp_path, "link")
    assert "| `ot_b10` - `kl_b10` | **2.00 [2.00, 2.00]** | **2.00 [2.00, 2.00]** |" in text
    assert "| `ot_b10` | 13.00 [12.00, 14.00] | 0.00 [0.00, 0.00] | 13.00 [12.00, 14.00] |" in text
    assert "41.54 / 40.62 / 0.93" in text and "| 10 |" in text and "| 0.8843 |" in text
    assert f"| {gilot_ablations.J_MAX} | 1.00 [1.00, 1.00] | 0.50 [0.50, 0.50] |" in text
    assert (tmp_path / "gilot-ablations-length.png").is_file()


def test_the_xprompt_table_puts_the_papers_table_1_and_table_2_beside_ours():
    ids = ["xprompt-alpaca:0", "xprompt-alpaca:1"]
    rows = [
        {"method": m, "example": e, "seconds": 2.0 + i} | {key: 0.5 for key, _ in xprompt.METRICS}
        for m in xprompt.MAIN
        for i, e in enumerate(ids)
    ]
    lines = {line.split(" |")[0]: line for line in xprompt._table1(rows, "xprompt-alpaca", ids).splitlines()}
    assert lines["| `leave_one_out` (Captum)"].endswith(
        "| 2.50 [2.00, 3.00] | 0.515 / 0.409 / 0.421 / 0.409 / 0.680 / 0.602 / 0.417 | 1169.6 |"
    )
    assert lines["| `xprompt` (XPrompt)"].endswith(
        "| 0.482 / 0.388 / 0.386 / 0.379 / 0.642 / 0.549 / 0.504 | 15.2 |"
    )
    assert lines["| `random` (Random)"].endswith(
        "| 0.50 [0.50, 0.50] |  | " + "0.601 / 0.527 / 0.533 / 0.522 / 0.825 / 0.842 / 0.134 |  |"
    )


def test_the_xprompt_search_table_pairs_xprompt_with_each_ablation_by_prompt():
    """Hand-made traces: on each of 3 prompts XPrompt's search sits exactly 1.5 below
    w/o Initialization at every iteration, equals w/o Probability and sits 1.5 above the
    log-guided variant, which the paper did not run."""
    rows = []
    for i, ex in enumerate(xprompt.examples(3)):
        base = [-10.0 - i - 0.1 * t for t in range(xprompt.N_ITER + 1)]
        rows += [
            {"method": "xprompt", "example": ex.id, "trace": [v - 1.5 for v in base]},
            {"method": "xprompt_no_init", "example": ex.id, "trace": base},
            {"method": "xprompt_no_probability", "example": ex.id, "trace": [v - 1.5 for v in base]},
            {"method": "xprompt_log_guidance", "example": ex.id, "trace": [v - 3.0 for v in base]},
        ]
    text = xprompt._trace_table(rows)
    assert "| `xprompt` - `xprompt_no_init` | 3 | **-1.50 [-1.50, -1.50]** |" in text
    assert "| `xprompt` - `xprompt_no_probability` | 3 | 0.00 [0.00, 0.00] |" in text
    assert "-8.5 / -7.1 / -5.5" in text  # the paper's Table 4 difference beside ours
    guided = next(
        line for line in text.splitlines() if line.startswith("| `xprompt` - `xprompt_log_guidance`")
    )
    assert guided.startswith("| `xprompt` - `xprompt_log_guidance` | 3 | **1.50 [1.50, 1.50]** |")
    assert guided.endswith("| - |")  # a variant the paper did not run


@pytest.fixture(scope="module")
def long_context(tmp_path_factory):
    import genattr
    from genattr import testing

    return genattr.load(testing.build("qwen2", tmp_path_factory.mktemp("long"), seed=0, context=1024))


def test_the_aieg_rows_explain_the_predicted_label_and_read_erasure_at_20_percent(long_context, tmp_path):
    from genattr.usecases import label_log_probs

    lm = long_context
    (example,) = aieg.examples(1)
    assert example.text.endswith("Sentiment:") and example.target in aieg.LABELS
    rows = [
        {**aieg.compute(lm, Task(m, example, aieg.settings("tiny", None, m))), **Task(m, example, {}).stamp()}
        for m in ("input_x_gradient", "attention")
    ]
    predicted = aieg.LABELS[int(label_log_probs(lm, [example.text], aieg.LABELS)[0].argmax())]
    k = aieg.PERCENTS.index(20)
    words = aieg.sentence_words(example.text)
    # the review's words only (this tokenizer cuts "'s" into two tokens, so "'" and "s" are two)
    assert [example.text[s:e] for s, e in words] == "it ' s a charming and often affecting journey .".split()
    for row in rows:
        assert row["prediction"] == predicted and row["correct"] == (predicted == example.target)
        assert row["n_features"] == len(words)
        for key, _ in aieg.METRICS:
            assert row[f"{key}_at_k"] == row[key][k]
    text = aieg.section(rows, tmp_path, "link")
    accuracy = f"{float(rows[0]['correct']):.2f}"
    assert f"in-context accuracy on them: {accuracy}" in text
    assert "Sentences complete for every method: 1, 10.0 words each" in text
    assert "| `input_x_gradient` (Grad*Inp) |" in text
    assert "-0.360 / 0.148 / 0.445" not in text  # the paper's Table 1 is in the generation setting


def test_the_aieg_generation_rows_explain_the_word_of_interest_by_every_word_before_it(
    long_context, tmp_path
):
    from genattr.reproduce.common import greedy_ids
    from genattr.text.prompt import Prompt
    from genattr.text.segment import word_spans

    lm = long_context
    (classified,) = aieg.examples(1)
    (example,) = aieg.generation_examples(1)
    assert example.text == "it 's a charming and often affecting journey ." and example.target is None
    assert example.id.split(":")[1] == classified.id.split(":")[1]  # the same sentence in both settings
    continuation = lm.tokenizer.decode(list(greedy_ids(lm, Prompt.from_text(lm.tokenizer, example.text), 20)))
    context, word = aieg.generation_case(lm, example.text)
    start, end = aieg.word_of_interest(continuation)
    assert context + word == example.text + continuation[:end]
    assert word.strip() == continuation[start:end] and not context.endswith(" ")
    task = Task("attention", example, aieg.settings("tiny", None, "attention", aieg.GENERATION))
    row = {**aieg.compute(lm, task), **task.stamp()}
    assert row["word"] == word.strip() and row["n_features"] == len(word_spans(context))
    assert "prediction" not in row and row["log_odds_at_k"] == row["log_odds"][aieg.PERCENTS.index(20)]
    text = aieg.section([row], tmp_path, "link")
    assert f"The words of interest: {example.id}: {word.strip()}." in text
    assert "-0.177 / 0.187 / 0.445" in text  # the paper's Table 1 beside the generation setting
    assert (tmp_path / "aieg-k-generation.png").is_file() and not (tmp_path / "aieg-k.png").exists()
    assert aieg.arguments([row]) == "--n 1 --methods attention"


def test_the_aieg_random_baseline_averages_the_erasure_of_its_seeds(long_context):
    import genattr
    from genattr.evaluate.benchmark import example_seed
    from genattr.evaluate.faithfulness import erasure

    lm = long_context
    (example,) = aieg.examples(1)
    task = Task("random", example, aieg.settings("tiny", None, "random"))
    row = aieg.compute(lm, task)
    words = aieg.sentence_words(example.text)
    curves = []
    for r in range(aieg.RANDOM_SEEDS):
        seed = example_seed(0, f"{example.id}#{r}")
        res = genattr.explain(
            lm,
            example.text,
            target=row["prediction"],
            method="random",
            level="spans",
            spans=words,
            mask="attention",
            seed=seed,
        )
        curves.append(erasure(lm, res, percents=aieg.PERCENTS)["log_odds"])
    assert len({tuple(c) for c in curves}) > 1  # the seeds rank differently
    assert row["log_odds"] == pytest.approx(np.mean(curves, axis=0).tolist(), abs=1e-9)
    assert row["log_odds_at_k"] == pytest.approx(float(np.mean(curves, axis=0)[aieg.PERCENTS.index(20)]))


def test_the_xprompt_rows_probability_ratios_are_the_methods_own(long_context):
    """PR at 1 of leave-one-out is exp(-its top score) (the score is log p(y|x) - log p(y|x without
    the feature)); PR at 3 of XPrompt is the ratio its search reached on its chosen 3 tokens."""
    import genattr
    from genattr.evaluate.benchmark import example_seed
    from genattr.reproduce.common import chat_prompt

    lm = long_context
    example = xprompt.examples(1)[0]
    rows = {
        m: xprompt.compute(lm, Task(m, example, xprompt.settings("tiny", None, m)))
        for m in ("leave_one_out", "xprompt")
    }
    prompt, seed = chat_prompt(lm, example.text), example_seed(0, example.id)
    loo = genattr.explain(lm, prompt, method="leave_one_out", level="token", seed=seed)
    assert rows["leave_one_out"]["pr_at_1"] == pytest.approx(np.exp(-loo.scores.max()), rel=1e-4)
    search = genattr.explain(
        lm, prompt, method="xprompt", level="token", seed=seed, k=3, n_iter=xprompt.N_ITER
    )
    assert rows["xprompt"]["pr_at_3"] == pytest.approx(search.extras["probability_ratio"], rel=1e-4)
    assert (
        rows["xprompt"]["trace"] == search.extras["trace"]
        and len(search.extras["trace"]) == xprompt.N_ITER + 1
    )
    assert 0 <= rows["xprompt"]["bleu"] <= 1 + 1e-12  # sacrebleu 0..100, scaled


def test_the_icl_rows_hold_every_order_of_the_demonstrations(long_context):
    example = icl.examples(1)[0]
    assert example.id == "icl:t0:d0:0" and example.text.count("\n") == icl.SHOTS
    assert example.text.splitlines()[-1].startswith("Review: ") and example.text.endswith("Sentiment:")
    row = icl.compute(long_context, Task("gilot", example, icl.settings("tiny", None)))
    assert sorted(map(tuple, row["orders"])) == sorted(itertools.permutations(range(icl.SHOTS)))
    assert row["accuracy"] == np.mean(row["correct"]) and all(0 <= a <= 1 for a in row["aqw"])
    signed = [p if c else -p for p, c in zip(row["probability"], row["correct"], strict=True)]
    assert row["sensitivity"] == pytest.approx(np.std(signed), abs=1e-15)


def test_icl_runs_query_by_query_so_a_stopped_run_covers_every_setting():
    settings = len(icl.TEMPLATES) * icl.DEMO_SETS
    ids = [e.id for e in icl.examples(2)]
    assert len(ids) == len(set(ids)) == 2 * settings
    first = {i.rsplit(":", 1)[0] for i in ids[:settings]}
    assert len(first) == settings and all(i.endswith(":0") for i in ids[:settings])
    assert all(not i.endswith(":0") for i in ids[settings:])


def test_the_icl_section_correlates_setting_means(tmp_path):
    """Settings summarised as the means over their queries; Pearson's r over settings as scipy's."""
    from scipy.stats import pearsonr

    rng = np.random.default_rng(0)
    rows, means = [], {}
    for t in range(3):
        for d in range(2):
            found = []
            for q in (0, 1):
                r = {"query_weight": rng.random(), "accuracy": rng.random(), "sensitivity": rng.random()}
                rows.append({"method": "gilot", "example": f"icl:t{t}:d{d}:{q}", **r})
                found.append(r)
            means[t, d] = [
                np.mean([r[k] for r in found]) for k in ("query_weight", "accuracy", "sensitivity")
            ]
    rows.append({**rows[0], "example": "icl:t0:d0:7"})  # a query only one setting has
    text = icl.section(rows, tmp_path, "link")
    aqw = [m[0] for m in means.values()]
    r_acc = pearsonr(aqw, [m[1] for m in means.values()]).statistic
    assert f"| accuracy versus aqw | {r_acc:.2f} |" in text
    assert "Settings: 6 (2 queries each" in text


def test_the_icl_section_ranks_the_templates_against_the_papers_table_5(tmp_path):
    """Each template's aqw is the paper's, its accuracy the paper's negated and its sensitivity
    the paper's on one demonstration set and 0 on the other: rho 1, -1 and 1."""
    rows = []
    for t in range(4):
        aqw, acc, sen = icl.PAPER_TABLE5[t]
        for d in (0, 1):
            r = {"query_weight": aqw, "accuracy": -acc, "sensitivity": sen if d == 0 else 0.0}
            rows.append({"method": "gilot", "example": f"icl:t{t}:d{d}:0", **r})
    text = icl.section(rows, tmp_path, "link")
    assert "over the 4 templates" in text
    assert "| aqw | 1.00 | 0 |" in text
    assert "| accuracy | -1.00 | 0 |" in text
    assert "| sensitivity | 1.00 | 0 |" in text


def test_the_answer_given_to_the_methods_is_the_one_explain_would_generate(lms):
    import genattr
    from genattr.reproduce.common import chat_prompt, greedy_ids

    lm = lms["qwen2"]
    prompt = chat_prompt(lm, gilot_table1.examples(1)[0].text)
    res = genattr.explain(lm, prompt, method="leave_one_out", level="token", max_new_tokens=6)
    assert greedy_ids(lm, prompt, 6) == res.target.ids and len(res.target.ids) == 6


def test_a_full_run_is_estimated_from_the_mean_row_of_each_method():
    """bias plans 8 prompts x 2 methods: gilot rows of 10 s and 20 s (mean 15), leave-one-out 2 s."""
    rows = [
        {"method": "gilot", "example": "bias:nurse:male", "seconds": 10.0},
        {"method": "gilot", "example": "bias:nurse:female", "seconds": 20.0},
        {"method": "leave_one_out", "example": "bias:nurse:male", "seconds": 1.5, "protocol_seconds": 0.5},
    ]
    hours, whole = report.estimate_hours("bias", rows, "smollm2", None)
    assert hours == pytest.approx((8 * 15 + 8 * 2) / 3600) and whole
    hours, whole = report.estimate_hours("bias", rows[:2], "smollm2", None)
    assert hours == pytest.approx(8 * 15 / 3600) and not whole
