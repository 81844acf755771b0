"""Several tasks into one student (TextBrewer's MultiTaskDistiller): ``tasks: {name: {teacher, data}}``.

    tasks:
      movie: {teacher: {path: ./movie-teacher}, data: {builtin: movie_reviews, split: [0.8, 0.1, 0.1]}}
      sms:   {teacher: {path: ./sms-teacher},   data: {builtin: sms_spam, split: [0.8, 0.1, 0.1]}}
    task_sampling: proportional          # or {movie: 1, sms: 1}: given weights, normalised
    student: {from_teacher: {layers: [0, 2, 4]}}
    method: hinton

The rules (checked at ``validate``, before any weight loads, unless said otherwise):

- Each task is a sentence-classification run of its own (``teacher`` and ``data`` as a single-task config
  takes them; every other key is shared) and is validated as one; its problems are named
  ``tasks.<name>.teacher…`` / ``tasks.<name>.data…``. ``tasks`` replaces ``teacher``, ``teachers`` and
  ``data``. Not with ``cache``, ``capture`` or ``on_policy`` (for now); a task's teacher has
  ``task: sequence-classification``, its data is ``movie_reviews``, ``sms_spam`` or CSV/JSONL files.
- The student is one encoder shared by every task and one classification head per task:
  ``student: {from_teacher: {layers: […]}}`` copies the *first* task's teacher's embeddings and blocks;
  each task's head starts as its own teacher's head when the widths match, else fresh (the plan says
  which). Every task's teacher reads the same token ids: the tasks' tokenizers must have one vocabulary.
- Each training batch comes from one task, drawn by ``task_sampling`` from a generator seeded by
  ``data.seed`` (the draw of batch ``i`` of epoch ``e`` depends on (seed, e, i) only, so a resumed run
  draws the same): ``proportional`` to the tasks' training examples, or the given weights (≥ 0,
  normalised). The task's next batch (each task walks through its own epochs in turn) goes to its
  teacher and its head only; the loss is the method's, per task. An epoch is the sum of the tasks'
  training batches.
- The method (and ``matches``) is applied to each task with that task's teacher; one stage only.
- ``baseline: true``: the same multi-task student as built (a copy) trained on the labels alone, with the
  same batches, settings and seed (``baseline/``, its folders ``baseline/student/<task>/``).
- Evaluated per task (teacher, student and baseline: accuracy, macro-F1, agreement); ``summary.json`` has one
  entry per task under ``tasks`` and ``report.md`` one row per task. The student is saved as one
  Hugging Face folder per task, ``student/<task>/`` (AutoModelForSequenceClassification), each a whole
  model carrying the shared encoder's weights, so each works alone.
"""

from __future__ import annotations

import bisect
import copy
import json
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Sampler

from kdistill.errors import ConfigError, suggest

PROPORTIONAL = "proportional"
TASK_KEYS = ("teacher", "data")
SENTENCE_DATA = ("movie_reviews", "sms_spam")
# Keys a multi-task run refuses for now: each stores or scores one teacher's outputs, or trains one student.
UNSUPPORTED = ("cache", "capture", "on_policy", "teachers", "teacher_weights")


# ---------------------------------------------------------------------------------------------
# Validation (no weights)


def validate_tasks(raw: Mapping, base: Path, source: str | None, import_from_base: bool = True
                   ) -> tuple[Any, list[str]]:
    """A config with ``tasks``: each task validated as a single-task run (its teacher and data, the rest
    shared), then what ties them together; (the RunConfig, []) or (None, every problem)."""
    from kdistill.config import TaskSpec, _validate
    from kdistill.teachers import _NAME

    problems: list[str] = []
    for key in ("teacher", "teachers", "data"):
        if raw.get(key) is not None:
            problems.append(f"{key}: with 'tasks' each task gives its own teacher and data (tasks.<name>.teacher, "
                            f"tasks.<name>.data); remove the top-level '{key}'.")
    tasks = raw.get("tasks")
    if not isinstance(tasks, Mapping) or not tasks:
        return None, problems + [f"tasks: expected a mapping name -> {{teacher: …, data: …}}, such as {{movie: "
                                 f"{{teacher: {{path: ./t}}, data: {{builtin: movie_reviews}}}}}}, got {tasks!r}."]
    usable = {}
    for name, spec in tasks.items():
        if not isinstance(name, str) or not _NAME.match(name):
            problems.append(f"tasks: {name!r} cannot name a task (it names the student's folder student/<task>/): "
                            "use letters, digits, '_' and '-', starting with a letter.")
            continue
        if not isinstance(spec, Mapping):
            problems.append(f"tasks.{name}: expected a mapping {{teacher: …, data: …}}, got {spec!r}.")
            continue
        for key in spec:
            if key not in TASK_KEYS:
                problems.append(f"tasks.{name}: unknown key '{key}'{suggest(str(key), TASK_KEYS) or '.'} "
                                f"Valid keys: {', '.join(TASK_KEYS)}.")
        missing = [key for key in TASK_KEYS if spec.get(key) is None]
        problems += [f"tasks.{name}.{key}: required, but missing (each task has its own {key})." for key in missing]
        if not missing:
            usable[name] = spec
    names = [name for name in tasks if isinstance(name, str)]
    problems += sampling_problems(raw.get("task_sampling", PROPORTIONAL), names)
    problems += _scope_problems(raw)
    shared = {key: value for key, value in raw.items() if key not in ("tasks", "task_sampling", *TASK_KEYS)}
    shared, task_metric = _task_metric(shared, names, problems)
    configs = {}
    for name, spec in usable.items():
        problems += _task_scope_problems(name, spec)
        config, found = _validate({**shared, "teacher": spec["teacher"], "data": spec["data"]}, base, source,
                                  import_from_base)
        problems += [_task_path(problem, name) for problem in found]
        if config is not None:
            configs[name] = config
    if len(configs) == len(tasks):
        problems += _tokenizer_problems(configs)
    problems = list(dict.fromkeys(problems))  # a shared key's problem is found once per task
    if problems:
        return None, problems
    first_name, first = next(iter(configs.items()))
    if task_metric is not None:
        first = first.model_copy(update={"training": first.training.model_copy(update={"metric": task_metric})})
    config = first.model_copy(update={
        "tasks": {name: TaskSpec(teacher=c.teacher, data=c.data) for name, c in configs.items()},
        "task_sampling": raw.get("task_sampling", PROPORTIONAL)})
    config._imports = [replace(found, where=_task_path(found.where, name)) for name, c in configs.items()
                       for found in c.imports if name == first_name or _task_path(found.where, name) != found.where]
    return config, []


