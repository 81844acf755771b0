"""Several teachers in one run: ``teachers: {name: spec, …}`` instead of ``teacher:``.

    teachers:
      first: {path: ./teacher-a}
      second: {path: ./bert-base, finetune: {seed: 1}}
    teacher_weights: {first: 2, second: 1}      # optional: the 'ensemble' average's weights
    matches:
      - {teacher: logits, loss: kl, teacher_name: ensemble, args: {temperature: 2}}
      - {teacher: hidden.2, student: hidden.1, loss: hidden_mse, teacher_name: second}

The rules, checked at ``validate`` (before any weight loads) where the folders tell:

- ``teachers`` replaces ``teacher``: a config gives exactly one of the two. Each value is a teacher spec
  as for ``teacher`` (``path``, ``factory``, ``finetune`` …). A name is letters, digits, ``_`` and ``-``;
  ``ensemble`` is reserved.
- The first teacher listed is the *primary* one: ``config.teacher`` is its spec, so it gives the text's
  tokenizer, the label order, what ``from_teacher`` copies, what a method sees as "the teacher" and the
  ``teacher`` row of the evaluation; the summary's ``teachers`` gives every teacher's figures beside it.
- Every other teacher agrees with the primary one: the same task, the same tokenizer vocabulary (its
  folder's tokenizer; every teacher reads the primary's token ids), the same class names in the same
  order and the same number of classes (each folder's ``config.json``).
- A match reads the teacher its ``teacher_name`` names, or ``ensemble``: every teacher's output averaged
  with ``teacher_weights`` — for logits with ``args.temperature``, their *probabilities* at that
  temperature (:class:`kdistill.distiller.Distiller`), so the ensemble's temperature is the match's.
  Without ``teacher_name`` a match reads the primary teacher, logits too: the ensemble is asked for by
  name, or by ``method: multiteacher`` (its soft targets are the ensemble's).
- ``teacher_weights`` (top level; a weight ≥ 0 for every teacher, normalised; default equal) weights every
  ``ensemble`` match. It is refused without a match that reads the ensemble, and in ``method_args``: one
  place says it.
- ``method: multiteacher`` takes every teacher and needs two or more (with one it would be Hinton KD under
  another name); another method sees the primary teacher, and the config's own matches may read any.
- Every teacher is read by some match: a teacher nothing reads is refused, not loaded for nothing.
- Each teacher may have its own ``finetune``, cached by content (two fine-tunes of one base with other
  ``finetune.seed`` are two teachers); the run keeps each in ``teachers/<name>/``.
- Not with ``cache``, ``capture`` or ``on_policy``: each stores or scores one teacher's outputs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from kdistill.distiller import ENSEMBLE
from kdistill.errors import suggest

_NAME = re.compile(r"^[A-Za-z_][\w-]*$")
MULTITEACHER = "multiteacher"


# ---------------------------------------------------------------------------------------------
# Validation (no weights)


def parse_teachers(raw: Mapping) -> tuple[dict[str, Any], list[str]]:
    """``raw['teachers']`` as name -> raw spec (empty without it), and the problems of its shape."""
    teachers = raw.get("teachers")
    if teachers is None:
        if raw.get("teacher") is None:
            return {}, ["teacher: required, but missing."]
        return {}, []
    if raw.get("teacher") is not None:
        return {}, ["teachers: give either 'teacher' (one teacher) or 'teachers' (several, by name), not both; "
                    "the first of 'teachers' is the primary teacher."]
    if not isinstance(teachers, Mapping) or not teachers:
        return {}, [f"teachers: expected a mapping name -> teacher spec, such as {{big: {{path: ./big}}, "
                    f"small: {{path: ./small}}}}, got {teachers!r}."]
    problems = []
    for name in teachers:
        if not isinstance(name, str) or not _NAME.match(name) or name == ENSEMBLE:
            problems.append(f"teachers: {name!r} cannot name a teacher: use letters, digits, '_' and '-' "
                            f"(starting with a letter), and not '{ENSEMBLE}' (the teachers' average).")
    return ({} if problems else dict(teachers)), problems


def reads_primary(match: Any, teachers: Mapping[str, Any]) -> bool:
    """Whether a match reads the primary teacher (its refs are that teacher's layers)."""
    return not teachers or match.teacher_name in (None, ENSEMBLE, next(iter(teachers)))


def teachers_problems(teachers: Mapping[str, Any], top: Any, matches: Sequence[Any], data: Any, *,
                      several: bool, parsed: Mapping[str, Any]) -> list[str]:
    """Every problem of the run's teachers (``teachers``: name -> validated spec, the primary first;
    ``several``: they came from ``teachers:``): names read by matches, weights, the method, agreement."""
    names = list(teachers)
    problems, read, ensemble = _read_problems(names, top, matches)
    method = top.method if top is not None else None
    if method == MULTITEACHER:
        if len(names) < 2:
            problems.append("method: 'multiteacher' averages several teachers' soft targets, but the config gives one "
                            "teacher; list them as teachers: {name: {path: …}, …} (one teacher: method: hinton, "
                            "the same loss).")
        if "teacher_weights" in top.method_args:
            problems.append("method_args.teacher_weights: give the ensemble's weights once, as the top-level "
                            "teacher_weights: {name: weight, …} (they weight every 'ensemble' match).")
    weights = top.teacher_weights if top is not None else None
    if weights is not None:
        problems += _weight_problems(weights, names, several, ensemble)
    if not several or len(names) < 2:
        return problems
    for name in names:
        if name not in read:
            problems.append(f"teachers.{name}: no match reads this teacher; name it in a match (teacher_name: {name}), "
                            f"read the ensemble (teacher_name: {ENSEMBLE}, or method: multiteacher), or remove it.")
    for what, given in (("cache", top.cache if top is not None else None), ("capture", parsed.get("capture")),
                        ("on_policy", parsed.get("on_policy"))):
        if given is not None:
            problems.append(f"{what}: stores or scores one teacher's outputs; with several teachers remove "
                            f"'{what}' (the teachers run live).")
    return problems + agreement_problems(teachers, data)


def _read_problems(names: list[str], top: Any, matches: Sequence[Any]) -> tuple[list[str], set[str], bool]:
    """Unknown ``teacher_name``s, which teachers something reads, and whether the ensemble is read."""
    problems: list[str] = []
    read: set[str] = set()
    ensemble = False
    choices = f"Teachers: {', '.join(names)} (or '{ENSEMBLE}', their weighted average)."
    wanted = [(f"matches[{i}].teacher_name", m.teacher_name) for i, m in enumerate(matches) if m is not None]
    method = top.method if top is not None else None
    if method == MULTITEACHER:
        ensemble = True
        intermediate = top.method_args.get("intermediate") or []
        wanted += [(f"method_args.intermediate[{i}].teacher_name", spec.get("teacher_name"))
                   for i, spec in enumerate(intermediate if isinstance(intermediate, list) else [])
                   if isinstance(spec, Mapping)]
    elif method is not None:
        read.add(names[0])  # a method's own matches read the primary teacher
    for where, name in wanted:
        if name == ENSEMBLE:
            ensemble = True
        elif name is None:
            read.add(names[0])
        elif name in names:
            read.add(name)
        else:
            problems.append(f"{where}: no teacher named '{name}'{suggest(str(name), names) or '.'} {choices}")
    return problems, (set(names) if ensemble else read), ensemble


def _weight_problems(weights: Mapping[str, float], names: list[str], several: bool, ensemble: bool) -> list[str]:
    if not several:
        return ["teacher_weights: weights the teachers of 'teachers: {name: …}'; this config has one teacher. "
                "Remove it."]
    problems = [f"teacher_weights.{name}: no teacher named '{name}'{suggest(name, names) or '.'} "
                f"Teachers: {', '.join(names)}." for name in weights if name not in names]
    missing = [name for name in names if name not in weights]
    if missing:
        problems.append(f"teacher_weights: no weight for {', '.join(repr(n) for n in missing)}; give one for every "
                        f"teacher ({', '.join(names)}), 0 to leave one out of the ensemble.")
    problems += [f"teacher_weights.{name}: expected a weight ≥ 0, got {value!r}." for name, value in weights.items()
                 if value < 0]
    if not problems and sum(weights.values()) <= 0:
        problems.append("teacher_weights: the weights sum to 0; give at least one positive weight.")
    if not ensemble:
        problems.append(f"teacher_weights: no match reads the ensemble (teacher_name: {ENSEMBLE}, or method: "
                        "multiteacher), so the weights would weigh nothing; remove them or read the ensemble.")
    return problems


def agreement_problems(teachers: Mapping[str, Any], data: Any) -> list[str]:
    """Every teacher agrees with the primary one: task, tokenizer vocabulary, class names and count.
    Reads ``config.json`` and tokenizer files only."""
    from kdistill.labels import teacher_labels
    from kdistill.model_files import _Vocabularies

    (primary_name, primary), *others = teachers.items()
    head = f"the primary teacher '{primary_name}'"
    primary_labels = teacher_labels(primary)
    vocabularies = _Vocabularies()
    problems: list[str] = []
    for name, spec in others:
        where = f"teachers.{name}"
        if spec.task != primary.task:
            problems.append(f"{where}.task: '{spec.task}', but {head} has task '{primary.task}'; every teacher of a "
                            "run has the primary teacher's task.")
            continue
        labels = teacher_labels(spec)
        if primary_labels.names and labels.names and labels.names != primary_labels.names:
            problems.append(f"{where}: its classes are {', '.join(labels.names)} (in id order), but {head}'s are "
                            f"{', '.join(primary_labels.names)}; the ensemble and the labels need one order. Use "
                            "teachers fine-tuned on the same labels in the same order.")
        elif primary_labels.classes and labels.classes and labels.classes != primary_labels.classes:
            problems.append(f"{where}: it has {labels.classes} classes, {head} {primary_labels.classes}; every "
                            "teacher needs the same classes.")
        if data is None or data.tokenizer is not None or primary.path is None or spec.path is None:
            continue  # data.tokenizer feeds every teacher: each one's vocabulary is checked when it loads
        mine = vocabularies.get(spec.path, f"{where}.path")
        theirs = vocabularies.get(primary.path, "teacher.path")
        if mine is not None and theirs is not None and mine != theirs:
            differing = len(set(mine.items()) ^ set(theirs.items()))
            problems.append(f"{where}.path: its tokenizer ({len(mine):,} tokens) differs from {head}'s "
                            f"({len(theirs):,} tokens; {differing:,} token/id pairs differ), and every teacher reads "
                            "the primary teacher's token ids. Use teachers trained with one tokenizer.")
    return problems + vocabularies.problems


# ---------------------------------------------------------------------------------------------
# A run's teachers


def stage_teachers(teachers: Mapping[str, nn.Module]) -> nn.Module | dict[str, nn.Module]:
    """What a stage taught by the teacher(s) gives its Distiller: the one model, or every teacher by name."""
    return dict(teachers) if len(teachers) > 1 else next(iter(teachers.values()))


def teachers_read_logits(stage_matches: Sequence[Any], name: str, primary: str) -> list[str]:
    """The matches of a stage that read teacher ``name``'s logits (directly or through the ensemble)."""
    return [m.name or m.teacher for m in stage_matches if m.teacher == "logits"
            and (m.teacher_name in (ENSEMBLE, name) or (m.teacher_name is None and name == primary))]


def teacher_results(teachers: Mapping[str, nn.Module], student: nn.Module, loaders: Mapping[str, Any],
                    weights: Mapping[str, float] | None, sources: Mapping[str, str], *,
                    splits: Sequence[str] = ("validation", "test"), primary_metrics: Mapping | None = None) -> dict:
    """Each teacher's figures beside the student (the summary's and ``kdistill eval``'s ``teachers``): its
    source, parameters and, per split, its metrics and how often the student agrees with it; and, for
    classifiers, the ensemble's accuracy and macro-F1 (``ensemble``). ``primary_metrics``: the run's
    evaluation of the primary teacher, reused rather than run again."""
    from kdistill.evaluation import _logits_are_classes, evaluate_splits

    out: dict[str, Any] = {}
    for index, (name, model) in enumerate(teachers.items()):
        evaluated = primary_metrics if index == 0 and primary_metrics is not None else \
            evaluate_splits(model, student, loaders, splits)
        out[name] = {"source": sources.get(name), "parameters": sum(p.numel() for p in model.parameters()),
                     "metrics": {split: {**result["teacher"], "agreement": result.get("agreement")}
                                 for split, result in evaluated.items() if "teacher" in result}}
    result: dict[str, Any] = {"teachers": out}
    if all(_logits_are_classes(model) for model in teachers.values()):
        ensemble = {split: ensemble_metrics(teachers, weights, loaders[split]) for split in splits if split in loaders}
        result["ensemble"] = {split: value for split, value in ensemble.items() if value is not None}
    return result


def run_teachers_summary(parts: Any, student: nn.Module, loaders: Mapping[str, Any], metrics: Mapping,
                         out: Any) -> dict:
    """The summary's ``teachers`` (each one's source, parameters, metrics and, fine-tuned, its folder in the
    run: ``teachers/<name>/``) and ``ensemble`` of a run with ``teachers:``; {} for a run with ``teacher:``.
    ``metrics``: the run's evaluation (its ``teacher`` is the primary one)."""
    config = parts.config
    if config.teachers is None:
        return {}
    from kdistill.finetune import copy_into_run

    sources = {name: parts.model_sources.get(f"teacher:{name}") for name in parts.teachers}
    result = teacher_results(parts.teachers, student, loaders, config.teacher_weights, sources,
                             primary_metrics=metrics)
    if len(parts.teachers) < 2:
        result.pop("ensemble", None)
    for name, entry in parts.finetunes.items():
        result["teachers"][name]["finetune"] = {"folder": str(copy_into_run(entry, out, name)),
                                                "cache": str(entry.folder), "cached": entry.cached,
                                                "settings": entry.settings}
    return result


def load_run_teachers(run_dir: Any, config: Any, primary: nn.Module) -> dict[str, nn.Module]:
    """Every teacher of a finished run with ``teachers:`` (``primary``, already loaded, first): each
    fine-tuned one from the run's ``teachers/<name>/``, the others as the config says."""
    from pathlib import Path

    from kdistill.errors import ConfigError
    from kdistill.finetune import TEACHERS_DIR
    from kdistill.models import load_hf_model
    from kdistill.run_build import load_model

    (primary_name, _spec), *others = config.teachers.items()
    teachers = {primary_name: primary}
    for name, spec in others:
        if spec.finetune is None:
            teachers[name] = load_model(spec, f"teachers.{name}", config)
            continue
        folder = Path(run_dir) / TEACHERS_DIR / name
        if not (folder / "config.json").is_file():
            raise ConfigError(f"'{run_dir}' holds no fine-tuned teacher '{name}' (no {TEACHERS_DIR}/{name}/ folder) "
                              f"although teachers.{name}.finetune is set: continue the run with `kdistill run CONFIG "
                              "--resume`.")
        teachers[name] = load_hf_model(folder, task=spec.task)
    return teachers


@torch.no_grad()
def ensemble_metrics(teachers: Mapping[str, nn.Module], weights: Mapping[str, float] | None, loader: Any
                     ) -> dict | None:
    """Accuracy and macro-F1 of the teachers' weighted average of probabilities (temperature 1) on
    ``loader``; None when its batches carry no labels."""
    from kdistill.adapters.base import model_inputs, output_logits, to_device
    from kdistill.train.evaluate import classification_metrics

    given = dict(weights or {name: 1.0 for name in teachers})
    total = sum(given.values()) or 1.0
    device = next(next(iter(teachers.values())).parameters()).device
    modes = {name: model.training for name, model in teachers.items()}
    predictions, labels = [], []
    try:
        for model in teachers.values():
            model.eval()
        for batch in loader:
            if batch.get("labels") is None:
                return None
            inputs = to_device(batch, device)
            args, kwargs = model_inputs(inputs)
            mixed = sum(given.get(name, 0.0) / total * output_logits(model(*args, **kwargs)).float().softmax(-1)
                        for name, model in teachers.items())
            predictions.append(mixed.argmax(-1).cpu())
            labels.append(batch["labels"].cpu())
    finally:
        for name, model in teachers.items():
            model.train(modes[name])
    if not predictions:
        return None
    return classification_metrics(torch.cat(predictions), torch.cat(labels))


__all__ = ["agreement_problems", "ensemble_metrics", "load_run_teachers", "parse_teachers", "reads_primary",
           "run_teachers_summary", "stage_teachers", "teacher_results", "teachers_problems"]
