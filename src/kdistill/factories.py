"""What a config imports and calls: every ``"package.module:function"`` string it names.

A config is code. ``teacher.factory: my_models:build_teacher`` imports ``my_models`` (from the
config's folder and ``python_path``) and calls ``build_teacher``; a loss, projection or method named
this way is imported and called too. ``kdistill validate`` and ``kdistill plan`` list each one with
the file it comes from, and the standard library and builtins are refused
(:func:`kdistill.registry.import_object`).
"""

from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from kdistill.errors import ConfigError
from kdistill.registry import import_object, importable

FACTORY_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


@dataclass(frozen=True)
class Imported:
    """One function a config names. where: its config path; spec: ``module:function``; origin: its file."""

    where: str
    spec: str
    origin: str

    def line(self) -> str:
        return f"{self.spec} ({self.where}) from {self.origin}"


def strings_in(value: Any, where: str) -> Iterator[tuple[str, str]]:
    """(path, text) of every ``module:function`` string nested in ``value`` (e.g. ``method_args``)."""
    if isinstance(value, str) and FACTORY_RE.match(value):
        yield where, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from strings_in(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from strings_in(item, f"{where}[{i}]")


def _origin(obj: object, module_name: str) -> str:
    try:
        source = inspect.getsourcefile(obj)  # where it is defined, also when re-exported
    except TypeError:
        source = None
    return source or getattr(sys.modules.get(module_name), "__file__", None) or f"module '{module_name}'"


def resolve(named: Sequence[tuple[str, str]], python_path: Sequence[str]) -> tuple[list[Imported], list[str]]:
    """Import each ``(path, "module:function")`` as a run would (config folder and ``python_path``
    on ``sys.path``); return what was found and a problem per string that cannot be imported, is
    refused (standard library, builtins) or is not callable."""
    found, problems = [], []
    with importable(list(python_path)):
        for where, spec in named:
            try:
                obj = import_object(spec, path=where)
            except ConfigError as exc:
                problems.append(str(exc))
                continue
            if not callable(obj):
                problems.append(f"{where}: '{spec}' is a {type(obj).__name__}, not a function or class to call.")
                continue
            found.append(Imported(where, spec, _origin(obj, spec.partition(":")[0])))
    return found, problems


def describe(imported: Sequence[Imported]) -> list[str]:
    """Lines for ``validate`` and ``plan``: a heading and one line per function, or a line saying none."""
    if not imported:
        return ["this config imports no code of its own (only kdistill's losses and methods)."]
    return ["this config imports and calls (a config is code):"] + [f"  {item.line()}" for item in imported]


__all__ = ["FACTORY_RE", "Imported", "describe", "resolve", "strings_in"]