def _task_metric(shared: dict, names: list[str], problems: list[str]) -> tuple[dict, str | None]:
    """``training.metric: <task>/<figure>`` (one task's validation figure) checked here, where the task names
    are known; the shared keys each task is validated with then carry the figure alone."""
    from kdistill.config_checks import TRAINING_METRICS

    training = shared.get("training")
    metric = training.get("metric") if isinstance(training, Mapping) else None
    figures = TRAINING_METRICS["sequence-classification"]
    if not isinstance(metric, str) or metric in figures:  # the means over the tasks (or no metric)
        return shared, None
    task, _, figure = metric.partition("/")
    if task in names and figure in figures:
        return {**shared, "training": {**training, "metric": figure}}, metric
    problems.append(f"training.metric: '{metric}' is no figure of the tasks' validation, so the best step would "
                    f"never be kept; choose one of {', '.join([*figures, *(f'{n}/{f}' for n in names for f in figures)])}.")
    return {**shared, "training": {k: v for k, v in training.items() if k != "metric"}}, None


def _task_path(problem: str, name: str) -> str:
    """A single-task problem ``teacher.path: …`` / ``data.train: …`` as task ``name``'s."""
    for key in TASK_KEYS:
        if problem.startswith(key) and problem[len(key):len(key) + 1] in (".", ":", "["):
            return f"tasks.{name}.{problem}"
    return problem


def sampling_problems(sampling: Any, names: Sequence[str]) -> list[str]:
    """``task_sampling``: ``proportional`` or a weight ≥ 0 for every task, not all 0."""
    if sampling == PROPORTIONAL:
        return []
    if not isinstance(sampling, Mapping):
        return [f"task_sampling: {sampling!r} is not a valid choice; give 'proportional' (to the tasks' training "
                f"examples) or a weight per task, such as {{{', '.join(f'{n}: 1' for n in names)}}}."]
    problems = [f"task_sampling.{name}: no task named '{name}'{suggest(str(name), names) or '.'} "
                f"Tasks: {', '.join(names)}." for name in sampling if name not in names]
    missing = [name for name in names if name not in sampling]
    if missing:
        problems.append(f"task_sampling: no weight for {', '.join(repr(n) for n in missing)}; give one for every task "
                        f"({', '.join(names)}), 0 to train a task's head not at all.")
    for name, value in sampling.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
            problems.append(f"task_sampling.{name}: expected a weight ≥ 0, got {value!r}.")
    if not problems and sum(sampling.values()) <= 0:
        problems.append("task_sampling: the weights sum to 0; give at least one task a positive weight.")
    return problems


def _scope_problems(raw: Mapping) -> list[str]:
    problems = [f"{key}: not with 'tasks' (several tasks into one student) for now; remove '{key}'."
                for key in UNSUPPORTED if raw.get(key) is not None and key != "teachers"]
    student = raw.get("student")
    layers = student.get("from_teacher", {}).get("layers") if isinstance(student, Mapping) and isinstance(
        student.get("from_teacher"), Mapping) else None
    other = [key for key in ("path", "factory", "lora") if isinstance(student, Mapping) and student.get(key)]
    if not isinstance(student, Mapping) or other or layers is None:
        problems.append(f"student: with 'tasks' the student is the first task's teacher's blocks, {{from_teacher: "
                        f"{{layers: [0, 2, 4]}}}} (an encoder shared by the tasks, a head per task); got {student!r}.")
    return problems


def _task_scope_problems(name: str, spec: Mapping) -> list[str]:
    """What a task of a multi-task run may be (read from the task's raw ``teacher`` and ``data``, so it is said
    even when the task has other problems): sentence classification from a packaged set or files."""
    teacher = spec["teacher"] if isinstance(spec["teacher"], Mapping) else {}
    data = spec["data"] if isinstance(spec["data"], Mapping) else {}
    problems = []
    task = teacher.get("task") or "sequence-classification"
    if task != "sequence-classification":
        problems.append(f"tasks.{name}.teacher.task: '{task}' is not a task of a multi-task run; the tasks are "
                        "sentence classifications (task: sequence-classification).")
    builtin = data.get("builtin")
    if builtin is not None and builtin not in SENTENCE_DATA:
        problems.append(f"tasks.{name}.data.builtin: '{builtin}' is not sentence classification; choose one of: "
                        f"{', '.join(SENTENCE_DATA)}, or give files.")
    if data.get("kind") not in (None, "classification"):
        problems.append(f"tasks.{name}.data.kind: '{data['kind']}' is not sentence classification; remove it.")
    if data.get("unlabelled") is not None:
        problems.append(f"tasks.{name}.data.unlabelled: not with 'tasks' for now; remove it.")
    if data.get("student_tokenizer") is not None:
        problems.append(f"tasks.{name}.data.student_tokenizer: the shared student reads the teachers' tokens; "
                        "remove it.")
    return problems


