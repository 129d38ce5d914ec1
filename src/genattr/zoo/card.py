"""The zoo model's card: tasks, vocabulary, architecture, training settings, seed and held-out
accuracy per task, as JSON (``card.json``, read by the tests) and Markdown (``README.md``)."""

from __future__ import annotations

import platform

import torch

from .tasks import TASKS
from .tasks import __doc__ as TASKS_DOC
from .validity import EVAL_SEED


def build_card(
    config: dict, history: list[dict], accuracies: dict, seconds: float, eval_n: int, model, tokenizer
) -> dict:
    n_params = sum(p.numel() for p in model.parameters())
    return {
        "name": "genattr zoo",
        "tasks": list(TASKS),
        "vocabulary_size": len(tokenizer),
        "architecture": {
            "model_type": model.config.model_type,
            "hidden_size": model.config.hidden_size,
            "layers": model.config.num_hidden_layers,
            "heads": model.config.num_attention_heads,
            "intermediate_size": model.config.intermediate_size,
            "context": model.config.max_position_embeddings,
            "tie_word_embeddings": model.config.tie_word_embeddings,
            "parameters": n_params,
        },
        "training": {
            **config,
            "seconds": round(seconds, 1),
            "history": history,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "evaluation": {"seed": EVAL_SEED, "examples_per_task": eval_n, "greedy_accuracy": accuracies},
    }


def model_card_markdown(card: dict) -> str:
    arch, train, ev = card["architecture"], card["training"], card["evaluation"]
    rows = "\n".join(f"| {task} | {acc:.3f} |" for task, acc in ev["greedy_accuracy"].items())
    return f"""# genattr zoo model

A {arch["model_type"]} causal LM ({arch["parameters"]:,} parameters: hidden {arch["hidden_size"]},
{arch["layers"]} layers, {arch["heads"]} heads, tied embeddings, context {arch["context"]}) trained from
scratch by `python -m genattr.zoo.train --out DIR --seed {train["seed"]}` in {train["seconds"]} s on the CPU
(torch {train["torch"]}), over a word-level vocabulary of {card["vocabulary_size"]} tokens.
Load it with `genattr.load("zoo")`.

## Tasks
{TASKS_DOC.split("Tasks", 1)[1].split(chr(10), 2)[2].rstrip()}

## Training
{train["steps"]} steps of batch {train["batch_size"]}, AdamW (lr {train["lr"]}, warm-up {train["warmup"]},
cosine decay, weight decay {train["weight_decay"]}), loss on the answer and the closing `</s>` only;
half of the prompts have 1 to 3 words removed (deleted, replaced by `<pad>`/`<unk>`/`<mask>`, or hidden
from attention) with the answer recomputed from what is left (see `genattr/zoo/train.py`).

## Held-out greedy accuracy
{ev["examples_per_task"]} examples per task, `genattr.zoo.examples(task, n, seed={ev["seed"]})`
(story: all generated words in the topic's cluster).

| task | accuracy |
|---|---|
{rows}
"""
