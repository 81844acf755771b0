"""One YAML file = one run: the schema, whole-file validation and ``key=value`` overrides.

    config = load_config("run.yaml", overrides=["training.lr=3e-5", "matches.0.weight=2"])

The file is checked whole before any weight loads: types and unknown keys (pydantic, with
``extra="forbid"`` everywhere), then meaning — loss, method and ref names, loss arguments,
schedules, factory strings, that data files and model folders exist and that the label column is
in each data file's header, and what the model folders' config.json and tokenizer files say (layer
counts, sizes, vocabularies: :mod:`kdistill.model_files`). Every problem is collected into one :class:`ConfigError` listing each
as ``path: problem``, e.g. ``matches[2].loss: unknown loss 'hiden_mse'; did you mean 'hidden_mse'?``.

Relative paths of inputs (data files, model and tokenizer folders, ``python_path``) are read
relative to the config file's folder, so a config travels with its data; ``output_dir`` is
relative to the current directory (default ``runs/<config name>``). Python factories
(``"module:function"``) are imported from the config's folder and ``python_path`` — a config is
code; validation imports each one (never from the standard library) and ``config.imports`` lists
them (:mod:`kdistill.factories`). Hyper-parameters are checked against the ranges their loss or
method declares (:mod:`kdistill.ranges`).
"""

from __future__ import annotations

import csv
import dataclasses
import inspect
import json
import math
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from kdistill.errors import ConfigError, RefError, suggest
from kdistill.factories import FACTORY_RE, Imported, resolve, strings_in
from kdistill.ranges import WEIGHT, Range, argument_problems
from kdistill.model_files import folder_contents, missing_tokenizer, model_problems
from kdistill.refs import LAYER_KINDS, parse_ref

TASKS = ("sequence-classification", "base", "masked-lm")
BUILTIN_DATA = ("movie_reviews", "sms_spam", "digits", "fashion_mnist")
IMAGE_DATA = ("digits", "fashion_mnist")
DATA_FORMATS = ("csv", "tsv", "jsonl", "json", "hf")
PROJECTIONS = ("auto", "linear", "mlp", "none")
LAYER_MAPS = ("uniform", "last", "skip")
ATTENTION_MODES = ("auto", "hooks", "eager")
_BLOCKS_RE = re.compile(r"^[A-Za-z_]\w*(\.\w+)*$")
_EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json",
               ".txt": "txt"}


# ---------------------------------------------------------------------------------------------
# The schema


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class FromTeacherSpec(_Strict):
    """A student built from the teacher: its blocks ``layers`` copied (DistilBERT-style), or a
    randomly initialised model of the teacher's class with ``num_layers`` (and smaller sizes)."""

    layers: list[int] | None = None
    num_layers: int | None = Field(default=None, ge=1)
    hidden_size: int | None = Field(default=None, ge=1)
    intermediate_size: int | None = Field(default=None, ge=1)
    num_attention_heads: int | None = Field(default=None, ge=1)


class FinetuneSpec(_Strict):
    """``teacher.finetune``: train the pretrained base on the run's labels first (kdistill.finetune)."""

    epochs: float = Field(default=3.0, gt=0)
    lr: float = Field(default=5e-5, gt=0)
    warmup: float = Field(default=0.1, ge=0)
    weight_decay: float = Field(default=0.01, ge=0)
    freeze: list[str] = Field(default_factory=list)
    max_steps: int | None = Field(default=None, ge=1)
    seed: int | None = None


class ModelSpec(_Strict):
    """A model: a Hugging Face folder (``path``), a Python factory, or (students) ``from_teacher``."""

    path: str | None = None
    task: Literal["sequence-classification", "base", "masked-lm"] = "sequence-classification"
    num_labels: int | None = Field(default=None, ge=1)
    factory: str | None = None
    args: dict[str, Any] = Field(default_factory=dict)
    from_teacher: FromTeacherSpec | None = None
    finetune: FinetuneSpec | None = None  # teacher only: fine-tune this pretrained base on the run's labels first
    # The block list (dotted module path) that methods copy, drop or replace and layer refs count;
    # needed where kdistill will not pick one (encoder-decoders). A from_teacher student inherits it.
    blocks: str | None = None

    @field_validator("blocks")
    @classmethod
    def _dotted_path(cls, value: str | None) -> str | None:
        if value is not None and not _BLOCKS_RE.match(value):
            raise ValueError("expected the dotted module path of the model's block list, such as 'encoder.block'")
        return value


class MatchSpec(_Strict):
    """One match. ``weight`` and ``args`` values may be schedules (``{schedule: linear, …}``).
    Refs ending in ``.*`` (``hidden.*``, ``attn.*``) expand over the run's ``layer_map``."""

    teacher: str
    student: str | None = None
    loss: str
    weight: Any = 1.0
    args: dict[str, Any] = Field(default_factory=dict)
    projection: str | None = "auto"
    teacher_name: str | None = None
    name: str | None = None
    start: Any = 0
    stop: Any = None


