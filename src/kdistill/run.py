"""The runner: config -> models -> data -> method/matches -> Distiller -> Trainer -> outputs.

    config = load_config("run.yaml")
    print(plan(config))        # loads the models, runs one batch, trains nothing
    summary = run(config)      # trains and writes the output folder

The output folder (what is in it, what kdistill owns there, what --overwrite removes and when):
:mod:`kdistill.outputs`. A folder holding results of a *different* config is refused unless
``resume`` (continue it with this config) or ``overwrite`` (replace its results, once the new run
is built and checked). The same config again continues the run.

Under a launcher (``kdistill run --processes N``, ``accelerate launch``) every process trains and
only the main process writes the folder (docs/scale.md).
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from kdistill.adapters.base import get_submodule
from kdistill.adapters.hf import hf_num_layers, is_hf_model
from kdistill.config import IMAGE_DATA, RunConfig, dump_yaml
from kdistill.distiller import Distiller
from kdistill.errors import ConfigError, DataError, KdistillError, RefError, ShapeError
from kdistill.launch import distributed_world_size, processes_use_cpu
from kdistill.logits_cache import reads_only_logits
from kdistill.matches import Match, explicit_layer_map, last_k_layer_map, skip_layer_map, uniform_layer_map
from kdistill.methods import Recipe, Stage, chain_learners
from kdistill.outputs import (  # noqa: F401  (re-exported: the run folder's names and helpers)
    RESOLVED_NAME,
    RESULT_NAMES,
    STAGE_DONE,
    STAGE_STUDENT,
    check_output_dir,
    config_differences,
    prepare_output_dir,
    save_student,
    start_run_folder,
)
from kdistill.refs import LAYER_KINDS, parse_ref
from kdistill.registry import importable
from kdistill.run_data import (  # noqa: F401 - re-exported
    DataParts,
    ImageDataset,
    build_data,
    make_loaders,
    stage_data,
    stage_parts,
    training_loader,
)
from kdistill.schedules import maybe_schedule
from kdistill.files import atomic_write_text


# ---------------------------------------------------------------------------------------------
# What build() returns


@dataclass
class StageParts:
    """One stage ready to train: its recipe stage, models, data and (once made) its Distiller."""

    index: int
    stage: Stage
    teacher: nn.Module
    student: nn.Module
    loader: DataLoader
    origins: list[str]
    directory: Path
    data_name: str = "train"  # what it trains on: a split, or "train+unlabelled" (data.distil_on)
    datasets: list[Dataset] = field(default_factory=list)  # the loader's parts, in order
    distiller: Distiller | None = None


@dataclass
class RunParts:
    """Everything a run needs, built from a config (models loaded, data tokenised)."""

    config: RunConfig
    teacher: nn.Module
    student: nn.Module
    trained: nn.Module
    assistant: nn.Module | None
    tokenizer: Any
    student_tokenizer: Any
    tokenizer_source: str | None
    data: DataParts
    loaders: dict[str, DataLoader]
    recipe: Recipe
    stages: list[StageParts]
    layer_map: list[tuple[int, int]] | None
    model_sources: dict[str, str] = field(default_factory=dict)
    finetuned: Any = None  # kdistill.finetune.FinetunedTeacher when teacher.finetune is set
    baseline: nn.Module | None = None  # the student as built, to train on labels alone (baseline: true)

    @property
    def datasets(self) -> dict[str, Dataset]:
        return self.data.datasets

    @property
    def distiller(self) -> Distiller:
        """The Distiller of the last stage (the only one for single-stage runs)."""
        return self.stage_distiller(len(self.stages) - 1)

    def stage_distiller(self, index: int) -> Distiller:
        """The Distiller of stage ``index``, made on first use (a chain's assistant must train first)."""
        part = self.stages[index]
        if part.distiller is None:
            part.distiller = _make_distiller(self.config, part)
            follow = getattr(part.student, "follow", None)
            if callable(follow):  # a wrapper with a schedule (Theseus) counts the Trainer's steps
                follow(part.distiller)
        return part.distiller


# ---------------------------------------------------------------------------------------------
# Models


def _reprefix(exc: KdistillError, old: str, new: str) -> KdistillError:
    text = str(exc)
    if text.startswith(old):
        text = new + text[len(old):]
    return type(exc)(text)


def load_model(spec, where: str, config: RunConfig, teacher: nn.Module | None = None) -> nn.Module:
    """Build the model ``spec`` describes (HF folder, factory, or from the teacher), with its ``blocks`` named."""
    from kdistill import models

    model = _build_model(spec, where, config, teacher)
    if spec.blocks is not None:
        models.name_blocks(model, spec.blocks, where=f"{where}.blocks")
    return model


def _build_model(spec, where: str, config: RunConfig, teacher: nn.Module | None) -> nn.Module:
    from kdistill import models

    if spec.path is not None:
        try:
            return models.load_hf_model(spec.path, num_labels=spec.num_labels, task=spec.task)
        except ConfigError as exc:
            raise _reprefix(exc, "model.path", f"{where}.path") from None
    if spec.factory is not None:
        with importable(config.python_path):
            try:
                return models.load_factory(spec.factory, **spec.args)
            except ConfigError as exc:
                raise _reprefix(exc, "model.factory", f"{where}.factory") from None
    return student_from_init({"from_teacher": spec.from_teacher.model_dump(exclude_none=True)}, teacher,
                             where=f"{where}.from_teacher")


def student_from_init(init: Mapping, teacher: nn.Module, *, where: str) -> nn.Module:
    """A student from a recipe's ``student_init`` or a config's ``from_teacher``."""
    from kdistill import models

    if "from_teacher" in init:
        options = dict(init["from_teacher"])
    elif "config" in init:
        options = dict(init["config"])
    else:
        raise ConfigError(f"{where}: cannot build a student from {dict(init)!r}; expected 'from_teacher' or 'config'.")
    try:
        if "layers" in options:
            return models.student_from_teacher(teacher, list(options["layers"]))
        return models.student_from_config(teacher, **options)
    except ConfigError as exc:
        raise _reprefix(exc, "student.from_teacher.", f"{where}.") from None
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}.") from None


