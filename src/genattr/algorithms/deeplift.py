"""DeepLIFT (Shrikumar et al., 2017, "Learning Important Features Through Propagating Activation
Differences") on the prompt embeddings of a transformer, with summation-to-delta.

DeepLIFT explains the difference of the output from its value on a reference input, F(x) - F(x'),
by multipliers m with

    sum_i (x - x')_i m_i = F(x) - F(x')                                   (summation-to-delta)

obtained by the chain rule for multipliers: the backward pass of the network in which every
operation's derivative is replaced by a multiplier that satisfies summation-to-delta at that
operation, dy = sum_k m_k dz_k for the differences d = (value on x) - (value on x'). Composed,
the per-operation identities give the identity for the whole network. A transformer is built
from four kinds of operation, and each gets a rule that makes the identity exact:

* affine maps (linear layers, residual additions, reshapes, the rotary embedding, masking by
  constants): their gradient is already exact, d(Wz + b) = W dz, and passes through;
* elementwise nonlinearities (SiLU, GELU, tanh, exp, log, rsqrt, powers, ...): the Rescale rule,
  m = (f(z) - f(z')) / (z - z') (the paper's Sec. 3.5.2), f'(z) where z and z' nearly coincide;
* products of two varying tensors (the gated MLP's SiLU(a) * b, RMS/layer normalisation's
  z * rsqrt(var), attention's q k^T and P v): the product rule, each factor's multiplier the
  mean of the other factor's two values, d(ab) = (b + b')/2 da + (a + a')/2 db, which is exact
  (it splits the interaction term da db equally between the factors: their Shapley values as
  two players); for matrix products the same with the matrices;
* the operations composed of these, which are written out so that the rules apply to their
  parts: log-softmax z - c - log(sum exp(z - c)) (c a shift shared by x and x'), softmax as the
  exp of it, layer normalisation (z - mean) * rsqrt(mean((z - mean)^2) + eps), RMS
  normalisation z * rsqrt(mean(z^2) + eps), division a * (1/b) and fused attention
  softmax(q k^T * scale + mask) v.

The rules act on the ``torch`` operations themselves (through a ``TorchFunctionMode``), so they
cover any model written with these operations, whatever its classes (Captum's DeepLift, whose
rules are tied to a list of ``torch.nn`` module classes, uses plain gradients at the Hugging Face
activations, at attention and at normalisation, and so misses summation-to-delta on
transformers). A first pass over the reference records each operation's inputs; the pass over the
input meets the same operations in the same order and returns, for each, its exact value plus a
term that is zero in value and whose gradient is the multiplier, so forward values are those of
the plain model. An operation on varying inputs that no rule covers keeps its local gradient; it
is listed in ``diagnostics['unruled_operations']`` and summation-to-delta then only holds
approximately (the method warns when the gap exceeds 5%).

Departures from the paper, which defines rules for linear layers and elementwise activations
only: the product rule and the decomposition of softmax and normalisation into elementwise
steps are choices among several that keep summation-to-delta exact. Holding attention
probabilities and normalisation scales constant (Ali et al., 2022, "XAI for Transformers") drops
their share of F(x) - F(x') and so gives summation-to-delta up; the plain gradient there
(Captum's DeepLift) misses it worst where the model is confident: on the zoo, whose output
softmax is saturated at the input, the activations-only rule summed to about 0 while F moved by
about 11 nats. An activation written as a composition (GPT-2's tanh-approximated GELU,
x (1 + tanh(...)) / 2) gets the rules at its parts rather than one Rescale for the whole. The
RevealCancel rule is not implemented.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from ..errors import ConvergenceWarning, UnsupportedModelError
from ..problem import Problem
from ..registry import Method, Output, Param
from ._embedding import (
    BASELINES,
    EmbeddedPrompt,
    _batched_gradients,
    _head_input,
    completeness_gap,
    embedded,
)
from .gradient import _own_sequence_row, _scores_from_positions

Pair = tuple[torch.Tensor, torch.Tensor]
"""A tensor on the input (in the autograd graph, carrying multipliers) and its value on the reference."""
Refs = tuple[tuple, dict]
"""The positional and keyword arguments of an operation's call on the reference."""

