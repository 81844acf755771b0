"""The plan of a run: a frozen description of what ``kdistill run`` will do, built from a config.

    plan = make_plan(config)     # loads the models, runs one batch per stage; trains nothing
    print(plan.render())         # what `kdistill plan` prints
    plan.to_dict()               # what `kdistill plan --json` prints, for tools

It holds the data (splits and where they come from, label ids, tokenizers), the models (size,
block list, source: a cached or to-be-fine-tuned teacher, the baseline), the layer map, each stage
in order with its matches bound to losses (refs resolved, tensor shapes, projections sized, when
each is active), its steps and cache decision, the parameter counts and the method's expansion.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from kdistill.config import RunConfig, dump_yaml
from kdistill.errors import ShapeError
from kdistill.run_data import TOKEN_KINDS
from kdistill.schedules import schedule_to_dict, step_at


@dataclass(frozen=True)
class MatchRow:
    """One match of a stage as it will run: refs, tensor shapes, loss, weight, projection, when active."""

    name: str
    teacher: str
    teacher_shape: str
    student: str
    student_shape: str
    loss: str
    weight: str
    projection: str
    active: str


@dataclass(frozen=True)
class StagePlan:
    index: int
    name: str
    teacher: str
    learner: str  # "student" or "assistant"
    data: str
    hard_label_weight: str
    length: str  # "3 epoch(s)" or "200 steps"
    matches: tuple[MatchRow, ...]
    projections: tuple[str, ...]  # "name kind" of each inserted projection
    projection_parameters: int
    teacher_asks: str
    student_asks: str
    steps: int
    batches_per_epoch: int
    grad_accum: int
    cache: str | None


@dataclass(frozen=True)
class ModelPlan:
    role: str
    summary: str
    blocks: str
    source: str
    reads: str | None = None  # several teachers: the matches that read this one


@dataclass(frozen=True)
class Plan:
    source: str
    imports: tuple[str, ...]
    splits: dict[str, int]
    data: tuple[str, ...]  # the data section's lines (sources, columns, label ids, tokenizers, batches)
    models: tuple[ModelPlan, ...]
    baseline: bool
    layer_map: tuple[tuple[int, int], ...] | None
    layer_map_kind: str
    stages: tuple[StagePlan, ...]
    parameters: dict[str, int]
    total_steps: int
    labels_only_steps: dict[str, int]  # the teacher's fine-tune and the baseline, when the run has them
    expansion: dict
    notes: tuple[str, ...]
    embedding: tuple[str, ...] = ()  # task: embedding — pooling, how it is measured and saved (kdistill.embedding)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def render(self) -> str:
        lines = [f"kdistill plan: {self.source}", "", *self.imports, "", "data", *self.data, "", "models"]
        for model in self.models:
            lines += [f"  {model.role:<9} {model.summary}", f"  {'':<9} {model.blocks}", f"  {'':<9} source: {model.source}"]
            if model.reads is not None:
                lines.append(f"  {'':<9} read by: {model.reads}")
        if self.baseline and self.embedding:
            lines.append(f"  {'baseline':<9} the student as built, untrained: the embedding it gives without "
                         "distillation (baseline/); summary and report show it beside teacher and student")
        elif self.baseline:
            lines.append(f"  {'baseline':<9} the student as built, trained on the labels alone with the same settings "
                         "and seed (baseline/); summary and report show it beside teacher and student")
        if self.embedding:
            lines += ["", "sentence embeddings", *self.embedding]
        if self.layer_map is not None:
            lines += ["", f"layer map ({self.layer_map_kind}; teacher hidden -> student hidden, 0 = embeddings)",
                      "  " + ", ".join(f"{t}->{s}" for t, s in self.layer_map)]
        for stage in self.stages:
            lines += ["", *_render_stage(stage, len(self.stages))]
        params = self.parameters
        teacher = max(params["teacher"], 1)
        lines += ["", "parameters",
                  f"  teacher      {params['teacher']:>12,}",
                  f"  student      {params['student']:>12,}  ({params['student'] / teacher:.1%} of the teacher)",
                  f"  projections  {params['projections']:>12,}",
                  f"  trainable    {params['trainable']:>12,}"
                  + (f"  ({params['frozen']:,} frozen by training.freeze)" if params["frozen"] else ""),
                  "", f"estimated steps: {self.total_steps} optimiser steps in all"
                  + "".join(f", plus {steps} for the {what}" for what, steps in self.labels_only_steps.items()),
                  "", "method expansion (copy under `matches:` to edit):"]
        lines += ["  " + line for line in dump_yaml(self.expansion).rstrip().splitlines()]
        if self.notes:
            lines += ["", "notes"] + [f"  - {note}" for note in self.notes]
        return "\n".join(lines) + "\n"


def _render_stage(stage: StagePlan, count: int) -> list[str]:
    lines = [f"stage {stage.index + 1}/{count} '{stage.name}': {stage.teacher} -> {stage.learner}, data "
             f"'{stage.data}', hard_label_weight {stage.hard_label_weight}, {stage.length}"]
    rows = [["match", "teacher", "shape", "student", "shape", "loss", "weight", "projection", "active"]]
    rows += [[m.name, m.teacher, m.teacher_shape, m.student, m.student_shape, m.loss, m.weight, m.projection, m.active]
             for m in stage.matches]
    lines += _table(rows) if len(rows) > 1 else ["  (no matches)"]
    lines.append(f"  projections inserted: {len(stage.projections)}"
                 + (f" ({stage.projection_parameters:,} parameters: " + "; ".join(stage.projections) + ")"
                    if stage.projections else ""))
    lines += [f"  teacher asks for: {stage.teacher_asks}", f"  student asks for: {stage.student_asks}",
              f"  steps: {stage.steps} ({stage.batches_per_epoch} batches per epoch"
              + (f", grad_accum {stage.grad_accum}" if stage.grad_accum > 1 else "") + ")"]
    if stage.cache is not None:
        lines.append(f"  cache: {stage.cache}")
    return lines


# ---------------------------------------------------------------------------------------------
# Building the plan


def make_plan(config: RunConfig) -> Plan:
    """Build the run (models, data, stages), run one batch through every stage, describe it all."""
    from kdistill.factories import describe as describe_imports
    from kdistill.run import build, count_parameters

    if config.tasks is not None:  # several tasks into one student
        from kdistill.multitask import make_tasks_plan

        return make_tasks_plan(config)  # type: ignore[return-value]  # the same render() and to_dict()
    parts = build(config)
    stages = tuple(_stage_plan(config, parts, part) for part in parts.stages)
    student = count_parameters(parts.trained)
    projections = sum(stage.projection_parameters for stage in stages)
    frozen = sum(p.numel() for name, p in parts.trained.named_parameters()
                 if any(fnmatch.fnmatchcase(name, pattern) for pattern in config.training.freeze))
    expansion = _recipe_dict(parts.recipe)
    notes = tuple(expansion.pop("notes", None) or ())
    return Plan(
        source=config.source or "config", imports=tuple(describe_imports(config.imports)),
        splits={split: len(dataset) for split, dataset in parts.data.datasets.items()},
        data=tuple(_data_lines(config, parts)), models=tuple(_model_plans(parts)), baseline=parts.baseline is not None,
        layer_map=tuple(tuple(pair) for pair in parts.layer_map) if parts.layer_map is not None else None,
        layer_map_kind=config.layer_map if isinstance(config.layer_map, str) else "explicit",
        stages=stages,
        parameters={"teacher": count_parameters(parts.teacher), "student": student, "projections": projections,
                    "frozen": frozen, "trainable": _trainable(parts.trained, config.training.freeze, student - frozen) + projections},
        total_steps=sum(stage.steps for stage in stages), labels_only_steps=_labels_only_steps(config, parts),
        expansion=expansion, notes=notes, embedding=tuple(embedding_plan(config, parts)),
    )


def embedding_plan(config: RunConfig, parts: Any) -> list[str]:
    """The lines of an embedding run: each model's pooling, how the embeddings are measured and saved."""
    from kdistill.embedding import NEIGHBOURS, pooling_of

    if config.teacher.task != "embedding":
        return []
    index = len(parts.data.datasets.get("train", ()))
    return [f"  pooling: teacher {pooling_of(parts.teacher)}, student {pooling_of(parts.student)} (the last hidden state "
            "over the real tokens; the 'embedding' ref)",
            f"  measured on validation/test: {NEIGHBOURS}-NN label accuracy by cosine against the {index:,} train texts; "
            "the student's cosine with the teacher's embedding (equal widths only), the correlation of pairwise "
            "similarities, the same nearest neighbour",
            "  saved: the encoder with a sentence-transformers Pooling config (modules.json, 1_Pooling/); "
            "projections are training-only"]