class DataSpec(_Strict):
    """Where examples come from and how they are batched."""

    builtin: Literal["movie_reviews", "sms_spam", "digits", "fashion_mnist"] | None = None
    train: str | None = None
    validation: str | None = None
    test: str | None = None
    path: str | None = None
    split: list[float] | None = None
    seed: int | None = None
    text: Any = "text"
    label: str | None = "label"
    format: Literal["csv", "tsv", "jsonl", "json", "hf"] | None = None
    max_length: int = Field(default=64, ge=1)
    batch_size: int = Field(default=16, ge=1)
    eval_batch_size: int | None = Field(default=None, ge=1)
    tokenizer: str | None = None
    student_tokenizer: str | None = None
    unlabelled: str | None = None
    bucket: bool = True
    limit: int | None = Field(default=None, ge=1)
    missing_text: Literal["error", "skip"] = "error"


class TrainingSpec(_Strict):
    """The fields of :class:`kdistill.train.TrainConfig` (a test keeps the two in step)."""

    lr: float = Field(default=5e-5, gt=0)
    projection_lr: float | None = Field(default=None, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    epochs: int = Field(default=1, ge=1)
    max_steps: int | None = Field(default=None, ge=1)
    warmup: float = Field(default=0.1, ge=0)
    lr_schedule: Literal["linear", "cosine", "constant"] = "linear"
    grad_accum: int = Field(default=1, ge=1)
    max_grad_norm: float | None = Field(default=1.0, gt=0)
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    freeze: list[str] = Field(default_factory=list)
    seed: int | None = None
    log_every: int = Field(default=10, ge=1)
    eval_every: int | None = Field(default=None, ge=1)
    save_every: int | None = Field(default=None, ge=1)
    keep_last: int = Field(default=2, ge=0)
    metric: str = "accuracy"
    greater_is_better: bool = True
    early_stop_patience: int | None = Field(default=None, ge=1)
    on_nonfinite: Literal["stop", "skip"] = "stop"
    progress: bool = True
    tensorboard: bool = True
    layerdrop: float = Field(default=0.0, ge=0, lt=1)
    unpad: bool = False


class _TopLevel(_Strict):
    """The scalar keys of a run (validated together; the sections are validated one by one)."""

    method: str | None = None
    method_args: dict[str, Any] = Field(default_factory=dict)
    layer_map: Any = "uniform"
    hard_label_weight: Any = None
    cache: Literal["teacher"] | None = None
    attention: Literal["auto", "hooks", "eager"] = "auto"
    output_dir: str | None = None
    seed: int = 0
    python_path: list[str] = Field(default_factory=list)
    baseline: bool = False  # also train the student on the labels alone (kdistill.finetune)


class RunConfig(_TopLevel):
    """One run. ``teacher`` and ``data`` are required; ``method`` and/or ``matches`` say what to distil."""

    teacher: ModelSpec
    student: ModelSpec | None = None
    data: DataSpec
    matches: list[MatchSpec] = Field(default_factory=list)
    training: TrainingSpec = Field(default_factory=TrainingSpec)

    # Where the config came from (not part of the config itself).
    _source: str | None = None
    _imports: list[Imported] = PrivateAttr(default_factory=list)

    @property
    def source(self) -> str | None:
        return self._source

    @property
    def imports(self) -> list[Imported]:
        """Every ``module:function`` the config imports and calls, with its config path and file."""
        return list(self._imports)

    def resolved(self) -> dict:
        """Every key with its value after defaults, overrides and path resolution (YAML-ready)."""
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return dump_yaml(self.resolved())

    def train_seed(self) -> int:
        return self.training.seed if self.training.seed is not None else self.seed

    def data_seed(self) -> int:
        return self.data.seed if self.data.seed is not None else self.seed


SECTIONS: dict[str, type[BaseModel]] = {
    "teacher": ModelSpec, "student": ModelSpec, "data": DataSpec, "training": TrainingSpec,
}
TOP_KEYS = sorted(RunConfig.model_fields)


# ---------------------------------------------------------------------------------------------
# YAML


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that reads ``3e-5`` as a float (YAML 1.2) and rejects duplicate keys."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |\.[0-9_]+(?:[eE][-+][0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def _mapping_without_duplicates(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    seen: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(
                None, None, f"the key '{key}' appears twice (the second would silently win)", mark)
        seen[key] = loader.construct_object(value_node, deep=deep)
    return seen


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def parse_yaml(text: str, *, source: str = "<string>") -> Any:
    """YAML text -> Python data (safe: plain data only). Syntax errors name the line and column."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a yaml.SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: not valid YAML: {problem}.") from None


def dump_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=None, width=100)


# ---------------------------------------------------------------------------------------------
# Loading


def load_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> RunConfig:
    """Read a YAML run config, apply ``key=value`` overrides, validate it whole.

    Raises one :class:`ConfigError` listing every problem (``path: problem``); loads no weights.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file '{path}' does not exist.") from None
    except IsADirectoryError:
        raise ConfigError(f"config file '{path}' is a folder; give the YAML file.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file '{path}' cannot be read: {exc}.") from None
    raw = parse_yaml(text, source=str(path))
    if raw is None:
        raise ConfigError(f"config file '{path}' is empty; it needs at least 'teacher', 'data' and a 'method' or 'matches'.")
    return config_from_dict(raw, overrides=overrides, base_dir=path.resolve().parent, source=str(path))


