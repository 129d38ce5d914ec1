"""Defaults and names shared by the library and the command line (no heavy imports here, so the
command line can build its help without loading torch)."""

from __future__ import annotations

DEFAULT_METHOD = "leave_one_out"
"""The attribution method used when none is named."""

DEFAULT_LEVEL = "word"
"""How the prompt is cut into features when no level is given (see :mod:`genattr.text.segment`)."""

MASKS = ("attention", "replace", "delete")
"""The built-in masks (how a feature is removed: hidden from attention, replaced by a baseline token,
or deleted), the command line's choices; the registry :data:`genattr.masking.MASKS` holds them
(a test keeps the two in step) and any mask a user registers."""

DEFAULT_MASK = "attention"

BASELINE_NAMES = ("pad", "unk", "eos", "bos", "mask")
"""Names of the mask token that ``mask_token=`` accepts besides a token id."""

OBJECTIVES = ("log_prob", "prob")
"""The built-in objectives, what a coalition of features is scored by (see :mod:`genattr.objectives`)."""

DEFAULT_OBJECTIVE = "log_prob"

DEFAULT_MAX_NEW_TOKENS = 20
"""Length of the greedy continuation explained when no target is given, and of the generations
the faithfulness protocols compare."""

DEFAULT_SEED = 0
"""The seed of a call that names none: results are repeatable unless a fresh seed is asked for."""

SEED_LIMIT = 2**64
"""Seeds are integers in [0, SEED_LIMIT): what torch's generators accept."""

DEFAULT_SIMILARITY_K = 3
"""Features removed by the generation-similarity protocol (XPrompt Section 5.2's k)."""
