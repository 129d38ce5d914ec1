"""The model zoo: a small causal LM trained here on synthetic tasks whose relevant prompt words
are known by construction, shipped inside the package (``genattr.load("zoo")``), and the
labelled examples that evaluate attributions against that ground truth.

>>> import genattr
>>> lm = genattr.load("zoo")                                          # doctest: +SKIP
>>> ex = genattr.zoo.examples("recall", 1, seed=0)[0]
>>> res = genattr.explain(lm, ex.prompt, target=ex.answer)            # doctest: +SKIP
>>> genattr.evaluate.ground_truth.scores(res, ex.ground_truth)        # doctest: +SKIP
"""

from pathlib import Path

from .tasks import TASKS, Example, examples

MODEL_DIR = Path(__file__).parent / "model"


def model_path() -> Path:
    """The directory of the shipped zoo model (config, safetensors weights, tokenizer, card)."""
    return MODEL_DIR


__all__ = ["MODEL_DIR", "TASKS", "Example", "examples", "model_path"]