AFFINE = frozenset(
    """add __add__ __radd__ sub __sub__ __rsub__ neg __neg__ sum mean cat concat concatenate stack
    view view_as reshape reshape_as transpose t permute contiguous expand expand_as unsqueeze squeeze
    __getitem__ split split_with_sizes chunk unbind to float half double bfloat16 type type_as clone
    dropout embedding gather index_select narrow flatten unflatten repeat repeat_interleave
    masked_fill where select movedim swapaxes __get__ roll tril triu pad diagonal cumsum""".split()
)
"""Operations affine in their tensor arguments: the plain chain rule is exact."""

PRODUCTS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mul": torch.mul,
    "__mul__": torch.mul,
    "__rmul__": torch.mul,
    "multiply": torch.mul,
}
PRODUCTS |= {"matmul": torch.matmul, "__matmul__": torch.matmul, "mm": torch.matmul, "bmm": torch.matmul}

MULTILINEAR = frozenset(PRODUCTS) | {"linear", "addmm", "baddbmm", "einsum"}
"""Linear in each tensor argument: exact under the plain chain rule while at most one argument
differs between input and reference; two varying factors of mul/matmul get the product rule."""

DIVISIONS = frozenset({"div", "__truediv__", "true_divide", "divide"})
"""a / b: linear in a; a varying b gets the Rescale rule at 1/b and the product rule."""

ELEMENTWISE = frozenset(
    """exp exp2 expm1 log log2 log10 log1p rsqrt sqrt reciprocal __rdiv__ __rtruediv__ tanh sigmoid
    silu gelu relu relu6 leaky_relu elu selu celu softplus mish hardtanh hardswish hardsigmoid
    logsigmoid softsign erf erfc sin cos square abs pow __pow__ __rpow__""".split()
)
"""Elementwise nonlinear in their one varying tensor argument: the Rescale rule."""


# --------------------------------------------------------------------- the rules on pairs
def rescale(f: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, z_ref: torch.Tensor) -> Pair:
    """Rescale rule: f(z) in value, multiplier m = (f(z) - f(z')) / (z - z') in the backward pass.

    Where |z - z'| <= sqrt(eps) max(|z|, |z'|) (eps the dtype's precision) the secant is a
    ratio of rounding errors and the local derivative f'(z) is used instead: the two differ by
    about f''(z) (z - z')^2 / 2, of the order of eps |f(z)| for the functions here."""
    with torch.no_grad():
        value, value_ref = f(z.detach()), f(z_ref)
        dz = z.detach() - z_ref
        scale = torch.maximum(z.detach().abs(), z_ref.abs())
        small = ~torch.isfinite(dz) | (dz.abs() <= math.sqrt(torch.finfo(dz.dtype).eps) * scale)
        secant = (value - value_ref) / torch.where(small, torch.ones_like(dz), dz)
    if bool(small.any()):
        with torch.enable_grad():
            probe = z.detach().requires_grad_(True)
            (local,) = torch.autograd.grad(f(probe).sum(), probe)
        secant = torch.where(small, local, secant)
    return value + secant * (z - z.detach()), value_ref


def product(op: Callable, a: torch.Tensor, a_ref: torch.Tensor, b: torch.Tensor, b_ref: torch.Tensor) -> Pair:
    """Product rule for a bilinear ``op`` (elementwise or matrix product):

    op(a, b) - op(a', b') = op(da, (b + b')/2) + op((a + a')/2, db)   exactly."""
    a0, b0 = a.detach(), b.detach()
    value = op(a0, b0)
    return value + op(a - a0, (b0 + b_ref) / 2) + op((a0 + a_ref) / 2, b - b0), op(a_ref, b_ref)


