"""Building a run from its config: models, data, the method's stages with their matches and loaders.

    parts = build(config)          # loads the weights, tokenises the data; trains nothing

:func:`build` is what ``kdistill plan`` describes (:mod:`kdistill.planning`) and what ``kdistill run``
trains (:mod:`kdistill.run`). With ``finetune`` a teacher that ``teacher.finetune`` asks for and the
cache lacks is fine-tuned while building.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from kdistill.adapters.base import get_submodule
from kdistill.adapters.hf import hf_num_layers, is_hf_model
from kdistill.config import IMAGE_DATA, RunConfig
from kdistill.distiller import ENSEMBLE, Distiller
from kdistill.errors import ConfigError, DataError, KdistillError, RefError
from kdistill.launch import distributed_world_size
from kdistill.matches import Match, explicit_layer_map, last_k_layer_map, skip_layer_map, uniform_layer_map
from kdistill.methods import Recipe, Stage, chain_learners
from kdistill.refs import LAYER_KINDS, parse_ref
from kdistill.registry import importable
from kdistill.run_data import DataParts, build_data, make_loaders, stage_data, stage_parts, training_loader
from kdistill.schedules import maybe_schedule

# ---------------------------------------------------------------------------------------------
# What build() returns


@dataclass
class StageParts:
    """One stage ready to train: its recipe stage, models, data and (once made) its Distiller."""

    index: int
    stage: Stage
    teacher: nn.Module | dict[str, nn.Module]  # several teachers (kdistill.teachers): every one by name
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
    # Every teacher by name, the primary (``teacher``) first; {"teacher": teacher} for one teacher.
    teachers: dict[str, nn.Module] = field(default_factory=dict)
    finetunes: dict[str, Any] = field(default_factory=dict)  # several teachers: each fine-tune's cache entry

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
            part.distiller = _make_distiller(self.config, part, self.teacher)
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


def check_refs(matches: list[Match], origins: list[str], teacher: nn.Module | Mapping[str, nn.Module],
               student: nn.Module) -> None:
    """Every ref against the real models, all problems in one error (before any batch runs). ``teacher``:
    the model, or several by name: a match's teacher refs are checked against the teacher(s) it reads."""
    problems = []
    for match, origin in zip(matches, origins):
        sides = [("student", match.student, student)]
        if isinstance(teacher, Mapping):
            read = (list(teacher) if match.teacher_name == ENSEMBLE else
                    [match.teacher_name if match.teacher_name in teacher else next(iter(teacher))])
            sides = [("teacher", match.teacher, teacher[name]) for name in read] + sides
        else:
            sides.insert(0, ("teacher", match.teacher, teacher))
        for role, text, model in sides:
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


def make_recipe(config: RunConfig, teacher: nn.Module, student: nn.Module | None,
                teachers: Mapping[str, nn.Module] | None = None) -> Recipe:
    """The config's method for these models. ``teachers``: every teacher by name, which ``method:
    multiteacher`` takes (its ensemble); other methods see ``teacher``, the primary one."""
    if config.method == "multiteacher" and teachers is not None and len(teachers) > 1:
        teacher = dict(teachers)
    return expand_method(config.method, config.method_args, teacher, student, python_path=config.python_path)