def config_from_dict(raw: Mapping, overrides: Sequence[str] = (), *, base_dir: str | os.PathLike | None = None,
                     source: str | None = None, import_from_base: bool = True) -> RunConfig:
    """Validate a config given as a dict (what ``load_config`` does after reading the YAML).

    Relative input paths are read from ``base_dir`` (default: the current directory), which is also
    put first on ``python_path`` unless ``import_from_base`` is false (a resolved config already
    lists the folders its factories came from).
    """
    where = source or "config"
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: the config must be a mapping of keys (teacher, student, data, …), "
                          f"not a {type(raw).__name__}.")
    raw = _plain(raw)
    base = Path(base_dir).resolve() if base_dir is not None else Path.cwd()
    errors = apply_overrides(raw, overrides)
    config, more = _validate(raw, base, source, import_from_base)
    errors += more
    if errors:
        raise ConfigError(format_problems(errors, source))
    assert config is not None
    config._source = source
    check_data(config)
    return config


def check_data(config: RunConfig) -> None:
    """Read the data files whole (no tokenizer, no weights): a missing text, a label the teacher
    does not know or a label outside the models' classes is a DataError naming the record now,
    not after the models load. Packaged (builtin) sets are checked when the run builds its data."""
    if config.data.builtin is None:
        from kdistill.run_data import read_tables

        read_tables(config)


def format_problems(errors: list[str], source: str | None) -> str:
    count = f"{len(errors)} problem{'s' if len(errors) != 1 else ''}"
    head = f"invalid config {source} ({count}):" if source else f"invalid config ({count}):"
    return "\n".join([head, *(f"  - {e}" for e in errors)])


def _plain(value: Any) -> Any:
    """A deep copy made of dicts and lists (so overrides never touch the caller's data)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------
# Overrides


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


# ---------------------------------------------------------------------------------------------
# Validation


def _hint(value: Any, choices: Sequence[str]) -> str:
    """"; did you mean 'x'?" or "." — always a full stop before the list of choices."""
    return suggest(str(value), choices) or "."


def _join(prefix: str, loc: Sequence[Any]) -> str:
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path = f"{path}.{part}" if path else str(part)
    return path


def _model_at(model: type[BaseModel], loc: Sequence[Any]) -> type[BaseModel] | None:
    schema: Any = model
    for part in loc:
        if isinstance(part, int):
            schema = schema[1] if isinstance(schema, tuple) else None
        elif isinstance(schema, type) and issubclass(schema, BaseModel) and part in schema.model_fields:
            schema = _schema_of(schema.model_fields[part].annotation)
        elif isinstance(schema, tuple) and schema[0] == "dict":
            schema = schema[1]
        else:
            return None
    return schema if isinstance(schema, type) and issubclass(schema, BaseModel) else None


def _literal_choices(model: type[BaseModel], loc: Sequence[Any]) -> list[str]:
    parent = _model_at(model, loc[:-1])
    if parent is None or loc[-1] not in parent.model_fields:
        return []
    annotation = parent.model_fields[loc[-1]].annotation
    found: list[str] = []

    def walk(a: Any) -> None:
        if typing.get_origin(a) is Literal:
            found.extend(str(x) for x in typing.get_args(a))
        for inner in typing.get_args(a):
            if typing.get_origin(a) is not Literal:
                walk(inner)

    walk(annotation)
    return found


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "…"


_TYPE_WORDS = {
    "int_type": "a whole number", "int_parsing": "a whole number", "int_from_float": "a whole number",
    "float_type": "a number", "float_parsing": "a number", "bool_type": "true or false",
    "bool_parsing": "true or false", "string_type": "a string", "list_type": "a list",
    "dict_type": "a mapping of keys", "model_type": "a mapping of keys", "model_attributes_type": "a mapping of keys",
}


def pydantic_problems(exc: ValidationError, prefix: str, model: type[BaseModel]) -> list[str]:
    """pydantic's errors as ``path: problem`` sentences (never its raw dump)."""
    problems = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        path = _join(prefix, loc)
        kind = error["type"]
        value = error.get("input")
        ctx = error.get("ctx") or {}
        if kind == "extra_forbidden":
            parent = _model_at(model, loc[:-1])
            valid = sorted(parent.model_fields) if parent else []
            key = loc[-1]
            problems.append(f"{path}: unknown key '{key}'{_hint(key, valid)} Valid keys: {', '.join(valid)}.")
        elif kind == "missing":
            problems.append(f"{path}: required, but missing.")
        elif kind == "literal_error":
            choices = _literal_choices(model, loc)
            problems.append(f"{path}: {_show(value)} is not a valid choice{_hint(value, choices)} "
                            f"Choose one of: {', '.join(choices)}.")
        elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
            bound = {"greater_than": "greater than", "greater_than_equal": "at least", "less_than": "less than",
                     "less_than_equal": "at most"}[kind]
            limit = next(iter(ctx.values()), "?")
            problems.append(f"{path}: must be {bound} {limit}, got {_show(value)}.")
        elif kind in _TYPE_WORDS:
            problems.append(f"{path}: expected {_TYPE_WORDS[kind]}, got {_show(value)}.")
        else:
            message = str(error.get("msg", kind))
            problems.append(f"{path}: {message[:1].lower()}{message[1:]} (got {_show(value)}).")
    return problems


