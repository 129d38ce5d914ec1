"""The propagation rules of AttnLRP ("AttnLRP: Attention-Aware Layer-Wise Relevance Propagation
for Transformers", Achtibat et al., ICML 2024) as modified gradients, swapped into any PyTorch
model for the duration of a ``with attnlrp(model):`` block.

Gradient x input with a modified backward pass (the implementation of the paper's reference
code, LXT): every operation keeps its forward value, and its backward pass returns a gradient g_in
such that x * g_in is the relevance the rule gives its input x when its output y carries the
relevance y * g_out. Relevance then flows as gradient does, and the relevance of an input
embedding e is sum_d e_d g_d. Operations whose plain gradient already is the rule pass through:
affine maps (reshapes, additions, the rotary embedding, scaling by constants), where the
relevance y * g_out splits over the terms of y and a constant term (a bias, a mask, a position
embedding) absorbs its own share. The rules, by operation:

* linear layers (``F.linear``, as ``nn.Linear`` runs it, and ``addmm``, as GPT-2's ``Conv1D``
  runs it): the epsilon rule, R_i = sum_j x_i w_ij R_j / (z_j + epsilon sign(z_j)), which is the
  plain gradient of the layer with its output gradient scaled by z / (z + epsilon sign(z)); the
  bias and the stabiliser absorb the rest of R_j (epsilon = 0 is the plain gradient, LXT's
  choice);
* a product of two input-dependent tensors (the gated MLP's act(gate) * up, attention's q k^T and
  P v, any ``mul``, ``matmul``, ``bmm`` or ``einsum`` of k of them): the uniform rule, each factor
  R_out / k, the plain gradient divided by k (the product is multilinear, so each factor's plain
  gradient x input is the whole R_out);
* softmax: the paper's rule, R_i = x_i (R_i^out - s_i sum_j R_j^out), which is exactly the plain
  gradient of softmax times its input (its Proposition 3.1, a first-order Taylor decomposition
  whose remainder, the bias term, is absorbed); log-softmax gets the same first-order rule;
* normalisation (``F.layer_norm`` and the ``*RMSNorm`` classes of Hugging Face models): the
  identity rule of the paper, the normalising scale 1 / sigma held constant (the gradient does
  not flow through the variance), so that RMSNorm passes relevance elementwise unchanged and
  LayerNorm centres it (its bias absorbs its share);
* elementwise activations (the activation classes of ``torch.nn`` and ``transformers``, and
  ``F.silu``, ``F.gelu``, ``F.relu``, ... called directly): the identity rule, R_in = R_out
  elementwise, the gradient y / x.

Anything else that is nonlinear in an input-dependent tensor (an elementwise function outside an
activation or a normalisation, such as Gemma 2's attention-logit soft-capping tanh, a division by
an input-dependent tensor, a linear map with input-dependent weights, fused attention, which
hides the softmax) raises :class:`~genattr.errors.UnsupportedModuleError` naming the module that
ran it. The rules act on the ``torch`` operations through a ``TorchFunctionMode`` (as
:mod:`genattr.algorithms.deeplift`'s do), with the model's parameters frozen so that "requires
grad" means "depends on the input"; the normalisation and activation classes, written out of
several operations, get their rule as a whole by a forward method swapped in on the instance.
The softmax rule needs the attention probabilities, so the caller runs the model with eager
attention. Everything is restored on leaving the block, also when it raises.

A :class:`Ledger` records the relevance each kind of rule absorbs (output minus input relevance
at every site) during plain backward passes: the relevance at the input plus the ledger's total
is the relevance at the output.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_unflatten

from ..errors import UnsupportedModuleError
from ..model.backward import swapped_forwards
from .deeplift import DIVISIONS, ELEMENTWISE, PRODUCTS, _bind

ACTIVATIONS = frozenset(
    """silu gelu relu relu6 leaky_relu elu selu celu softplus mish hardswish hardsigmoid hardtanh
    logsigmoid softsign""".split()
)
"""Elementwise activation functions: the identity rule."""

NONLINEAR = (ELEMENTWISE - ACTIVATIONS) | frozenset(
    """logsumexp norm var std var_mean std_mean prod cumprod group_norm batch_norm instance_norm
    normalize addcmul addcdiv baddbmm scaled_dot_product_attention flex_attention""".split()
)
"""Nonlinear in their input-dependent arguments, with no rule (outside a normalisation or
activation class): unsupported."""

MULTILINEAR = frozenset(PRODUCTS) | {"__rmatmul__", "einsum", "mul_", "__imul__", "__imatmul__"}
"""Products: the uniform rule where two or more arguments depend on the input."""

LINEAR = {"linear": ("input", "weight", "bias"), "addmm": ("input", "mat1", "mat2")}
"""Linear layers and the argument that is the layer's input (the others must be constant)."""