def softmax(z: torch.Tensor, z_ref: torch.Tensor, dim: int, log: bool = False) -> Pair:
    """log-softmax(z) = z - c - log sum(exp(z - c)), the shift c shared by input and reference (so
    that it cancels from the differences), and softmax(z) = exp(log-softmax(z)).

    Written through the log-sum-exp rather than as e / sum(e): where one side's row is dominated by
    a score the other side lacks, 1 / sum(e) on that side is huge and the product rule's two
    terms cancel to a few digits; here every multiplier is bounded (secants of exp below 1, of
    log by the log-ratio of the sums)."""
    c = torch.maximum(z.detach().amax(dim, keepdim=True), z_ref.amax(dim, keepdim=True))
    e, e_ref = rescale(torch.exp, z - c, z_ref - c)
    total, total_ref = rescale(torch.log, e.sum(dim, keepdim=True), e_ref.sum(dim, keepdim=True))
    logp, logp_ref = z - c - total, z_ref - c - total_ref
    return (logp, logp_ref) if log else rescale(torch.exp, logp, logp_ref)


def normalise(z: torch.Tensor, z_ref: torch.Tensor, dims: tuple[int, ...], eps: float, centre: bool) -> Pair:
    """(z - mean) * rsqrt(mean((z - mean)^2) + eps) (layer norm), or without centring (RMS norm)."""
    if centre:
        z, z_ref = z - z.mean(dims, keepdim=True), z_ref - z_ref.mean(dims, keepdim=True)
    square, square_ref = rescale(torch.square, z, z_ref)
    var, var_ref = square.mean(dims, keepdim=True) + eps, square_ref.mean(dims, keepdim=True) + eps
    scale, scale_ref = rescale(torch.rsqrt, var, var_ref)
    return product(torch.mul, z, z_ref, scale, scale_ref)


def attention(
    q: Pair, k: Pair, v: Pair, keep: torch.Tensor | None, bias: torch.Tensor | None, scale: float
) -> Pair:
    """softmax(q k^T * scale + bias) v over the positions where ``keep`` (scaled dot-product attention)."""
    kt = (k[0].transpose(-2, -1), k[1].transpose(-2, -1))
    s, s_ref = product(torch.matmul, *q, *kt)
    s, s_ref = s * scale, s_ref * scale
    if bias is not None:
        s, s_ref = s + bias, s_ref + bias
    if keep is not None:
        floor = torch.finfo(s.dtype).min
        s, s_ref = s.masked_fill(~keep, floor), s_ref.masked_fill(~keep, floor)
    p, p_ref = softmax(s, s_ref, -1)
    return product(torch.matmul, p, p_ref, *v)


# --------------------------------------------------------------------- the rules on torch operations
def _bind(args: tuple, kwargs: dict, names: list[str]) -> dict:
    bound = dict(zip(names, args, strict=False))
    bound.update(kwargs)
    return bound


def _softmax_rule(func: Callable, args: tuple, kwargs: dict, refs: Refs) -> Pair | None:
    (z, *rest), (z_ref, *_) = args, refs[0]
    dims = [a for a in rest if isinstance(a, int)]
    dim = kwargs.get("dim", dims[0] if dims else None)
    dtype = kwargs.get("dtype", next((a for a in rest if isinstance(a, torch.dtype)), None))
    if dim is None:
        return None
    if dtype is not None:
        z, z_ref = z.to(dtype), z_ref.to(dtype)
    return softmax(z, z_ref, dim, log=func.__name__ == "log_softmax")


