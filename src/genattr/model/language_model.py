"""The :class:`LanguageModel` class: a Hugging Face causal LM and its tokenizer behind one counted,
checked forward pass, with the scoring, decoding and prefix-sharing of the sibling modules."""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, Literal, cast, overload

import torch

from ..errors import ContextLengthError, InvalidParameterError, NumericalError
from ..progress import report
from ..protocols import CausalLM, ForwardOutput, Tokenizer
from . import decoding, prefix, scoring
from .backward import checkpointed_layers
from .batch import Batch, Usage
from .masks import AttentionMasks
from .scoring import TargetIds

DEFAULT_MAX_BATCH_TOKENS = 8192
"""Default memory budget: the most tokens (rows x sequence length) one forward pass may hold."""


def _weight(layer: torch.nn.Module) -> torch.Tensor:
    """The weight matrix of an embedding layer (torch types a module's attributes as Tensor | Module)."""
    return cast(torch.Tensor, layer.weight)


class LanguageModel:
    """A causal language model and its tokenizer, as genattr's methods see them.

    Build it with :func:`genattr.load`. Every batched call is chunked under ``max_batch_tokens``
    (results do not depend on the chunk size) and counted in ``usage``.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        A causal LM (put in evaluation mode).
    tokenizer : transformers.PreTrainedTokenizerFast
        Its fast tokenizer (character offsets are needed to map tokens to text).
    max_batch_tokens : int
        The most tokens (rows x sequence length) one forward pass may hold.
    checkpoint_layers : bool
        Recompute each decoder layer's activations during backward passes instead of holding
        every layer's (:func:`~genattr.model.backward.checkpointed_layers`): gradient methods on
        long prompts in the memory of one layer, for about one more forward pass. Results do not
        depend on it.
    name : str, optional
        How results name the model; by default its ``_name_or_path`` or class name.

    Examples
    --------
    >>> import torch
    >>> from genattr.model import Batch
    >>> from genattr.testing import tiny_lm
    >>> lm = tiny_lm()
    >>> prompt = Batch.from_ids(lm.tokenizer("The doctor opens the")["input_ids"], rows=2)
    >>> door = lm.tokenizer(" door", add_special_tokens=False)["input_ids"]
    >>> lp = lm.target_log_probs(prompt, door)                 # log p(y_t | x, y_<t): [B, n]
    >>> dist = lm.target_distributions(prompt, door)           # log p(. | x, y_<t): [B, n, V]
    >>> lp.shape, dist.shape[-1] == lm.vocab_size
    (torch.Size([2, 1]), True)
    >>> torch.allclose(dist[..., door[0]], lp, atol=1e-5), bool(dist.exp().sum(-1).sub(1).abs().max() < 1e-4)
    (True, True)
    >>> len(lm.generate(prompt, max_new_tokens=3).token_ids[0]) <= 3
    True
    """

    def __init__(
        self,
        model: CausalLM,
        tokenizer: Tokenizer,
        *,
        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
        checkpoint_layers: bool = False,
        name: str | None = None,
    ) -> None:
        if max_batch_tokens < 1:
            raise InvalidParameterError(f"max_batch_tokens must be at least 1, got {max_batch_tokens}.")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_batch_tokens = int(max_batch_tokens)
        self.checkpoint_layers = bool(checkpoint_layers)
        self.name = name or getattr(model.config, "_name_or_path", "") or type(model).__name__
        self.usage = Usage()
        self.share_prefix = True  # reuse a common prompt prefix's keys and values when scoring (exact)
        self._cache_shareable: bool | None = None  # whether the model's cache can be cut and joined by rows
        self._masks = AttentionMasks.for_config(model.config)
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
        return self.output_embedding_matrix.shape[0]

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
        return _weight(self.model.get_input_embeddings())

    @property
    def output_embedding_matrix(self) -> torch.Tensor:
        """The output (unembedding) matrix [V, d]."""
        return _weight(self.model.get_output_embeddings())

    @property
    def attn_implementation(self) -> str | None:
        return getattr(self.model.config, "_attn_implementation", None)

    def _eos_ids(self) -> list[int]:
        ids: set[int] = set()
        for source in (
            self.tokenizer.eos_token_id,
            getattr(getattr(self.model, "generation_config", None), "eos_token_id", None),
        ):
            if isinstance(source, int):
                ids.add(source)
            elif isinstance(source, (list, tuple)):
                ids.update(int(i) for i in source)
        return sorted(ids)

    # ----------------------------------------------------------------- checks and chunking
    def check_length(self, total: int, what: str = "prompt + target") -> None:
        """Raise :class:`~genattr.errors.ContextLengthError`, naming ``what``, if ``total`` tokens
        exceed the context window (genattr never truncates)."""
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
        """Row slices covering ``n_rows`` rows, each within the memory budget (the one chunking path);
        each done is reported to the progress callback of the call (:mod:`genattr.progress`)."""
        size = self.rows_per_chunk(row_tokens)
        for start in range(0, n_rows, size):
            stop = min(n_rows, start + size)
            yield slice(start, stop)
            report(stop, n_rows)

    # ----------------------------------------------------------------- the forward pass
    def attention_mask(
        self, visible: torch.Tensor, query_index: torch.Tensor
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """Additive 4-D mask [B, 1, Q, K] (one per layer type where they differ, see
        :class:`~genattr.model.masks.AttentionMasks`): query ``q`` (at key index ``query_index[q]``)
        sees key ``k`` iff ``k <= q`` and key ``k`` is visible or is the query itself."""
        return self._masks.causal(visible, query_index, self.dtype, self.device)

    def forward(
        self,
        *,
        input_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        visible: torch.Tensor,
        positions: torch.Tensor,
        cache: Any = None,
        use_cache: bool = False,
        logits_to_keep: int = 0,
        output_attentions: bool = False,
        sees: torch.Tensor | None = None,
        key_positions: torch.Tensor | None = None,
    ) -> ForwardOutput:
        """One forward pass of the model, counted in ``usage``; NaN or infinite logits raise
        :class:`~genattr.errors.NumericalError`.

        ``input_ids`` [B, Q] or ``inputs_embeds`` [B, Q, d] are the new positions, ``positions``
        [B, Q] their position ids, ``visible`` [B, K] covers every key so far (cache + new); with
        ``logits_to_keep`` > 0 only the last that many positions' logits are computed. Returns the
        model's output (``logits`` [B, Q or logits_to_keep, V], the cache, attentions if asked).

        The cache goes in under the name the installed transformers expects (``cache`` from 5.24,
        ``past_key_values`` before); :func:`~genattr.model.prefix.returned_cache` reads it back.

        ``sees``, a boolean [B, Q, K] (query q attends to key k), replaces the causal pattern built
        from ``visible`` (for patterns that are not causal over one sequence: a tree of beams);
        ``key_positions`` [B, K] then gives every key's position (for sliding windows). A cache
        is always a plain :class:`~transformers.DynamicCache` holding every key, so that custom
        masks and shared prefixes see all of them (the window is in the mask).
        """
        if (given := input_ids if input_ids is not None else inputs_embeds) is None:
            raise InvalidParameterError("forward needs input_ids or inputs_embeds.")
        batch, q_len = given.shape[:2]
        kwargs = _model_kwargs(
            self,
            given,
            input_ids is not None,
            visible,
            positions,
            cache,
            use_cache,
            logits_to_keep,
            output_attentions,
            sees,
            key_positions,
        )
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

    def prefill(self, rows: Batch) -> tuple[torch.Tensor, Any]:
        """Forward pass over the prompt ``rows`` (a :class:`Batch` of r rows) with a KV cache.

        Returns ``(logits, cache)``: the last position's logits [r, V] and the cache to continue
        from, each distinct prompt prefix run once (:func:`~genattr.model.prefix.prefill`).
        """
        return prefix.prefill(self, rows)

    # ----------------------------------------------------------------- scoring
    def target_log_probs(self, inputs: Batch, target_ids: TargetIds) -> torch.Tensor:
        """Teacher-forced log p(y_t | x_b, y_<t) of every target token under every prompt row x_b.

        ``inputs``: B prompt rows; ``target_ids``: n ids shared by all rows, or [B, n]. Returns
        [B, n] float32, in one forward pass per chunk of rows whatever n
        (:func:`~genattr.model.scoring.target_log_probs`). See the class example.
        """
        return scoring.target_log_probs(self, inputs, target_ids)

    def label_log_probs(self, rows: Batch, labels: TargetIds) -> torch.Tensor:
        """log p(label_j | row) of the n labels predicted by the last n positions of each row (rows
        that hold the teacher-forced target themselves, masked or not): [B, n] float32
        (:func:`~genattr.model.scoring.label_log_probs`)."""
        return scoring.label_log_probs(self, rows, labels)

    def target_distributions(self, inputs: Batch, target_ids: TargetIds) -> torch.Tensor:
        """Teacher-forced next-token log-distributions log p(. | x_b, y_<t) at each target position.

        Arguments as in :meth:`target_log_probs`; returns [B, n, V] float32
        (:func:`~genattr.model.scoring.target_distributions`). See the class example.
        """
        return scoring.target_distributions(self, inputs, target_ids)

    # ----------------------------------------------------------------- gradients
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings of ``input_ids`` [B, L] -> [B, L, d] (part of the autograd graph)."""
        return self.model.get_input_embeddings()(input_ids.to(self.device))

    @overload
    def log_probs_from_embeddings(
        self,
        embeds: torch.Tensor,
        rows: Batch,
        labels: TargetIds,
        output_attentions: Literal[False] = False,
        return_logits: bool = False,
    ) -> torch.Tensor: ...

    @overload
    def log_probs_from_embeddings(
        self,
        embeds: torch.Tensor,
        rows: Batch,
        labels: TargetIds,
        output_attentions: Literal[True],
        return_logits: bool = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]: ...

    def log_probs_from_embeddings(
        self,
        embeds: torch.Tensor,
        rows: Batch,
        labels: TargetIds,
        output_attentions: bool = False,
        return_logits: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Differentiable log p(label_j | e) of the n labels predicted by the last n positions of
        the input embeddings ``embeds`` [B, T, d] (the prompt, then the teacher-forced target).

        ``rows`` gives the positions' visibility and position ids. Returns [B, n] (the labels' raw
        logits with ``return_logits``; with the attention maps when ``output_attentions``)
        (:func:`~genattr.model.scoring.log_probs_from_embeddings`).
        """
        return scoring.log_probs_from_embeddings(self, embeds, rows, labels, output_attentions, return_logits)

    # ----------------------------------------------------------------- attention
    @contextmanager
    def eager_attention(self) -> Iterator[None]:
        """Temporarily switch the model to eager attention (needed to read attention weights)."""
        before = self.attn_implementation
        if before == "eager":
            yield
            return
        self.model.set_attn_implementation("eager")
        try:
            yield
        finally:
            # None (no implementation recorded) asks transformers for its default; its annotation omits None.
            self.model.set_attn_implementation(cast(str, before))

    def layer_checkpoints(
        self, recompute: Callable[[], AbstractContextManager[Any]] = nullcontext
    ) -> AbstractContextManager[None]:
        """While open, forward passes under gradient keep only each decoder layer's inputs when
        ``checkpoint_layers`` is on (:func:`~genattr.model.backward.checkpointed_layers`, which
        takes ``recompute``); nothing changes when it is off."""
        if not self.checkpoint_layers:
            return nullcontext()
        return checkpointed_layers(cast(torch.nn.Module, self.model), recompute)

    def attention_maps(self, rows: Batch) -> torch.Tensor:
        """Attention probabilities of every layer and head over the T positions of ``rows`` (for a
        teacher-forced target, the prompt then target[:-1]): [B, layers, heads, T, T] float32, read
        under eager attention (:func:`~genattr.model.scoring.attention_maps`)."""
        return scoring.attention_maps(self, rows)

    # ----------------------------------------------------------------- decoding
    def generate(
        self, inputs: Batch, max_new_tokens: int, *, stop_at_eos: bool = True
    ) -> decoding.Generation:
        """Greedy continuation of every row of ``inputs``, at most ``max_new_tokens`` tokens, ending
        at an EOS token when ``stop_at_eos``: a :class:`~genattr.model.decoding.Generation` (token
        ids without EOS, their log-probabilities, whether EOS stopped each row)
        (:func:`~genattr.model.decoding.generate`)."""
        return decoding.generate(self, inputs, max_new_tokens, stop_at_eos=stop_at_eos)


def _model_kwargs(
    lm: LanguageModel,
    given: torch.Tensor,
    given_ids: bool,
    visible: torch.Tensor,
    positions: torch.Tensor,
    cache: Any,
    use_cache: bool,
    logits_to_keep: int,
    output_attentions: bool,
    sees: torch.Tensor | None,
    key_positions: torch.Tensor | None,
) -> dict[str, Any]:
    """The keyword arguments of the Hugging Face model's call for :meth:`LanguageModel.forward`
    (``given``: the new positions' ids [B, Q] when ``given_ids``, else their embeddings [B, Q, d])."""
    from transformers import DynamicCache

    q_len, total = given.shape[1], visible.shape[1]
    mask = None
    if sees is not None:
        mask = lm._masks.build(sees, positions, key_positions, lm.dtype, lm.device)
    elif not bool(visible.all()):
        mask = lm.attention_mask(visible, torch.arange(total - q_len, total, device=visible.device))
    if use_cache and cache is None:
        cache = DynamicCache()
    kwargs: dict[str, Any] = {
        "attention_mask": mask,
        "position_ids": positions.to(lm.device),
        "use_cache": use_cache,
    }
    kwargs[lm._cache_arg] = cache
    if output_attentions:
        kwargs["output_attentions"] = True
    if lm._keeps_logits and logits_to_keep:
        kwargs["logits_to_keep"] = logits_to_keep
    if given_ids:
        kwargs["input_ids"] = given.to(lm.device)
    else:
        kwargs["inputs_embeds"] = given
    return kwargs