def _trainable(student: nn.Module, freeze: list[str], unfrozen: int) -> int:
    """Student parameters the run trains: ``unfrozen`` (those no ``training.freeze`` glob matches), or for a
    LoRA student its adapters (the rest is frozen) that no glob matches."""
    from kdistill.lora import has_lora

    if not has_lora(student):
        return unfrozen
    return sum(p.numel() for name, p in student.named_parameters()
               if p.requires_grad and not any(fnmatch.fnmatchcase(name, pattern) for pattern in freeze))


def _labels_only_steps(config: RunConfig, parts: Any) -> dict[str, int]:
    """Steps of the teacher's fine-tune (when not cached) and of the baseline, as run() will train them."""
    from kdistill.run import baseline_train_config, estimated_steps

    steps: dict[str, int] = {}
    train = parts.loaders.get("train")
    if parts.finetuned is not None and not parts.finetuned.cached and train is not None:
        from kdistill.finetune import finetune_train_config

        steps["teacher's fine-tune"] = estimated_steps(finetune_train_config(config, train), train)
    for name, entry in parts.finetunes.items():  # several teachers: each one's fine-tune
        if not entry.cached and train is not None:
            from kdistill.finetune import finetune_train_config

            own = config.model_copy(update={"teacher": config.teachers[name]})
            steps[f"teacher '{name}''s fine-tune"] = estimated_steps(finetune_train_config(own, train), train)
    if parts.baseline is not None and train is not None and config.teacher.task != "embedding":
        steps["baseline"] = estimated_steps(baseline_train_config(parts), train)
    return steps