def expand_method(method: str, method_args: Mapping[str, Any], teacher: Any, student: nn.Module | None, *,
                  python_path: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Method ``method`` expanded for these models, its ``method_args`` (schedules as dicts allowed) checked:
    the one expansion ``kdistill run`` and :class:`kdistill.integrations.hf_trainer.DistillationTrainer` use."""
    from kdistill import methods

    args = {k: maybe_schedule(v, path=f"method_args.{k}") for k, v in method_args.items()}
    with importable(list(python_path)):
        try:
            return methods.expand(method, teacher, student, **args)
        except TypeError as exc:
            raise ConfigError(f"method_args: method '{method}' rejected its arguments: {exc}.") from None


def _stage_matches(recipe_stage: Stage, extra: list[Match], extra_origins: list[str], last: bool,
                   method: str | None) -> tuple[list[Match], list[str]]:
    """A method stage's matches; the config's own ``matches`` join the last stage."""
    own = list(recipe_stage.matches)
    origins = [f"method '{method}' stage '{recipe_stage.name}' match {i}" for i in range(len(own))]
    if last:
        own += extra
        origins += extra_origins
    return own, origins


def _make_distiller(config: RunConfig, part: StageParts, teacher: nn.Module) -> Distiller:
    stage = part.stage
    matches = stage.matches
    if config.capture is not None:  # a stage that trains from the capture reads its top-k (kdistill.capture)
        from kdistill.capture import capture_matches, stage_reads_capture

        if stage_reads_capture(config, part, teacher)[0]:
            matches = capture_matches(matches, config.capture)[0]
    try:
        return Distiller(part.teacher, part.student, matches, hard_label_weight=stage.hard_label_weight,
                         teacher_weights=config.teacher_weights if isinstance(part.teacher, Mapping) else None,
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
    teachers, sources, finetunes = _teachers(config, data, loaders, tokenizer, finetune)
    teacher = next(iter(teachers.values()))  # the primary teacher
    finetuned = finetunes.get("teacher") if config.teachers is None else None  # several: RunParts.finetunes
    student, recipe, source = _student(config, teacher, teachers)
    sources["student"] = source
    from kdistill.embedding import mark_models

    mark_models(config, teacher, student)  # task: embedding — each model's pooling travels with it
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
        _check_vocab_sizes(config, teachers, student, tokenizer, student_tokenizer)
    _check_classes(config, data, loaders, teachers, student)

    layer_map = None
    if any(m.teacher.endswith(".*") for m in config.matches):
        layer_map = resolve_layer_map(config.layer_map, teacher, student)
    recipe, stage_origins = _recipe_with_matches(config, recipe, layer_map)
    if tokenizer is not None and config.lm_kind() is not None:
        _real_vocabulary(recipe, teacher, student, len(tokenizer))
    stages = _stages(config, recipe, stage_origins, data, loaders, teachers, trained, assistant)
    _check_teacher_head(config, stages, finetunes)
    parts = RunParts(config, teacher, student, trained, assistant, tokenizer, student_tokenizer, tokenizer_source,
                     data, loaders, recipe, stages, layer_map, sources, finetuned, baseline, teachers,
                     finetunes if config.teachers is not None else {})
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


def _teachers(config: RunConfig, data: DataParts, loaders: dict[str, DataLoader], tokenizer: Any,
              finetune: bool) -> tuple[dict[str, nn.Module], dict[str, str], dict[str, Any]]:
    """Every teacher by name (the primary first), where each came from (``sources``: ``teacher`` for one
    teacher, ``teacher:<name>`` for several) and the cache entries of those fine-tuned."""
    if config.teachers is None:
        teacher, sources, entry = _teacher(config, data, loaders, tokenizer, finetune)
        return {"teacher": teacher}, sources, ({"teacher": entry} if entry is not None else {})
    teachers, sources, entries = {}, {}, {}
    for name, spec in config.teachers.items():
        # The fine-tune's settings and cache key read ``config.teacher``: each teacher in its place.
        teachers[name], source, entry = _teacher(config.model_copy(update={"teacher": spec}), data, loaders,
                                                 tokenizer, finetune, where=f"teachers.{name}")
        sources[f"teacher:{name}"] = source["teacher"]
        if entry is not None:
            entries[name] = entry
    sources["teacher"] = sources[f"teacher:{next(iter(teachers))}"]
    return teachers, sources, entries


def _teacher(config: RunConfig, data: DataParts, loaders: dict[str, DataLoader], tokenizer: Any,
             finetune: bool, where: str = "teacher") -> tuple[nn.Module, dict[str, str], Any]:
    """The teacher, where it came from, and (``teacher.finetune``) its fine-tune's cache entry."""
    if config.teacher.finetune is None:
        teacher = load_model(config.teacher, where, config)
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
        teacher = load_hf_model(entry.folder, task=config.teacher.task)
        source = f"fine-tuned from {base} (cached in {entry.folder})"
    elif finetune:
        teacher = kfinetune.finetune_teacher(config, entry, loaders, data.label_names, data.num_classes, tokenizer)
        source = f"fine-tuned from {base} in this run (cached in {entry.folder})"
    else:  # the plan: the base with a new head has the fine-tuned teacher's shapes
        teacher = load_hf_model(base, num_labels=data.num_classes, task=config.teacher.task)
        epochs = config.teacher.finetune.max_steps or config.teacher.finetune.epochs
        unit = "steps" if config.teacher.finetune.max_steps else "epoch(s)"
        source = (f"{base}, to be fine-tuned first: {epochs} {unit} on {len(data.datasets['train']):,} labelled "
                  f"examples (not cached yet; it will be in {entry.folder})")
    torch.manual_seed(config.train_seed())  # the student starts the same whether the teacher was cached or not
    return teacher, {"teacher": source}, entry


def _student(config: RunConfig, teacher: nn.Module, teachers: Mapping[str, nn.Module] | None = None
             ) -> tuple[nn.Module, Recipe | None, str]:
    """The student (from the config or the method's ``student_init``), the method's recipe and the source;
    ``teacher`` the primary teacher, ``teachers`` every one (:func:`make_recipe`)."""
    if config.student is not None:
        student = load_model(config.student, "student", config, teacher=teacher)
        source = (config.student.path or (config.student.factory and f"factory {config.student.factory}")
                  or f"from_teacher {config.student.from_teacher.model_dump(exclude_none=True)}")
        if config.student.lora is not None:
            from kdistill.lora import add_lora

            source += f"; {add_lora(student, config.student.lora)}"
    else:
        draft = make_recipe(config, teacher, None, teachers)
        if not draft.student_init:
            raise ConfigError(f"student: required: method '{config.method}' does not say how to build a student. "
                              "Give student: {path: …}, {factory: …} or {from_teacher: {layers: [0, 2, 4]}}.")
        student = student_from_init(draft.student_init, teacher, where=f"method '{config.method}' student_init")
        source = f"built by method '{config.method}': {draft.student_init}"
    recipe = make_recipe(config, teacher, student, teachers) if config.method is not None else None
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
            loaders: dict[str, DataLoader], teachers: Mapping[str, nn.Module], trained: nn.Module,
            assistant: nn.Module | None) -> list[StageParts]:
    from kdistill.teachers import stage_teachers

    out = Path(config.output_dir)
    chain = {"teacher": stage_teachers(teachers), "assistant": assistant}
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