def _tokenizer_problems(configs: Mapping[str, Any]) -> list[str]:
    """Every task's text is tokenised for the one student: the tasks' tokenizers (``data.tokenizer``, else
    the teacher's folder) must hold one vocabulary (their files are read; no weights)."""
    from kdistill.model_files import _Vocabularies

    vocabularies = _Vocabularies()
    (first, first_config), *others = configs.items()

    def source(name: str, config: Any) -> tuple[str | None, str]:
        if config.data.tokenizer is not None:
            return config.data.tokenizer, f"tasks.{name}.data.tokenizer"
        return config.teacher.path, f"tasks.{name}.teacher.path"

    theirs_path, theirs_where = source(first, first_config)
    problems: list[str] = []
    for name, config in others:
        mine_path, mine_where = source(name, config)
        if mine_path is None or theirs_path is None or mine_path == theirs_path:
            continue
        mine, theirs = vocabularies.get(mine_path, mine_where), vocabularies.get(theirs_path, theirs_where)
        if mine is not None and theirs is not None and mine != theirs:
            differing = len(set(mine.items()) ^ set(theirs.items()))
            problems.append(f"{mine_where}: its tokenizer ({len(mine):,} tokens) differs from task '{first}''s "
                            f"({len(theirs):,} tokens; {differing:,} token/id pairs differ), but the student has one "
                            "tokenizer. Use teachers trained with one tokenizer.")
    return problems + vocabularies.problems


# ---------------------------------------------------------------------------------------------
# Which task each batch comes from


def task_probabilities(sampling: Any, sizes: Mapping[str, int]) -> dict[str, float]:
    """The chance of each task per batch: ``proportional`` to ``sizes`` (training examples), or the given
    weights normalised."""
    weights = dict(sizes) if sampling == PROPORTIONAL else {name: float(sampling[name]) for name in sizes}
    total = float(sum(weights.values()))
    if total <= 0:
        raise ConfigError(f"task_sampling: the tasks' weights sum to 0 ({weights}); give a task a positive weight.")
    return {name: weight / total for name, weight in weights.items()}


def draw_tasks(probabilities: Sequence[float], *, seed: int, epoch: int, count: int) -> np.ndarray:
    """The task index of each of the ``count`` batches of ``epoch``: batch ``i``'s draw depends on
    (seed, epoch, i) only (one uniform number per batch from a generator seeded by (seed, epoch))."""
    uniform = np.random.default_rng([seed, epoch, 0x7A5C]).random(count)
    edges = np.cumsum(np.asarray(probabilities, dtype=np.float64))
    edges[-1] = 1.0 + 1e-12  # rounding never leaves a draw past the last task
    return np.searchsorted(edges, uniform, side="right")


class TaskBatchSampler(Sampler[list[int]]):
    """Batches of one task each over the tasks' training sets joined (:class:`TaskDataset`).

    ``samplers``: each task's own batch sampler (``set_epoch``-able, indices into its set); an epoch has
    the sum of their batches; batch ``i`` of epoch ``e`` is from the task :func:`draw_tasks` gives, and is
    that task's next batch, each task walking through its own epochs in turn (a task drawn more often
    than it has batches starts its next epoch). Deterministic given (seed, epoch): a resumed run skips
    the batches already seen and continues the same draw.
    """

    def __init__(self, samplers: Sequence[Any], offsets: Sequence[int], probabilities: Sequence[float], *,
                 seed: int):
        self.samplers = list(samplers)
        self.offsets = list(offsets)
        self.probabilities = list(probabilities)
        self.seed = seed
        self.epoch = 0
        self.batch_size = getattr(self.samplers[0], "batch_size", None)
        self.task_batches = [len(s) for s in self.samplers]  # a task's batches in one of its own epochs

    def __len__(self) -> int:
        return sum(self.task_batches)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def tasks(self, epoch: int | None = None) -> np.ndarray:
        """The task index of each batch of ``epoch`` (default: the current one)."""
        return draw_tasks(self.probabilities, seed=self.seed, epoch=self.epoch if epoch is None else epoch,
                          count=len(self))

    def __iter__(self) -> Iterator[list[int]]:
        before = np.zeros(len(self.samplers), dtype=np.int64)  # each task's batches drawn in earlier epochs
        for epoch in range(self.epoch):
            before += np.bincount(self.tasks(epoch), minlength=len(self.samplers))
        streams = [self._stream(task, int(start)) for task, start in enumerate(before)]
        for task in self.tasks():
            yield [self.offsets[task] + index for index in next(streams[task])]

    def _stream(self, task: int, start: int) -> Iterator[list[int]]:
        """Task ``task``'s batches from its ``start``-th on, through its own epochs in turn."""
        sampler, per_epoch = self.samplers[task], self.task_batches[task]
        own_epoch, skip = divmod(start, per_epoch)
        while True:
            sampler.set_epoch(own_epoch)
            for position, batch in enumerate(list(sampler)):
                if position >= skip:
                    yield batch
            own_epoch, skip = own_epoch + 1, 0