def layer_count(model: nn.Module) -> int | None:
    """:func:`kdistill.models.block_count`, or None when the model has no blocks to count."""
    from kdistill import models

    try:
        return models.block_count(model)
    except ConfigError:
        return None


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# Matches, recipe, stages


def resolve_layer_map(value: Any, teacher: nn.Module, student: nn.Module) -> list[tuple[int, int]]:
    if isinstance(value, list):
        return explicit_layer_map(value)
    t_layers, s_layers = layer_count(teacher), layer_count(student)
    if t_layers is None or s_layers is None:
        which = "teacher" if t_layers is None else "student"
        raise ConfigError(f"layer_map: '{value}' needs the layer counts, but the {which} has no list of blocks; "
                          "give explicit [teacher_hidden, student_hidden] pairs.")
    builder = {"uniform": uniform_layer_map, "last": last_k_layer_map, "skip": skip_layer_map}[value]
    return builder(t_layers, s_layers)


def _projection(value: str | None, config: RunConfig, where: str):
    if value in (None, "none"):
        return None
    if ":" in value:
        from kdistill.registry import import_object

        with importable(config.python_path):
            return import_object(value, path=where)
    return value


def config_matches(config: RunConfig, layer_map: list[tuple[int, int]] | None) -> tuple[list[Match], list[str]]:
    """The config's ``matches`` as Match objects (``.*`` refs expanded) and each one's config path."""
    result, origins = [], []
    for i, spec in enumerate(config.matches):
        where = f"matches[{i}]"
        common = dict(
            loss=spec.loss,
            weight=maybe_schedule(spec.weight, path=f"{where}.weight"),
            args={k: maybe_schedule(v, path=f"{where}.args.{k}") for k, v in spec.args.items()},
            projection=_projection(spec.projection, config, f"{where}.projection"),
            teacher_name=spec.teacher_name, start=spec.start, stop=spec.stop,
        )
        if spec.teacher.endswith(".*"):
            kind = spec.teacher[:-2]
            for t, s in layer_map or []:
                if kind != "hidden":
                    if t == 0 or s == 0:
                        continue  # hidden 0 is the embeddings: no attention block feeds it
                    t, s = t - 1, s - 1
                name = f"{spec.name}.{s}" if spec.name else None
                result.append(Match(f"{kind}.{t}", f"{kind}.{s}", name=name, **common))
                origins.append(where)
        else:
            result.append(Match(spec.teacher, spec.student, name=spec.name, **common))
            origins.append(where)
    return result, origins


def check_refs(matches: list[Match], origins: list[str], teacher: nn.Module, student: nn.Module) -> None:
    """Every ref against the real models, all problems in one error (before any batch runs)."""
    problems = []
    for match, origin in zip(matches, origins):
        for role, text, model in (("teacher", match.teacher, teacher), ("student", match.student, student)):
            where = f"{origin}.{role}"
            try:
                refs = parse_ref(text, where=where)
            except RefError as exc:
                problems.append(str(exc))
                continue
            hf = is_hf_model(model)
            layers = hf_num_layers(model) if hf else None
            for ref in refs:
                try:
                    if ref.kind == "module":
                        get_submodule(model, ref.path, where=where)
                    elif ref.kind in LAYER_KINDS and not hf:
                        raise RefError(f"{where}: '{ref}' needs a Hugging Face model; the {role} is a "
                                       f"{type(model).__name__}: use 'logits' or 'module:<path>' refs.")
                    else:
                        ref.resolved(layers, where=where)
                except RefError as exc:
                    problems.append(str(exc))
    if problems:
        raise RefError(problems[0] if len(problems) == 1 else
                       f"{len(problems)} refs do not fit the models:\n" + "\n".join(f"  - {p}" for p in problems))


def make_recipe(config: RunConfig, teacher: nn.Module, student: nn.Module | None) -> Recipe:
    from kdistill import methods

    args = {k: maybe_schedule(v, path=f"method_args.{k}") for k, v in config.method_args.items()}
    with importable(config.python_path):
        try:
            return methods.expand(config.method, teacher, student, **args)
        except TypeError as exc:
            raise ConfigError(f"method_args: method '{config.method}' rejected its arguments: {exc}.") from None


def _stage_matches(recipe_stage: Stage, extra: list[Match], extra_origins: list[str], last: bool,
                   method: str | None) -> tuple[list[Match], list[str]]:
    """A method stage's matches; the config's own ``matches`` join the last stage."""
    own = list(recipe_stage.matches)
    origins = [f"method '{method}' stage '{recipe_stage.name}' match {i}" for i in range(len(own))]
    if last:
        own += extra
        origins += extra_origins
    return own, origins


