"""One generic registry serving losses, methods and adapters."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from kdistill.errors import ConfigError, unknown_choice

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects. ``get`` also accepts a ``"pkg.module:attr"`` string naming user code.

    >>> LOSSES = Registry("loss")
    >>> @LOSSES.register()
    ... def my_loss(student, teacher): ...
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str | None = None, *, overwrite: bool = False) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            key = name or getattr(obj, "__name__", None)
            if not key:
                raise ValueError(f"cannot register {obj!r} as a {self.kind}: give it a name")
            if key in self._items and not overwrite and self._items[key] is not obj:
                raise ValueError(f"a {self.kind} named '{key}' is already registered")
            self._items[key] = obj
            return obj

        return decorator

    def get(self, name: str, *, path: str = "") -> T:
        """Look ``name`` up, or import it when it is ``"pkg.module:attr"``. ``path`` prefixes errors."""
        where = path or self.kind
        if name in self._items:
            return self._items[name]
        if ":" in name:
            return import_object(name, path=where)
        raise unknown_choice(where, self.kind, name, self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._items.items())

    def names(self) -> list[str]:
        return sorted(self._items)


def import_object(spec: str, *, path: str = "") -> object:
    """Import ``"pkg.module:attr.sub"``. Code runs only where a user names it explicitly like this."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{path}: '{spec}' is not of the form 'package.module:function'.")
    try:
        obj: object = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{path}: cannot import module '{module_name}' named in '{spec}': {exc}.") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{path}: module '{module_name}' has no attribute '{attr}' (from '{spec}').")
        obj = getattr(obj, part)
    return obj