class TaskDataset(ConcatDataset):
    """The tasks' training sets joined; an example is ``(task index, example)``."""

    def __getitem__(self, index: int) -> tuple[int, Any]:
        task = bisect.bisect_right(self.cumulative_sizes, index)
        return task, super().__getitem__(index)


@dataclass
class TaskCollate:
    """Collate a batch of one task with that task's collation; the batch says its task (``batch['task']``)."""

    names: list[str]
    collates: list[Any]

    def __call__(self, examples: Sequence[tuple[int, Any]]) -> dict[str, Any]:
        tasks = {task for task, _example in examples}
        if len(tasks) != 1:
            raise ValueError(f"a multi-task batch mixes tasks {sorted(tasks)}; each batch holds one task.")
        task = tasks.pop()
        return {**self.collates[task]([example for _task, example in examples]), "task": self.names[task]}


def task_loader(loaders: Mapping[str, DataLoader], probabilities: Mapping[str, float], *, seed: int) -> DataLoader:
    """One training loader over the tasks' loaders (name -> its training DataLoader): batches of one task
    each, drawn by ``probabilities`` (:class:`TaskBatchSampler`)."""
    names = list(loaders)
    datasets = [loaders[name].dataset for name in names]
    joined = TaskDataset(datasets)
    offsets = [0, *joined.cumulative_sizes[:-1]]
    sampler = TaskBatchSampler([loaders[name].batch_sampler for name in names], offsets,
                               [probabilities[name] for name in names], seed=seed)
    collate = TaskCollate(names, [loaders[name].collate_fn for name in names])
    return DataLoader(joined, batch_sampler=sampler, collate_fn=collate)


# ---------------------------------------------------------------------------------------------
# The student: one encoder, a head per task


class MultiTaskStudent(nn.Module):
    """One Hugging Face classifier per task (``heads[name]``), all holding the same encoder module (their
    ``base_model_prefix`` attribute): each is a whole model that saves and loads alone."""

    def __init__(self, models: Mapping[str, nn.Module]):
        super().__init__()
        self.heads = nn.ModuleDict(dict(models))

    def forward(self, *args: Any, task: str, **kwargs: Any) -> Any:
        return self.heads[task](*args, **kwargs)


def share_encoder(first: nn.Module, student: nn.Module, *, seed: int) -> tuple[nn.Module, str]:
    """A classifier of ``first``'s class and sizes with ``student``'s labels, holding ``first``'s encoder
    module (shared, not copied) and ``student``'s head when its shapes fit, else a fresh one (seeded);
    and how its head began."""
    prefix = first.base_model_prefix
    config = copy.deepcopy(first.config)
    for key in ("num_labels", "id2label", "label2id", "problem_type"):
        if hasattr(student.config, key):
            setattr(config, key, copy.deepcopy(getattr(student.config, key)))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = type(first)(config)
    setattr(model, prefix, getattr(first, prefix))
    head = {key: value for key, value in model.state_dict().items() if not key.startswith(prefix + ".")}
    theirs = {key: value for key, value in student.state_dict().items() if not key.startswith(prefix + ".")}
    if head and all(key in theirs and theirs[key].shape == value.shape for key, value in head.items()):
        model.load_state_dict({key: theirs[key] for key in head}, strict=False)
        return model, "its teacher's head"
    shapes = {key: tuple(value.shape) for key, value in theirs.items() if key in head}
    return model, f"fresh (its teacher's head {shapes or 'has other modules'} does not fit the shared encoder)"


class MultiTaskDistiller(nn.Module):
    """Each task's :class:`kdistill.distiller.Distiller` (its teacher, its head on the shared encoder, the
    method's matches); a batch goes to its own task's (``batch['task']``) only.

    What the Trainer reads of a Distiller: ``student`` (the :class:`MultiTaskStudent`), ``teachers`` (every
    task's, as ``<task>``), ``bound``, ``prepared``/``prepare`` and the loss of a batch, whose parts are
    named ``<task>/<part>``.
    """

    def __init__(self, distillers: Mapping[str, nn.Module], student: MultiTaskStudent):
        super().__init__()
        self.tasks = nn.ModuleDict(dict(distillers))
        self.student = student
        self.teachers = {name: model for name, d in distillers.items() for model in d.teachers.values()}
        self.bound = [b for d in distillers.values() for b in d.bound]
        self.projections = nn.ModuleDict()  # each task's live in its Distiller

    @property
    def prepared(self) -> bool:
        return all(d.prepared for d in self.tasks.values())

    def prepare(self, batch: Mapping) -> list:
        task, rest = _split(batch)
        return self.tasks[task].prepare(rest)

    def remove_hooks(self) -> None:
        for distiller in self.tasks.values():
            distiller.remove_hooks()

    def forward(self, batch: Mapping, **options: Any):
        from kdistill.distiller import DistillOutput

        task, rest = _split(batch)
        out = self.tasks[task](rest, **options)
        parts = {f"{task}/loss": out.loss.detach(), **{f"{task}/{name}": value for name, value in out.parts.items()}}
        return DistillOutput(out.loss, parts, out.student_features)


def _split(batch: Mapping) -> tuple[str, dict]:
    if "task" not in batch:
        raise ValueError("a multi-task batch says its task (batch['task']); this one does not.")
    return batch["task"], {key: value for key, value in batch.items() if key != "task"}