def _tag_lines(config: RunConfig, parts: Any) -> list[str]:
    """What a token-classification run's data is: its tags, how ids were chosen, the alignment, what max_length cuts."""
    data, spec = parts.data, config.data
    types = sorted({name[2:] for name in data.label_names if name != "O"})
    cut = ", ".join(f"{split} {d.cut_words:,} of {d.words:,}" for split, d in data.datasets.items())
    return [f"  word-level BIO tags ({data.num_classes} tags, {len(types)} entity types: {', '.join(types)})",
            f"  tags: {data.labels_how}",
            "  alignment: the first sub-token of each word carries its tag; later sub-tokens and special tokens "
            "-100 (no hard label, no score); token-level KD over every real token",
            f"  max_length: {spec.max_length} tokens; words cut off (no label, not scored): {cut}",
            f"  tokenizer: {parts.tokenizer_source} ({type(parts.tokenizer).__name__}, "
            f"vocabulary {len(parts.tokenizer):,})"]


def _qa_lines(config: RunConfig, parts: Any) -> list[str]:
    """What a question-answering run's data is: the windows, the labels, the KD mask, the scores."""
    data, spec = parts.data, config.data
    lines = [f"  {split}: {dataset.describe()}" for split, dataset in data.datasets.items()]
    return lines + [
        f"  windows: question + context pairs of at most {spec.max_length} tokens (truncation only_second), "
        f"consecutive windows of a long context share {spec.stride} tokens (data.stride)",
        f"  labels: {data.labels_how}; hard-label loss: mean of the start and end cross-entropies",
        "  logits: start and end over each window, (batch, 2, tokens); KD (span_kl) over the window's context "
        "tokens and CLS ('not in this window') only: question, special and padding tokens are masked out before "
        "the softmax",
        f"  scores: best span per question over its windows (start <= end, at most {spec.max_answer_length} tokens, "
        "data.max_answer_length), SQuAD exact match and F1 (lower case, no punctuation or articles)",
        f"  tokenizer: {parts.tokenizer_source} ({type(parts.tokenizer).__name__}, "
        f"vocabulary {len(parts.tokenizer):,})"]