ADDITIONS = frozenset("add __add__ __radd__ sub __sub__ __rsub__ rsub".split())
"""Additions: metered by a :class:`Ledger` where one term is constant (it absorbs relevance)."""

NOT_ELEMENTWISE = frozenset("Softmax Softmin LogSoftmax Softmax2d MultiheadAttention GLU".split())
"""Classes of ``torch.nn.modules.activation`` that are not elementwise activations."""


@dataclass
class Ledger:
    """Relevance absorbed by each kind of rule during the plain backward passes run in an
    :func:`attnlrp` block: for every rule site, sum(y * g_out) - sum(x * g_in) over its output y
    and input-dependent inputs x, summed by kind: ``linear`` (biases and the epsilon
    stabiliser), ``product`` (0: the uniform rule conserves), ``softmax`` and ``log_softmax``
    (the Taylor remainder), ``normalisation`` (a LayerNorm's bias; 0 for RMSNorm),
    ``activation`` (0: the identity rule conserves) and ``constant`` (constant terms of
    additions: position embeddings, masks). A backward pass batched over outputs
    (``is_grads_batched``) cannot be metered."""

    absorbed: dict[str, float] = field(default_factory=dict)

    def record(self, kind: str, value: torch.Tensor) -> None:
        self.absorbed[kind] = self.absorbed.get(kind, 0.0) + float(value)

    @property
    def total(self) -> float:
        return sum(self.absorbed.values())


# --------------------------------------------------------------------- the rules as autograd functions
class _Scaled(torch.autograd.Function):
    """y = x; the gradient scaled by ``factor`` (a tensor of x's shape, or a number)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, factor: torch.Tensor | float) -> torch.Tensor:
        if isinstance(factor, torch.Tensor):
            ctx.save_for_backward(factor)
        else:
            ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        saved = ctx.saved_tensors  # read once: a checkpointed layer's saved tensors unpack once
        factor = saved[0] if saved else ctx.factor
        return grad * factor, None


class _Identity(torch.autograd.Function):
    """y = f(x) for an elementwise f, with the identity rule's gradient y / x (0 where x = 0, whose
    relevance x g is 0 whatever g): x * g_in = y * g_out elementwise."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, f: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        y = f(x)
        ratio = torch.where(x == 0, 0.0, y / torch.where(x == 0, 1.0, x))
        ctx.save_for_backward(ratio)
        ctx.dtype = x.dtype
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (ratio,) = ctx.saved_tensors
        return (grad * ratio).to(ctx.dtype), None


