"""Train the zoo model: ``python -m genattr.zoo.train --out DIR [--seed S] [--steps N]``.

A Llama-architecture causal LM (tied input/output embeddings) is trained from scratch on a
uniform mix of the zoo tasks, with the loss on the answer tokens and the closing ``</s>``
only. Training is deterministic for a seed (one generator for the data, one for the weights,
deterministic algorithms, a fixed number of threads) and runs on the CPU.

Removal augmentation: half of the training prompts have one to three words removed, each
prompt by one of the ways genattr removes a feature (deleted, replaced by ``<pad>``, ``<unk>``
or ``<mask>``, or hidden from attention with its position kept), and the answer is drawn from
what is left (``either``, ``sentiment``, and ``story``: words of every cluster alike without
the topic, uniform preferences without the shade); for ``recall`` and ``copy`` only words outside the ground
truth are removed, the query marker in half of the cases. The model thus answers from the words
that matter whichever way the others are removed, which is what makes the ground truth real for
it (see the validity tests).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..model import LanguageModel
from .tasks import CLUSTERS, TASKS, Example, either_yes_probability, sample, sentiment_answer, story_weights
from .tokenizer import build_tokenizer

TASK_WEIGHTS = (4, 1, 1, 2, 4)
"""Sampling weights of the tasks in training (recall, either, sentiment, story, copy): the two
lookup tasks need attention circuits that take more examples to form."""


@dataclass
class TrainConfig:
    seed: int = 0
    steps: int = 3000
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.01
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    context: int = 64
    augment: float = 0.5
    threads: int = 1


def _options(task: str, rng: random.Random) -> dict:
    if task == "either":
        return {"triggers": rng.choice((0, 0, 1, 1, 2, 2, 3))}
    if task == "sentiment":
        return {"polar": rng.choice((0, 1, 1, 2, 2))}
    if task == "story":
        return {"shade": rng.random() < 0.8}
    return {}


def _training_answer(ex: Example, kept: list[str], rng: random.Random) -> tuple[str, ...]:
    """The answer to train on, drawn from what is left of the prompt: the noisy OR for
    ``either``; for ``story``, uniform preferences when the shade is gone and, when the topic is
    gone, words drawn from every cluster alike (no topic, no coherent story)."""
    if ex.task == "either":
        return ("yes" if rng.random() < either_yes_probability(kept) else "no",)
    if ex.task == "sentiment":
        return (sentiment_answer(kept),)
    if ex.task == "story" and kept != list(ex.words):
        n = len(ex.answer_words)
        if ex.info["topic"] not in kept:
            return tuple(rng.choices([w for c in CLUSTERS.values() for w in c], k=n))
        return tuple(rng.choices(CLUSTERS[ex.info["topic"]], weights=story_weights(kept), k=n))
    return ex.answer_words


def _rehearsals(ex: Example, removed: set[int], rng: random.Random) -> list[tuple[str, bool]]:
    """Extra supervised lookups inserted before the final query of ``recall`` and ``copy``
    (``query k v`` / ``again w w'``): many supervised lookups per sequence instead of one, so that
    the attention circuits the two tasks need form within the training budget."""
    if ex.task not in ("recall", "copy") or rng.random() < 0.2:
        return []
    if ex.task == "recall":
        starts, marker = range(1, len(ex.words) - 2, 2), "query"
    else:
        starts, marker = range(1, len(ex.words) - 3), "again"
    pairs = [
        (ex.words[i], ex.words[i + 1])
        for i in starts
        if ex.words[i] != ex.words[-1] and i not in removed and i + 1 not in removed
    ]
    if not pairs:
        return []
    out: list[tuple[str, bool]] = []
    for key, value in rng.sample(pairs, rng.randint(1, len(pairs))):
        out += [(marker, False), (key, False), (value, True)]
    return out


def training_row(rng: random.Random, vocab: dict[str, int], augment: float):
    """One training sequence: (ids, visible, positions, loss mask) as Python lists; the loss mask
    marks the positions whose next token is supervised."""
    task = rng.choices(TASKS, weights=TASK_WEIGHTS)[0]
    ex = sample(task, rng, **_options(task, rng))
    words = list(ex.words)
    removed, how = set(), ""  # how the removed words go (none yet)
    if rng.random() < augment:
        protected = set(ex.ground_truth) if task in ("recall", "copy") else set()
        candidates = [i for i in range(len(words)) if i not in protected]
        removed = set(rng.sample(candidates, rng.randint(1, min(3, len(candidates)))))
        if task in ("recall", "copy") and rng.random() < 0.5:
            removed.add(len(words) - 2)  # the query marker, which the lookup must not depend on
        how = rng.choice(("delete", "<pad>", "<unk>", "<mask>", "hide"))
    answer = _training_answer(ex, [w for i, w in enumerate(words) if i not in removed], rng)
    # (word, removed, supervised): the prompt with rehearsals before its final query, then the answer.
    items = [(w, i in removed, False) for i, w in enumerate(words)]
    if task in ("recall", "copy"):
        items[-2:-2] = [(w, False, sup) for w, sup in _rehearsals(ex, removed, rng)]
    items += [(w, False, True) for w in (*answer, "</s>")]
    ids, visible, positions, loss = [vocab["<s>"]], [True], [0], []
    for i, (w, gone, supervised) in enumerate(items):
        loss.append(supervised)
        if gone and how == "delete":
            loss.pop()
            continue
        positions.append(positions[-1] + 1 if how == "delete" else i + 1)
        ids.append(vocab["<pad>"] if gone and how == "hide" else vocab[how] if gone else vocab[w])
        visible.append(not (gone and how == "hide"))
    return ids, visible, positions, loss + [False]


def batch(rows, pad_id: int):
    width = max(len(r[0]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    visible = torch.zeros(len(rows), width, dtype=torch.bool)
    positions = torch.zeros(len(rows), width, dtype=torch.long)
    loss = torch.zeros(len(rows), width, dtype=torch.bool)
    for b, (i, v, p, l_) in enumerate(rows):
        n = len(i)
        ids[b, :n], visible[b, :n], positions[b, :n], loss[b, :n] = (
            torch.tensor(i),
            torch.tensor(v),
            torch.tensor(p),
            torch.tensor(l_),
        )
    return ids, visible, positions, loss


def build_model(cfg: TrainConfig, tokenizer):
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden,
        intermediate_size=2 * cfg.hidden,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.heads,
        max_position_embeddings=cfg.context,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        return AutoModelForCausalLM.from_config(config)


def train(cfg: TrainConfig, log=print, monitor=None):
    """Train a zoo model; returns (model, tokenizer, training log). ``monitor(model)`` (optional)
    returns a dict of figures recorded in the log every 250 steps."""
    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True)
    tokenizer = build_tokenizer()
    vocab = tokenizer.get_vocab()
    model = build_model(cfg, tokenizer)
    lm = LanguageModel(model, tokenizer)  # for its attention masks: training sees masks as attribution does
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.98),
    )

    def lr_at(step: int) -> float:
        if step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)))

    rng = random.Random(f"train:{cfg.seed}")
    history, started, running = [], time.perf_counter(), None
    for step in range(cfg.steps):
        ids, visible, positions, loss_mask = batch(
            [training_row(rng, vocab, cfg.augment) for _ in range(cfg.batch_size)], tokenizer.pad_token_id
        )
        mask = lm.attention_mask(visible, torch.arange(visible.shape[1]))
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        targets = ids[:, 1:][loss_mask[:, :-1]]
        loss = torch.nn.functional.cross_entropy(logits[:, :-1][loss_mask[:, :-1]], targets)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 250 == 0 or step == cfg.steps - 1:
            elapsed = time.perf_counter() - started
            record = {"step": step, "loss": round(running, 4), "seconds": round(elapsed, 1)}
            if monitor is not None:
                model.eval()
                record.update(monitor(model))
                model.train()
            history.append(record)
            log("  ".join(f"{k} {v}" for k, v in record.items()))
    model.eval()
    return model, tokenizer, history


def save(model, tokenizer, out: Path, card: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    # transformers 5 writes its own class name, which 4.x cannot resolve; this name both know.
    config = json.loads((out / "tokenizer_config.json").read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "card.json").write_text(json.dumps(card, indent=1) + "\n")
    from .card import model_card_markdown

    (out / "README.md").write_text(model_card_markdown(card))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m genattr.zoo.train", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=TrainConfig.steps)
    parser.add_argument("--eval-n", type=int, default=200, help="held-out examples per task for the card")
    args = parser.parse_args(argv)
    cfg = TrainConfig(seed=args.seed, steps=args.steps)
    started = time.perf_counter()
    model, tokenizer, history = train(cfg)
    seconds = time.perf_counter() - started
    from ..model import LanguageModel
    from .card import build_card
    from .validity import accuracy

    lm = LanguageModel(model, tokenizer, name="zoo")
    accuracies = {task: accuracy(lm, task, args.eval_n) for task in TASKS}
    card = build_card(asdict(cfg), history, accuracies, seconds, args.eval_n, model, tokenizer)
    save(model, tokenizer, args.out, card)
    print(json.dumps(accuracies, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