def _make_distiller(config: RunConfig, part: StageParts) -> Distiller:
    stage = part.stage
    try:
        return Distiller(part.teacher, part.student, stage.matches, hard_label_weight=stage.hard_label_weight,
                         attention=config.attention)
    except RefError as exc:
        raise RefError(f"stage '{stage.name}': {exc}") from None


# ---------------------------------------------------------------------------------------------
# build


def build(config: RunConfig, *, finetune: bool = False) -> RunParts:
    """Read and tokenise the data, load the models, expand the method, make the stages.

    Loads weights (so call it after the config validated). Trains nothing, except that with
    ``finetune`` a teacher that ``teacher.finetune`` asks for and the cache lacks is fine-tuned now
    (``run``); without it (``plan``) the base stands in for it, with the same shapes.
    """
    torch.manual_seed(config.train_seed())
    tokenizer, student_tokenizer, tokenizer_source = _tokenizers(config)
    data = build_data(config, tokenizer, student_tokenizer)
    loaders = make_loaders(config, data)
    teacher, sources, finetuned = _teacher(config, data, loaders, tokenizer, finetune)
    student, recipe, source = _student(config, teacher)
    sources["student"] = source
    assistant = None
    if recipe is not None and recipe.assistant:
        assistant = student_from_init(recipe.assistant, teacher, where=f"method '{config.method}' assistant")
        sources["assistant"] = f"built by method '{config.method}': {recipe.assistant}"
    baseline = None
    if config.baseline:
        from kdistill.finetune import baseline_of

        baseline = baseline_of(student)  # the student as built: the baseline starts where it starts
    trained = student
    if recipe is not None and recipe.student_wrapper is not None:
        trained = recipe.student_wrapper(teacher, student)
    if tokenizer is not None:
        _check_vocab_sizes(config, teacher, student, tokenizer, student_tokenizer)
    _check_classes(config, data, loaders, teacher, student)

    layer_map = None
    if any(m.teacher.endswith(".*") for m in config.matches):
        layer_map = resolve_layer_map(config.layer_map, teacher, student)
    recipe, stage_origins = _recipe_with_matches(config, recipe, layer_map)
    stages = _stages(config, recipe, stage_origins, data, loaders, teacher, trained, assistant)
    if finetuned is None:
        _check_teacher_head(config, stages)
    parts = RunParts(config, teacher, student, trained, assistant, tokenizer, student_tokenizer, tokenizer_source,
                     data, loaders, recipe, stages, layer_map, sources, finetuned, baseline)
    if assistant is None:
        for i in range(len(stages)):
            parts.stage_distiller(i)  # bad refs and loss arguments surface now, not mid-run
    return parts


def _tokenizers(config: RunConfig) -> tuple[Any, Any, str | None]:
    """The teacher's tokenizer (``data.tokenizer`` or the teacher's folder), the student's own if it has
    one, and where the first came from; ``None``s for image data."""
    from kdistill import models

    if config.data.builtin in IMAGE_DATA:
        return None, None, None
    source = config.data.tokenizer or config.teacher.path
    tokenizer = models.load_tokenizer(source, where="data.tokenizer" if config.data.tokenizer else "teacher.path")
    student_tokenizer = None
    if config.data.student_tokenizer:
        student_tokenizer = models.load_tokenizer(config.data.student_tokenizer, where="data.student_tokenizer")
    return tokenizer, student_tokenizer, source


def _teacher(config: RunConfig, data: DataParts, loaders: dict[str, DataLoader], tokenizer: Any,
             finetune: bool) -> tuple[nn.Module, dict[str, str], Any]:
    """The teacher, where it came from, and (``teacher.finetune``) its fine-tune's cache entry."""
    if config.teacher.finetune is None:
        teacher = load_model(config.teacher, "teacher", config)
        return teacher, {"teacher": config.teacher.path or f"factory {config.teacher.factory}"}, None
    from kdistill import finetune as kfinetune
    from kdistill.models import load_hf_model

    if distributed_world_size() > 1:
        raise ConfigError("teacher.finetune: fine-tune the teacher in one process first (kdistill run without "
                          "--processes, or kdistill plan to see the cache), then run the processes: they reuse it.")
    entry = kfinetune.finetuned_teacher(config, data.datasets["train"], data.label_names, data.num_classes,
                                        data.datasets.get("validation"))
    base = config.teacher.path
    if entry.cached:
        teacher = load_hf_model(entry.folder)
        source = f"fine-tuned from {base} (cached in {entry.folder})"
    elif finetune:
        teacher = kfinetune.finetune_teacher(config, entry, loaders, data.label_names, data.num_classes, tokenizer)
        source = f"fine-tuned from {base} in this run (cached in {entry.folder})"
    else:  # the plan: the base with a new head has the fine-tuned teacher's shapes
        teacher = load_hf_model(base, num_labels=data.num_classes)
        epochs = config.teacher.finetune.max_steps or config.teacher.finetune.epochs
        unit = "steps" if config.teacher.finetune.max_steps else "epoch(s)"
        source = (f"{base}, to be fine-tuned first: {epochs} {unit} on {len(data.datasets['train']):,} labelled "
                  f"examples (not cached yet; it will be in {entry.folder})")
    torch.manual_seed(config.train_seed())  # the student starts the same whether the teacher was cached or not
    return teacher, {"teacher": source}, entry