class _Meter(torch.autograd.Function):
    """y = x; the backward pass records sign * sum(x * g) in a :class:`Ledger`."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, ledger: Ledger, kind: str, sign: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.ledger, ctx.kind, ctx.sign = ledger, kind, sign
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        (x,) = ctx.saved_tensors
        ctx.ledger.record(ctx.kind, ctx.sign * (x.double() * grad.double()).sum())
        return grad, None, None, None


def epsilon_factor(z: torch.Tensor, epsilon: float) -> torch.Tensor:
    """z / (z + epsilon sign(z)), sign(0) = 1: the epsilon rule's scaling of a linear layer's
    output gradient."""
    return z / (z + epsilon * torch.where(z >= 0, 1.0, -1.0).to(z.dtype))


def _layer_norm(x: torch.Tensor, dims: tuple[int, ...], weight, bias, eps: float) -> torch.Tensor:
    """(x - mean(x)) / sigma * weight + bias with sigma = sqrt(var(x) + eps) held constant."""
    centred = x - x.mean(dims, keepdim=True)
    y = centred * torch.rsqrt(centred.detach().pow(2).mean(dims, keepdim=True) + eps)
    if weight is not None:
        y = y * weight
    return y if bias is None else y + bias


# --------------------------------------------------------------------- where the rules apply
class _Trail:
    """The modules running now (innermost last), for naming the one an error comes from."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def innermost(self) -> str:
        return self.names[-1] if self.names else "the model"

    @contextmanager
    def following(self, model: torch.nn.Module) -> Iterator[None]:
        handles = []
        try:
            for path, module in model.named_modules():
                label = f"{path or 'the model'} ({type(module).__name__})"
                handles.append(module.register_forward_pre_hook(self._enter(label)))
                handles.append(module.register_forward_hook(self._leave, always_call=True))
            yield
        finally:
            for handle in handles:
                handle.remove()
            self.names.clear()

    def _enter(self, label: str) -> Callable[[torch.nn.Module, tuple], None]:
        def hook(_module: torch.nn.Module, _inputs: tuple) -> None:
            self.names.append(label)

        return hook

    def _leave(self, _module: torch.nn.Module, _inputs: tuple, _output: object) -> None:
        if self.names:
            self.names.pop()


_BACKWARD = (torch.autograd.grad, torch.autograd.backward, torch.Tensor.backward)


