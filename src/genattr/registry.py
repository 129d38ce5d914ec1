"""The one registry of attribution methods: name -> class, with declared capabilities.

The CLI's choices, the README's table of methods and the tests' parametrisation all read it,
so a new method is one module with a ``@register`` class plus one import in
:mod:`genattr.algorithms`.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UnknownMethodError

_REGISTRY: dict[str, type] = {}


@dataclass(frozen=True)
class MethodInfo:
    """What a method is: its name, family, one-line summary, capabilities and parameters."""

    name: str
    family: str
    summary: str
    needs_gradients: bool
    stochastic: bool
    token_matrix: bool
    convergence_check: bool
    needs_target: bool
    params: dict

    def line(self) -> str:
        flags = [
            flag
            for flag, on in (
                ("gradients", self.needs_gradients),
                ("stochastic", self.stochastic),
                ("per-token", self.token_matrix),
                ("convergence", self.convergence_check),
                ("no-target", not self.needs_target),
            )
            if on
        ]
        return f"{self.name:<24} {self.family:<13} {', '.join(flags):<50} {self.summary}"


def register(cls):
    """Class decorator: add a :class:`~genattr.methods.base.Method` subclass under ``cls.name``."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"method name {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def _ensure_loaded() -> None:
    from . import algorithms  # noqa: F401  (importing the package registers every method)


def get(name: str) -> type:
    """The method class registered as ``name``."""
    _ensure_loaded()
    if name not in _REGISTRY:
        raise UnknownMethodError(
            f"unknown method {name!r}; choose one of: {', '.join(sorted(_REGISTRY))} (see `genattr methods`)."
        )
    return _REGISTRY[name]


def methods() -> list[MethodInfo]:
    """Every registered method, sorted by family then name."""
    _ensure_loaded()
    infos = [cls.info() for cls in _REGISTRY.values()]
    return sorted(infos, key=lambda i: (i.family, i.name))


def names() -> list[str]:
    return [info.name for info in methods()]


def markdown_table() -> str:
    """The README's table of methods, generated from the registry (a test keeps them in sync)."""
    yes = {True: "yes", False: ""}
    rows = [
        "| method | family | what it computes | gradients | stochastic | per-token matrix | parameters |",
        "|---|---|---|---|---|---|---|",
    ]
    for i in methods():
        params = ", ".join(f"`{k}`={v['default']!r}" for k, v in i.params.items()) or "-"
        rows.append(
            f"| `{i.name}` | {i.family} | {i.summary} | {yes[i.needs_gradients]} | {yes[i.stochastic]} | "
            f"{yes[i.token_matrix]} | {params} |"
        )
    return "\n".join(rows)