def _student(config: RunConfig, teacher: nn.Module) -> tuple[nn.Module, Recipe | None, str]:
    """The student (from the config or the method's ``student_init``), the method's recipe and the source."""
    if config.student is not None:
        student = load_model(config.student, "student", config, teacher=teacher)
        source = (config.student.path or (config.student.factory and f"factory {config.student.factory}")
                  or f"from_teacher {config.student.from_teacher.model_dump(exclude_none=True)}")
    else:
        draft = make_recipe(config, teacher, None)
        if not draft.student_init:
            raise ConfigError(f"student: required: method '{config.method}' does not say how to build a student. "
                              "Give student: {path: …}, {factory: …} or {from_teacher: {layers: [0, 2, 4]}}.")
        student = student_from_init(draft.student_init, teacher, where=f"method '{config.method}' student_init")
        source = f"built by method '{config.method}': {draft.student_init}"
    recipe = make_recipe(config, teacher, student) if config.method is not None else None
    return student, recipe, source


def _recipe_with_matches(config: RunConfig, recipe: Recipe | None,
                         layer_map: list[tuple[int, int]] | None) -> tuple[Recipe, list[list[str]]]:
    """The method's recipe with the config's own matches joined to its last stage (or a recipe of the
    matches alone), and each stage's match origins."""
    extra, extra_origins = config_matches(config, layer_map)
    if recipe is None:
        hard = maybe_schedule(config.hard_label_weight, path="hard_label_weight")
        return Recipe("matches", [Stage("distil", extra, hard_label_weight=hard if hard is not None else 0.0)]), \
            [extra_origins]
    stage_origins = []
    for i, stage in enumerate(recipe.stages):
        last = i == len(recipe.stages) - 1
        stage.matches, origins = _stage_matches(stage, extra, extra_origins, last, config.method)
        stage_origins.append(origins)
        if config.hard_label_weight is not None:
            stage.hard_label_weight = maybe_schedule(config.hard_label_weight, path="hard_label_weight")
    return recipe, stage_origins


def _stages(config: RunConfig, recipe: Recipe, stage_origins: list[list[str]], data: DataParts,
            loaders: dict[str, DataLoader], teacher: nn.Module, trained: nn.Module,
            assistant: nn.Module | None) -> list[StageParts]:
    out = Path(config.output_dir)
    chain = {"teacher": teacher, "assistant": assistant}
    stages = []
    learners = chain_learners(recipe.stages, trained, assistant)
    for i, stage in enumerate(recipe.stages):
        if stage.data not in loaders:
            hint = ("set data.unlabelled to a text file (one text per line) or a CSV/JSON-lines file"
                    if stage.data == "unlabelled" else f"the data has no '{stage.data}' split")
            raise ConfigError(f"method '{recipe.method}' stage '{stage.name}' trains on '{stage.data}' data: {hint}.")
        data_name = stage_data(config, stage.data, bool(stage.matches))
        datasets = stage_parts(config, data, data_name)
        loader = loaders[data_name] if len(datasets) == 1 else training_loader(config, data, datasets)
        stage_teacher = chain.get(stage.teacher)
        if stage_teacher is None:
            raise ConfigError(f"method '{recipe.method}' stage '{stage.name}': no '{stage.teacher}' model in this run.")
        check_refs(stage.matches, stage_origins[i], stage_teacher, learners[i])
        directory = out if len(recipe.stages) == 1 else out / "stages" / f"{i + 1}-{stage.name}"
        stages.append(StageParts(i, stage, stage_teacher, learners[i], loader, stage_origins[i], directory,
                                 data_name, datasets))
    return stages


def _check_teacher_head(config: RunConfig, stages: list[StageParts]) -> None:
    """A teacher whose classifier is made at load is random and frozen: its logits are no target."""
    from kdistill.labels import teacher_labels

    head = teacher_labels(config.teacher)
    if not head.new_head:
        return
    for part in stages:
        reading = [m.name or m.teacher for m in part.stage.matches if m.teacher == "logits"]
        if part.stage.teacher == "teacher" and reading:
            raise ConfigError(
                f"teacher: {head.source}, so its logits are random (the teacher is not trained); stage "
                f"'{part.stage.name}' distils them (match '{reading[0]}'). Give a teacher fine-tuned for these "
                "labels, or match only hidden states and attentions."
            )


def _check_vocab_sizes(config: RunConfig, teacher: nn.Module, student: nn.Module, tokenizer: Any,
                       student_tokenizer: Any) -> None:
    """Each Hugging Face model can look up every id its tokenizer gives (a factory's too), before a batch runs."""
    from kdistill.model_files import vocab_too_small

    teacher_source = config.data.tokenizer or config.teacher.path
    feeds = (("teacher", teacher, tokenizer, teacher_source),
             ("student", student, student_tokenizer or tokenizer, config.data.student_tokenizer or teacher_source))
    for role, model, feeding, source in feeds:
        try:
            rows = model.get_input_embeddings().num_embeddings if is_hf_model(model) else None
        except (AttributeError, NotImplementedError):
            rows = None
        if rows is None:
            continue  # not a Hugging Face model: its inputs are its own business
        problem = vocab_too_small(role, rows, "rows of its input embeddings", feeding.get_vocab(), source)
        if problem:
            raise ConfigError(problem)