def _data_lines(config: RunConfig, parts: Any) -> list[str]:
    from kdistill.model_files import teacher_tokenizer_reason

    data, spec = parts.data, config.data
    unit = "windows" if data.kind == "qa" else "examples"
    lines = [f"  {split:<11} {len(dataset):>7,} {unit}  from {data.sources.get(split, '?')}"
             for split, dataset in data.datasets.items()]
    if data.kind == "text":
        classes = ""
        if data.num_classes:
            names = f": {', '.join(data.label_names)}" if data.label_names else ""
            classes = f" ({data.num_classes} classes{names})"
        lines.append(f"  text: {spec.text}; label: {spec.label}{classes}" if spec.builtin is None
                     else f"  text and label of '{spec.builtin}'{classes}")
        if data.labels_how:
            lines.append(f"  labels: {data.labels_how}")
        if data.skipped:
            counts = ", ".join(f"{split} {count}" for split, count in data.skipped.items())
            lines.append(f"  records left out for a missing text (data.missing_text: skip): {counts}")
        train = data.datasets.get("train")
        truncated = int((train.teacher.lengths >= spec.max_length).sum()) if train is not None else 0
        lines.append(f"  max_length: {spec.max_length} tokens, longer texts truncated "
                     f"({truncated} of {len(train) if train is not None else 0} train texts reach the limit)")
        lines.append(f"  tokenizer: {parts.tokenizer_source} ({type(parts.tokenizer).__name__}, "
                     f"vocabulary {len(parts.tokenizer):,})")
        if parts.student_tokenizer is not None:
            lines.append(f"  student tokenizer: {spec.student_tokenizer} "
                         f"(vocabulary {len(parts.student_tokenizer):,}); the student reads its own tokens")
        else:
            lines.append(f"  student tokenizer: the teacher's ({teacher_tokenizer_reason(config.student, config.method)})")
    elif data.kind == "tags":
        lines += _tag_lines(config, parts)
    elif data.kind == "qa":
        lines += _qa_lines(config, parts)
    elif data.kind == "lm":
        lines.append(f"  language-model data, {data.labels_how}")
        lines += [f"  {split}: {dataset.describe()}" for split, dataset in data.datasets.items()]
        lines.append(f"  max_length: {spec.max_length} tokens; tokenizer: {parts.tokenizer_source} "
                     f"({type(parts.tokenizer).__name__}, vocabulary {len(parts.tokenizer):,})")
        if parts.student_tokenizer is not None:
            lines.append(f"  student tokenizer: {spec.student_tokenizer} (vocabulary {len(parts.student_tokenizer):,});"
                         " the student reads its own tokens, compared with the teacher's by uld only")
        if config.on_policy is not None:
            from kdistill.on_policy import describe

            lines.append(f"  {describe(config.on_policy)}")
    else:
        lines.append(f"  images: {tuple(data.datasets['train'].images.shape[1:])} per example, {data.num_classes} classes")
    bucketed = ", length-bucketed" if spec.bucket and data.kind in TOKEN_KINDS else ""
    lines.append(f"  batches: {spec.batch_size} (train{bucketed}), {spec.eval_batch_size or spec.batch_size} (evaluation)")
    if config.cache:
        lines.append(f"  cache: {config.cache} (see each stage)")
    return lines


