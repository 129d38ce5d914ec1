"""Named, user-extensible registries: segmentation levels, masks and objectives.

Each is a :class:`NameRegistry`, a read-only mapping from a name to a class in registration
order (so it reads like the tuple of names it replaced: ``"word" in LEVELS``,
``", ".join(MASKS)``), extended through its ``register_*`` decorator. Without torch, so that
the command line can list the levels.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Generic, TypeVar

from .errors import GenattrError, InvalidParameterError

T = TypeVar("T")


class NameRegistry(Mapping[str, type[T]], Generic[T]):
    """Classes registered under their ``name`` attribute; :meth:`get` raises ``error`` with the
    choices for an unknown name."""

    def __init__(self, kind: str, base: type[T], error: type[GenattrError]) -> None:
        self.kind, self.base, self.error = kind, base, error
        self._classes: dict[str, type[T]] = {}

    def register(self, cls: type[T]) -> type[T]:
        """Add ``cls`` (a subclass of the registry's base) under ``cls.name``; usable as a decorator.
        A name already taken by another class is refused, so a built-in is never replaced."""
        if not (isinstance(cls, type) and issubclass(cls, self.base)):
            raise InvalidParameterError(
                f"a {self.kind} must be a subclass of {self.base.__name__}, not {cls!r}; subclass it."
            )
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise InvalidParameterError(
                f"{cls.__name__} has no name; set the class attribute name = '...' to register it as a {self.kind}."
            )
        if self._classes.get(name, cls) is not cls:
            raise InvalidParameterError(
                f"the {self.kind} name {name!r} is taken by {self._classes[name].__name__}; choose another name."
            )
        self._classes[name] = cls
        return cls

    def get(self, name: object) -> type[T]:  # type: ignore[override]  # raises, with the choices, where Mapping.get gives None
        """The class registered as ``name``."""
        if not isinstance(name, str) or name not in self._classes:
            raise self.error(f"unknown {self.kind} {name!r}; choose one of {', '.join(self._classes)}.")
        return self._classes[name]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._classes

    def __getitem__(self, name: str) -> type[T]:
        return self._classes[name]

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(self._classes))

    def __len__(self) -> int:
        return len(self._classes)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.kind}: {', '.join(self._classes)})"
