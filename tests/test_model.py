"""LanguageModel: loading, one-pass teacher forcing, batching and chunking, hidden positions,
greedy generation, beam search against brute-force enumeration, gradients and attention hooks."""

from __future__ import annotations

import itertools

import pytest
import torch

import genattr
import genattr.model
from genattr.algorithms.gilot.beams import beam_search
from genattr.errors import ContextLengthError, InputError, ModelLoadError, NumericalError
from genattr.masking import Masker
from genattr.model import Batch, LanguageModel
from genattr.model.prefix import _prefix_cuts
from genattr.progress import progress_bar, reporting
from genattr.text.prompt import Prompt

from .conftest import ARCHS, naive_log_probs

PROMPT = "The cat sat on the mat. Then a dog runs!"
TARGET = " and the bird sings"


def _target(lm, text=TARGET):
    return lm.tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("arch", ARCHS)
def test_load_each_architecture_from_a_saved_directory(lms, arch):
    lm = lms[arch]
    assert lm.model.config.model_type == arch
    assert lm.vocab_size == len(lm.tokenizer)
    assert lm.context_length == 256
    assert lm.eos_ids == [lm.tokenizer.eos_token_id]


def test_load_missing_path_raises(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        genattr.load(tmp_path / "nope")
    with pytest.raises(ModelLoadError):
        genattr.load("./not/a/model/dir")


def test_load_wraps_objects_and_bfloat16_scores_in_float32(model_dirs):
    lm = genattr.load(model_dirs["llama"], dtype="bfloat16")
    assert lm.dtype == torch.bfloat16
    prompt = Prompt.from_text(lm.tokenizer, PROMPT)
    lp = lm.target_log_probs(Batch.from_ids(prompt.input_ids), _target(lm))
    assert lp.dtype == torch.float32
    wrapped = genattr.load(model=lm.model, tokenizer=lm.tokenizer)
    assert isinstance(wrapped, LanguageModel) and wrapped.model is lm.model


def test_teacher_forcing_in_one_pass_equals_step_by_step_oracle(lm):
    prompt = Prompt.from_text(lm.tokenizer, PROMPT)
    target = _target(lm)
    before = lm.usage.forward_passes
    lp = lm.target_log_probs(Batch.from_ids(prompt.input_ids), target)
    assert lm.usage.forward_passes == before + 1
    torch.testing.assert_close(lp[0], naive_log_probs(lm, prompt.input_ids, target), atol=1e-5, rtol=0)


def test_teacher_forcing_equals_greedy_generation_scores(lm):
    prompt = Prompt.from_text(lm.tokenizer, PROMPT)
    gen = lm.generate(Batch.from_ids(prompt.input_ids), 6, stop_at_eos=False)
    assert len(gen.token_ids[0]) == 6
    lp = lm.target_log_probs(Batch.from_ids(prompt.input_ids), gen.token_ids[0])
    torch.testing.assert_close(lp[0], torch.tensor(gen.log_probs[0]), atol=1e-5, rtol=0)
    # Greedy: every generated token is the argmax of the oracle's next-token distribution.
    ids = list(prompt.input_ids)
    with torch.no_grad():
        for tok in gen.token_ids[0]:
            assert int(lm.model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()) == tok
            ids.append(tok)


@pytest.mark.parametrize("strategy", ["attention", "replace", "delete"])
def test_batched_and_chunked_scoring_equals_unbatched(lm, strategy):
    prompt = Prompt.from_text(lm.tokenizer, PROMPT)
    features = prompt.features("word")
    masker = Masker(lm, prompt, features, strategy)
    gen = torch.Generator().manual_seed(0)
    keep = torch.rand(9, len(features), generator=gen) > 0.4
    keep[0] = True
    keep[1] = False
    inputs = masker.inputs(keep)
    target = _target(lm)
    batched = lm.target_log_probs(inputs, target)
    budget = lm.max_batch_tokens
    try:
        lm.max_batch_tokens, lm.share_prefix = 1, False  # one row per forward pass
        before = lm.usage.forward_passes
        chunked = lm.target_log_probs(inputs, target)
        assert lm.usage.forward_passes - before == len(keep)
    finally:
        lm.max_batch_tokens, lm.share_prefix = budget, True
    torch.testing.assert_close(chunked, batched, atol=1e-5, rtol=0)
    single = torch.cat([lm.target_log_probs(inputs.rows(slice(i, i + 1)), target) for i in range(len(keep))])
    torch.testing.assert_close(single, batched, atol=1e-5, rtol=0)


def test_replace_and_delete_variants_equal_the_oracle_on_the_edited_prompt(llama):
    lm = llama
    prompt = Prompt.from_text(lm.tokenizer, PROMPT)
    features = prompt.features("word")
    target = _target(lm)
    keep = torch.ones(len(features), dtype=torch.bool)
    keep[[1, 4]] = False  # "cat", "the"
    replaced = Masker(lm, prompt, features, "replace", baseline="unk")
    ids = list(prompt.input_ids)
    for f in (features[1], features[4]):
        for t in f.positions:
            ids[t] = lm.tokenizer.unk_token_id
    torch.testing.assert_close(
        lm.target_log_probs(replaced.inputs(keep), target)[0],
        naive_log_probs(lm, ids, target),
        atol=1e-5,
        rtol=0,
    )
    deleted = Masker(lm, prompt, features, "delete")
    edited = lm.tokenizer("The sat on mat. Then a dog runs!")["input_ids"]
    # Left padding (a shorter row beside the full prompt) must not change the shorter row's scores.
    both = deleted.inputs(torch.stack([torch.ones_like(keep), keep]))
    assert both.input_ids.shape[1] == len(prompt.input_ids)
    torch.testing.assert_close(
        lm.target_log_probs(both, target)[1], naive_log_probs(lm, edited, target), atol=1e-5, rtol=0
    )


def test_hidden_positions_match_the_models_own_padding_mask(lm):
    """Hiding a key through genattr's 4-D mask equals Hugging Face's 2-D attention mask path
    for every position that is not hidden (an independent implementation of the same thing)."""
    prompt = Prompt.from_text(lm.tokenizer, PROMPT)
    ids = torch.tensor([prompt.input_ids])
    visible = torch.ones_like(ids, dtype=torch.bool)
    visible[0, [3, 5]] = False
    positions = torch.arange(ids.shape[1])[None]
    with torch.no_grad():
        ours = lm.forward(input_ids=ids, visible=visible, positions=positions).logits
        with lm.eager_attention():
            theirs = lm.model(input_ids=ids, attention_mask=visible.long(), position_ids=positions).logits
    keep = visible[0]
    torch.testing.assert_close(ours[0, keep], theirs[0, keep], atol=1e-4, rtol=0)


def test_target_distributions_agree_with_log_probs(llama):
    prompt = Prompt.from_text(llama.tokenizer, PROMPT)
    target = _target(llama)
    inputs = Batch.from_ids(prompt.input_ids, 2)
    dist = llama.target_distributions(inputs, target)
    assert dist.shape == (2, len(target), llama.vocab_size)
    torch.testing.assert_close(dist.exp().sum(-1), torch.ones(2, len(target)), atol=1e-5, rtol=0)
    picked = dist.gather(-1, torch.tensor(target)[None, :, None].expand(2, -1, 1)).squeeze(-1)
    torch.testing.assert_close(picked, llama.target_log_probs(inputs, target), atol=1e-6, rtol=0)


def test_per_row_targets(llama):
    prompt = Prompt.from_text(llama.tokenizer, PROMPT)
    t1, t2 = _target(llama, " and the bird"), _target(llama, " or a cat runs")
    n = min(len(t1), len(t2))
    rows = torch.tensor([t1[:n], t2[:n]])
    both = llama.target_log_probs(Batch.from_ids(prompt.input_ids, 2), rows)
    torch.testing.assert_close(both[1], naive_log_probs(llama, prompt.input_ids, t2[:n]), atol=1e-5, rtol=0)


def test_generation_stops_at_eos(model_dirs):
    lm = genattr.load(model_dirs["llama"])
    eos = lm.tokenizer.eos_token_id
    prompt = Prompt.from_text(lm.tokenizer, PROMPT)

    def favour_eos(module, args, output):
        output[..., eos] += 100.0
        return output

    lm.model.lm_head.register_forward_hook(favour_eos)
    gen = lm.generate(Batch.from_ids(prompt.input_ids), 5)
    assert gen.token_ids == [[]] and gen.stopped == [True]
    with pytest.raises(genattr.errors.EmptyTargetError, match="greedy continuation is empty"):
        genattr.explain(lm, PROMPT, target=None)


def test_nan_logits_raise_a_numerical_error(model_dirs):
    lm = genattr.load(model_dirs["gpt2"])
    with torch.no_grad():
        next(lm.model.parameters()).view(-1)[:50] = float("nan")
    with pytest.raises(NumericalError, match="NaN or infinite"):
        genattr.explain(lm, PROMPT, target=TARGET)


def test_context_length_is_checked_with_both_numbers(llama):
    prompt = Prompt.from_text(llama.tokenizer, PROMPT)
    too_long = _target(llama, " cat" * 300)
    with pytest.raises(
        ContextLengthError, match=rf"{len(prompt) + len(too_long)} tokens .* context window is 256"
    ):
        llama.target_log_probs(Batch.from_ids(prompt.input_ids), too_long)


def _exact_marginals(lm, prompt_ids, J):
    """Oracle: p(Y_j) for j = 1..J by enumerating every prefix (EOS absorbing), no beam search."""
    V, eos = lm.vocab_size, set(lm.eos_ids)
    out = torch.zeros(J, V, dtype=torch.float64)
    with torch.no_grad():
        for j in range(J):
            for prefix in itertools.product(range(V), repeat=j):
                p_prefix, ids, ended = 1.0, list(prompt_ids), None
                for tok in prefix:
                    if ended is not None:
                        p_prefix *= float(tok == ended)
                    else:
                        p_prefix *= float(
                            lm.model(input_ids=torch.tensor([ids])).logits[0, -1].double().softmax(-1)[tok]
                        )
                        ended = tok if tok in eos else None
                    ids.append(tok)
                    if p_prefix == 0:
                        break
                if p_prefix == 0:
                    continue
                if ended is not None:
                    out[j, ended] += p_prefix
                else:
                    out[j] += p_prefix * lm.model(input_ids=torch.tensor([ids])).logits[
                        0, -1
                    ].double().softmax(-1)
    return out


def test_beam_marginals_equal_enumeration_when_beams_cover_every_prefix(word_lm):
    lm, J = word_lm, 3
    V = lm.vocab_size
    prompt = Prompt.from_text(lm.tokenizer, "red cat sat")
    exact = _exact_marginals(lm, prompt.input_ids, J)
    full = beam_search(lm, Batch.from_ids(prompt.input_ids), num_beams=V ** (J - 1), max_new_tokens=J)
    torch.testing.assert_close(full.marginals[0].double(), exact, atol=1e-5, rtol=0)
    torch.testing.assert_close(full.mass[0], torch.ones(J), atol=1e-5, rtol=0)
    errors = []
    for b in (1, 3, V, 4 * V, V * V):
        est = beam_search(lm, Batch.from_ids(prompt.input_ids), num_beams=b, max_new_tokens=J)
        assert torch.all(est.mass[0, 1:] <= 1 + 1e-6)
        errors.append(float((est.marginals[0, -1].double() - exact[-1]).abs().sum()))
    assert errors[-1] < 1e-4
    assert errors[0] > errors[2] > errors[-1]


def test_beam_search_batches_prompts_and_matches_single_runs(llama):
    prompt = Prompt.from_text(llama.tokenizer, PROMPT)
    features = prompt.features("word")
    masker = Masker(llama, prompt, features, "attention")
    keep = torch.ones(3, len(features), dtype=torch.bool)
    keep[1, 2] = False
    keep[2, 5] = False
    inputs = masker.inputs(keep)
    batched = beam_search(llama, inputs, num_beams=4, max_new_tokens=4)
    assert batched.marginals.shape == (3, 4, llama.vocab_size)
    torch.testing.assert_close(batched.marginals.sum(-1), torch.ones(3, 4), atol=1e-5, rtol=0)
    for i in range(3):
        single = beam_search(llama, inputs.rows(slice(i, i + 1)), num_beams=4, max_new_tokens=4)
        torch.testing.assert_close(single.marginals[0], batched.marginals[i], atol=1e-5, rtol=0)
        assert torch.equal(single.sequences[0], batched.sequences[i])
    # The best beam's log-probability is the teacher-forced score of its sequence.
    best = batched.sequences[0, 0].tolist()
    lp = llama.target_log_probs(inputs.rows(slice(0, 1)), best).sum()
    assert abs(float(lp) - float(batched.sequence_log_probs[0, 0])) < 1e-4


def test_forward_from_embeddings_matches_and_has_gradients(lm):
    prompt = Prompt.from_text(lm.tokenizer, PROMPT)
    target = _target(lm)
    inputs = Batch.from_ids(prompt.input_ids)
    rows = Batch.from_ids([*prompt.input_ids, *target[:-1]])
    embeds = lm.embed(rows.input_ids).detach().requires_grad_(True)
    lp = lm.log_probs_from_embeddings(embeds, rows, target)
    torch.testing.assert_close(lp.detach(), lm.target_log_probs(inputs, target), atol=1e-5, rtol=0)
    (grad,) = torch.autograd.grad(lp.sum(), embeds)
    assert grad.shape == embeds.shape and grad.abs().sum() > 0


def test_attention_maps_under_eager_and_restore(lm):
    prompt = Prompt.from_text(lm.tokenizer, PROMPT)
    target = _target(lm)
    features = prompt.features("word")
    keep = torch.ones(1, len(features), dtype=torch.bool)
    keep[0, 1] = False
    inputs = Masker(lm, prompt, features, "attention").inputs(keep)
    before = lm.attn_implementation
    maps = lm.attention_maps(inputs.extended(torch.tensor([list(target[:-1])])))
    assert lm.attn_implementation == before
    T = len(prompt) + len(target) - 1
    layers, heads = lm.model.config.num_hidden_layers, lm.model.config.num_attention_heads
    assert maps.shape == (1, layers, heads, T, T)
    torch.testing.assert_close(maps.sum(-1), torch.ones(1, layers, heads, T), atol=1e-5, rtol=0)
    hidden = list(features[1].positions)
    others = [q for q in range(T) if q not in hidden]
    assert maps[0][:, :, others][:, :, :, hidden].abs().max() == 0
    assert torch.triu(maps[0], diagonal=1).abs().max() == 0


@pytest.mark.parametrize("strategy", ["attention", "replace"])
def test_prefix_tree_scoring_of_shapley_coalitions_is_exact_whatever_the_chunks(lm, strategy, monkeypatch):
    """Coalitions along random permutations (as Shapley sampling draws them) share prefixes with
    many different rows: the prefix tree runs each once and gives the plain scores, in any chunking."""
    prompt = Prompt.from_text(lm.tokenizer, " ".join([PROMPT] * 2))
    features = prompt.features("token")
    F = len(features)
    gen = torch.Generator().manual_seed(1)
    keep = torch.zeros(4 * F + 1, F, dtype=torch.bool)
    for p in range(4):
        order = torch.randperm(F, generator=gen)
        for t in range(F):
            keep[p * F + t + 1] = keep[p * F + t] if t else False
            keep[p * F + t + 1, order[t]] = True
    inputs = Masker(lm, prompt, features, strategy).inputs(keep)
    target = _target(lm)
    monkeypatch.setattr(lm, "share_prefix", False)
    before = lm.usage.copy()
    plain = lm.target_log_probs(inputs, target)
    plain_tokens = lm.usage.since(before)["tokens_processed"]
    monkeypatch.setattr(lm, "share_prefix", True)
    for budget, call_tokens in [(10**6, 0), (10**6, 128), (7 * (inputs.length + len(target)), 16)]:
        monkeypatch.setattr(lm, "max_batch_tokens", budget)
        monkeypatch.setattr(genattr.model.prefix, "PREFILL_CALL_TOKENS", call_tokens)
        before = lm.usage.copy()
        shared = lm.target_log_probs(inputs, target)
        shared_tokens = lm.usage.since(before)["tokens_processed"]
        torch.testing.assert_close(shared, plain, atol=1e-5, rtol=0)
        assert shared_tokens < 0.85 * plain_tokens
    distributions = lm.target_distributions(inputs.rows(slice(0, 9)), target)
    monkeypatch.setattr(lm, "share_prefix", False)
    torch.testing.assert_close(
        distributions, lm.target_distributions(inputs.rows(slice(0, 9)), target), atol=1e-5, rtol=0
    )
    if strategy == "replace":  # rows are plain token sequences: the one-step-at-a-time oracle applies
        for i in (1, 2 * F, 4 * F):
            torch.testing.assert_close(
                shared[i], naive_log_probs(lm, inputs.input_ids[i], target), atol=1e-4, rtol=0
            )


def test_prefix_cuts_minimise_the_cost_over_every_cut_set():
    """Oracle: enumerate every set of cut depths over rows (of T positions, the last n of which
    run in the final call) whose distinct prefixes are counted directly."""
    gen = torch.Generator().manual_seed(0)
    T, n = 9, 3
    for trial in range(30):
        rows = sorted(
            map(
                tuple,
                torch.randint(
                    0, 2, (int(torch.randint(2, 9, (1,), generator=gen)), T), generator=gen
                ).tolist(),
            )
        )
        same = [next((i for i in range(T) if a[i] != b[i]), T) for a, b in itertools.pairwise(rows)]
        call = [0, 3, 20][trial % 3]

        def cost(cuts, rows=rows, call=call):
            run, done = 0, 0
            for s in cuts:
                run += len({r[:s] for r in rows}) * (s - done) + call
                done = s
            return run + len(rows) * (T - done) + call

        cuts = _prefix_cuts(same, T, n, call)
        assert all(0 < s <= T - n for s in cuts)
        best = min(cost(c) for k in range(T) for c in itertools.combinations(range(1, T - n + 1), k))
        assert cost(cuts) == best


@pytest.mark.parametrize("strategy", ["attention", "replace"])
def test_shared_prefix_scoring_is_exact_and_runs_fewer_tokens(lm, strategy):
    """Leave-one-out variants share the full prompt's prefix up to the removed feature: scoring
    them from the reference's keys and values equals scoring every row in full."""
    prompt = Prompt.from_text(lm.tokenizer, " ".join([PROMPT] * 3))
    features = prompt.features("token")
    keep = torch.ones(1 + len(features), len(features), dtype=torch.bool)
    for i in range(len(features)):
        keep[1 + i, i] = False
    inputs = Masker(lm, prompt, features, strategy).inputs(keep)
    target = _target(lm)
    before = lm.usage.tokens_processed
    shared = lm.target_log_probs(inputs, target)
    shared_tokens = lm.usage.tokens_processed - before
    lm.share_prefix = False
    try:
        before = lm.usage.tokens_processed
        full = lm.target_log_probs(inputs, target)
        full_tokens = lm.usage.tokens_processed - before
        dist_full = lm.target_distributions(inputs.rows(slice(0, 6)), target)
    finally:
        lm.share_prefix = True
    torch.testing.assert_close(shared, full, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        lm.target_distributions(inputs.rows(slice(0, 6)), target), dist_full, atol=1e-5, rtol=0
    )
    assert shared_tokens < 0.75 * full_tokens


def test_chunked_leave_one_out_rows_run_exactly_the_prefix_reuse_floor(lm, monkeypatch):
    """Oracle: leave-one-out rows over token features, scored two rows per forward pass, run the
    full row once and each variant from its removed token on, T + sum_i (T - s_i) tokens over rows
    of T positions (no per-call cost): each chunk takes over the keys and values of the last row
    of the one before. The values equal scoring every row in full."""
    prompt = Prompt.from_text(lm.tokenizer, " ".join([PROMPT] * 2))
    features = prompt.features("token")
    keep = torch.ones(1 + len(features), len(features), dtype=torch.bool)
    for i in range(len(features)):
        keep[1 + i, i] = False
    inputs = Masker(lm, prompt, features, "attention", baseline=0).inputs(keep)  # id 0 sorts first
    target = _target(lm)
    T = inputs.length + len(target) - 1
    floor = T + sum(T - f.positions[0] for f in features)
    monkeypatch.setattr(genattr.model.prefix, "PREFILL_CALL_TOKENS", 0)
    monkeypatch.setattr(lm, "max_batch_tokens", 2 * (T + 1))
    before = lm.usage.copy()
    shared = lm.target_log_probs(inputs, target)
    assert lm.usage.since(before)["tokens_processed"] == floor
    monkeypatch.setattr(lm, "share_prefix", False)
    torch.testing.assert_close(shared, lm.target_log_probs(inputs, target), atol=1e-5, rtol=0)


def test_an_uncached_hub_id_without_network_fails_at_once(tmp_path, monkeypatch):
    """The hub endpoint is a closed loopback port, so the test means the same with or without
    network: a typed error within seconds that says to use a local path."""
    import socket
    import time

    from huggingface_hub import constants

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    started = time.perf_counter()
    with pytest.raises(ModelLoadError, match="not in the hub cache.*did not answer.*local model directory"):
        genattr.load("someone/some-model")
    assert time.perf_counter() - started < 5


def test_progress_is_passed_to_explain_and_heard_only_during_the_call(llama):
    heard: list[tuple[int, int]] = []
    res = genattr.explain(
        llama,
        PROMPT,
        target=TARGET,
        method="shapley_exact",
        level="sentence",
        progress=lambda *a: heard.append(a),
    )
    assert heard and all(0 < done <= total for done, total in heard) and heard[-1][0] == heard[-1][1]
    assert "progress" not in res.params and not hasattr(llama, "progress")
    count = len(heard)
    llama.target_log_probs(Batch.from_ids(res.prompt.input_ids, rows=3), list(res.target.ids))
    assert len(heard) == count  # the callback's scope ended with the call
    with reporting(lambda *a: heard.append(a)):
        llama.target_log_probs(Batch.from_ids(res.prompt.input_ids, rows=3), list(res.target.ids))
    assert heard[count:] == [(3, 3)]
    with pytest.raises(InputError, match="progress must be a callable"):
        genattr.explain(llama, PROMPT, target=TARGET, progress=True)


def test_the_progress_bar_does_nothing_when_disabled_or_not_on_a_terminal(capsys):
    for enabled in (False, True):  # stderr is captured here, not a terminal
        with progress_bar("scoring", enabled) as bar:
            bar(1, 2)
            bar(2, 2, "note")
    assert capsys.readouterr().err == ""
