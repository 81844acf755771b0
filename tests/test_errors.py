"""Errors: every config path an error message names is a key of the schema; the error classes."""

from __future__ import annotations

import ast
import re
import types
import typing
from pathlib import Path

from pydantic import BaseModel

import kdistill
from kdistill.config import RunConfig
from kdistill.errors import KdistillError, MissingDependencyError

SOURCE = Path(kdistill.__file__).resolve().parent

# A message that opens with a dotted config path and a colon: "data.batch_size: …",
# f"student.from_teacher.layers[{i}]: …". Segments may be placeholders ({}) or carry list indexes.
_SEGMENT = r"(?:[a-z_][a-z0-9_]*|\{\})(?:\[[^\]]*\])*"
_OPENING = re.compile(rf"^([a-z_][a-z0-9_]*(?:\[[^\]]*\])*(?:\.{_SEGMENT})+):(?:\s|$)")
# A path of a section named anywhere in a message ("set training.max_steps"); not a call
# ("teacher.get_input_embeddings()") nor a file name ("student.safetensors").
_MENTION = re.compile(rf"(?<![\w.'/`])((?:data|training|teacher|student|matches|method_args)(?:\[[^\]]*\])*"
                      rf"(?:\.{_SEGMENT})+)(?![\w(])")
_FILES = (".safetensors", ".json", ".yaml", ".pt")

# ``model.path``/``model.factory`` come from the model loaders, which serve the teacher and the
# student alike; ``run.load_model`` rewrites the prefix to ``teacher.`` or ``student.``.
ALIASES = {"model": "teacher"}

# compat/ translates other libraries' configs: its messages name their keys (TextBrewer's
# ``DistillationConfig.temperature``, ``intermediate_matches[0].proj``), not kdistill's.
FOREIGN = ("compat",)


def _text(node: ast.AST) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
    return None


def _docstrings(tree: ast.AST) -> set[int]:
    bodies = [n.body for n in ast.walk(tree) if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef))]
    return {id(b[0].value) for b in bodies if b and isinstance(b[0], ast.Expr)}


def named_paths() -> list[tuple[str, str]]:
    """(where, config path) of every config path a string of src/kdistill names: at its opening
    (followed by ':'), or anywhere for a path into a section (data., training., student. …)."""
    found = []
    for file in sorted(SOURCE.rglob("*.py")):
        if file.relative_to(SOURCE).parts[0] in FOREIGN:
            continue
        tree = ast.parse(file.read_text(encoding="utf-8"))
        skip = _docstrings(tree) | {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
        for node in ast.walk(tree):
            text = None if id(node) in skip else _text(node)
            if not text:
                continue
            where = f"{file.relative_to(SOURCE)}:{node.lineno}"
            opening = _OPENING.match(text)
            paths = {opening.group(1)} if opening else set()
            paths |= {m.group(1).rstrip(".") for m in _MENTION.finditer(text)}
            found += [(where, path) for path in sorted(paths) if not path.endswith(_FILES)]
    return found


def _open(annotation: typing.Any) -> bool:
    """Whether any key may follow a field of this type (a dict, Any, or a union holding one)."""
    if annotation is typing.Any or typing.get_origin(annotation) is dict or annotation is dict:
        return True
    return typing.get_origin(annotation) in (typing.Union, types.UnionType) and any(
        _open(arg) for arg in typing.get_args(annotation))


def _models_in(annotation: typing.Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def exists(path: str) -> bool:
    """Whether ``path`` (``data.batch_size``, ``matches[2].args.temperature``) is a key of RunConfig.

    A placeholder segment ({}) stands for any key; below a dict or Any field every key exists.
    """
    segments = [re.sub(r"\[[^\]]*\]", "", s) for s in path.split(".")]
    segments[0] = ALIASES.get(segments[0], segments[0])
    models: list[type[BaseModel]] = [RunConfig]
    for segment in segments:
        if not models:
            return False
        fields = [(name, info.annotation) for model in models for name, info in model.model_fields.items()
                  if segment in ("{}", name)]
        if not fields:
            return False
        if any(_open(annotation) for _, annotation in fields):
            return True
        models = [m for _, annotation in fields for m in _models_in(annotation)]
    return True


def test_the_path_checker_knows_the_schema():
    assert exists("data.batch_size") and exists("matches[2].args.temperature") and exists("method_args.{}")
    assert exists("student.from_teacher.layers[{}]") and exists("model.path") and exists("training.{}")
    assert not exists("training.batch_size") and not exists("data.bucket_size_multiplier")
    assert not exists("student.layers") and not exists("minilm.version") and not exists("cache.dtype")


def test_every_config_path_an_error_message_names_exists():
    paths = named_paths()
    assert len(paths) > 30  # the scan finds the messages (data.max_length, training.lr_schedule, …)
    missing = [f"{where}: {path}" for where, path in paths if not exists(path)]
    assert not missing, "messages naming config keys that do not exist:\n" + "\n".join(missing)


def test_missing_dependency_error_is_a_kdistill_error_still_importable_from_export():
    from kdistill import export

    assert issubclass(MissingDependencyError, KdistillError) and issubclass(MissingDependencyError, ImportError)
    assert export.MissingDependencyError is MissingDependencyError
