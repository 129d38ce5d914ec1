"""Captum and Inseq runs on the prompt and target genattr explains, built in one place for every
benchmark (bench/perturbation.py, bench/gradients.py, bench/real.py), so that all compare under
the same conventions.

Conventions where values are compared with genattr:

* features: the prompt's maskable tokens, i.e. genattr's ``level="token"`` features (BOS, the
  other control tokens and chat-template scaffolding are no features). Captum's ``TextTokenInput``
  gets exactly these as its interpretable features (:func:`captum_input`); everything else stays
  in place in every variant;
* removal: a feature is replaced by the token ``baseline`` (genattr ``mask="replace"``, Captum's
  interpretable baseline); for integrated gradients the path runs from that token's embedding at
  the feature positions (genattr ``baselines="token"``) to the prompt's embeddings;
* objective: log p(y_t | prompt, y_<t), teacher-forced on the given target ids, summed over t for
  the sequence score (Captum's ``attr_target="log_prob"``; ``seq_attr``, and ``token_attr`` per
  target token);
* attention: the attention probability from the position that predicts y_t to each prompt
  token, averaged over layers and heads (genattr ``attention``; Inseq ``attention``, whose
  granular output keeps every layer and head).

Inseq's ``occlusion`` (zero embeddings, absolute per-step probability differences, every token
occluded, the generated prefix included) and ``integrated_gradients`` (an all-UNK baseline for
prompt and generated prefix alike, the probability as target, scores normalised per step) compute
other quantities: they are timed, not compared.

Captum and Inseq are the ``bench`` extra of pyproject.toml (``make bench`` installs them).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch

import genattr
from genattr.errors import GenattrWarning
from genattr.text.prompt import Prompt

CAPTUM_ABLATION = "captum FeatureAblation (default)"
CAPTUM_ABLATION_JOINT = "captum FeatureAblation (forward_in_tokens=False)"
CAPTUM_SHAPLEY = "captum ShapleyValueSampling (forward_in_tokens=False)"
CAPTUM_IG = "captum LLMGradientAttribution(LayerIntegratedGradients)"
INSEQ_METHODS = ("occlusion", "integrated_gradients", "attention")


def quiet() -> None:
    """Silence the peers' notices (Captum's and Inseq's warnings and log lines); genattr's own
    warnings are still shown."""
    warnings.filterwarnings("ignore")
    warnings.filterwarnings("default", category=GenattrWarning)
    logging.disable(logging.WARNING)


def token_features(prompt: Prompt) -> list[int]:
    """The positions of the prompt's maskable tokens, checked to be genattr's token-level features
    one for one (the order of the scores every library returns)."""
    positions = [i for i, ok in enumerate(prompt.maskable) if ok]
    if [f.positions for f in prompt.features("token")] != [(i,) for i in positions]:
        raise RuntimeError("genattr's token-level features are not the prompt's maskable tokens one by one")
    return positions


def captum_input(lm: genattr.LanguageModel, prompt: Prompt, baseline: int):
    """Captum's ``TextTokenInput`` over ``prompt.text`` whose interpretable features are exactly the
    prompt's maskable tokens (:func:`token_features`), each replaced by ``baseline`` when absent.

    ``TextTokenInput`` can only skip tokens by id (which would also skip a scaffolding word where
    the user wrote it), so its interpretable mask is set to the prompt's, which Captum's perturbation
    and gradient wrappers both honour.
    """
    from captum.attr import TextTokenInput

    inp = TextTokenInput(prompt.text, lm.tokenizer, baselines=baseline)
    if inp.inp_tensor[0].tolist() != list(prompt.input_ids):
        raise RuntimeError("Captum tokenised the prompt differently from genattr")
    positions = token_features(prompt)
    inp.itp_mask = torch.tensor([prompt.maskable])
    inp.itp_tensor = inp.inp_tensor[inp.itp_mask].unsqueeze(0)
    inp.values = lm.tokenizer.convert_ids_to_tokens(inp.itp_tensor[0].tolist())
    inp.n_itp_features = len(positions)
    return inp


def captum_perturbation_runs(
    lm: genattr.LanguageModel,
    prompt: Prompt,
    target_ids: Sequence[int],
    *,
    baseline: int,
    n_samples: int,
    ablation_modes: Sequence[str] = ("default", "joint"),
    seed: int = 0,
) -> dict[str, Callable[[], object]]:
    """Captum ``LLMAttribution`` runs: ``FeatureAblation`` in its default mode (one cached forward
    pass per target token per variant, ``"default"``) and with ``forward_in_tokens=False`` (prompt +
    target in one forward pass per variant, ``"joint"``), and ``ShapleyValueSampling`` with
    ``n_samples`` permutations drawn after ``torch.manual_seed(seed)`` (``forward_in_tokens=False``:
    its default mode takes a forward pass per target token per coalition)."""
    from captum.attr import FeatureAblation, LLMAttribution, ShapleyValueSampling

    inp = captum_input(lm, prompt, baseline)
    target = torch.tensor(list(target_ids))
    ablation = LLMAttribution(FeatureAblation(lm.model), lm.tokenizer)
    sampling = LLMAttribution(ShapleyValueSampling(lm.model), lm.tokenizer)

    def shapley():
        torch.manual_seed(seed)
        return sampling.attribute(inp, target=target, forward_in_tokens=False, n_samples=n_samples)

    runs = {
        CAPTUM_ABLATION: lambda: ablation.attribute(inp, target=target),
        CAPTUM_ABLATION_JOINT: lambda: ablation.attribute(inp, target=target, forward_in_tokens=False),
    }
    chosen = {CAPTUM_ABLATION: "default" in ablation_modes, CAPTUM_ABLATION_JOINT: "joint" in ablation_modes}
    return {**{name: fn for name, fn in runs.items() if chosen[name]}, CAPTUM_SHAPLEY: shapley}


def captum_ig_run(
    lm: genattr.LanguageModel, prompt: Prompt, target_ids: Sequence[int], *, baseline: int, n_steps: int
) -> dict[str, Callable[[], object]]:
    """Captum ``LLMGradientAttribution(LayerIntegratedGradients)`` on the input embeddings with
    ``n_steps`` Gauss-Legendre steps (Captum's default rule, and genattr's): one integrated-gradients
    call per target token. Its default baseline (every interpretable feature absent) is the
    ``baseline`` token at the feature positions."""
    from captum.attr import LayerIntegratedGradients, LLMGradientAttribution

    inp = captum_input(lm, prompt, baseline)
    ig = LLMGradientAttribution(
        LayerIntegratedGradients(lm.model, lm.model.get_input_embeddings()), lm.tokenizer
    )
    target = torch.tensor(list(target_ids))
    return {CAPTUM_IG: lambda: ig.attribute(inp, target=target, n_steps=n_steps)}


def inseq_runs(
    lm: genattr.LanguageModel,
    prompt: Prompt,
    target_ids: Sequence[int],
    target_text: str,
    *,
    methods: Sequence[str] = INSEQ_METHODS,
    n_steps: int | None = None,
) -> dict[str, Callable[[], object]]:
    """Inseq runs on the already-loaded model and tokenizer (Inseq sets the tokenizer's pad token
    if it has none), one per method, given ``prompt.text`` and ``prompt.text + target_text``; each
    checks that Inseq saw the prompt's and target's ids. ``n_steps`` goes to ``integrated_gradients``. ``attention`` runs under eager attention (the
    only implementation that returns attention probabilities), as genattr's does."""
    import inseq

    text = prompt.text
    generated = text + target_text
    expected = list(prompt.input_ids) + list(target_ids)
    models = {method: inseq.load_model(lm.model, method, tokenizer=lm.tokenizer) for method in methods}

    def run(method: str):
        kwargs = {"n_steps": n_steps} if method == "integrated_gradients" and n_steps else {}
        attention = lm.model.config._attn_implementation
        if method == "attention":
            lm.model.set_attn_implementation("eager")
        try:
            out = models[method].attribute(
                input_texts=text, generated_texts=generated, show_progress=False, **kwargs
            )
        finally:
            lm.model.set_attn_implementation(attention)
        pad = models[method].pad_token  # Inseq leaves it out of the tokens it lists, not of its computation
        listed = [i for i in expected if lm.tokenizer.convert_ids_to_tokens(i) != pad]
        if [t.id for t in out.sequence_attributions[0].target] != listed:
            raise RuntimeError("Inseq tokenised the prompt and target differently from genattr")
        return out

    return {f"inseq {method}": (lambda m=method: run(m)) for method in methods}


def inseq_attention_rows(out, prompt: Prompt, n_target: int) -> np.ndarray:
    """Inseq ``attention`` output as genattr's ``attention`` ``token_scores``: [n_target, features],
    the probability from the position predicting each target token to each feature token, averaged
    over layers and heads. Inseq's granular tensor is [positions, steps, layers, heads], its rows the
    sequence's positions in order (where Inseq drops pad tokens from its token list, it cuts rows
    from the end, past the prompt)."""
    granular = out.sequence_attributions[0].target_attributions
    n_prompt = len(prompt)
    rows = granular[:, -n_target:].double().mean(dim=(-1, -2))  # [positions, steps]
    return rows[:n_prompt][token_features(prompt)].T.numpy()


def max_abs_diff(a, b) -> float:
    """The largest absolute difference of two equally shaped arrays (or tensors)."""
    a = np.asarray(a.double() if isinstance(a, torch.Tensor) else a, dtype=np.float64)
    b = np.asarray(b.double() if isinstance(b, torch.Tensor) else b, dtype=np.float64)
    if a.shape != b.shape:
        raise RuntimeError(f"cannot compare scores of shapes {a.shape} and {b.shape}")
    return float(np.abs(a - b).max())