def _model_plans(parts: Any) -> list[ModelPlan]:
    """The models' lines; with several teachers one per teacher, with the matches that read it (the
    stages' Distillers are prepared by then)."""
    from kdistill.models import describe_blocks

    if len(parts.teachers) > 1:
        teachers = [ModelPlan(f"teacher '{name}'" + (" (primary)" if i == 0 else ""), _model_line(model),
                              describe_blocks(model), parts.model_sources.get(f"teacher:{name}", "?"),
                              _teacher_reads(parts, name))
                    for i, (name, model) in enumerate(parts.teachers.items())]
    else:
        teachers = [ModelPlan("teacher", _model_line(parts.teacher), describe_blocks(parts.teacher),
                              parts.model_sources.get("teacher", "?"))]
    return teachers + [ModelPlan(role, _model_line(model), describe_blocks(model), parts.model_sources.get(role, "?"))
                       for role, model in (("assistant", parts.assistant), ("student", parts.student))
                       if model is not None]


def _teacher_reads(parts: Any, name: str) -> str:
    """Which matches of which stages read teacher ``name``, alone or through the ensemble."""
    from kdistill.distiller import ENSEMBLE

    found = []
    for part in parts.stages:
        distiller = part.distiller
        if distiller is None or name not in distiller.teachers:
            continue
        for match in distiller.plan:
            if match.teacher_name in (name, ENSEMBLE):
                how = " (ensemble)" if match.teacher_name == ENSEMBLE else ""
                found.append(f"{match.name}{how}" if len(parts.stages) == 1 else
                             f"stage '{part.stage.name}' {match.name}{how}")
    return ", ".join(found) or "no match"


def _stage_plan(config: RunConfig, parts: Any, part: Any) -> StagePlan:
    from kdistill.run import _name_match, estimated_steps, stage_cache, stage_train_config

    distiller = parts.stage_distiller(part.index)
    try:
        match_plans = distiller.prepare(next(iter(part.loader)))
    except ShapeError as exc:
        raise _name_match(exc, distiller, part) from None
    train_config = stage_train_config(config, part)
    steps = estimated_steps(train_config, part.loader)
    stage = part.stage
    several = len(distiller.teachers) > 1  # the teacher column names the teacher read: 'name:ref'
    rows = [MatchRow(m.name, f"{m.teacher_name}:{m.teacher}" if several else m.teacher, _shape(m.teacher_shape),
                     m.student, _shape(m.student_shape), m.loss,
                     _weight(m.weight), m.projection or "-", _active(bound.match.start, bound.match.stop, steps))
            for m, bound in zip(match_plans, distiller.bound)]
    if "hard_label" in (distiller.part_names() or ()):
        rows.append(MatchRow("hard_label", "labels", "", "logits", "", "hard_ce", _weight(stage.hard_label_weight),
                             "-", "labelled batches"))
    teacher_refs = [ref for b in distiller.bound for ref in b.teacher_refs]
    student_refs = [ref for b in distiller.bound for ref in b.student_refs]
    cache = None
    if config.cache == "teacher":
        found, why = stage_cache(part, distiller, Path(config.output_dir))
        cache = found.describe() if found is not None else f"none ({why}); the teacher runs live"
    elif config.cache == "logits":
        from kdistill import logits_cache

        cache = logits_cache.describe(distiller, part.datasets, config.data.eval_batch_size or config.data.batch_size)
    elif config.capture is not None:
        from kdistill import capture

        cache = capture.describe(parts, part)
    return StagePlan(
        index=part.index, name=stage.name, teacher=stage.teacher,
        learner="assistant" if part.student is parts.assistant else "student", data=part.data_name,
        hard_label_weight=_weight(stage.hard_label_weight),
        length=f"{train_config.max_steps or train_config.epochs} {'steps' if train_config.max_steps else 'epoch(s)'}",
        matches=tuple(rows), projections=tuple(f"{p.name} {p.projection}" for p in match_plans if p.projection),
        projection_parameters=sum(p.numel() for p in distiller.projections.parameters()),
        teacher_asks=_teachers_ask(distiller, teacher_refs),
        student_asks=_adapter_line(distiller.student_adapter, student_refs),
        steps=steps, batches_per_epoch=len(part.loader), grad_accum=train_config.grad_accum, cache=cache,
    )


