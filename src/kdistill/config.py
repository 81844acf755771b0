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

import dataclasses
import os
import re
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from kdistill.config_overrides import _schema_of, apply_overrides
from kdistill.errors import ConfigError, suggest
from kdistill.factories import Imported, resolve
from kdistill.model_files import model_problems

TASKS = ("sequence-classification", "base", "masked-lm", "causal-lm", "token-classification", "embedding",
         "question-answering")
LM_KINDS = ("text", "prompt_completion", "chat")  # data.kind of a causal-LM run (kdistill.lm_data)
BUILTIN_DATA = ("movie_reviews", "sms_spam", "digits", "fashion_mnist", "wnut16")
TAGGED_DATA = ("wnut16",)  # builtin sets of word-level BIO tags (kdistill.conll)
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


class LoraSpec(_Strict):
    """``student.lora``: train low-rank adapters of the student through ``peft`` (:mod:`kdistill.lora`),
    merged into its weights when it is saved. ``target_modules``: module names (``[q_proj, v_proj]``),
    ``all-linear``, or null for peft's default for the model's type."""

    r: int = Field(default=8, ge=1)
    alpha: float = Field(default=16.0, gt=0)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] | None = None


class ModelSpec(_Strict):
    """A model: a Hugging Face folder (``path``), a Python factory, or (students) ``from_teacher``."""

    path: str | None = None
    task: Literal["sequence-classification", "base", "masked-lm", "causal-lm",
                  "token-classification", "embedding", "question-answering"] = "sequence-classification"
    # task: embedding — the sentence embedding's pooling (kdistill.embedding); unset: the folder's
    # sentence-transformers Pooling config, else (student) the teacher's, else mean. Filled by validation.
    pooling: Literal["mean", "cls"] | None = None
    num_labels: int | None = Field(default=None, ge=1)
    factory: str | None = None
    args: dict[str, Any] = Field(default_factory=dict)
    from_teacher: FromTeacherSpec | None = None
    finetune: FinetuneSpec | None = None  # teacher only: fine-tune this pretrained base on the run's labels first
    lora: LoraSpec | None = None  # student only: train LoRA adapters (peft), merged when saved
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

    builtin: Literal["movie_reviews", "sms_spam", "digits", "fashion_mnist", "wnut16"] | None = None
    train: str | None = None
    validation: str | None = None
    test: str | None = None
    path: str | None = None
    split: list[float] | None = None
    seed: int | None = None
    split_seed: int | None = None
    text: Any = "text"
    label: str | None = "label"
    format: Literal["csv", "tsv", "jsonl", "json", "hf"] | None = None
    max_length: int = Field(default=64, ge=1)
    batch_size: int = Field(default=16, ge=1)
    eval_batch_size: int | None = Field(default=None, ge=1)
    tokenizer: str | None = None
    student_tokenizer: str | None = None
    unlabelled: str | None = None
    distil_on: Literal["train", "train+unlabelled"] = "train"
    bucket: bool | int = True  # true: chunks of 50 batches sorted by length; N: chunks of N; false: random
    limit: int | dict[str, int] | None = None

    missing_text: Literal["error", "skip"] = "error"
    # Language-model data (teacher.task: causal-lm; kdistill.lm_data): plain text, prompt/completion
    # columns or chat messages; the loss covers the completion (assistant) tokens only.
    kind: Literal["classification", "text", "prompt_completion", "chat", "conll", "squad"] | None = None
    # conll: word<TAB>tag lines, BIO tags, a blank line between sentences (kdistill.conll); the
    # default data of teacher.task: token-classification.
    # squad: {id, question, context, answers: {text, answer_start}} records (kdistill.squad); the
    # default data of teacher.task: question-answering, cut into windows of max_length tokens that
    # share 'stride' context tokens; answers are at most max_answer_length tokens (kdistill.qa_spans).
    stride: int = Field(default=32, ge=0)
    max_answer_length: int = Field(default=30, ge=1)
    prompt: str = "prompt"
    completion: str = "completion"
    messages: str = "messages"
    pack: bool = False