def _norm_rule(func: Callable, args: tuple, kwargs: dict, refs: Refs) -> Pair | None:
    centre = func.__name__ == "layer_norm"
    names = (
        ["input", "normalized_shape", "weight", "bias", "eps"]
        if centre
        else ["input", "normalized_shape", "weight", "eps"]
    )
    bound, bound_ref = _bind(args, kwargs, names), _bind(*refs, names)
    weight, bias = bound.get("weight"), bound.get("bias")
    if any(bound_ref.get(n) is not None and not _same(bound[n], bound_ref[n]) for n in ("weight", "bias")):
        return None
    z, z_ref = bound["input"], bound_ref["input"]
    eps = bound.get("eps")
    eps = (1e-5 if centre else torch.finfo(z.dtype).eps) if eps is None else eps
    dims = tuple(range(-len(bound["normalized_shape"]), 0))
    y, y_ref = normalise(z, z_ref, dims, eps, centre)
    if weight is not None:
        y, y_ref = y * weight, y_ref * weight
    if bias is not None:
        y, y_ref = y + bias, y_ref + bias
    return y, y_ref


SDPA = ["query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa"]


def _attention_rule(func: Callable, args: tuple, kwargs: dict, refs: Refs) -> Pair | None:
    bound, bound_ref = _bind(args, kwargs, SDPA), _bind(*refs, SDPA)
    mask = bound.get("attn_mask")
    if bound.get("dropout_p", 0.0) or (mask is not None and not _same(mask, bound_ref["attn_mask"])):
        return None
    q, k, v = ((bound[n], bound_ref[n]) for n in ("query", "key", "value"))
    if bound.get("enable_gqa", False):
        groups = q[0].shape[-3] // k[0].shape[-3]
        k, v = ((t.repeat_interleave(groups, -3), r.repeat_interleave(groups, -3)) for t, r in (k, v))
    keep = bias = None
    length, source = q[0].shape[-2], k[0].shape[-2]
    if bound.get("is_causal", False):
        keep = torch.ones(length, source, dtype=torch.bool, device=q[0].device).tril(source - length)
    if mask is not None and mask.dtype == torch.bool:
        keep = mask if keep is None else keep & mask
    elif mask is not None:
        visible = mask > torch.finfo(mask.dtype).min / 2
        keep = visible if keep is None else keep & visible
        bias = mask.masked_fill(~visible, 0)
    scale = bound.get("scale") or 1 / math.sqrt(q[0].shape[-1])
    return attention(q, k, v, keep, bias, scale)


def _same(a, b) -> bool:
    """Whether an argument has the same value on the input as on the reference."""
    if not isinstance(a, torch.Tensor):
        return True
    return a is b or (a.shape == b.shape and torch.equal(a.detach(), b))


COMPOSITES = {
    "softmax": _softmax_rule,
    "log_softmax": _softmax_rule,
    "layer_norm": _norm_rule,
    "rms_norm": _norm_rule,
    "scaled_dot_product_attention": _attention_rule,
}


