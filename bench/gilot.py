"""Speed benchmark: genattr GiLOT against GiLOT computed the way its authors' code does.

Setting (the issue's): the benchmark Llama of bench/common.py (hidden 256, 4 layers, vocabulary
4000) on CPU, a prompt of 32 tokens (BOS included, never masked: 31 token features), b = 10 beams,
J = 10 output positions, top-k = 100 for the vocabulary compression.

* **authors' way** (github.com/holyseven/GiLOT, ``interpreter.py``, ``interpret_ours``), re-written
  here without CUDA: for the full prompt and for each masked token (id set to 0, attention mask
  0), one Hugging Face ``generate(num_beams=b, num_return_sequences=b, max_new_tokens=J)``, then
  one teacher-forced pass over the b returned sequences to read the sequence probabilities and
  the next-token distribution (their ``compute_prob_distribution``), giving the beam-weighted
  distribution of **one** position; then one unbatched IPOT per masked token (their
  ``_ipot_torch``: float64, beta = 2, one inner sweep, 1000 iterations, the cost recorded every
  iteration) on the union of the two top-k supports.
* **genattr**: ``genattr.explain(lm, prompt, method="gilot", level="token", num_beams=10,
  n_positions=10)`` -- **all J positions**: one batched beam search over the 32 prompts (shared
  prefixes), then the 310 OT problems (exact network simplex, the default on CPU); and the same
  with ``beams="follow"``.

Also printed: what the prefix sharing saves in the search, and the OT solvers on the same 310
problems -- exact against the batched Sinkhorn and IPOT per iteration at several batch sizes --
which is how the defaults (``solver="exact"`` on CPU, ``ot_batch_size``) were chosen.

Run from the repository root (builds the model into bench/.cache/ on first use):

    .venv/bin/python bench/gilot.py [--repeats 3] [--threads 2] [--skip-solvers] [--authors-all-positions]
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
from transformers import GenerationConfig

import genattr
from common import load_model, time_calls, token_exact_texts
from genattr.algorithms.gilot import ot
from genattr.algorithms.gilot.beams import beam_search
from genattr.errors import LowBeamMassWarning
from genattr.masking import Masker
from genattr.text.prompt import Prompt

PROMPT_TOKENS, BEAMS, POSITIONS, TOP_K = 32, 10, 10, 100
TARGET_SPEEDUP = 10.0


def authors_ipot(a1, a2, C, beta=2.0, max_iter=1000, L=1):
    """The authors' ``_ipot_torch`` (same operations, CPU instead of CUDA): returns the last cost."""
    a1 = a1 + 0.0001
    a2 = a2 + 0.0001
    n = len(a1)
    v = torch.ones([n], dtype=torch.float64)
    u = torch.ones([n], dtype=torch.float64)
    P = torch.ones((n, n), dtype=torch.float64) / n**2
    K = torch.exp(-(C / beta))
    loss = []
    for _ in range(max_iter):
        Q = K * P
        for _ in range(L):
            u = a1 / torch.matmul(Q, v)
            v = a2 / torch.matmul(Q.T, u)
        P = torch.unsqueeze(u, dim=1) * Q * torch.unsqueeze(v, dim=0)
        loss.append(torch.sum(P * C))
    return loss[-1]