# ---------------------------------------------------------------------------------------------
# Building the run


@dataclass
class MultiTaskParts:
    """A multi-task run built: each task's single-task parts (its teacher, data, loaders, Distiller on its
    head), the shared student, the training loader and each task's chance per batch."""

    config: Any
    tasks: dict[str, Any]  # name -> kdistill.run_build.RunParts (student: that task's head on the shared encoder)
    student: MultiTaskStudent
    distiller: MultiTaskDistiller
    loader: DataLoader
    probabilities: dict[str, float]
    heads: dict[str, str]  # name -> how its head began
    baseline: MultiTaskStudent | None = None  # baseline: true — a copy of the student as built


def build_tasks(config: Any, *, finetune: bool = False) -> MultiTaskParts:
    """Build every task as a single-task run (:func:`kdistill.run_build.build`), then give every task's
    student the first task's encoder; loads weights, trains nothing (``finetune``: as ``build``)."""
    from kdistill.run_build import build

    tasks, heads = {}, {}
    for name in config.tasks:
        parts = build(config.task_config(name), finetune=finetune)
        if len(parts.stages) != 1 or parts.trained is not parts.student or parts.assistant is not None:
            raise ConfigError(f"method: '{parts.recipe.method}' trains {len(parts.stages)} stage(s) or wraps the "
                              "student; with 'tasks' a method trains one stage of a plain student (hinton, or "
                              "matches).")
        tasks[name] = parts
    first = next(iter(tasks.values()))
    for index, (name, parts) in enumerate(tasks.items()):
        if index == 0:
            heads[name] = "its teacher's head" if first.config.student.from_teacher else "as built"
            continue
        model, heads[name] = share_encoder(first.student, parts.student, seed=config.train_seed() + index)
        _use_student(parts, model)
    student = MultiTaskStudent({name: parts.student for name, parts in tasks.items()})
    distiller = MultiTaskDistiller({name: parts.stage_distiller(0) for name, parts in tasks.items()}, student)
    sizes = {name: len(parts.data.datasets["train"]) for name, parts in tasks.items()}
    probabilities = task_probabilities(config.task_sampling, sizes)
    loader = task_loader({name: parts.stages[0].loader for name, parts in tasks.items()}, probabilities,
                         seed=config.data_seed())
    baseline = copy.deepcopy(student) if config.baseline else None  # the encoder stays shared in the copy
    return MultiTaskParts(config, tasks, student, distiller, loader, probabilities, heads, baseline)


def _use_student(parts: Any, model: nn.Module) -> None:
    """Make ``model`` the task's student everywhere its parts hold one; its Distiller is made again."""
    stage = parts.stages[0]
    if stage.distiller is not None:
        stage.distiller.remove_hooks()
        stage.distiller = None
    parts.student = parts.trained = stage.student = model
    parts.model_sources["student"] = "the first task's student encoder (shared)"


def train_config(mt: MultiTaskParts):
    """The run's training settings over the multi-task loader (an epoch: every task's batches), with
    ``training.freeze`` applied here to each task's model (its parameters are named as in a single-task run,
    ``bert.embeddings…``; the Trainer would see them under ``heads.<task>.``) and so left out of them."""
    from kdistill.run_build import stage_train_config
    from kdistill.train.optim import freeze_parameters

    first = next(iter(mt.tasks.values()))
    settings = stage_train_config(mt.config, replace(first.stages[0], loader=mt.loader))
    for student in (mt.student, mt.baseline):
        for model in (student.heads.values() if student is not None else ()):
            freeze_parameters(model, settings.freeze, path="training.freeze")
    return replace(settings, freeze=[])


# ---------------------------------------------------------------------------------------------
# The run