class DeltaRules(TorchFunctionMode):
    """The DeepLIFT rules on every ``torch`` operation of a forward pass.

    Under :meth:`reference`, operations run plainly and their tensor arguments are recorded; under
    :meth:`input`, the i-th operation meets the i-th recorded one, and returns its exact value with
    the multiplier of its rule as gradient. Operations on varying inputs that no rule covers are
    counted in ``unruled`` (name -> calls).
    """

    def __init__(self) -> None:
        super().__init__()
        self.records: list[tuple[str, list]] = []
        self.replaying: Iterator[tuple[str, list]] | None = None
        self.unruled: dict[str, int] = {}

    @contextmanager
    def reference(self):
        self.records, self.replaying = [], None
        with self:
            yield self

    @contextmanager
    def input(self):
        self.replaying, self.unruled = iter(self.records), {}
        try:
            with self:
                yield self
        finally:
            self.replaying = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        leaves, spec = tree_flatten((args, kwargs))
        if self.replaying is None:
            self.records.append((name, [_snapshot(t) for t in leaves]))
            return func(*args, **kwargs)
        recorded, ref_leaves = next(self.replaying, (None, []))
        if recorded != name or len(ref_leaves) != len(leaves):
            raise UnsupportedModelError(
                f"deeplift: the model ran {name!r} on the input where it ran {recorded!r} on the reference; "
                "DeepLIFT needs the same sequence of operations on both (a model whose control flow "
                "depends on the embedding values cannot be explained with it)."
            )
        ref_leaves = [
            r if isinstance(r, torch.Tensor) else a for a, r in zip(leaves, ref_leaves, strict=True)
        ]
        varying = [i for i, a in enumerate(leaves) if _floating(a) and not _same(a, ref_leaves[i])]
        if not varying:
            return func(*args, **kwargs)
        refs = tree_unflatten(ref_leaves, spec)
        out = self._rule(func, name, args, kwargs, refs, leaves, varying)
        if out is not None:
            return out
        out = func(*args, **kwargs)
        if not _exact_plain(name, args, varying) and (_floating_output(out) or _in_place(name)):
            self.unruled[name] = self.unruled.get(name, 0) + 1
        return out

    @staticmethod
    def _rule(func, name, args, kwargs, refs, leaves, varying) -> torch.Tensor | None:
        """The output of ``func`` carrying its rule's multipliers, or None where no rule applies."""
        if name in COMPOSITES:
            pair = COMPOSITES[name](func, args, kwargs, refs)
            if pair is None:
                return None
            plain_args, plain_kwargs = tree_map(_detached, (args, kwargs))
            value = func(*plain_args, **plain_kwargs)
            return value + (pair[0] - pair[0].detach()).to(value.dtype)
        if len(varying) == 1 and name in ELEMENTWISE:
            (i,) = varying
            spec = tree_flatten((args, kwargs))[1]

            def f(t: torch.Tensor) -> torch.Tensor:
                call_args, call_kwargs = tree_unflatten([*leaves[:i], t, *leaves[i + 1 :]], spec)
                return func(*call_args, **call_kwargs)

            return rescale(f, leaves[i], tree_flatten(refs)[0][i])[0]
        if len(args) != 2 or kwargs:  # the rules below take two arguments, which are then the leaves
            return None
        (a, b), (a_ref, b_ref) = args, refs[0]
        if name in PRODUCTS and varying == [0, 1]:
            return product(PRODUCTS[name], a, a_ref, b, b_ref)[0]
        if name in DIVISIONS and 1 in varying:
            inverse, inverse_ref = rescale(torch.reciprocal, b, b_ref)
            if 0 in varying:
                return product(torch.mul, a, a_ref, inverse, inverse_ref)[0]
            return a * inverse
        return None


def _exact_plain(name: str, args: tuple, varying: list[int]) -> bool:
    """Whether the plain chain rule is exact for this call (an affine map of its varying inputs)."""
    if name in AFFINE:
        return True
    if name in MULTILINEAR:
        return len(varying) <= 1
    return name in DIVISIONS and varying == [0] and len(args) == 2


def _in_place(name: str) -> bool:
    return name.endswith("_") and not name.endswith("__") or name == "__setitem__"


def _floating(t) -> bool:
    return isinstance(t, torch.Tensor) and t.is_floating_point()


def _floating_output(out) -> bool:
    return any(_floating(t) for t in tree_flatten(out)[0])


def _snapshot(t):
    if not isinstance(t, torch.Tensor):
        return None
    return t if isinstance(t, torch.nn.Parameter) else t.detach().clone()


def _detached(t):
    return t.detach() if isinstance(t, torch.Tensor) else t