def authors_way(lm, prompt_ids: list[int], masked: list[int], b: int, J: int, k: int) -> dict:
    """GiLOT for one output position as the authors' code computes it; returns costs and the time split."""
    model = lm.model
    eos = lm.tokenizer.eos_token_id
    config = GenerationConfig(
        num_beams=b,
        num_return_sequences=b,
        max_new_tokens=J,
        do_sample=False,
        early_stopping=False,
        pad_token_id=eos,
        eos_token_id=eos,
    )
    L = len(prompt_ids)

    forced = [0.0]  # seconds in the teacher-forced passes

    def position_distribution(a: int | None) -> torch.Tensor:
        ids = torch.tensor([prompt_ids])
        attention = torch.ones_like(ids)
        if a is not None:
            ids[0, a], attention[0, a] = 0, 0
        with torch.no_grad():
            generated = model.generate(input_ids=ids, attention_mask=attention, generation_config=config)
            full_attention = torch.ones_like(generated)
            if a is not None:
                full_attention[:, a] = 0
            start = time.perf_counter()
            probas = model(input_ids=generated, attention_mask=full_attention).logits.softmax(-1)
            forced[0] += time.perf_counter() - start
        new = probas[:, L - 1 :, :]
        picked = generated[:, L:]
        selected = new[torch.arange(new.shape[0])[:, None], torch.arange(picked.shape[1]), picked]
        weights = selected.prod(1)
        pj = (weights[:, None] * new[:, -1, :]).sum(0)
        return pj / pj.sum()

    start = time.perf_counter()
    pj = position_distribution(None)
    masked_pj = [position_distribution(a) for a in masked]
    searched = time.perf_counter()
    unit = ot.unit_embeddings(lm.embedding_matrix).double()
    costs = []
    for q in masked_pj:
        union = torch.cat([pj.topk(k).indices, q.topk(k).indices]).unique()
        s1, s2 = pj[union].double(), q[union].double()
        C = 1 - unit[union] @ unit[union].T
        costs.append(float(authors_ipot(s1 / s1.sum(), s2 / s2.sum(), C)))
    finished = time.perf_counter()
    return {"costs": costs, "search": searched - start, "forced": forced[0], "ot": finished - searched}