class _Rules(TorchFunctionMode):
    """The rules on the ``torch`` operations of a forward pass (see the module docstring)."""

    def __init__(self, epsilon: float, ledger: Ledger | None, trail: _Trail) -> None:
        super().__init__()
        self.epsilon, self.ledger, self.trail = epsilon, ledger, trail
        self.rules: dict[str, Callable] = {name: self._product for name in MULTILINEAR}
        self.rules |= {name: self._linear for name in LINEAR}
        self.rules |= {name: self._activation for name in ACTIVATIONS}
        self.rules |= {name: self._division for name in DIVISIONS}
        self.rules |= {name: self._unsupported for name in NONLINEAR}
        self.rules |= {"softmax": self._softmax, "log_softmax": self._softmax}
        self.rules |= {"layer_norm": self._layer_norm, "rms_norm": self._rms_norm}
        if ledger is not None:
            self.rules |= {name: self._addition for name in ADDITIONS}
        self.in_backward = False

    def recompute(self) -> AbstractContextManager[Any]:
        """The rules again for a layer that a backward pass recomputes (activation checkpointing),
        nothing around the first run of a forward pass, which they already cover."""
        return self if self.in_backward else nullcontext()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _BACKWARD:  # runs without this mode (it is off while it handles a call)
            self.in_backward = True
            try:
                return func(*args, **kwargs)
            finally:
                self.in_backward = False
        rule = self.rules.get(getattr(func, "__name__", ""))
        if rule is None or not torch.is_grad_enabled():
            return func(*args, **kwargs)
        leaves, spec = tree_flatten((args, kwargs))
        varying = [i for i, t in enumerate(leaves) if isinstance(t, torch.Tensor) and t.requires_grad]
        if not varying:
            return func(*args, **kwargs)
        return rule(func, leaves, spec, varying)

    # ----------------------------------------------------------------- helpers
    def metered(self, kind: str, leaves: list, varying: list[int], run: Callable[[list], torch.Tensor]):
        """``run(leaves)``, the inputs at ``varying`` and the output metered by the ledger, if any."""
        if self.ledger is None:
            return run(leaves)
        leaves = list(leaves)
        for i in varying:
            leaves[i] = _Meter.apply(leaves[i], self.ledger, kind, -1.0)
        return _Meter.apply(run(leaves), self.ledger, kind, 1.0)

    def refuse(self, name: str, why: str) -> UnsupportedModuleError:
        return UnsupportedModuleError(
            f"lrp: {self.trail.innermost()} applies {name!r} to an input-dependent tensor ({why}); "
            "no AttnLRP rule covers it (the rules cover linear layers, products, softmax, "
            "LayerNorm/RMSNorm and elementwise activations). Explain this model with another "
            "method, such as integrated_gradients."
        )

    @staticmethod
    def call(func: Callable, spec: Any) -> Callable[[list], torch.Tensor]:
        def run(leaves: list) -> torch.Tensor:
            args, kwargs = tree_unflatten(leaves, spec)
            return func(*args, **kwargs)

        return run

    # ----------------------------------------------------------------- the rules
    def _product(self, func, leaves, spec, varying):
        name = func.__name__
        if len(varying) == 1:
            return self.call(func, spec)(leaves)
        if name.endswith("_") and not name.endswith("__") or name.startswith("__i"):
            raise self.refuse(name, "an in-place product of input-dependent tensors")
        k = len(varying)
        return self.metered(
            "product", leaves, varying, lambda ls: _Scaled.apply(self.call(func, spec)(ls), 1 / k)
        )

    def _linear(self, func, leaves, spec, varying):
        args, kwargs = tree_unflatten(leaves, spec)
        names = LINEAR[func.__name__]
        bound = _bind(args, kwargs, list(names))
        layer_input = bound[names[0] if func.__name__ == "linear" else "mat1"]
        others = [t for n, t in bound.items() if isinstance(t, torch.Tensor) and t is not layer_input]
        if any(t.requires_grad for t in others):
            raise self.refuse(func.__name__, "a linear map whose weights or bias depend on the input")

        def run(ls: list) -> torch.Tensor:
            z = self.call(func, spec)(ls)
            return z if self.epsilon == 0 else _Scaled.apply(z, epsilon_factor(z.detach(), self.epsilon))

        return self.metered("linear", leaves, varying, run)

    def _activation(self, func, leaves, spec, varying):
        if varying != [0]:
            raise self.refuse(func.__name__, "an activation with input-dependent parameters")

        def run(ls: list) -> torch.Tensor:
            return _Identity.apply(ls[0], lambda t: self.call(func, spec)([t, *ls[1:]]))

        return self.metered("activation", leaves, varying, run)

    def _division(self, func, leaves, spec, varying):
        if varying != [0]:
            raise self.refuse(func.__name__, "a division by an input-dependent tensor")
        return self.call(func, spec)(leaves)

    def _unsupported(self, func, leaves, spec, varying):
        raise self.refuse(func.__name__, "a nonlinear function outside an activation or a normalisation")

    def _softmax(self, func, leaves, spec, varying):
        return self.metered(func.__name__, leaves, varying, self.call(func, spec))

    def _layer_norm(self, func, leaves, spec, varying):
        args, kwargs = tree_unflatten(leaves, spec)
        bound = _bind(args, kwargs, ["input", "normalized_shape", "weight", "bias", "eps"])
        if varying != [0]:
            raise self.refuse(func.__name__, "a normalisation with input-dependent parameters")
        dims = tuple(range(-len(bound["normalized_shape"]), 0))

        def run(ls: list) -> torch.Tensor:
            return _layer_norm(ls[0], dims, bound.get("weight"), bound.get("bias"), bound.get("eps", 1e-5))

        return self.metered("normalisation", leaves, varying, run)

    def _rms_norm(self, func, leaves, spec, varying):
        if varying != [0]:
            raise self.refuse(func.__name__, "a normalisation with input-dependent parameters")

        def run(ls: list) -> torch.Tensor:
            return _Identity.apply(ls[0], lambda t: self.call(func, spec)([t, *ls[1:]]))

        return self.metered("normalisation", leaves, varying, run)

    def _addition(self, func, leaves, spec, varying):
        run = self.call(func, spec)
        if len(varying) > 1:
            return run(leaves)
        return self.metered("constant", leaves, varying, run)