def run_tasks(config: Any, out: Path, progress: Any, *, continuing: bool, overwrite: bool) -> dict[str, Any]:
    """``kdistill.run.run`` of a config with ``tasks`` once the output folder is checked: build, prepare
    every task's Distiller, train, save ``student/<task>/``, evaluate each task, write the results."""
    from kdistill.config import dump_yaml
    from kdistill.finetune import BASELINE_DIR
    from kdistill.outputs import RESOLVED_NAME, save_students, start_run_folder
    from kdistill.run import _prepare_stage, count_parameters, estimated_steps
    from kdistill.train import Trainer

    started = time.time()
    mt = build_tasks(config, finetune=True)
    for parts in mt.tasks.values():
        _prepare_stage(parts, parts.stages[0])  # each on its own first batch: shapes, projections
    settings = train_config(mt)
    if progress is not None:
        steps = estimated_steps(settings, mt.loader)
        progress.plan({"distil": steps, **({"baseline": steps} if mt.baseline is not None else {})},
                      evaluation_batches=0)
    start_run_folder(config, overwrite=overwrite)
    if progress is not None:
        progress.open_log()
    validation = {name: parts.loaders["validation"] for name, parts in mt.tasks.items()
                  if "validation" in parts.loaders}
    trainer = Trainer(mt.distiller, mt.loader, config=settings, eval_data=validation or None,
                      metric_fn=task_metrics if validation else None, output_dir=out, name="distil")
    begun = time.perf_counter()
    result = trainer.train(resume=continuing)
    mt.distiller.remove_hooks()
    record = {"stage": "distil", "data": "train", "steps": result.steps, "total_steps": result.total_steps,
              "best_metric": result.best_metric, "best_step": result.best_step, "final_metrics": result.final_metrics,
              "skipped_steps": result.skipped_steps, "seconds": round(time.perf_counter() - begun, 2)}
    student_dir = save_students({name: (parts, parts.student) for name, parts in mt.tasks.items()}, out)
    baseline = _train_baseline(mt, settings, validation, out) if mt.baseline is not None else None
    tasks = {}
    for name, parts in mt.tasks.items():
        from kdistill.evaluation import evaluate_splits

        entry: dict[str, Any] = {
            "student": str(student_dir / name), "teacher": parts.model_sources.get("teacher"),
            "head": mt.heads[name], "share": mt.probabilities[name],
            "data": {split: {"examples": len(dataset), "source": parts.data.sources.get(split, split)}
                     for split, dataset in parts.data.datasets.items()},
            "parameters": {"teacher": count_parameters(parts.teacher), "student": count_parameters(parts.student)},
            "metrics": evaluate_splits(parts.teacher, parts.student, parts.loaders)}
        if mt.baseline is not None:
            evaluated = evaluate_splits(parts.teacher, mt.baseline.heads[name], parts.loaders)
            entry["baseline"] = {"student": str(out / BASELINE_DIR / "student" / name), "metrics": {
                split: {**result["student"], "agreement": result["agreement"]} for split, result in evaluated.items()}}
        if parts.finetuned is not None:
            from kdistill.finetune import copy_into_run

            entry["teacher_finetune"] = {"folder": str(copy_into_run(parts.finetuned, out, name)),
                                         "cache": str(parts.finetuned.folder), "cached": parts.finetuned.cached}
        tasks[name] = entry
    first = next(iter(mt.tasks.values()))
    summary = {
        "config": str(out / RESOLVED_NAME), "student": str(student_dir), "method": first.recipe.method,
        "stages": [record], "task_sampling": config.task_sampling, "tasks": tasks,
        "parameters": {"teacher": count_parameters(first.teacher), "student": count_parameters(mt.student),
                       "teachers": sum(count_parameters(p.teacher) for p in mt.tasks.values())},
        "metrics": {}, "processes": 1, "seconds": round(time.time() - started, 2)}
    if baseline is not None:
        summary["baseline"] = {"student": str(out / BASELINE_DIR / "student"), **baseline}
    from kdistill.files import atomic_write_text

    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    tasks_report(out, summary, dump_yaml(config.resolved()))
    for name in tasks:
        write_task_card(out, config, summary, name)
    return summary


def task_summary(summary: Mapping, name: str) -> dict[str, Any]:
    """Task ``name``'s part of a multi-task summary in a single-task summary's shape (what a model card reads)."""
    entry = summary["tasks"][name]
    single = {key: summary[key] for key in ("method", "stages", "processes", "seconds") if key in summary}
    single.update({"student": entry["student"], "data": entry["data"], "parameters": entry["parameters"],
                   "metrics": entry["metrics"]})
    if "baseline" in entry:
        single["baseline"] = entry["baseline"]
    if "teacher_finetune" in entry:
        single["teacher_finetune"] = entry["teacher_finetune"]
    return single


def write_task_card(out: Path, config: Any, summary: Mapping, name: str) -> Path:
    """``student/<task>/README.md``: the model card of one task's folder (kdistill.model_card), from the task's
    figures and the task as a single-task config; listed as kdistill's file."""
    from kdistill.files import atomic_write_text
    from kdistill.model_card import CARD_NAME, model_card
    from kdistill.outputs import claim_student_file

    text = model_card(task_summary(summary, name), config.task_config(name).resolved())
    note = (f"\n\nThis is task `{name}` of a multi-task run ({', '.join(summary['tasks'])}): its encoder is shared "
            "with the other tasks' folders, its head is its own.\n")
    path = out / "student" / name / CARD_NAME
    atomic_write_text(path, text.rstrip("\n") + note)
    claim_student_file(out / "student", f"{name}/{CARD_NAME}")
    return path


def _train_baseline(mt: MultiTaskParts, settings: Any, validation: Mapping[str, DataLoader], out: Path) -> dict:
    """``baseline: true``: the copy of the student as built trained on the labels alone (cross-entropy, no
    teacher) through the same loop, batches, settings and seed, in ``baseline/`` (continued from its last
    checkpoint when one is there); its ``student/<task>/`` folders saved; its record."""
    from kdistill.distiller import Distiller
    from kdistill.finetune import BASELINE_DIR
    from kdistill.outputs import save_students
    from kdistill.train import Trainer

    folder = out / BASELINE_DIR
    distillers = {name: Distiller(None, mt.baseline.heads[name], hard_label_weight=1.0) for name in mt.tasks}
    resume = (folder / "checkpoints").is_dir() and any((folder / "checkpoints").iterdir())
    trainer = Trainer(MultiTaskDistiller(distillers, mt.baseline), mt.loader, config=settings,
                      eval_data=validation or None, metric_fn=task_metrics if validation else None,
                      output_dir=folder, name="baseline")
    begun = time.perf_counter()
    result = trainer.train(resume=resume)
    save_students({name: (parts, mt.baseline.heads[name]) for name, parts in mt.tasks.items()}, folder)
    return {"steps": result.steps, "final_metrics": result.final_metrics,
            "seconds": round(time.perf_counter() - begun, 2)}