# ---------------------------------------------------------------------------------------------
# Formatting pieces


def _shape(shape: tuple) -> str:
    if shape and isinstance(shape[0], tuple):
        return " & ".join(_shape(s) for s in shape)
    return "(" + ", ".join(str(d) for d in shape) + ")"


def _model_line(model: nn.Module) -> str:
    from kdistill.run import count_parameters, layer_count

    parts = [type(model).__name__]
    layers = layer_count(model)
    if layers is not None:
        parts.append(f"{layers} layers")
    width = getattr(getattr(model, "config", None), "hidden_size", None)
    if width:
        parts.append(f"hidden {width}")
    parts.append(f"{count_parameters(model):,} parameters")
    return ", ".join(parts)


def _teachers_ask(distiller: Any, refs: list) -> str:
    """What the teacher is asked for; with several, each teacher by name with the refs of the matches that
    read it (by name, or through the ensemble; a match without teacher_name reads the first)."""
    from kdistill.distiller import ENSEMBLE

    names = list(distiller.teachers)
    if len(names) == 1:
        return _adapter_line(distiller.teacher_adapters[names[0]], refs)

    def read(bound: Any, name: str) -> bool:
        return bound.match.teacher_name in (ENSEMBLE, name) or (bound.match.teacher_name is None and name == names[0])

    return "; ".join(f"'{name}': " + _adapter_line(distiller.teacher_adapters[name],
                                                   [r for b in distiller.bound if read(b, name) for r in b.teacher_refs])
                     for name in names)


def _adapter_line(adapter: Any, refs: list) -> str:
    describe = getattr(adapter, "describe", None)
    if describe is not None:
        return describe() or "logits only"
    modules = sorted({str(ref) for ref in refs if ref.kind == "module"})
    if type(adapter).__name__ == "ModuleAdapter":
        return "forward output as logits" + (f"; forward hooks on {', '.join(modules)}" if modules else "")
    return f"user function {getattr(getattr(adapter, 'function', None), '__name__', type(adapter).__name__)}"


def _table(rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]


def _weight(value: Any) -> str:
    try:
        converted = schedule_to_dict(value)
    except StopIteration:
        return "scheduled"
    if isinstance(converted, dict):
        return f"{converted['schedule']} {converted.get('start_value', '')}→{converted.get('end_value', '')}".strip()
    return f"{converted:g}"


def _active(start: int | float, stop: int | float | None, total: int) -> str:
    """When a match is on, e.g. "steps 0–2"."""
    if not start and stop is None:
        return "always"
    begin = step_at(start, total)
    end = step_at(stop, total) if stop is not None else total
    return f"steps {begin}–{end - 1}" if end > begin else "never (empty range)"


def _recipe_dict(recipe: Any) -> dict:
    try:
        return recipe.to_dict()
    except StopIteration:  # a weight that is a function of a schedule (e.g. Hinton's 1 − α(t))
        from kdistill.methods import match_to_dict

        return {"method": recipe.method, "stages": [
            {"name": stage.name, "hard_label_weight": "scheduled", "matches": [match_to_dict(m) for m in stage.matches]}
            for stage in recipe.stages]}


__all__ = ["MatchRow", "ModelPlan", "Plan", "StagePlan", "make_plan"]
