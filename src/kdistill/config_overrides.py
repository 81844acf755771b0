"""``key=value`` overrides of a run config, by dotted path, checked against the schema as they are set:

    problems = apply_overrides(raw, ["training.lr=3e-5", "matches.0.weight=2"])

Values are read as YAML scalars; a path the schema does not have is a problem with a suggestion.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Sequence
from typing import Any, Union

from pydantic import BaseModel

from kdistill.errors import ConfigError

_ANY = object()


def _schema_of(annotation: Any) -> Any:
    """Reduce a field annotation to: a BaseModel class, ("list", item), ("dict", value) or _ANY."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        schemas = [_schema_of(a) for a in options]
        for schema in schemas:
            if isinstance(schema, type) and issubclass(schema, BaseModel):
                return schema
        return schemas[0] if len(schemas) == 1 else _ANY
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if origin is list:
        (item,) = typing.get_args(annotation) or (Any,)
        return ("list", _schema_of(item))
    if origin is dict:
        args = typing.get_args(annotation)
        return ("dict", _schema_of(args[1]) if len(args) == 2 else _ANY)
    return _ANY


def _leaf(schema: Any) -> bool:
    return schema is _ANY


def apply_overrides(raw: dict, overrides: Sequence[str]) -> list[str]:
    """Set ``a.b.0.c=value`` in ``raw`` (values parsed as YAML scalars); return problems found."""
    from kdistill.config import parse_yaml

    errors = []
    for item in overrides:
        key, sep, text = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            errors.append(f"override '{item}': expected KEY=VALUE, e.g. 'training.lr=3e-5' or 'matches.0.weight=2'.")
            continue
        if any(not part.strip() for part in key.split(".")):
            errors.append(f"override '{item}': '{key}' has an empty name between its dots; write a dotted path "
                          "such as 'training.lr' or 'matches.0.weight'.")
            continue
        try:
            value = parse_yaml(text, source=f"override '{item}'")
        except ConfigError as exc:
            errors.append(str(exc))
            continue
        problem = _set_path(raw, key.split("."), value, item)
        if problem:
            errors.append(problem)
    return errors


def _set_path(raw: dict, parts: list[str], value: Any, item: str) -> str | None:
    from kdistill.config import TOP_KEYS, RunConfig, _hint

    node: Any = raw
    schema: Any = RunConfig
    done: list[str] = []
    for position, part in enumerate(parts):
        last = position == len(parts) - 1
        here = ".".join(done + [part])
        origin = f" (from the override '{item}')"
        if (not isinstance(node, dict) and not (isinstance(schema, tuple) and schema[0] == "list")
                and not _leaf(schema)):  # the config has a list where a mapping belongs
            return f"{here}: '{'.'.join(done)}' is a {type(node).__name__} here, not a mapping of keys{origin}."
        if isinstance(schema, type) and issubclass(schema, BaseModel):
            fields = sorted(schema.model_fields)
            if schema is RunConfig:
                fields = TOP_KEYS
            if part not in fields:
                return f"{here}: unknown key '{part}'{origin}{_hint(part, fields)} Valid keys: {', '.join(fields)}."
            child = _schema_of(schema.model_fields[part].annotation)
            key: Any = part
        elif isinstance(schema, tuple) and schema[0] == "list" or (_leaf(schema) and isinstance(node, list)):
            if not isinstance(node, list):
                return f"{here}: '{'.'.join(done)}' is not a list here{origin}."
            if not re.fullmatch(r"-?\d+", part):
                return f"{here}: '{part}' is not a list index{origin}; use a number, e.g. '{'.'.join(done)}.0'."
            index = int(part)
            if not -len(node) <= index < len(node):
                return (f"{here}: index {index} is out of range{origin}: '{'.'.join(done)}' has "
                        f"{len(node)} item{'s' if len(node) != 1 else ''}.")
            key = index
            child = schema[1] if isinstance(schema, tuple) else _ANY
        elif isinstance(schema, tuple) and schema[0] == "dict" or _leaf(schema):
            if _leaf(schema) and not isinstance(node, dict):
                return f"{here}: '{'.'.join(done)}' holds a single value, so it has no key '{part}'{origin}."
            key = part
            child = schema[1] if isinstance(schema, tuple) else _ANY
        else:  # pragma: no cover - every schema kind is handled above
            return f"{here}: cannot be overridden{origin}."
        if last:
            node[key] = value
            return None
        following = parts[position + 1]
        if isinstance(key, str) and (key not in node or node[key] is None):
            if isinstance(child, tuple) and child[0] == "list":
                return f"{here}: is not in the config, so it has no item '{following}'{origin}."
            if _leaf(child):
                return f"{here}.{following}: '{here}' holds a single value, so it has no key '{following}'{origin}."
            node[key] = {}
        node = node[key]
        if not isinstance(node, (dict, list)):
            return f"{here}.{following}: '{here}' holds a single value, so it has no key '{following}'{origin}."
        schema = child
        done.append(part)
    return None


__all__ = ["apply_overrides"]