def task_metrics(student: MultiTaskStudent, loaders: Mapping[str, DataLoader], device: Any) -> dict[str, float]:
    """During training: each task's validation accuracy and macro-F1 (``<task>/accuracy``) and their
    means over the tasks (``accuracy``, ``macro_f1``: what ``training.metric`` picks the best by)."""
    from kdistill.train.evaluate import evaluate_classifier

    metrics: dict[str, float] = {}
    for name, loader in loaders.items():
        found = evaluate_classifier(student.heads[name], loader, device=device, inputs_key="student_inputs")
        metrics.update({f"{name}/{key}": value for key, value in found.items()})
    for key in ("accuracy", "macro_f1"):
        values = [metrics[f"{name}/{key}"] for name in loaders if f"{name}/{key}" in metrics]
        if values:
            metrics[key] = float(np.mean(values))
    return metrics


def result_rows(summary: Mapping) -> list[list[Any]]:
    """One row per task: its test (else validation) figures, teacher beside student."""
    rows = []
    for name, entry in summary["tasks"].items():
        metrics = entry.get("metrics") or {}
        split = "test" if "test" in metrics else "validation" if "validation" in metrics else None
        if split is None:
            rows.append([name, "-", "", "", "", "", "", "", 0])
            continue
        result = metrics[split]
        baseline = ((entry.get("baseline") or {}).get("metrics") or {}).get(split)
        rows.append([name, split, f"{result['teacher']['accuracy']:.2%}", f"{result['student']['accuracy']:.2%}",
                     f"{baseline['accuracy']:.2%}" if baseline else "-",
                     f"{result['teacher']['macro_f1']:.4f}", f"{result['student']['macro_f1']:.4f}",
                     f"{result['agreement']:.2%}", result["examples"]])
    return rows


def tasks_report(out: Path, summary: Mapping, resolved_yaml: str) -> Path:
    """``report.md`` of a multi-task run: the tasks, one row per task of teacher vs student, sizes, the
    loss over steps and the resolved config."""
    from kdistill.report import CONFIG_HEADING, markdown_table, plot_loss_parts, write_report

    tasks = summary["tasks"]
    sections = [f"# kdistill run: {out.name}",
                f"Method `{summary.get('method')}` on {len(tasks)} tasks into one student (a shared encoder, a head "
                f"per task: `student/<task>/`); task sampling: {summary.get('task_sampling')}. Figures are measured "
                "on each saved `student/<task>/`.",
                "## Tasks\n\n" + markdown_table(["task", "teacher", "train examples", "share of batches", "head"], [
                    [name, entry["teacher"], f"{entry['data'].get('train', {}).get('examples', 0):,}",
                     f"{entry['share']:.1%}", entry["head"]] for name, entry in tasks.items()]),
                "## Accuracy (one row per task)\n\n" + markdown_table(
                    ["task", "split", "teacher accuracy", "student accuracy", "baseline accuracy", "teacher macro-F1",
                     "student macro-F1", "agrees with the teacher", "examples"], result_rows(summary))]
    params = summary["parameters"]
    sections.append("## Size\n\n" + markdown_table(["model", "parameters"], [
        ["the tasks' teachers", f"{params['teachers']:,}"],
        ["student (shared encoder + every head)", f"{params['student']:,}"]]))
    curves = {"student": out / "metrics.jsonl"}
    if (out / "baseline" / "metrics.jsonl").is_file():
        curves["baseline"] = out / "baseline" / "metrics.jsonl"
    if plot_loss_parts(curves, out / "loss.png"):
        sections.append("## Loss over steps\n\n![loss parts over optimiser steps](loss.png)")
    sections.append(f"{CONFIG_HEADING}\n\n```yaml\n{resolved_yaml.rstrip()}\n```")
    return write_report(out / "report.md", sections)


def evaluate_tasks(folder: Any, split: str = "test") -> dict[str, Any]:
    """``kdistill eval`` of a finished multi-task run (a :class:`kdistill.run_folder.RunFolder`): per task, its
    teacher (the run's fine-tuned copy in ``teachers/<task>/`` when fine-tuned) against its saved
    ``student/<task>/`` (and ``baseline/student/<task>/``) on ``split``, as the run's summary measured them."""
    from kdistill import models
    from kdistill.evaluation import compare
    from kdistill.finetune import BASELINE_DIR, TEACHERS_DIR
    from kdistill.run_build import load_model
    from kdistill.run_data import build_data, make_loaders

    config = folder.config()
    results = {}
    for name in config.tasks:
        task = config.task_config(name)
        student_dir = folder.student_dir / name
        if not (student_dir / "config.json").is_file():
            raise ConfigError(f"'{folder.path}' holds no student of task '{name}' (no student/{name}/ folder): the "
                              "run has not finished. Continue it with `kdistill run CONFIG --resume`.")
        if task.teacher.finetune is not None:
            teacher = models.load_hf_model(folder.path / TEACHERS_DIR / name, task=task.teacher.task)
        else:
            teacher = load_model(task.teacher, f"tasks.{name}.teacher", task)
        tokenizer = models.load_tokenizer(task.data.tokenizer or task.teacher.path)
        loaders = make_loaders(task, build_data(task, tokenizer, None))
        if split not in loaders or split == "unlabelled":
            available = ", ".join(s for s in loaders if s != "unlabelled")
            raise ConfigError(f"--split: task '{name}' has no '{split}' split; it has: {available}.")
        result = compare(teacher.eval(), models.load_hf_model(student_dir, task=task.teacher.task), loaders[split])
        baseline_dir = folder.path / BASELINE_DIR / "student" / name
        if baseline_dir.is_dir():
            again = compare(teacher, models.load_hf_model(baseline_dir, task=task.teacher.task), loaders[split])
            result["baseline"] = {**again["student"], "agreement": again["agreement"]}
        results[name] = result
    return {"split": split, "tasks": results}