class _Checker:
    """Meaning checks after the types are right; every problem goes to ``errors``."""

    def __init__(self, base_dir: Path):
        self.base_dir = base_dir
        self.errors: list[str] = []
        self.factories: list[tuple[str, str]] = []  # (config path, "module:function") to import

    def add(self, text: str) -> None:
        self.errors.append(text)

    def resolve(self, value: str) -> Path:
        path = Path(os.path.expanduser(value))
        return path if path.is_absolute() else (self.base_dir / path)

    # ------------------------------------------------------------------ models
    def model(self, spec: ModelSpec, where: str, *, role: str) -> None:
        sources = [key for key in ("path", "factory", "from_teacher") if getattr(spec, key) is not None]
        allowed = ("path", "factory") if role == "teacher" else ("path", "factory", "from_teacher")
        if spec.from_teacher is not None and role == "teacher":
            self.add(f"{where}.from_teacher: only a student can be built from the teacher; give the teacher a "
                     "'path' (a Hugging Face folder) or a 'factory'.")
            sources.remove("from_teacher")
        if not sources:
            self.add(f"{where}: say where the model comes from: one of {', '.join(allowed)}.")
        elif len(sources) > 1:
            self.add(f"{where}: give only one of {', '.join(allowed)}; this has {' and '.join(sources)}.")
        if spec.args and spec.factory is None:
            self.add(f"{where}.args: arguments are passed to a 'factory' only; this model has none.")
        if spec.finetune is not None and (role != "teacher" or spec.path is None
                                          or spec.task != "sequence-classification"):
            self.add(f"{where}.finetune: fine-tunes a teacher given by 'path' (a pretrained Hugging Face folder) as a "
                     "sequence classifier; "
                     + ("a student is trained by the run itself." if role != "teacher" else
                        f"this teacher has {'a factory' if spec.path is None else f'task {spec.task!r}'}."))
        if spec.num_labels is not None and spec.path is None:
            self.add(f"{where}.num_labels: applies to a Hugging Face 'path' (its classifier size); a factory takes "
                     "its sizes in 'args'.")
        if spec.path is not None:
            spec.path = self.model_folder(spec.path, f"{where}.path")
        if spec.factory is not None:
            self.factory(spec.factory, f"{where}.factory")
        if spec.from_teacher is not None:
            self.from_teacher(spec.from_teacher, f"{where}.from_teacher")

    def model_folder(self, value: str, where: str) -> str:
        folder = self.resolve(value)
        if not folder.exists():
            self.add(f"{where}: the model folder '{folder}' does not exist (models load offline, from a folder "
                     "holding config.json and the weights; nothing is downloaded).")
            return str(folder)
        if not folder.is_dir():
            self.add(f"{where}: '{folder}' is a file; give the folder that holds config.json and the weights.")
            return str(folder)
        if not os.access(folder, os.R_OK | os.X_OK):
            self.add(f"{where}: the model folder '{folder}' cannot be read (permission denied).")
            return str(folder)
        config = folder / "config.json"
        if not config.is_file():
            self.add(f"{where}: the folder '{folder}' has no config.json, so it is not a Hugging Face model "
                     f"folder (it holds: {folder_contents(folder)}).")
            return str(folder)
        try:
            json.loads(config.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            self.add(f"{where}: cannot read '{config}': {exc}.")
        except json.JSONDecodeError as exc:
            self.add(f"{where}: '{config}' is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
                     "the model folder is damaged.")
        return str(folder)

    def factory(self, value: str, where: str) -> None:
        """Check the form of a ``module:function`` string; well-formed ones are imported at the end."""
        if not FACTORY_RE.match(value):
            self.add(f"{where}: '{value}' is not of the form 'package.module:function' "
                     "(e.g. 'my_models:build_student').")
        else:
            self.factories.append((where, value))

    def from_teacher(self, spec: FromTeacherSpec, where: str) -> None:
        if (spec.layers is None) == (spec.num_layers is None):
            self.add(f"{where}: give either 'layers' (teacher blocks to copy, e.g. [0, 2, 4]) or 'num_layers' "
                     "(a randomly initialised smaller model), not both or neither.")
        if spec.layers is not None:
            if not spec.layers:
                self.add(f"{where}.layers: give at least one teacher layer to keep.")
            for i, layer in enumerate(spec.layers):
                if layer < 0:
                    self.add(f"{where}.layers[{i}]: {layer} is negative; layers count from 0.")
            sizes = [k for k in ("hidden_size", "intermediate_size", "num_attention_heads") if getattr(spec, k) is not None]
            if sizes:
                self.add(f"{where}: {', '.join(sizes)} apply with 'num_layers' only; copied layers keep the teacher's sizes.")

    # ------------------------------------------------------------------ data
    def data(self, spec: DataSpec, where: str = "data") -> None:
        files = [key for key in ("train", "validation", "test") if getattr(spec, key) is not None]
        sources = (["builtin"] if spec.builtin else []) + (["path"] if spec.path else []) + (["train"] if spec.train else [])
        if not sources:
            if files:
                self.add(f"{where}.train: required when validation/test files are given.")
            else:
                self.add(f"{where}: say where the examples come from: 'train' (with optional 'validation' and "
                         f"'test') files, one 'path' cut by 'split', or 'builtin' ({', '.join(BUILTIN_DATA)}).")
        elif len(sources) > 1:
            self.add(f"{where}: give only one of 'builtin', 'path' or 'train'/'validation'/'test' files; "
                     f"this has {' and '.join(sources)}.")
        elif sources != ["train"]:
            self.cut_data(spec, sources[0], where)
        if spec.split is not None:
            if spec.train is not None:
                self.add(f"{where}.split: applies to 'path' or 'builtin' data, not to separate train/validation/test files.")
            ratios = spec.split
            if len(ratios) not in (2, 3) or any(r < 0 for r in ratios) or not math.isclose(sum(ratios), 1.0, abs_tol=1e-6):
                self.add(f"{where}.split: {ratios} must be two or three non-negative fractions that sum to 1 "
                         "(train, validation[, test]), e.g. [0.8, 0.1, 0.1].")
        text_columns = self.text_columns(spec.text, f"{where}.text")
        image = spec.builtin in IMAGE_DATA
        for key in ("train", "validation", "test", "path"):
            value = getattr(spec, key)
            if value is None:
                continue
            resolved = self.resolve(value)
            setattr(spec, key, str(resolved))
            columns = self.data_file(resolved, f"{where}.{key}", spec.format)
            if columns is None:
                continue
            for column in text_columns or []:
                if column not in columns:
                    self.add(f"{where}.text: no column '{column}' in '{resolved}'{_hint(column, columns)} "
                             f"Columns: {', '.join(columns)}.")
            if spec.label is not None and spec.label not in columns:
                self.add(f"{where}.label: no column '{spec.label}' in '{resolved}'{_hint(spec.label, columns)} "
                         f"Columns: {', '.join(columns)}. (Set 'label: null' for unlabelled data.)")
        if spec.unlabelled is not None:
            resolved = self.resolve(spec.unlabelled)
            spec.unlabelled = str(resolved)
            fmt = None if resolved.suffix.lower() == ".txt" else spec.format
            columns = self.data_file(resolved, f"{where}.unlabelled", fmt)
            if columns is not None and text_columns and text_columns[0] not in columns:
                self.add(f"{where}.unlabelled: no column '{text_columns[0]}' in '{resolved}'"
                         f"{_hint(text_columns[0], columns)} Columns: {', '.join(columns)}. "
                         "(A .txt file holds one text per line.)")
        for key in ("tokenizer", "student_tokenizer"):
            value = getattr(spec, key)
            if value is not None:
                folder = self.resolve(value)
                setattr(spec, key, str(folder))
                if not folder.is_dir():
                    self.add(f"{where}.{key}: the tokenizer folder '{folder}' does not exist.")
                elif missing := missing_tokenizer(folder, f"{where}.{key}"):
                    self.add(missing)
        if image and (spec.tokenizer or spec.student_tokenizer or spec.unlabelled):
            self.add(f"{where}: '{spec.builtin}' holds images; 'tokenizer', 'student_tokenizer' and 'unlabelled' "
                     "apply to text data only.")

    def cut_data(self, spec: DataSpec, source: str, where: str) -> None:
        """Data cut by ``split`` (a ``path`` or a ``builtin`` set): every key it would ignore is an error."""
        if spec.validation is not None:
            self.add(f"{where}.validation: '{source}' data is cut into train/validation by 'split', so a validation "
                     "file would be ignored; remove it, or give 'train', 'validation' and 'test' files instead.")
        if spec.test is not None:
            if source == "builtin":
                self.add(f"{where}.test: a 'builtin' set is cut into train/validation/test by 'split'; a test file "
                         "would be ignored. Give your own 'train'/'validation'/'test' files instead.")
            elif spec.split is not None and len(spec.split) == 3:
                self.add(f"{where}.split: {spec.split} cuts a test split too, but data.test names a test file; give "
                         "two fractions [train, validation] (e.g. [0.9, 0.1]), or drop data.test.")
        if source == "builtin":
            defaults = DataSpec.model_fields
            for key in ("text", "label", "format"):
                if getattr(spec, key) != defaults[key].default:
                    self.add(f"{where}.{key}: the builtin set '{spec.builtin}' has its own columns and format, so "
                             f"'{key}' would be ignored; remove it.")

    def text_columns(self, value: Any, where: str) -> list[str] | None:
        columns = [value] if isinstance(value, str) else value
        if (not isinstance(columns, list) or not 1 <= len(columns) <= 2
                or not all(isinstance(c, str) and c for c in columns)):
            self.add(f"{where}: give one text column name or a list of two (a pair such as "
                     f"[question, sentence]), got {_show(value)}.")
            return None
        return columns

    def data_file(self, path: Path, where: str, format: str | None) -> list[str] | None:
        """The column names of a data file, read from its header (None when it cannot tell)."""
        if not path.exists():
            self.add(f"{where}: the data file '{path}' does not exist.")
            return None
        fmt = format or ("hf" if path.is_dir() else _EXTENSIONS.get(path.suffix.lower()))
        if fmt == "hf":
            if not path.is_dir():
                self.add(f"{where}: format 'hf' needs a dataset folder saved with save_to_disk; '{path}' is a file.")
            return None
        if path.is_dir():
            self.add(f"{where}: '{path}' is a folder; give a data file (or format: hf for a saved dataset).")
            return None
        if fmt is None:
            self.add(f"{where}: cannot tell the format of '{path}' from its extension; set data.format to one "
                     f"of {', '.join(DATA_FORMATS)}.")
            return None
        try:
            with open(path, encoding="utf-8-sig", newline="") as handle:
                head = _first_lines(handle, 2)
        except UnicodeDecodeError:
            self.add(f"{where}: '{path}' is not UTF-8 text; save it as UTF-8.")
            return None
        except OSError as exc:
            self.add(f"{where}: cannot read '{path}': {exc.strerror or exc}.")
            return None
        if not head:
            self.add(f"{where}: the data file '{path}' is empty.")
            return None
        if fmt == "txt":
            return None
        if fmt in ("csv", "tsv"):
            rows = list(csv.reader(head, delimiter="," if fmt == "csv" else "\t"))
            if len(rows) < 2:
                self.add(f"{where}: the data file '{path}' has a header but no records.")
                return None
            return rows[0]
        first = head[0].strip()
        if fmt == "json" and first.startswith("["):
            try:
                records = json.loads(path.read_text(encoding="utf-8-sig"))
            except json.JSONDecodeError as exc:
                self.add(f"{where}: '{path}' is not valid JSON (line {exc.lineno}: {exc.msg}).")
                return None
            if not records:
                self.add(f"{where}: the data file '{path}' holds an empty list.")
                return None
            record = records[0]
        else:
            try:
                record = json.loads(first)
            except json.JSONDecodeError as exc:
                self.add(f"{where}: the first line of '{path}' is not valid JSON ({exc.msg}).")
                return None
        if not isinstance(record, dict):
            self.add(f"{where}: the first record of '{path}' is a JSON {type(record).__name__}, not an object.")
            return None
        return list(record)

    # ------------------------------------------------------------------ matches, methods, schedules
    def scalar(self, value: Any, where: str, *, what: str = "a number", within: Range | None = None) -> Any:
        """A number, or a schedule mapping validated by kdistill.schedules; in ``within`` when given.

        Returns the number or the schedule object, or None after reporting a problem.
        """
        from kdistill.schedules import schedule_from_dict

        if isinstance(value, dict):
            if "schedule" not in value:
                self.add(f"{where}: a mapping here must be a schedule, e.g. {{schedule: linear, start_value: 0.0, "
                         f"end_value: 1.0}}; it has no 'schedule' key.")
                return None
            kind = value["schedule"]
            if not isinstance(kind, str):  # a list or mapping here is not a name (nor hashable)
                self.add(f"{where}.schedule: expected a schedule name such as 'linear', got {_show(kind)}.")
                return None
            try:
                schedule = schedule_from_dict(value, path=where)
                for step in (0, 5, 10):  # the numbers inside must be numbers: try it over a 10-step run
                    if not math.isfinite(schedule(step, 10)):
                        raise ValueError(f"it is {schedule(step, 10)} at step {step}")
            except ConfigError as exc:
                self.add(str(exc).rstrip())
                return None
            except (TypeError, ValueError, ArithmeticError) as exc:
                self.add(f"{where}: the schedule {_show(value)} does not give a number ({exc}); its values and "
                         "steps must be numbers.")
                return None
            value = schedule
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            self.add(f"{where}: expected {what} or a schedule, got {_show(value)}.")
            return None
        problem = within.problem(value, where) if within is not None else None
        if problem:
            self.add(problem)
            return None
        return value

    def arguments(self, function: Any, args: dict, where: str) -> None:
        """``args`` against the ranges ``function`` declares; schedule mappings are checked as schedules."""
        values = {}
        for key, value in args.items():
            if isinstance(value, dict) and "schedule" in value:
                value = self.scalar(value, f"{where}.{key}")
                if value is None:
                    continue
            values[key] = value
        self.errors += argument_problems(function, values, where)

    def loss_args(self, loss: str, args: dict, where: str) -> None:
        from kdistill.losses import LOSSES

        if loss not in LOSSES:
            return
        from kdistill.losses import SUPPLIED_INPUTS, argument_problems

        loss_fn = LOSSES.get(loss)
        self.errors += argument_problems(loss_fn, loss, args, where)
        params = inspect.signature(loss_fn).parameters
        self.arguments(loss_fn, {k: v for k, v in args.items() if k in params and k not in SUPPLIED_INPUTS}, where)

    def match(self, spec: MatchSpec, where: str, layer_map_used: list[bool]) -> None:
        from kdistill.losses import LOSSES

        if spec.loss not in LOSSES and ":" not in spec.loss:
            names = LOSSES.names()
            self.add(f"{where}.loss: unknown loss '{spec.loss}'{_hint(spec.loss, names)} Available: {', '.join(names)}.")
        elif ":" in spec.loss:
            self.factory(spec.loss, f"{where}.loss")
        else:
            self.loss_args(spec.loss, spec.args, f"{where}.args")
        teacher_star = self.ref(spec.teacher, f"{where}.teacher")
        student_star = self.ref(spec.student, f"{where}.student") if spec.student is not None else teacher_star
        if teacher_star != student_star:
            self.add(f"{where}: '.*' refs expand over the layer map, so teacher and student must both use one "
                     f"of the same kind (e.g. teacher: hidden.*, student: hidden.*); got '{spec.teacher}' and '{spec.student}'.")
        elif teacher_star:
            layer_map_used.append(True)
        self.scalar(spec.weight, f"{where}.weight", what="a weight", within=WEIGHT)
        for key in ("start", "stop"):
            value = getattr(spec, key)
            if value is None and key == "stop":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                self.add(f"{where}.{key}: expected a step (a whole number) or a fraction of the run (0.0–1.0), "
                         f"got {_show(value)}.")
        if spec.projection is not None and ":" in spec.projection:
            self.factory(spec.projection, f"{where}.projection")
        elif spec.projection is not None and spec.projection not in PROJECTIONS:
            self.add(f"{where}.projection: unknown projection '{spec.projection}'{_hint(spec.projection, PROJECTIONS)} "
                     f"Available: {', '.join(PROJECTIONS)}, or 'package.module:function' building a module "
                     "from (in_width, out_width).")
        if spec.teacher_name not in (None, "teacher", "ensemble"):
            self.add(f"{where}.teacher_name: no teacher named '{spec.teacher_name}'; this run has one teacher, "
                     "'teacher'.")

    def ref(self, text: str, where: str) -> str | None:
        """Check a ref; return its kind when it is a layer wildcard (``hidden.*``)."""
        if isinstance(text, str) and text.endswith(".*"):
            kind = text[:-2]
            if kind not in LAYER_KINDS:
                self.add(f"{where}: '{text}': only layer refs expand over the layer map: "
                         f"{', '.join(k + '.*' for k in LAYER_KINDS)}{_hint(kind, LAYER_KINDS)}")
                return None
            return kind
        try:
            parse_ref(text, where=where)
        except RefError as exc:
            self.add(str(exc))
        return None

    def layer_map(self, value: Any, where: str = "layer_map") -> None:
        if isinstance(value, str):
            if value not in LAYER_MAPS:
                self.add(f"{where}: unknown layer map '{value}'{_hint(value, LAYER_MAPS)} Available: "
                         f"{', '.join(LAYER_MAPS)}, or a list of [teacher_hidden, student_hidden] pairs.")
            return
        if not isinstance(value, list) or not value:
            self.add(f"{where}: expected one of {', '.join(LAYER_MAPS)} or a list of [teacher_hidden, "
                     f"student_hidden] pairs, got {_show(value)}.")
            return
        for i, pair in enumerate(value):
            if (not isinstance(pair, list) or len(pair) != 2
                    or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in pair)):
                self.add(f"{where}[{i}]: expected [teacher_hidden, student_hidden] (two layer numbers, 0 = "
                         f"embeddings), got {_show(pair)}.")

    def method(self, name: str, args: dict) -> None:
        from kdistill.methods import METHODS

        for where, text in strings_in(args, "method_args"):  # e.g. a loss given as 'my_losses:fn'
            self.factory(text, where)
        if name not in METHODS:
            if ":" in name:
                self.factory(name, "method")
            else:
                names = METHODS.names()
                self.add(f"method: unknown method '{name}'{_hint(name, names)} Available: {', '.join(names)}.")
            return
        try:
            params = inspect.signature(METHODS.get(name)).parameters
        except (TypeError, ValueError):
            return
        takes_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
        valid = [p for p in params if p not in ("teacher", "student") and params[p].kind != params[p].VAR_KEYWORD]
        for key in args:
            if key in ("teacher", "student"):
                self.add(f"method_args.{key}: the models come from the config's 'teacher' and 'student'.")
            elif key not in params and not takes_any:
                self.add(f"method_args.{key}: method '{name}' takes no argument '{key}'{_hint(key, valid)} "
                         f"It takes: {', '.join(valid) or 'none'}.")
        known = {k: v for k, v in args.items() if k in params and k not in ("teacher", "student")}
        self.arguments(METHODS.get(name), known, "method_args")


