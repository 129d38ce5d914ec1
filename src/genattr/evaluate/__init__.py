"""Evaluation of attributions: agreement with known ground truth (the zoo), and faithfulness."""

from . import ground_truth

__all__ = ["ground_truth"]