def _real_vocabulary(recipe: Recipe, teacher: nn.Module, student: nn.Module, vocabulary: int) -> None:
    """Language models whose output widths differ only by padding rows (embeddings rounded up past the
    tokenizer's ``vocabulary``): their token losses compare the real vocabulary (``vocab_size``) unless
    a match sets it. Widths below the vocabulary are left to the loss's own error."""
    import inspect

    from kdistill.losses import get_loss

    widths = {getattr(getattr(model, "config", None), "vocab_size", None) for model in (teacher, student)}
    if len(widths) < 2 or None in widths or min(widths) < vocabulary:
        return
    for stage in recipe.stages:
        for i, match in enumerate(stage.matches):
            takes = "vocab_size" in inspect.signature(get_loss(match.loss)).parameters
            if takes and "vocab_size" not in match.args and match.teacher == "logits" and match.student in (None, "logits"):
                stage.matches[i] = match.with_(args={**match.args, "vocab_size": vocabulary})


def _check_teacher_head(config: RunConfig, stages: list[StageParts], finetunes: Mapping[str, Any]) -> None:
    """A teacher whose classifier is made at load is random and frozen: its logits are no target."""
    from kdistill.labels import teacher_labels
    from kdistill.teachers import teachers_read_logits

    specs = config.teacher_specs()
    for name, spec in specs.items():
        head = teacher_labels(spec)
        if name in finetunes or not head.new_head:
            continue
        for part in stages:
            reading = teachers_read_logits(part.stage.matches, name, next(iter(specs)))
            if part.stage.teacher != "teacher" or not reading:
                continue
            where = "teacher" if config.teachers is None else f"teachers.{name}"
            raise ConfigError(
                f"{where}: {head.source}, so its logits are random (the teacher is not trained); stage "
                f"'{part.stage.name}' distils them (match '{reading[0]}'). Give a teacher fine-tuned for these "
                "labels, or match only hidden states and attentions."
            )


def _check_vocab_sizes(config: RunConfig, teachers: Mapping[str, nn.Module], student: nn.Module, tokenizer: Any,
                       student_tokenizer: Any) -> None:
    """Each Hugging Face model can look up every id its tokenizer gives (a factory's too), before a batch runs;
    every teacher reads the primary teacher's tokens."""
    from kdistill.model_files import vocab_too_small

    teacher_source = config.data.tokenizer or config.teacher.path
    feeds = [*(("teacher", teacher, tokenizer, teacher_source) for teacher in teachers.values()),
             ("student", student, student_tokenizer or tokenizer, config.data.student_tokenizer or teacher_source)]
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


def _check_classes(config: RunConfig, data: DataParts, loaders: Mapping[str, DataLoader],
                   teachers: Mapping[str, nn.Module], student: nn.Module) -> None:
    """Every label of every split is a class of every model (their real output widths)."""
    from kdistill.labels import check_label_range, too_many_classes
    from kdistill.train.evaluate import class_count

    if data.num_classes is None or "train" not in loaders:
        return
    batch = next(iter(loaders["train"]))
    models = [*(("teacher" if len(teachers) == 1 else f"teachers.{name}", teacher, None)
                for name, teacher in teachers.items()), ("student", student, "student_inputs")]
    for role, model, key in models:
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