# --------------------------------------------------------------------- the method
def multipliers(
    ep: EmbeddedPrompt, x: torch.Tensor, base: torch.Tensor, sequence: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, DeltaRules]:
    """DeepLIFT multipliers of every target token's objective F_t (and of the sequence's with
    ``sequence``) with respect to the prompt embeddings x [L, d], reference ``base`` [L, d].

    Returns the multipliers [m, L, d], the objective at x and at x' ([n + 1]: the tokens, then the
    sequence) and the rules (for their ``unruled`` operations). For the ``prob`` objective,
    F_t = exp(log p_t) gets the Rescale rule too: its multiplier on log p_t is the secant of exp.
    """
    lm, rules, template = ep.lm, DeltaRules(), ep.template(1)
    rows_ref = base[None].to(lm.dtype).requires_grad_(True)  # as the input's: the same operations
    rows = x[None].to(lm.dtype).requires_grad_(True)
    with torch.enable_grad():
        with rules.reference():
            reference = lm.log_probs_from_embeddings(rows_ref, template, ep.target)
        with _head_input(lm.model) as head:
            with rules.input():
                out = lm.log_probs_from_embeddings(rows, template, ep.target)
            grads = _batched_gradients(lm, out, rows, head, sequence)[:, 0].float()
    lp, lp_ref = out.detach()[0].double().cpu(), reference.detach()[0].double().cpu()
    lp, lp_ref = torch.cat([lp, lp.sum()[None]]), torch.cat([lp_ref, lp_ref.sum()[None]])
    if ep.objective == "log_prob":
        return grads, lp, lp_ref, rules
    values, values_ref = lp.exp(), lp_ref.exp()
    gap = lp - lp_ref
    secant = torch.where(gap.abs() > 1e-12, (values - values_ref) / gap.where(gap != 0, 1.0), values)
    factor = secant if sequence else secant[:-1]
    return grads * factor.to(grads)[:, None, None], values, values_ref, rules


class DeepLift(Method):
    """DeepLIFT (Shrikumar et al., 2017) with rules for every operation of a transformer, so that
    the scores sum to F(x) - F(x') (summation-to-delta), F the problem's objective:

        a_i = sum_{i's tokens, d} (x - x')_{t,d} m_{t,d},   m the DeepLIFT multipliers of F,

    x' the reference (``baselines``): the baseline token's embedding at every feature position,
    or zero. The rules (Rescale at elementwise nonlinearities, the product rule at products of two
    varying tensors, softmax and normalisation written out as elementwise steps and products) are
    described in :mod:`genattr.algorithms.deeplift`. ``diagnostics['convergence_delta']`` is the
    remaining gap sum_i a_i - (F(x) - F(x')) (rounding, or operations no rule covers, listed in
    ``diagnostics['unruled_operations']``); a relative gap above 5% warns.
    """

    name = "deeplift"
    family = "gradient"
    summary = "DeepLIFT, Rescale and product rules at every operation: multipliers times (x - x'), summing to F(x) - F(x')"
    cost = "2 forward rows (input and reference), 1 backward pass batched over the n target tokens"
    needs_gradients = True
    additive = True
    convergence_delta = True
    params = {
        "baselines": Param(
            "token",
            "reference x': the baseline token's embedding (default) or the zero embedding",
            str,
            choices=BASELINES,
        ),
    }
    baselines: str

    def attribute(self, problem: Problem) -> Output:
        ep = embedded(problem)
        x, base = ep.embeds, ep.baseline(self.baselines)
        sequence = _own_sequence_row(ep)
        grads, before, after, rules = multipliers(ep, x, base, sequence)
        token_level = (grads * (x - base)[None]).sum(-1)
        scores, tokens = _scores_from_positions(ep, token_level, sequence)
        gap = completeness_gap(scores, tokens, before - after)
        unruled = sorted(rules.unruled)
        if not gap.converged:
            warnings.warn(
                f"deeplift: the scores miss F(x) - F(x') by {gap.relative:.0%} (convergence delta "
                f"{gap.delta:.4g}); operations without a DeepLIFT rule: {unruled or 'none'}.",
                ConvergenceWarning,
                stacklevel=2,
            )
        return Output(
            scores,
            tokens,
            diagnostics={
                **gap.diagnostics(),
                "objective_input": before.tolist(),
                "objective_baseline": after.tolist(),
                "unruled_operations": unruled,
            },
        )