def _first_lines(handle, count: int) -> list[str]:
    lines = []
    for line in handle:
        if line.strip():
            lines.append(line)
            if len(lines) == count:
                break
    return lines


def _validate(raw: dict, base: Path, source: str | None, import_from_base: bool = True
              ) -> tuple[RunConfig | None, list[str]]:
    errors: list[str] = []
    for key in raw:
        if key not in TOP_KEYS:
            errors.append(f"{key}: unknown key '{key}'{_hint(key, TOP_KEYS)} Valid keys: {', '.join(TOP_KEYS)}.")
    for key in ("teacher", "data"):
        if raw.get(key) is None:
            errors.append(f"{key}: required, but missing.")

    parsed: dict[str, Any] = {}
    for key, model in SECTIONS.items():
        if raw.get(key) is None:
            continue
        try:
            parsed[key] = model.model_validate(raw[key])
        except ValidationError as exc:
            errors += pydantic_problems(exc, key, model)
    top_raw = {k: raw[k] for k in _TopLevel.model_fields if k in raw}
    top = None
    try:
        top = _TopLevel.model_validate(top_raw)
    except ValidationError as exc:
        errors += pydantic_problems(exc, "", _TopLevel)
    matches: list[MatchSpec | None] = []
    raw_matches = raw.get("matches")
    if raw_matches is not None and not isinstance(raw_matches, list):
        errors.append(f"matches: expected a list of matches (each with teacher, student, loss, weight), "
                      f"got {_show(raw_matches)}.")
    else:
        for i, item in enumerate(raw_matches or []):
            try:
                matches.append(MatchSpec.model_validate(item))
            except ValidationError as exc:
                errors += pydantic_problems(exc, f"matches[{i}]", MatchSpec)
                matches.append(None)

    check = _Checker(base)
    if top is not None:
        top.python_path = [str(check.resolve(p)) for p in top.python_path]
        for i, folder in enumerate(top.python_path):
            if not Path(folder).is_dir():
                check.add(f"python_path[{i}]: the folder '{folder}' does not exist.")
        if import_from_base and str(base) not in top.python_path:
            top.python_path.insert(0, str(base))
        if top.method is not None:
            check.method(top.method, top.method_args)
        if top.hard_label_weight is not None:
            check.scalar(top.hard_label_weight, "hard_label_weight", what="a weight", within=WEIGHT)
        if top.output_dir is None:
            stem = Path(source).stem if source else "kdistill"
            top.output_dir = str(Path("runs") / stem)
        top.output_dir = str(Path(os.path.expanduser(top.output_dir)).absolute())
    if "teacher" in parsed:
        check.model(parsed["teacher"], "teacher", role="teacher")
    if "student" in parsed:
        check.model(parsed["student"], "student", role="student")
    if "data" in parsed:
        check.data(parsed["data"])
    layer_map_used: list[bool] = []
    for i, spec in enumerate(matches):
        if spec is not None:
            check.match(spec, f"matches[{i}]", layer_map_used)
    if top is not None and (layer_map_used or "layer_map" in raw):
        check.layer_map(top.layer_map)

    # Checks across sections.
    method = top.method if top is not None else raw.get("method")
    if method is None and not raw_matches:
        check.add("matches: give a 'method' (e.g. method: hinton; see `kdistill methods`) or a list of "
                  "'matches' (see `kdistill losses`) — the run has neither.")
    if raw.get("student") is None and method is None:
        check.add("student: required when no 'method' builds it: a Hugging Face 'path', a 'factory' or "
                  "'from_teacher' (e.g. from_teacher: {layers: [0, 2, 4]}).")
    data, teacher = parsed.get("data"), parsed.get("teacher")
    if data is not None:
        labelled = data.label is not None or data.builtin is not None
        weight = top.hard_label_weight if top is not None else None
        if not labelled and isinstance(weight, (int, float)) and weight:
            check.add("hard_label_weight: is set, but data.label is null (no labels to learn from).")
        if not labelled and teacher is not None and teacher.finetune is not None:
            check.add("teacher.finetune: needs labelled training data, but data.label is null.")
        if not labelled and top is not None and top.baseline:
            check.add("baseline: trains the student on the labels alone, but data.label is null.")
        text_data = data.builtin not in IMAGE_DATA
        if (text_data and teacher is not None and teacher.path is None and data.tokenizer is None
                and (data.builtin or data.train or data.path)):
            check.add("data.tokenizer: the teacher is built by a factory, so name the tokenizer folder for "
                      "the text (data.tokenizer: path/to/folder).")

    imports: list[Imported] = []
    if top is not None:  # a config is code: import what it names now, refusing the standard library
        imports, problems = resolve(check.factories, top.python_path)
        check.errors += problems
    if teacher is not None and data is not None and top is not None:
        # What the model folders' config.json and tokenizer files say (no weights load).
        check.errors += model_problems(teacher, parsed.get("student"), data, [m for m in matches if m is not None],
                                       top.layer_map)

    errors += check.errors
    if errors:
        return None, errors
    assert top is not None
    config = RunConfig.model_validate({
        **top.model_dump(), **parsed, "matches": [m for m in matches if m is not None],
    })
    config._imports = imports
    return config, []


def train_config_fields() -> list[str]:
    """Names of kdistill.train.TrainConfig's fields (the ``training`` section mirrors them)."""
    from kdistill.train import TrainConfig

    return [f.name for f in dataclasses.fields(TrainConfig)]


__all__ = [
    "DataSpec", "FromTeacherSpec", "MatchSpec", "ModelSpec", "RunConfig", "TrainingSpec",
    "apply_overrides", "config_from_dict", "dump_yaml", "format_problems", "load_config", "parse_yaml",
    "pydantic_problems",
]