# --------------------------------------------------------------------- the modules ruled as a whole
def _whole_module_rule(module: torch.nn.Module) -> str | None:
    """``"normalisation"`` for a Hugging Face RMSNorm class, ``"activation"`` for an elementwise
    activation class of ``torch.nn`` or ``transformers``, else None (the operations' rules apply)."""
    cls = type(module)
    if cls.__name__.endswith("RMSNorm") and not isinstance(module, torch.nn.RMSNorm):
        return "normalisation"
    if cls.__module__ in ("transformers.activations", "torch.nn.modules.activation"):
        return None if cls.__name__ in NOT_ELEMENTWISE else "activation"
    return None


def _instance_forwards(model: torch.nn.Module, rules: _Rules) -> AbstractContextManager[None]:
    """Swaps in, on each normalisation and activation instance, a forward that applies the
    identity rule to the module as a whole; restores every instance on exit."""

    def swaps() -> Iterator[tuple[torch.nn.Module, Callable[[Callable], Callable]]]:
        for path, module in model.named_modules():
            kind = _whole_module_rule(module)
            if kind is None:
                continue
            bias = getattr(module, "bias", None)
            if isinstance(bias, torch.Tensor):
                raise UnsupportedModuleError(
                    f"lrp: {path} ({type(module).__name__}) is an RMS normalisation with a bias, "
                    "which the identity rule does not cover; explain this model with another method."
                )
            yield module, partial(_identity_forward, kind=kind, rules=rules)

    return swapped_forwards(swaps())


def _identity_forward(forward: Callable, kind: str, rules: _Rules) -> Callable:
    def ruled(x: torch.Tensor, *args, **kwargs):
        if not (torch.is_grad_enabled() and isinstance(x, torch.Tensor) and x.requires_grad):
            return forward(x, *args, **kwargs)
        return rules.metered(
            kind, [x], [0], lambda ls: _Identity.apply(ls[0], lambda t: forward(t, *args, **kwargs))
        )

    return ruled


@contextmanager
def _frozen(model: torch.nn.Module) -> Iterator[None]:
    """The parameters without gradients while open (so that requiring grad means depending on the
    input), as they were after."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@contextmanager
def attnlrp(
    model: torch.nn.Module, epsilon: float = 0.0, ledger: Ledger | None = None
) -> Iterator[Callable[[], AbstractContextManager[Any]]]:
    """AttnLRP's rules in every forward pass of ``model`` run while open (see the module
    docstring): the gradient of an output with respect to an input tensor x, times x, is then the
    relevance of x. ``epsilon`` is the epsilon rule's stabiliser at linear layers; ``ledger``
    records the relevance the rules absorb. The model runs as it is (the caller switches it to
    eager attention). Parameters, instance forwards and hooks are restored on exit, also when the
    block raises. It yields the ``recompute`` context of
    :func:`~genattr.model.backward.checkpointed_layers`, which puts the rules back around a layer
    recomputed during the backward pass.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4, bias=False), torch.nn.ReLU(), torch.nn.Linear(4, 1, bias=False))
    >>> x = torch.randn(2, 3, requires_grad=True)
    >>> with attnlrp(net):
    ...     y = net(x).sum()
    ...     (g,) = torch.autograd.grad(y, x)
    >>> bool(torch.isclose((x * g).sum(), y))   # conservation: no bias, epsilon 0
    True
    """
    trail = _Trail()
    rules = _Rules(epsilon, ledger, trail)
    with ExitStack() as stack:
        stack.enter_context(_frozen(model))
        stack.enter_context(trail.following(model))
        stack.enter_context(_instance_forwards(model, rules))
        stack.enter_context(rules)
        yield rules.recompute