# ---------------------------------------------------------------------------------------------
# The plan


@dataclass(frozen=True)
class TaskPlan:
    name: str
    teacher: str
    teacher_source: str
    data: tuple[str, ...]
    share: float
    batches_per_epoch: int
    head: str
    stage: Any  # kdistill.planning.StagePlan: the method's matches on this task


@dataclass(frozen=True)
class MultiTaskPlan:
    source: str
    sampling: str
    tasks: tuple[TaskPlan, ...]
    student: str
    parameters: dict[str, int]
    batches_per_epoch: int
    total_steps: int
    length: str
    baseline: bool = False

    def to_dict(self) -> dict:
        import dataclasses

        return dataclasses.asdict(self)

    def render(self) -> str:
        from kdistill.planning import _render_stage

        lines = [f"kdistill plan: {self.source}", "",
                 f"tasks: {len(self.tasks)} into one student (a shared encoder, one classification head per task)",
                 f"  each step draws one task ({self.sampling}; seeded by data.seed: batch i of epoch e depends on "
                 "(seed, e, i) only), that task's next batch, its teacher and its head",
                 f"  an epoch = the sum of the tasks' training batches = {self.batches_per_epoch} batches; "
                 f"{self.length}: {self.total_steps} optimiser steps"]
        for task in self.tasks:
            lines += ["", f"task '{task.name}': {task.share:.1%} of batches (about "
                      f"{round(task.share * self.batches_per_epoch)} per epoch; {task.batches_per_epoch} in one pass "
                      "over its training set)",
                      f"  teacher   {task.teacher}", f"            source: {task.teacher_source}",
                      f"  head      {task.head}", "  data", *task.data,
                      f"  the method on this task (its teacher -> its head on the shared encoder), hard_label_weight "
                      f"{task.stage.hard_label_weight}", *_render_stage(task.stage, 1)[1:-1]]
        params = self.parameters
        lines += ["", "student", f"  {self.student}",
                  "  saved as student/<task>/ per task: each a Hugging Face folder "
                  "(AutoModelForSequenceClassification) "
                  "holding the shared encoder's weights and its task's head, so each works alone",
                  *(["  baseline: a copy of the student as built, trained on the labels alone with the same batches, "
                     "settings and seed (baseline/student/<task>/); summary and report show it per task"]
                    if self.baseline else []),
                  "", "parameters",
                  f"  teachers     {params['teachers']:>12,}  (every task's)",
                  f"  student      {params['student']:>12,}  (the shared encoder and every head)",
                  f"  encoder      {params['encoder']:>12,}",
                  f"  trainable    {params['trainable']:>12,}"]
        return "\n".join(lines) + "\n"


def make_tasks_plan(config: Any) -> MultiTaskPlan:
    """What a multi-task run will do: builds the tasks (no training), runs one batch of each."""
    from kdistill.planning import _data_lines, _model_line, _stage_plan
    from kdistill.run import count_parameters, estimated_steps

    mt = build_tasks(config)
    settings = train_config(mt)
    steps = estimated_steps(settings, mt.loader)
    sampler = mt.loader.batch_sampler
    tasks = []
    for index, (name, parts) in enumerate(mt.tasks.items()):
        stage = _stage_plan(parts.config, parts, parts.stages[0])
        tasks.append(TaskPlan(name, _model_line(parts.teacher), parts.model_sources.get("teacher", "?"),
                              tuple(_data_lines(parts.config, parts)), mt.probabilities[name],
                              sampler.task_batches[index], f"{_head_size(parts)}; starts as {mt.heads[name]}",
                              stage))
    first = next(iter(mt.tasks.values()))
    encoder = getattr(first.student, first.student.base_model_prefix)
    sampling = (f"proportional to the tasks' training examples" if config.task_sampling == PROPORTIONAL
                else "given weights " + ", ".join(f"{name} {weight:g}" for name, weight in config.task_sampling.items())
                + ", normalised")
    return MultiTaskPlan(
        source=config.source or "config", sampling=sampling, tasks=tuple(tasks),
        student=f"{_model_line(first.student)}; source: {first.model_sources.get('student', '?')}",
        parameters={"teachers": sum(count_parameters(p.teacher) for p in mt.tasks.values()),
                    "student": count_parameters(mt.student), "encoder": count_parameters(encoder),
                    "trainable": sum(p.numel() for p in mt.distiller.parameters() if p.requires_grad)},
        batches_per_epoch=len(mt.loader), total_steps=steps,
        length=f"{settings.max_steps} steps" if config.training.max_steps else f"{settings.epochs} epoch(s)",
        baseline=mt.baseline is not None)


def _head_size(parts: Any) -> str:
    names = parts.data.label_names  # None: integer labels are the class ids
    return f"{parts.student.config.num_labels} classes" + (f" ({', '.join(map(str, names))})" if names else "")


__all__ = ["MultiTaskDistiller", "MultiTaskParts", "MultiTaskPlan", "MultiTaskStudent", "TaskBatchSampler",
           "build_tasks", "draw_tasks", "make_tasks_plan", "run_tasks", "sampling_problems", "share_encoder",
           "task_loader", "task_probabilities", "validate_tasks"]