class TrainingSpec(_Strict):
    """The fields of :class:`kdistill.train.TrainConfig` (a test keeps the two in step)."""

    lr: float = Field(default=5e-5, gt=0)
    projection_lr: float | None = Field(default=None, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    epochs: float = Field(default=1, gt=0)  # fractions allowed: rounded to optimiser steps
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


class CaptureSpec(_Strict):
    """``capture``: the teacher's top-k next-token log-probabilities stored once (:mod:`kdistill.capture`).

    path: the capture's folder (relative to the working directory, like ``output_dir``); k: tokens kept
    per position; loss: how a stage's ``token_kl`` match reads it (``tail``: top-k plus one bucket for
    the rest; ``renormalised``: the top-k renormalised); chunk: examples per resumable chunk;
    batch_size: the teacher's batch (default ``data.eval_batch_size``, else ``data.batch_size``).
    """

    path: str
    k: int = Field(default=128, ge=1)  # measured: docs/speed.md (held-out loss within 2% of the live teacher)
    loss: Literal["tail", "renormalised"] = "tail"
    chunk: int = Field(default=256, ge=1)
    batch_size: int | None = Field(default=None, ge=1)


# On-policy distillation and LoRA students (kdistill.on_policy, kdistill.lora)


class OnPolicySpec(_Strict):
    """``on_policy``: with probability ``lmbda`` a batch's completions are sampled from the student and
    scored by the teacher (GKD; :mod:`kdistill.on_policy`). ``seed``: of the draws and samples (default:
    the training seed)."""

    lmbda: float = Field(default=0.5, ge=0, le=1)
    temperature: float = Field(default=1.0, gt=0)
    max_new_tokens: int = Field(default=128, ge=1)
    seed: int | None = None


class TaskSpec(_Strict):
    """One task of ``tasks:`` (:mod:`kdistill.multitask`): its teacher and its labelled data, each as the
    single-task ``teacher:`` and ``data:`` take them."""

    teacher: ModelSpec
    data: DataSpec


class _TopLevel(_Strict):
    """The scalar keys of a run (validated together; the sections are validated one by one)."""

    method: str | None = None
    method_args: dict[str, Any] = Field(default_factory=dict)
    layer_map: Any = "uniform"
    hard_label_weight: Any = None
    cache: Literal["teacher", "logits"] | None = None
    attention: Literal["auto", "hooks", "eager"] = "auto"
    output_dir: str | None = None
    seed: int = 0
    python_path: list[str] = Field(default_factory=list)
    baseline: bool = False  # also train the student on the labels alone (kdistill.finetune)
    teacher_weights: dict[str, float] | None = None  # teachers: weight of each in 'ensemble' matches (kdistill.teachers)


class RunConfig(_TopLevel):
    """One run. ``teacher`` (or ``teachers``) and ``data`` are required; ``method`` and/or ``matches`` say
    what to distil.

    ``teachers: {name: spec, …}`` instead of ``teacher``: several teachers (:mod:`kdistill.teachers`).
    ``teacher`` is then the *primary* teacher, the first listed — the one that gives the tokenizer, the
    label order, what ``from_teacher`` copies and the teacher row of the evaluation.
    """

    teacher: ModelSpec
    teachers: dict[str, ModelSpec] | None = None
    student: ModelSpec | None = None
    data: DataSpec
    matches: list[MatchSpec] = Field(default_factory=list)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    capture: CaptureSpec | None = None
    on_policy: OnPolicySpec | None = None
    # Several tasks into one student (kdistill.multitask): ``teacher`` and ``data`` are then the first task's.
    tasks: dict[str, TaskSpec] | None = None
    task_sampling: Literal["proportional"] | dict[str, float] = "proportional"

    # Where the config came from (not part of the config itself).
    _source: str | None = None
    _imports: list[Imported] = PrivateAttr(default_factory=list)
    _tables: Any = PrivateAttr(default=None)  # kdistill.run_data.Tables, read once by validation
    _note: str | None = PrivateAttr(default=None)  # how a TextBrewer/KnowledgeDistillation file was converted

    @property
    def conversion_note(self) -> str | None:
        """For a file in TextBrewer's or KnowledgeDistillation's shape: what was converted and the
        native YAML to paste in its place (``kdistill validate/plan/run`` print it); None for native files."""
        return self._note

    @property
    def source(self) -> str | None:
        return self._source

    @property
    def imports(self) -> list[Imported]:
        """Every ``module:function`` the config imports and calls, with its config path and file."""
        return list(self._imports)

    def resolved(self) -> dict:
        """Every key with its value after defaults, overrides and path resolution (YAML-ready). With
        ``teachers`` the primary teacher is not repeated as ``teacher`` (a config says one or the other);
        the keys of several teachers are left out of single-teacher runs (their folders compare equal)."""
        resolved = self.model_dump(mode="json")
        for key in ("teachers", "teacher_weights"):
            if resolved.get(key) is None:
                resolved.pop(key, None)
        if self.tasks is not None:  # each task says its teacher and data
            resolved.pop("teacher"), resolved.pop("data")
            return {"tasks": resolved.pop("tasks"), "task_sampling": resolved.pop("task_sampling"), **resolved}
        resolved.pop("tasks"), resolved.pop("task_sampling")
        if self.teachers is not None:
            resolved.pop("teacher")
        return {"teachers": resolved.pop("teachers"), **resolved} if self.teachers is not None else resolved

    def teacher_specs(self) -> dict[str, ModelSpec]:
        """The run's teachers by name, the primary first: ``teachers``, or ``{"teacher": teacher}``."""
        return dict(self.teachers) if self.teachers is not None else {"teacher": self.teacher}

    def task_config(self, name: str) -> RunConfig:
        """Task ``name`` of ``tasks:`` as a single-task run (its teacher and data; the rest shared)."""
        assert self.tasks is not None
        spec = self.tasks[name]
        config = self.model_copy(update={"teacher": spec.teacher, "data": spec.data, "tasks": None,
                                         "task_sampling": "proportional", "baseline": False})
        config._tables = None  # read from this task's files
        return config

    def to_yaml(self) -> str:
        return dump_yaml(self.resolved())

    def train_seed(self) -> int:
        return self.training.seed if self.training.seed is not None else self.seed

    def data_seed(self) -> int:
        return self.data.seed if self.data.seed is not None else self.seed

    def split_seed(self) -> int:
        """The seed that cuts ``path``/``builtin`` data into splits (``data.split_seed``, else the data seed)."""
        return self.data.split_seed if self.data.split_seed is not None else self.data_seed()

    def lm_kind(self) -> str | None:
        """The language-model data kind of a causal-LM run (``data.kind``, default ``text``), else None."""
        if self.data.kind in LM_KINDS:
            return self.data.kind
        return "text" if self.teacher.task == "causal-lm" and self.data.kind is None else None

    def tagged(self) -> bool:
        """Whether the run tags words (``teacher.task: token-classification``, data read as CoNLL)."""
        return self.teacher.task == "token-classification"

    def answers_questions(self) -> bool:
        """Whether the run answers questions (``teacher.task: question-answering``, data read as SQuAD records)."""
        return self.teacher.task == "question-answering"

    def limit_of(self, split: str) -> int | None:
        """``data.limit`` for ``split``: one number for every split, or a number per split."""
        limit = self.data.limit
        return limit.get(split) if isinstance(limit, dict) else limit


# ``teachers`` (a mapping name -> teacher spec) is read by kdistill.teachers.parse_teachers.
SECTIONS: dict[str, type[BaseModel]] = {
    "teacher": ModelSpec, "student": ModelSpec, "data": DataSpec, "training": TrainingSpec, "capture": CaptureSpec,
}
SECTIONS["on_policy"] = OnPolicySpec
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
    if isinstance(raw.get("data"), Mapping):  # Dataset/DatasetDict objects: saved once, then named by folder
        from kdistill.hf_datasets import materialise_data

        raw = {**raw, "data": materialise_data(raw["data"])}
    raw = _plain(raw)
    from kdistill.compat.yaml_import import detect_and_convert

    converted = detect_and_convert(raw)  # TextBrewer's or KnowledgeDistillation's shapes, as the README says
    note = None
    if converted is not None:
        raw, note = converted
    base = Path(base_dir).resolve() if base_dir is not None else Path.cwd()
    errors = apply_overrides(raw, overrides)
    if "tasks" in raw:  # several tasks into one student: each validated as a single-task run
        from kdistill.multitask import validate_tasks

        config, more = validate_tasks(raw, base, source, import_from_base)
    else:
        config, more = _validate(raw, base, source, import_from_base)
    errors += more
    if errors:
        raise ConfigError(format_problems(errors, source))
    assert config is not None
    config._source = source
    config._note = note
    check_data(config)
    return config


def check_data(config: RunConfig) -> None:
    """Read the data files whole (no tokenizer, no weights): a missing text, a label the teacher
    does not know or a label outside the models' classes is a DataError naming the record now,
    not after the models load. Packaged (builtin) sets are checked when the run builds its data."""
    if config.tasks is not None:
        for name in config.tasks:
            check_data(config.task_config(name))
        return
    if config.tagged():  # word-level tags, a packaged set too (small): every line checked now
        from kdistill.conll import read_tag_tables

        read_tag_tables(config)
    elif config.answers_questions():  # every record's answer checked against its context now
        from kdistill.squad import read_qa_tables

        read_qa_tables(config)
    elif config.data.builtin is None and config.lm_kind() is None:  # LM files: read by the checker
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


def _validate(raw: dict, base: Path, source: str | None, import_from_base: bool = True
              ) -> tuple[RunConfig | None, list[str]]:
    errors: list[str] = []
    for key in raw:
        if key not in TOP_KEYS:
            errors.append(f"{key}: unknown key '{key}'{_hint(key, TOP_KEYS)} Valid keys: {', '.join(TOP_KEYS)}.")
    if "task_sampling" in raw:
        errors.append("task_sampling: weighs the tasks of 'tasks: {name: {teacher, data}, …}'; this config has no "
                      "tasks. Remove it.")
    from kdistill.teachers import parse_teachers, reads_primary, teachers_problems

    raw_teachers, more = parse_teachers(raw)  # teachers: {name: spec}: the first one is read as `teacher`
    errors += more
    if raw.get("data") is None:
        errors.append("data: required, but missing.")

    parsed: dict[str, Any] = {}
    for key, model in SECTIONS.items():
        if raw.get(key) is None:
            continue
        try:
            parsed[key] = model.model_validate(raw[key])
        except ValidationError as exc:
            errors += pydantic_problems(exc, key, model)
    teachers = {}
    for name, spec in raw_teachers.items():
        try:
            teachers[name] = ModelSpec.model_validate(spec)
        except ValidationError as exc:
            errors += pydantic_problems(exc, f"teachers.{name}", ModelSpec)
    if raw_teachers and len(teachers) == len(raw_teachers):
        parsed["teacher"] = next(iter(teachers.values()))
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

    from kdistill.config_checks import Checker

    check = Checker(base)
    if top is not None:
        check.top_level(top, source, import_from_base)
    if teachers:
        for name, spec in teachers.items():
            check.model(spec, f"teachers.{name}", role="teacher")
    elif "teacher" in parsed:
        check.model(parsed["teacher"], "teacher", role="teacher")
    if "student" in parsed:
        check.model(parsed["student"], "student", role="student")
    if "data" in parsed:
        teacher_task = parsed["teacher"].task if "teacher" in parsed else None
        kind = parsed["data"].kind
        causal = teacher_task == "causal-lm"
        check.data(parsed["data"], lm_kind=kind if kind in LM_KINDS else "text" if causal else None,
                   tagged=teacher_task == "token-classification", squad=teacher_task == "question-answering")
        if kind == "chat" and "teacher" in parsed:
            check.chat_template(parsed["data"].tokenizer or parsed["teacher"].path)
    layer_map_used: list[bool] = []
    for i, spec in enumerate(matches):
        if spec is not None:
            check.match(spec, f"matches[{i}]", layer_map_used)
    if top is not None and (layer_map_used or "layer_map" in raw):
        check.layer_map(top.layer_map)

    check.across_sections(top, parsed, raw)
    from kdistill.on_policy import on_policy_problems

    check.errors += on_policy_problems(parsed.get("on_policy"), teacher=parsed.get("teacher"), data=parsed.get("data"),
                                       matches=matches, top=top, training=parsed.get("training"),
                                       capture=parsed.get("capture"))
    data, teacher = parsed.get("data"), parsed.get("teacher")
    if teacher is not None:
        check.errors += teachers_problems(teachers or {"teacher": teacher}, top, matches, data,
                                          several=bool(raw_teachers), parsed=parsed)

    imports: list[Imported] = []
    if top is not None:  # a config is code: import what it names now, refusing the standard library
        imports, problems = resolve(check.factories, top.python_path)
        check.errors += problems
    if teacher is not None and data is not None and top is not None:
        # What the model folders' config.json and tokenizer files say (no weights load).
        # Refs of matches that read another teacher are checked against it when the run builds.
        check.errors += model_problems(teacher, parsed.get("student"), data,
                                       [m for m in matches if m is not None and reads_primary(m, teachers)],
                                       top.layer_map)
        if teacher.task == "causal-lm" and top.method is not None:
            from kdistill.methods.decoders import causal_lm_method_problems

            check.errors += causal_lm_method_problems(top.method, top.method_args, teacher_path=teacher.path,
                                                      has_unlabelled=data.unlabelled is not None)

    from kdistill.embedding_checks import embedding_problems

    check.errors += embedding_problems(teacher, parsed.get("student"), data, matches, top)
    errors += check.errors
    if errors:
        return None, errors
    assert top is not None
    config = RunConfig.model_validate({
        **top.model_dump(), **parsed, "matches": [m for m in matches if m is not None],
        "teachers": teachers or None,
    })
    config._imports = imports
    return config, []


def train_config_fields() -> list[str]:
    """Names of kdistill.train.TrainConfig's fields (the ``training`` section mirrors them)."""
    from kdistill.train import TrainConfig

    return [f.name for f in dataclasses.fields(TrainConfig)]


__all__ = [
    "CaptureSpec", "DataSpec", "FromTeacherSpec", "LoraSpec", "MatchSpec", "ModelSpec", "OnPolicySpec", "RunConfig",
    "TaskSpec", "TrainingSpec",
    "apply_overrides", "config_from_dict", "dump_yaml", "format_problems", "load_config", "parse_yaml",
    "pydantic_problems",
]