def _check_classes(config: RunConfig, data: DataParts, loaders: Mapping[str, DataLoader], teacher: nn.Module,
                   student: nn.Module) -> None:
    """Every label of every split is a class of both models (their real output widths)."""
    from kdistill.labels import check_label_range, too_many_classes
    from kdistill.train.evaluate import class_count

    if data.num_classes is None or "train" not in loaders:
        return
    batch = next(iter(loaders["train"]))
    for role, model, key in (("teacher", teacher, None), ("student", student, "student_inputs")):
        classes = class_count(model, batch, inputs_key=key)
        if classes is None:
            continue
        if data.num_classes > classes:
            raise DataError(too_many_classes(role, classes, data.num_classes, hf=is_hf_model(model)))
        for split, table in data.tables.items():
            check_label_range(table.labels, classes, source=data.sources.get(split, split),
                              column=config.data.label or "label", records=table.records,
                              what=f"the {role}'s {classes} classes")


# ---------------------------------------------------------------------------------------------
# Training config per stage


def stage_train_config(config: RunConfig, part: StageParts):
    from kdistill.train import TrainConfig, run_length

    fields = config.training.model_dump()
    fields["seed"] = config.train_seed()
    unknown = [k for k in part.stage.training if k not in fields]
    if unknown:
        raise ConfigError(f"method stage '{part.stage.name}': unknown training settings {unknown}.")
    fields.update(part.stage.training)
    epochs = part.stage.epochs if part.stage.epochs is not None else fields["epochs"]
    fields["epochs"], fields["max_steps"] = run_length(epochs, fields["max_steps"], len(part.loader),
                                                       fields["grad_accum"])
    return TrainConfig(**fields)


def estimated_steps(train_config, loader, processes: int = 1) -> int:
    """The optimiser steps the Trainer plans for a stage (each of N processes reads 1/N of the batches)."""
    if train_config.max_steps:
        return train_config.max_steps
    return max(math.ceil(math.ceil(len(loader) / processes) / train_config.grad_accum), 1) * train_config.epochs


# ---------------------------------------------------------------------------------------------
# Evaluation


def _logits_are_classes(model: nn.Module) -> bool:
    if is_hf_model(model):
        return type(model).__name__.endswith("ForSequenceClassification")
    return True


def compare(teacher: nn.Module, student: nn.Module, loader: DataLoader) -> dict[str, Any]:
    """Accuracy and macro-F1 of teacher and student on ``loader``, and how often they agree."""
    from kdistill.train.evaluate import classification_metrics, predict

    device = next(student.parameters()).device
    teacher_pred, labels = predict(teacher, loader, device=device)
    student_pred, _ = predict(student, loader, device=device, inputs_key="student_inputs")
    result: dict[str, Any] = {"examples": int(len(student_pred)),
                              "agreement": float((teacher_pred == student_pred).float().mean())}
    if labels is not None:
        result["teacher"] = classification_metrics(teacher_pred, labels)
        result["student"] = classification_metrics(student_pred, labels)
    return result


def evaluate_splits(teacher: nn.Module, student: nn.Module, loaders: Mapping[str, DataLoader],
                    splits=("validation", "test")) -> dict[str, Any]:
    if not (_logits_are_classes(teacher) and _logits_are_classes(student)):
        return {}
    return {split: compare(teacher, student, loaders[split]) for split in splits if split in loaders}


# ---------------------------------------------------------------------------------------------
# run


