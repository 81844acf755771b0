"""One generic registry serving losses, methods and adapters, and the import of user code by name.

A config is code: ``"package.module:function"`` strings are imported and called. Functions of the
Python standard library and builtins are refused (``os:system`` would run a shell command from a
YAML file); your own modules and third-party libraries (torch, transformers) are not.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

from kdistill import ranges as _ranges
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

    def register(self, name: str | None = None, *, overwrite: bool = False,
                 ranges: Mapping[str, _ranges.Range] | None = None) -> Callable[[T], T]:
        """Register under ``name`` (default: the object's ``__name__``). ``ranges``: parameter name ->
        :class:`kdistill.ranges.Range`, checked by ``kdistill validate`` and before every call."""
        def decorator(obj: T) -> T:
            key = name or getattr(obj, "__name__", None)
            if not key:
                raise ConfigError(f"cannot register {obj!r} as a {self.kind}: it has no __name__; give it one "
                                  f"with register(name=...).")
            existing = self._items.get(key)
            if existing is not None and not overwrite and existing is not obj:
                raise ConfigError(f"a {self.kind} named '{key}' is already registered ({_origin(existing)}); choose "
                                  f"another name, or pass overwrite=True to replace it.")
            if ranges:
                _ranges.declare(obj, ranges)
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


def _origin(obj: object) -> str:
    """Where a registered object was defined, e.g. ``kdistill.losses.logits.kl``."""
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}"


def is_standard_library(module: str) -> bool:
    """Whether a module name (``os.path``, ``builtins``, ``posix``) belongs to Python itself."""
    return module.partition(".")[0] in sys.stdlib_module_names


def import_object(spec: str, *, path: str = "") -> object:
    """Import ``"pkg.module:attr.sub"``. Code runs only where a user names it explicitly like this.

    Refuses the standard library and builtins, also when a user module re-exports one of their
    functions (``mymod:system`` after ``from os import system``).
    """
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{path}: '{spec}' is not of the form 'package.module:function'.")
    refusal = ("a config may import only your own modules and third-party libraries (a config is code: "
               "'os:system' would run a shell command); wrap the call in a function of your own module if you mean it")
    if is_standard_library(module_name):
        raise ConfigError(f"{path}: '{spec}' is in the Python standard library ('{module_name}'); {refusal}.")
    try:
        obj: object = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{path}: cannot import module '{module_name}' named in '{spec}': {exc}.") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{path}: module '{module_name}' has no attribute '{attr}' (from '{spec}').")
        obj = getattr(obj, part)
    owner = getattr(obj, "__module__", None)
    if isinstance(owner, str) and is_standard_library(owner):
        name = getattr(obj, "__qualname__", None) or type(obj).__name__
        raise ConfigError(f"{path}: '{spec}' is {owner}.{name} of the Python standard library, re-exported by "
                          f"'{module_name}'; {refusal}.")
    return obj


@contextlib.contextmanager
def importable(folders: list[str]) -> Iterator[None]:
    """Make the config's folder (and ``python_path``) importable while factories are resolved."""
    added = [f for f in folders if f not in sys.path]
    sys.path[:0] = added
    try:
        yield
    finally:
        for folder in added:
            with contextlib.suppress(ValueError):
                sys.path.remove(folder)
