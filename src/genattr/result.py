"""Attribution: the one result type every method returns.

It describes itself: the prompt (text, tokens, character offsets, what was maskable), the
features scored (text, character span, token positions), one score per feature, and where the
method gives it, one row of scores per target token (``token_scores``, target tokens x
features); the target explained; the method and its parameters; the call's settings (level,
mask, mask_token, objective, max_new_tokens, pattern, spans, seed: :class:`~genattr.settings.Settings`,
kept apart from the parameters); the library version; and diagnostics (forward passes, tokens
processed, time, and what the method checks of itself, such as a convergence delta).

Results are saved as JSON only, written atomically, with a schema name and version;
:meth:`Attribution.load` validates every field and never imports or evaluates anything named in
the file (:mod:`genattr.io`).

>>> import os, tempfile, genattr
>>> from genattr.testing import tiny_lm
>>> res = genattr.explain(tiny_lm(), "The doctor opens the door", target=" and")
>>> res
Attribution(method='leave_one_out', features=5, target=' and', top=[...])
>>> with tempfile.TemporaryDirectory() as tmp:
...     back = genattr.Attribution.load(res.save(os.path.join(tmp, "out.json")))
>>> back.scores.tolist() == res.scores.tolist(), back.settings == res.settings
(True, True)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from . import io
from .errors import InputError, ResultFormatError
from .settings import Settings
from .text.prompt import Prompt
from .text.segment import Feature, segment, token_owners
from .text.target import Target


def undefined_entries(
    columns: int, n_prompt: int, span: tuple[int, int], *, rows: bool = False
) -> np.ndarray:
    """Where attribution to output tokens is undefined: output token s (column ``n_prompt`` + s)
    can only affect the tokens after it, so for the row of target token t (t in ``span`` = [a, b))
    its entry is undefined when s >= t; as a sequence score (``rows`` False) when no row comes
    after it, s >= b - 1. Returns a boolean mask [columns] or, with ``rows``, [b - a, columns];
    prompt columns are never undefined.

    >>> undefined_entries(5, 2, (0, 3), rows=True).astype(int)
    array([[0, 0, 1, 1, 1],
           [0, 0, 0, 1, 1],
           [0, 0, 0, 0, 1]])
    >>> undefined_entries(5, 2, (0, 3)).astype(int)
    array([0, 0, 0, 0, 1])
    """
    first, stop = span
    output = np.arange(columns) - n_prompt
    if not rows:
        return output >= max(stop - 1, 0)
    explained = np.arange(first, stop)[:, None]
    return (output[None, :] >= 0) & (output[None, :] >= explained)


def output_token_columns(
    scores: np.ndarray, token_scores: np.ndarray | None, n_prompt: int, n_target: int, span: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray | None]:
    """A method's scores over the prompt features and the output tokens it was given as features
    (those before the last explained one) widened to one column per output token, and NaN
    wherever :func:`undefined_entries` says the entry is undefined (never a made-up number)."""
    width = n_prompt + n_target

    def widened(values: np.ndarray, undefined: np.ndarray) -> np.ndarray:
        out = np.full((*values.shape[:-1], width), np.nan)
        out[..., : values.shape[-1]] = values
        out[undefined] = np.nan
        return out

    rows = None
    if token_scores is not None:
        rows = widened(token_scores, undefined_entries(width, n_prompt, span, rows=True))
    return widened(scores, undefined_entries(width, n_prompt, span)), rows


def _check_undefined(values: np.ndarray, undefined: np.ndarray, name: str) -> None:
    """NaN exactly where an entry is undefined (:func:`undefined_entries`): nowhere else."""
    nan = np.isnan(values)
    if (nan != undefined).any():
        raise InputError(
            f"{name} holds NaN where a score is defined, or a number where it is undefined (an output "
            "token's entry for itself or an earlier token); only those entries are NaN."
        )


def _checked_steps(steps, n: int) -> dict[str, list[float]]:
    """``steps`` as a new dict of names to lists of n finite floats (one per target token)."""
    if not isinstance(steps, dict):
        raise InputError(
            f"step_scores must be a dict of names to lists of numbers, not {type(steps).__name__}."
        )
    out = {}
    for name, values in steps.items():
        if not isinstance(name, str):
            raise InputError(f"step score names must be strings, got {name!r}; name each score.")
        if not isinstance(values, (list, tuple, np.ndarray)) or len(values) != n:
            raise InputError(
                f"step score {name!r} must be a list of {n} values, one per target token; "
                "compute it for the result's target."
            )
        numbers = [number for number in map(io.finite, values) if number is not None]
        if len(numbers) != n:
            raise InputError(
                f"step score {name!r} holds a value that is not a finite number; step scores are "
                "finite floats (a probability 0 has no log-probability)."
            )
        out[name] = numbers
    return out


@dataclass
class Attribution:
    """Scores of the prompt's features for what the model wrote (see the module docstring).

    The meaning and sign of a score depend on the method: ``genattr.methods()`` and the README
    say what each one computes. Built by :func:`genattr.explain`; the constructor checks shapes.

    Parameters
    ----------
    method : str
        The registered name of the method that made the result.
    prompt : Prompt
        The prompt explained (text, token ids, offsets, which tokens were maskable).
    features : list of Feature
        The F features scored, numbered 0..F-1 in prompt order.
    scores : array_like, shape (F,)
        ``scores[i]`` is the score of ``features[i]`` (stored as float64).
    target : Target
        The continuation explained (n tokens), or for GiLOT the model's most probable output.
    token_scores : array_like, shape (n, F), optional
        ``token_scores[t, i]``: feature ``i``'s score for target token ``t``, for the methods
        that give one row per target token (``genattr.methods()`` says which); else None.
    settings : Settings
        How the call was made (level, mask, baseline, objective, max_new_tokens, pattern, spans,
        seed), kept apart from the method's parameters.
    params : dict
        The method's own parameters, as validated.
    diagnostics : dict
        Work done (forward passes, tokens processed, seconds) and the method's checks of itself
        (for example integrated gradients' ``convergence_delta``, GiLOT's ``beam_mass``).
    version : str
        The genattr version that made the result.
    extras : dict
        Method-specific outputs (for example XPrompt's chosen set).
    step_scores : dict of str to list of float
        How the model saw each target token (:mod:`genattr.steps`): a name (``prob``,
        ``log_prob``, ``entropy``, ``rank``, ``contrast``) to n finite values, one per target
        token; empty when not computed.

    Raises
    ------
    genattr.errors.InputError
        When ``scores`` or ``token_scores`` do not match the features and target, the features
        are not numbered in order, or ``step_scores`` does not hold n finite values per name.
    """

    method: str
    prompt: Prompt
    features: list[Feature]
    scores: np.ndarray
    target: Target
    token_scores: np.ndarray | None = None
    settings: Settings = field(default_factory=Settings)
    params: dict = field(default_factory=dict)
    diagnostics: dict = field(default_factory=dict)
    version: str = ""
    extras: dict = field(default_factory=dict)
    step_scores: dict[str, list[float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.settings, Settings):
            raise InputError(
                f"settings must be a genattr.settings.Settings, not {type(self.settings).__name__}; "
                "build one with Settings(level=..., seed=...)."
            )
        self.scores = np.asarray(self.scores, dtype=np.float64)
        columns = len(self.features) + (len(self.target.ids) if self.settings.attribute_target else 0)
        if self.scores.shape != (columns,):
            raise InputError(
                f"scores has shape {self.scores.shape}, expected one score per feature "
                f"({len(self.features)}) and, with attribute_target, per output token ({columns} in all)."
            )
        if any(f.index != i for i, f in enumerate(self.features)):
            raise InputError("features must be numbered 0, 1, ... in order (features[i].index == i).")
        _check_undefined(self.scores, undefined_entries(len(self.scores), self.n_prompt, self.span), "scores")
        if self.token_scores is not None:
            self.token_scores = np.asarray(self.token_scores, dtype=np.float64)
            expected = (self.span[1] - self.span[0], len(self.scores))
            if self.token_scores.shape != expected:
                raise InputError(
                    f"token_scores has shape {self.token_scores.shape}, expected (target tokens explained, "
                    f"columns) = {expected}."
                )
            undefined = undefined_entries(expected[1], self.n_prompt, self.span, rows=True)
            _check_undefined(self.token_scores, undefined, "token_scores")
        self.step_scores = _checked_steps(self.step_scores, len(self.target.ids))

    # ----------------------------------------------------------------- reading
    @property
    def n_prompt(self) -> int:
        """F, the number of prompt features: the first F entries of ``scores`` (and columns of
        ``token_scores``); with ``attribute_target`` one column per output token follows."""
        return len(self.features)

    @property
    def span(self) -> tuple[int, int]:
        """The target tokens [a, b) explained, one row of ``token_scores`` each (every one unless
        ``target_token`` or ``target_span`` picked some: ``settings.target_span``)."""
        return self.settings.target_span or (0, len(self.target.ids))

    @property
    def prompt_scores(self) -> np.ndarray:
        """The prompt features' scores [F] (``scores`` without the output tokens' columns)."""
        return self.scores[: self.n_prompt]

    @property
    def output_scores(self) -> np.ndarray | None:
        """With ``attribute_target``, the output tokens' block [rows, n] of ``token_scores``
        (NaN where undefined: token s for rows t <= s), else None."""
        if not self.settings.attribute_target or self.token_scores is None:
            return None
        return self.token_scores[:, self.n_prompt :]

    @property
    def level(self) -> str:
        """How the prompt was cut into the features scored (``settings.level``)."""
        return self.settings.level

    @property
    def seed(self) -> int | None:
        """The seed a stochastic method ran with, None for a deterministic one (``settings.seed``)."""
        return self.settings.seed

    @property
    def target_tokens(self) -> list[str]:
        return list(self.target.tokens)

    def top(self, k: int = 5) -> list[tuple[Feature, float]]:
        """The ``k`` highest-scoring prompt features with their scores, best first (ties by position).

        Parameters
        ----------
        k : int
            How many features (all of them when ``k`` >= F).

        Returns
        -------
        list of (Feature, float)

        Examples
        --------
        >>> import genattr
        >>> from genattr.testing import tiny_lm
        >>> res = genattr.explain(tiny_lm(), "The doctor opens the door", target=" and")
        >>> [(f.text, round(score, 3)) for f, score in res.top(2)]
        [(..., ...), (..., ...)]
        >>> [f.index for f, _ in res.top(5)] == sorted(range(5), key=lambda i: -res.scores[i])
        True
        """
        if k < 0:
            raise InputError(f"k must be non-negative, got {k}.")
        order = sorted(range(self.n_prompt), key=lambda i: (-self.scores[i], i))[:k]
        return [(self.features[i], float(self.scores[i])) for i in order]

    def aggregate(self, level: str, *, pattern=None, spans=None) -> Attribution:
        """The same result at a coarser ``level``: each coarse feature's score is the sum of the
        scores of the features it contains (per target token too; output tokens' columns stay),

            s'(c) = sum_{f inside c} s(f).

        Summing is exact for additive attributions (gradient x input, integrated gradients, the
        AIEG paper's word-level sums); for Shapley values and leave-one-out it approximates what a
        run at the coarser level would give. A feature that straddles two coarse features
        cannot be aggregated and raises :class:`~genattr.errors.InputError`. The new result's
        settings hold the new ``level`` (with ``pattern`` or ``spans``); ``extras["aggregated_from"]``
        the old one.

        Parameters
        ----------
        level : str
            The coarser level (``"word"``, ``"sentence"``, ``"regex"``, ``"spans"`` or a registered one).
        pattern, spans : optional
            As in :func:`genattr.explain`, for ``level="regex"`` and ``level="spans"``.

        Returns
        -------
        Attribution
            With the coarse features that hold at least one scored feature.

        Raises
        ------
        genattr.errors.InputError
            When a feature straddles two coarse features.

        References
        ----------
        AIEG ("Enhancing Integrated Gradients using Emphasis Factors and Attention", ICLR 2025
        submission) scores words by summing the scores of their sub-tokens.

        Examples
        --------
        >>> import genattr
        >>> from genattr.testing import tiny_lm
        >>> res = genattr.explain(tiny_lm(), "The doctor opens the door. And the nurse",
        ...                       target=" sings", level="token", method="input_x_gradient")
        >>> sentences = res.aggregate("sentence")
        >>> [f.text for f in sentences.features]
        ['The doctor opens the door.', 'And the nurse']
        >>> bool(abs(sentences.scores.sum() - res.scores.sum()) < 1e-9), sentences.level
        (True, 'sentence')
        """
        p = self.prompt
        coarse = segment(p.text, p.offsets, p.maskable, level, pattern=pattern, spans=spans)
        owner = token_owners(coarse, len(p))
        matrix = np.zeros((len(self.features), len(coarse)))
        for f in self.features:
            owners = {owner[t] for t in f.positions}
            if len(owners) != 1 or -1 in owners:
                raise InputError(
                    f"feature {f.text!r} does not fall inside one {level}-level feature; "
                    "aggregate only to a coarser level."
                )
            matrix[f.index, owners.pop()] = 1.0
        used = matrix.sum(0) > 0
        keep = [c for c in coarse if used[c.index]]
        matrix = matrix[:, used]
        features = [Feature(i, c.text, c.start, c.end, c.positions) for i, c in enumerate(keep)]
        F = self.n_prompt

        def coarse_columns(values: np.ndarray) -> np.ndarray:  # output-token columns stay as they are
            return np.concatenate([values[..., :F] @ matrix, values[..., F:]], -1)

        return replace(
            self,
            features=features,
            scores=coarse_columns(self.scores),
            token_scores=None if self.token_scores is None else coarse_columns(self.token_scores),
            settings=replace(self.settings, level=level, pattern=pattern, spans=spans),
            params=dict(self.params),
            diagnostics=dict(self.diagnostics),
            extras={**self.extras, "aggregated_from": self.level},
        )

    # ----------------------------------------------------------------- JSON
    def to_dict(self) -> dict:
        """The result as a JSON object (:func:`genattr.io.attribution_to_dict`)."""
        return io.attribution_to_dict(self)

    @classmethod
    def from_dict(cls, data) -> Attribution:
        """Rebuild a result from :meth:`to_dict` output (schema version 1 or 2), validating every
        field (:func:`genattr.io.attribution_fields`)."""
        return cls._built(io.attribution_fields(data), "attribution")

    def save(self, path: str | os.PathLike) -> Path:
        """Write the result as JSON (schema ``genattr.attribution`` version 2), atomically: a reader
        never sees a half-written file. The directory must exist.

        Returns
        -------
        pathlib.Path
            The path written. See the module docstring for an example.
        """
        return io.write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> Attribution:
        """Read a result written by :meth:`save`, validating every field; anything else (not
        UTF-8, not JSON, NaN or Infinity, nesting deeper than Python parses, a wrong field)
        raises :class:`~genattr.errors.ResultFormatError`. Files of schema version 1 (settings stored
        among the parameters) are read too.

        Returns
        -------
        Attribution
            Equal to the saved one (see the module docstring's example).

        Raises
        ------
        genattr.errors.ResultFormatError
            For any file that is not a valid saved result.
        """
        return cls._built(io.attribution_fields(io.read_json(path), str(path)), str(path))

    @classmethod
    def _built(cls, fields: dict, where: str) -> Attribution:
        """The result of validated fields; a constructor check that fails (NaN outside the undefined
        entries, for example) is a :class:`~genattr.errors.ResultFormatError` of the file."""
        try:
            return cls(**fields)
        except InputError as exc:
            raise ResultFormatError(f"{where}: {exc}") from exc

    # ----------------------------------------------------------------- display
    def __repr__(self) -> str:
        best = ", ".join(f"{f.text!r}: {s:.3g}" for f, s in self.top(3))
        return (
            f"Attribution(method={self.method!r}, features={len(self.features)}, "
            f"target={self.target.text!r}, top=[{best}])"
        )

    def to_html(self, *, title: str = "genattr viewer", mark=None) -> str:
        """A self-contained interactive HTML page (:mod:`genattr.render.viewer`); ``mark`` is a set
        of feature indices to outline (ground truth)."""
        from .render.viewer import render_viewer

        return render_viewer([self], title=title, marks=None if mark is None else [mark])

    def _repr_html_(self) -> str:
        from .render.viewer import viewer_fragment

        return viewer_fragment([self])

    def show(self, console=None, mark=None) -> None:
        """Print the result to the terminal (rich: coloured backgrounds, a legend, then the step
        scores when the result has them); ``mark`` as in :meth:`to_html`."""
        from .render.terminal import print_attribution

        print_attribution(self, console=console, mark=mark)

    def plot(self, kind: str = "auto", ax=None):
        """A matplotlib heatmap of ``token_scores`` (``kind="heatmap"``) or bar chart of ``scores``."""
        from .render.plots import plot_attribution

        return plot_attribution(self, kind=kind, ax=ax)
