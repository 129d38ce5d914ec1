"""The model zoo: a small causal LM trained here on synthetic tasks whose relevant prompt words
are known by construction, shipped inside the package (``genattr.load("zoo")``), and the
labelled examples that evaluate attributions against that ground truth.

>>> import genattr
>>> from genattr.evaluate.ground_truth import metrics
>>> lm = genattr.load("zoo")
>>> ex = genattr.zoo.examples("recall", 1, seed=0)[0]
>>> ex.prompt, ex.answer, ex.ground_truth
('recall bee seven ant eight pig six query bee', ' seven', (1, 2, 8))
>>> res = genattr.explain(lm, ex.prompt, target=ex.answer)
>>> metrics(res, ex.ground_truth)["recall_at_k"]    # share of G among the |G| best-scored words
1.0
"""

from pathlib import Path

from .tasks import TASKS, Example, examples

MODEL_DIR = Path(__file__).parent / "model"


def model_path() -> Path:
    """The directory of the shipped zoo model (config, safetensors weights, tokenizer, card)."""
    return MODEL_DIR


__all__ = ["MODEL_DIR", "TASKS", "Example", "examples", "model_path"]