def run(config: RunConfig, *, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Train every stage and write the output folder; returns the summary (also in summary.json).

    The folder is checked before any weight loads, but changed only once the models are built and
    every stage about to train has run its first batch (refs, shapes, projections): an --overwrite
    whose config does not fit the models leaves the old run as it was.
    """
    from safetensors.torch import load_model as load_weights_into

    from kdistill.train import Trainer, save_weights

    # Under a launcher (several processes) only the main process checks and writes the output
    # folder; the others wait for its answer (or its error).
    out, continuing = on_main_process(check_output_dir, config, resume=resume, overwrite=overwrite)
    if config.baseline and distributed_world_size() > 1:
        raise ConfigError("baseline: trained in one process for now; run without --processes, or set baseline: false.")
    started = time.time()
    parts = build(config, finetune=True)
    kept, reopened = _finished_stages(parts, continuing=continuing, resume=resume)
    for part in parts.stages:  # a chain's stage taught by the assistant is checked when it starts (see below)
        if part.index not in kept and (parts.assistant is None or part.teacher is not parts.assistant):
            _prepare_stage(parts, part)
    on_main_process(start_run_folder, config, overwrite=overwrite, reopened=tuple(p.directory for p in reopened))
    stage_summaries = []
    for part in parts.stages:
        done = part.directory / STAGE_DONE
        if part.index in kept:
            load_weights_into(part.student, str(part.directory / STAGE_STUDENT))
            stage_summaries.append(kept[part.index])
            continue
        # Made only now for a stage taught by a chain's assistant: making its Distiller freezes the
        # assistant, which the stage before trains.
        distiller = _prepare_stage(parts, part)
        train_config = stage_train_config(config, part)
        eval_loader = parts.loaders.get("validation") if _logits_are_classes(part.student) and parts.data.num_classes else None
        loader = part.loader
        if config.cache == "teacher":
            loader = teacher_cached_loader(part, distiller, out)
        elif config.cache == "logits" and reads_only_logits(distiller):
            loader = logits_loader(parts, part, distiller)
        trainer = Trainer(distiller, loader, config=train_config, eval_data=eval_loader, output_dir=part.directory)
        result = trainer.train(resume=continuing)
        distiller.remove_hooks()
        record = {"stage": part.stage.name, "data": part.data_name, "steps": result.steps, "total_steps": result.total_steps,
                  "best_metric": result.best_metric, "best_step": result.best_step,
                  "final_metrics": result.final_metrics, "skipped_steps": result.skipped_steps,
                  "effective_batch_size": getattr(result, "effective_batch_size", None)}

        def finish_stage(part=part, done=done, record=record) -> None:
            save_weights(part.student, part.directory / STAGE_STUDENT)
            atomic_write_text(done, json.dumps(record, indent=2))
            if len(parts.stages) > 1:
                _append_stage_metrics(out, part)

        on_main_process(finish_stage)
        stage_summaries.append(record)
    baseline = _train_baseline(parts, out)

    def write_results() -> dict[str, Any]:
        final_model = (parts.trained.export() if hasattr(parts.trained, "export") and parts.trained is not parts.student
                       else parts.trained)
        student_dir = save_student(parts, final_model, out)
        summary = {
            "config": str(out / RESOLVED_NAME),
            "student": str(student_dir),
            "method": parts.recipe.method,
            "stages": stage_summaries,
            "parameters": {"teacher": count_parameters(parts.teacher), "student": count_parameters(final_model)},
            "data": {split: {"examples": len(dataset), "source": parts.data.sources.get(split, split)}
                     for split, dataset in parts.data.datasets.items()},
            "metrics": evaluate_splits(parts.teacher, final_model, parts.loaders),
            "processes": distributed_world_size(),
            "seconds": round(time.time() - started, 2),
            **_labels_only_results(parts, baseline, out),
        }
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
        from kdistill.report import bench_section, run_report

        kept = bench_section(out / "report.md")  # a benchmark of an earlier save stays in the report
        run_report(out, summary, dump_yaml(config.resolved()), keep=[kept] if kept else [])
        return summary

    return on_main_process(write_results)


def baseline_train_config(parts: RunParts):
    """``baseline: true``'s settings: the last stage's when it trains on the labelled data, else the
    run's ``training``; the same seed."""
    from kdistill.train import TrainConfig, run_length

    last = parts.stages[-1]
    if last.stage.data == "train" and last.loader is parts.loaders["train"]:
        return stage_train_config(parts.config, last)
    fields = {**parts.config.training.model_dump(), "seed": parts.config.train_seed()}
    fields["epochs"], fields["max_steps"] = run_length(fields["epochs"], fields["max_steps"],
                                                       len(parts.loaders["train"]), fields["grad_accum"])
    return TrainConfig(**fields)


def _train_baseline(parts: RunParts, out: Path) -> dict | None:
    """The student as built, trained on the labels alone (``baseline: true``)."""
    if parts.baseline is None:
        return None
    from kdistill.finetune import train_baseline

    train_config = baseline_train_config(parts)
    return train_baseline(parts.baseline, parts.loaders, train_config, out, parts.student_tokenizer or parts.tokenizer,
                          planned=estimated_steps(train_config, parts.loaders["train"]))


def _labels_only_results(parts: RunParts, baseline: dict | None, out: Path) -> dict[str, Any]:
    """The summary's entries for the teacher's fine-tune and the baseline (none when not asked for)."""
    extra: dict[str, Any] = {}
    if parts.finetuned is not None:
        from kdistill.finetune import copy_into_run

        extra["teacher_finetune"] = {"folder": str(copy_into_run(parts.finetuned, out)),
                                     "cache": str(parts.finetuned.folder), "cached": parts.finetuned.cached,
                                     "settings": parts.finetuned.settings}
    if baseline is not None:
        metrics = evaluate_splits(parts.teacher, parts.baseline, parts.loaders)
        extra["baseline"] = {"student": str(out / "baseline" / "student"), "steps": baseline["steps"],
                             "parameters": count_parameters(parts.baseline),
                             "metrics": {split: {**result["student"], "agreement": result["agreement"]}
                                         for split, result in metrics.items() if "student" in result}}
    return extra


def _prepare_stage(parts: RunParts, part: StageParts) -> Distiller:
    """The stage's Distiller, prepared on its first batch (shapes checked, projections inserted)."""
    distiller = parts.stage_distiller(part.index)
    if not distiller.prepared:
        try:
            distiller.prepare(next(iter(part.loader)))
        except ShapeError as exc:
            raise _name_match(exc, distiller, part) from None
    return distiller


def _finished_stages(parts: RunParts, *, continuing: bool, resume: bool) -> tuple[dict[int, dict], list[StageParts]]:
    """Of a continued run: the finished stages kept as they are (index -> their record), and those
    that train on because ``--resume`` gave them a larger length. Says which, changes nothing.

    A stage that has not finished must have a usable checkpoint if it has any (CheckpointError).
    A finished stage is kept when its planned length is the same. With --resume: a larger one
    continues from its last checkpoint to the new end (only when no later stage has trained on its
    result); a smaller one is refused (kdistill does not shorten a finished stage).
    """
    from kdistill.errors import CheckpointError
    from kdistill.train import latest_good_checkpoint, list_checkpoints
    from kdistill.train.logging import notice

    kept: dict[int, dict] = {}
    reopened: list[StageParts] = []
    if not continuing:
        return kept, reopened
    single = len(parts.stages) == 1
    out = parts.config.output_dir
    for part in parts.stages:
        done = part.directory / STAGE_DONE
        if not done.is_file():
            with warnings.catch_warnings():  # the Trainer reports a fallback when it resumes
                warnings.simplefilter("ignore")
                latest_good_checkpoint(part.directory / "checkpoints")  # none usable: refused before any change
            continue
        record = json.loads(done.read_text(encoding="utf-8"))
        ran = int(record.get("steps") or 0)
        before = int(record.get("total_steps") or ran)
        train_config = stage_train_config(parts.config, part)
        planned = estimated_steps(train_config, part.loader, distributed_world_size())
        what = f"the run in '{out}'" if single else f"stage '{part.stage.name}' of the run in '{out}'"
        setting = "training.max_steps" if train_config.max_steps else "training.epochs"
        if not resume or planned == before:
            kept[part.index] = record
            continue
        if planned < before:
            raise ConfigError(f"{setting}: this config plans {planned} steps for {what}, fewer than the {before} it "
                              "was trained for; kdistill does not shorten a finished run. Pass --overwrite to train "
                              f"again with {planned} steps, or choose another output_dir.")
        later = [p.stage.name for p in parts.stages[part.index + 1:]
                 if (p.directory / STAGE_DONE).is_file() or list_checkpoints(p.directory / "checkpoints")]
        if later:
            raise ConfigError(f"{setting}: this config plans {planned} steps for {what}, which finished at step {ran}, "
                              f"but the later stage '{later[0]}' has trained on its result and would be left stale. "
                              "Pass --overwrite to train every stage again with the new length.")
        if not list_checkpoints(part.directory / "checkpoints"):
            raise CheckpointError(f"resume: {what} finished at step {ran} and this config plans {planned} steps, but "
                                  f"'{part.directory / 'checkpoints'}' holds no checkpoint to continue from. Pass "
                                  "--overwrite to train again from step 0.")
        notice(f"{what} finished at step {ran}; this config plans {planned} steps ({setting}): continuing from step "
               f"{ran} to {planned}, the learning-rate schedule spread over the {planned} steps.")
        reopened.append(part)
    steps = ", ".join(f"'{parts.stages[i].stage.name}' {record.get('steps')}" for i, record in kept.items())
    if len(kept) == len(parts.stages):
        notice(f"the run in '{out}' is already complete (steps: {steps}): nothing to train; the student is saved "
               "again and evaluated (summary.json rewritten).")
    elif kept:
        notice(f"finished stages kept as they are (steps: {steps}); the run continues with the others.")
    return kept, reopened


CACHE_DIR = "teacher-cache"


def stage_cache(part: StageParts, distiller: Distiller, out: Path):
    """The teacher cache of a stage (``cache: teacher``), or ``(None, why)`` when the stage reads
    nothing from a teacher (a Theseus stage, a labels-only stage)."""
    from kdistill.cache import TeacherCache

    if not distiller.teachers or not any(b.teacher_refs for b in distiller.bound):
        return None, "no match of this stage reads a teacher feature"
    return TeacherCache(out / CACHE_DIR, distiller, dataset=part.loader.dataset), ""


def teacher_cached_loader(part: StageParts, distiller: Distiller, out: Path) -> DataLoader:
    """``part.loader`` whose batches carry the cached teacher features (``cache: teacher``).

    One process: the first epoch fills the cache as it goes. Several processes: the main process
    fills it completely first (the teacher over the whole training set), the others then open it
    read-only, so it is written once.
    """
    from kdistill.cache import cached_loader

    cache, _ = stage_cache(part, distiller, out)
    if cache is None:
        return part.loader
    if distributed_world_size() > 1:
        on_main_process(lambda: cache.fill(cached_loader(part.loader, cache)) and None)
        if not cache.complete:  # the main process filled it: reopen what it wrote
            cache, _ = stage_cache(part, distiller, out)
    return cached_loader(part.loader, cache)


def logits_loader(parts: RunParts, part: StageParts, distiller: Distiller) -> DataLoader:
    """``part.loader``'s batches with the teacher's stored logits (``cache: logits``; computed once, by
    the main process under a launcher)."""
    from kdistill import logits_cache
    from kdistill.run_data import tokenized

    key = logits_cache.teacher_key(part.teacher)
    size = parts.config.data.eval_batch_size or parts.config.data.batch_size
    wrapped = []
    for dataset in part.datasets:
        base = tokenized(dataset)
        name = "unlabelled" if base is parts.datasets.get("unlabelled") else part.stage.data
        logits = on_main_process(logits_cache.cached_logits, distiller, key, base, size, name=name)
        wrapped.append(logits_cache.WithTeacherLogits(dataset, logits))
    collate = logits_cache.LogitsCollator(tokenized(part.datasets[0]).collator())
    return training_loader(parts.config, parts.data, wrapped, collate)


def on_main_process(function, *args, **kwargs):
    """``function(*args, **kwargs)`` in the main process only; every process gets its result.

    One process (no launcher): just the call. Under a launcher the others wait for the main
    process and receive its result, or raise the error it raised, so no process is left waiting.
    """
    if distributed_world_size() <= 1:
        return function(*args, **kwargs)
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    state = PartialState(cpu=processes_use_cpu())
    box: list[Any] = [None]
    failure = None
    if state.is_main_process:
        try:
            box = [(True, function(*args, **kwargs))]
        except KdistillError as exc:
            box = [(False, exc)]
        except Exception as exc:  # the others get a readable error; the main process re-raises the original
            failure = exc
            box = [(False, KdistillError(f"the main process failed: {type(exc).__name__}: {exc}"))]
    broadcast_object_list(box)
    if failure is not None:
        raise failure
    ok, value = box[0]
    if not ok:
        raise value
    return value


def _append_stage_metrics(out: Path, part: StageParts) -> None:
    from kdistill.train import read_metrics

    source = part.directory / "metrics.jsonl"
    if not source.is_file():
        return
    target = out / "metrics.jsonl"
    lines = target.read_text(encoding="utf-8").splitlines() if target.is_file() else []
    lines = [line for line in lines if json.loads(line).get("stage") != part.stage.name]
    lines += [json.dumps({"stage": part.stage.name, **record}) for record in read_metrics(source)]
    atomic_write_text(target, "\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------
# eval of a finished run


def load_run(run_dir: str | os.PathLike) -> tuple[RunConfig, nn.Module, nn.Module, DataParts, dict[str, DataLoader]]:
    """Reload a run folder: its config, the teacher, the trained student and the data."""
    from kdistill import models
    from kdistill.run_folder import RunFolder

    folder = RunFolder(run_dir)
    if not folder.is_run:
        raise ConfigError(f"'{folder.path}' is not a kdistill run folder: it has no {RESOLVED_NAME}.")
    student_dir = folder.student_dir
    if not student_dir.is_dir():
        raise ConfigError(f"'{folder.path}' holds no trained student (no student/ folder): the run has not finished. "
                          "Continue it with `kdistill run CONFIG --resume`.")
    config = folder.config()
    if config.teacher.finetune is not None:  # the fine-tuned teacher the run saved, not the base
        if folder.teacher_path() is None:
            raise ConfigError(f"'{folder.path}' holds no fine-tuned teacher (no teacher/ folder) although its "
                              "teacher.finetune is set: continue the run with `kdistill run CONFIG --resume`.")
        teacher = models.load_hf_model(folder.teacher_path(), task=config.teacher.task)
    else:
        teacher = load_model(config.teacher, "teacher", config)
    if (student_dir / "config.json").is_file():
        task = config.student.task if config.student is not None and config.student.path else config.teacher.task
        student = models.load_hf_model(student_dir, task=task)
    else:
        if config.student is not None:
            student = load_model(config.student, "student", config, teacher=teacher)
        else:
            draft = make_recipe(config, teacher, None)
            student = student_from_init(draft.student_init or {}, teacher,
                                        where=f"method '{config.method}' student_init")
        from safetensors.torch import load_model as load_weights_into

        load_weights_into(student, str(student_dir / "student.safetensors"))
    tokenizer = student_tokenizer = None
    if config.data.builtin not in IMAGE_DATA:
        tokenizer = models.load_tokenizer(config.data.tokenizer or config.teacher.path)
        if config.data.student_tokenizer:
            student_tokenizer = models.load_tokenizer(config.data.student_tokenizer)
    data = build_data(config, tokenizer, student_tokenizer)
    return config, teacher, student, data, make_loaders(config, data)


def evaluate_run(run_dir: str | os.PathLike, split: str = "test") -> dict[str, Any]:
    """Teacher vs student on one split of a finished run: accuracy, macro-F1, agreement."""
    _config, teacher, student, _data, loaders = load_run(run_dir)
    if split not in loaders or split == "unlabelled":
        available = ", ".join(s for s in loaders if s != "unlabelled")
        raise ConfigError(f"--split: the run's data has no '{split}' split; it has: {available}.")
    teacher.eval()
    result = compare(teacher, student, loaders[split])
    if "teacher" not in result:
        raise DataError(f"the '{split}' split has no labels, so accuracy cannot be measured "
                        f"(agreement of teacher and student: {result['agreement']:.4f}).")
    baseline_dir = Path(run_dir) / "baseline" / "student"
    if baseline_dir.is_dir():  # baseline: true — the same student trained on the labels alone
        import copy

        from kdistill.finetune import load_baseline

        baseline = copy.deepcopy(student)
        load_baseline(baseline, Path(run_dir))
        again = compare(teacher, baseline, loaders[split])
        result["baseline"] = {**again["student"], "agreement": again["agreement"]}
    return {"split": split, **result}


# ---------------------------------------------------------------------------------------------
# plan


def plan(config: RunConfig) -> str:
    """What the run will do, as text (:class:`kdistill.planning.Plan`); loads the models and runs one
    batch, trains nothing."""
    from kdistill.planning import make_plan

    return make_plan(config).render()


def _name_match(exc: ShapeError, distiller: Distiller, part: StageParts) -> ShapeError:
    text = str(exc)
    for bound, origin in zip(distiller.bound, part.origins):
        if text.startswith(bound.name):
            return ShapeError(f"{origin}: {text}")
    return exc


__all__ = [
    "DataParts", "RunParts", "StageParts", "build", "build_data", "compare", "evaluate_run", "load_run",
    "make_loaders", "on_main_process", "plan", "prepare_output_dir", "run", "save_student",
]