def solver_table(lm, prompt: Prompt, repeats: int) -> None:
    """Time the OT solvers on GiLOT's own problems (features x positions)."""
    features = prompt.features("token")
    F = len(features)
    keep = torch.ones(F + 1, F, dtype=torch.bool)
    keep[torch.arange(1, F + 1), torch.arange(F)] = False
    search = beam_search(lm, Masker(lm, prompt, features).inputs(keep), BEAMS, POSITIONS)
    V = lm.vocab_size
    p = search.marginals[0][None].expand(F, -1, -1).reshape(-1, V)
    q = search.marginals[1:].reshape(-1, V)
    unit = ot.unit_embeddings(lm.embedding_matrix)
    n = p.shape[0]
    calls = {"exact (network simplex)": lambda: ot.vocabulary_ot(p, q, unit, TOP_K, "exact")}
    iterations = 20
    for bs in (8, 32, 128, n):
        calls[f"sinkhorn x{iterations} it, batch {bs}"] = lambda bs=bs: ot.vocabulary_ot(
            p, q, unit, TOP_K, "sinkhorn", bs, reg=0.05, tol=0.0, max_iter=iterations
        )
        calls[f"ipot x{iterations} it (5 sweeps), batch {bs}"] = lambda bs=bs: ot.vocabulary_ot(
            p, q, unit, TOP_K, "ipot", bs, tol=0.0, max_iter=iterations
        )
    timings = time_calls(calls, repeats)
    exact = timings["exact (network simplex)"][1].cost
    print(f"\nOT solvers on GiLOT's {n} problems (union of top-{TOP_K} supports), best of {repeats}:")
    for name, (timing, result) in timings.items():
        per = timing.best / n * 1e3
        err = float((result.cost - exact).abs().max())
        print(f"  {name:<38} {timing.best:8.3f} s  {per:8.3f} ms/problem  max abs. diff. to exact {err:.1e}")
    print(
        "  (the iterative solvers need hundreds to thousands of iterations on these problems to reach 1e-3)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-solvers", action="store_true")
    parser.add_argument(
        "--authors-all-positions",
        action="store_true",
        help="also time the authors' way for every position j = 1..J (their code runs once per J)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", LowBeamMassWarning)  # a random model spreads its mass

    lm = load_model()
    prompt_text, _ = token_exact_texts(lm.tokenizer, PROMPT_TOKENS, 1)
    prompt = Prompt.from_text(lm.tokenizer, prompt_text)
    masked = sorted(t for f in prompt.features("token") for t in f.positions)
    print(
        f"model {lm.name}: {sum(p.numel() for p in lm.model.parameters()) / 1e6:.1f}M parameters, vocabulary "
        f"{lm.vocab_size}; prompt {len(prompt)} tokens, {len(masked)} masked; b={BEAMS}, J={POSITIONS}, "
        f"top-k={TOP_K}; {args.threads} threads"
    )

    common = {
        "method": "gilot",
        "level": "token",
        "num_beams": BEAMS,
        "n_positions": POSITIONS,
        "top_k": TOP_K,
    }
    calls = {
        "authors' way (1 position)": lambda: authors_way(
            lm, prompt.input_ids, masked, BEAMS, POSITIONS, TOP_K
        ),
        "genattr gilot own (J positions)": lambda: genattr.explain(lm, prompt_text, **common),
        "genattr gilot follow (J positions)": lambda: genattr.explain(
            lm, prompt_text, beams="follow", **common
        ),
    }
    timings = time_calls(calls, args.repeats)
    print(f"\nwall time, best of {args.repeats} (interleaved rounds):")
    authors = timings["authors' way (1 position)"]
    split = authors[1]
    print(
        f"  {'authors way (1 position)':<36} {authors[0].best:8.2f} s   search {split['search']:7.2f} s"
        f"   OT {split['ot']:6.2f} s ({len(masked)} IPOT runs; {split['forced']:.2f} s of the search "
        "in the teacher-forced passes)"
    )
    for name in ("genattr gilot own (J positions)", "genattr gilot follow (J positions)"):
        timing, res = timings[name]
        d = res.diagnostics
        ratio = authors[0].best / timing.best
        print(
            f"  {name:<36} {timing.best:8.2f} s   search {d['seconds_search']:7.2f} s   OT "
            f"{d['seconds_distance']:6.2f} s ({len(res.features) * POSITIONS} problems, exact)   "
            f"{ratio:5.1f}x faster{'' if ratio >= TARGET_SPEEDUP else f'  (target {TARGET_SPEEDUP:.0f}x)'}"
        )

    if args.authors_all_positions:
        start = time.perf_counter()
        for j in range(1, POSITIONS + 1):
            authors_way(lm, prompt.input_ids, masked, BEAMS, j, TOP_K)
        total = time.perf_counter() - start
        own = timings["genattr gilot own (J positions)"][0].best
        print(
            f"  authors' way run once per position j = 1..{POSITIONS} (their code merges J's by hand): "
            f"{total:.2f} s, {total / own:.1f}x genattr own"
        )

    F = len(masked)
    keep = torch.ones(F + 1, F, dtype=torch.bool)
    keep[torch.arange(1, F + 1), torch.arange(F)] = False
    inputs = Masker(lm, prompt, prompt.features("token")).inputs(keep)
    usage = {}

    def search(share: bool):
        before = lm.usage.copy()
        lm.share_prefix = share
        try:
            beam_search(lm, inputs, BEAMS, POSITIONS)
        finally:
            lm.share_prefix = True
        usage[share] = lm.usage.since(before)

    shared = time_calls({"plain": lambda: search(False), "shared": lambda: search(True)}, args.repeats)
    print(
        f"\nbatched beam search over the {F + 1} prompts, prefix sharing off / on: "
        f"{shared['plain'][0].best:.2f} s / {shared['shared'][0].best:.2f} s; tokens run "
        f"{usage[False]['tokens_processed']} / {usage[True]['tokens_processed']}, forward passes "
        f"{usage[False]['forward_passes']} / {usage[True]['forward_passes']}"
    )
    if not args.skip_solvers:
        solver_table(lm, prompt, args.repeats)


if __name__ == "__main__":
    main()
