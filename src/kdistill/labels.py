"""Which class each label id means, decided once for a run: the teacher's own mapping first.

A classifier fine-tuned on string labels carries its mapping in ``config.json`` (``id2label``),
often in the order the labels first appeared in its training file. Encoding the run's labels in
another order (sorted names) would make the hard labels and the teacher's soft targets talk about
different classes, and every accuracy wrong. So, for a run's data:

- integer labels are class ids as they stand (the plan says which name each id means when the
  teacher names its classes);
- string labels use the teacher's ``id2label`` when the teacher's classifier is kept (a sequence
  classifier checkpoint whose head size is not changed by ``teacher.num_labels``) and names its
  classes; a label the teacher does not know is a :class:`DataError` naming it and the teacher's
  labels;
- otherwise string labels get ids in sorted order of the training labels (the plan says so);
- every id must be a class of the models: ``0 ≤ id < classes`` (the teacher's classifier size when
  it is known without weights, else the number of names or the training labels' largest id + 1).

:func:`teacher_labels` reads only ``config.json`` (no weights), so ``validate`` applies the same
rule as ``run``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdistill.errors import DataError, suggest

_GENERIC_NAME = re.compile(r"LABEL_\d+")


@dataclass(frozen=True)
class TeacherLabels:
    """What the teacher's ``config.json`` says about its classes.

    ``names``: the class names in id order when the kept classifier names them (not the generic
    ``LABEL_0``…); ``classes``: the classifier's size when known before weights load; ``source``:
    where that came from, for the plan; ``new_head``: the classifier is made anew at load (random,
    and the teacher is frozen), so its logits mean nothing.
    """

    names: tuple[str, ...] | None
    classes: int | None
    source: str
    new_head: bool = False


def teacher_labels(spec: Any) -> TeacherLabels:
    """The label facts of a teacher spec (``config.teacher``): reads its ``config.json`` only."""
    if getattr(spec, "task", "sequence-classification") != "sequence-classification":
        return TeacherLabels(None, None, f"teacher.task is '{spec.task}' (no classifier)")
    if spec.path is None:
        return TeacherLabels(None, None, "the teacher is built by a factory (no config.json to read)")
    if getattr(spec, "finetune", None) is not None:
        return TeacherLabels(None, spec.num_labels, "teacher.finetune trains its classifier on these ids")
    config_file = Path(spec.path) / "config.json"
    try:
        raw = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return TeacherLabels(None, spec.num_labels, f"{config_file} could not be read")
    architectures = raw.get("architectures") or []
    if not is_classifier(architectures):
        note = (f"{config_file} has no sequence-classification head (architectures: "
                f"{', '.join(architectures) or 'none'}); a new one is made")
        return TeacherLabels(None, spec.num_labels, note, new_head=True)
    id2label = raw.get("id2label") or {}
    # transformers leaves id2label out of config.json for its default of two classes.
    size = len(id2label) or raw.get("num_labels") or 2
    if spec.num_labels is not None and spec.num_labels != size:
        return TeacherLabels(None, spec.num_labels,
                             f"teacher.num_labels {spec.num_labels} replaces the checkpoint's {size}-class head",
                             new_head=True)
    names = class_names(id2label)
    return TeacherLabels(names, size, f"id2label in {config_file}")


def is_classifier(architectures: Any) -> bool:
    """Whether a ``config.json``'s ``architectures`` name a sequence classifier (a trained head)."""
    return any(str(name).endswith("ForSequenceClassification") for name in architectures or ())


def class_names(id2label: Mapping) -> tuple[str, ...] | None:
    """The class names of a classifier's ``id2label`` (``config.json``) in id order; None when its ids
    are not 0…n−1 or its names are transformers' generic ``LABEL_0``…"""
    try:
        by_id = {int(key): str(value) for key, value in id2label.items()}
    except (TypeError, ValueError, AttributeError):
        return None
    if not by_id or sorted(by_id) != list(range(len(by_id))):
        return None
    names = tuple(by_id[i] for i in range(len(by_id)))
    return None if all(_GENERIC_NAME.fullmatch(name) for name in names) else names


@dataclass(frozen=True)
class LabelEncoding:
    """How a run turns label values into ids: ``names`` (id order) for string labels, or ``None``
    for integer labels; ``classes`` bounds the ids; ``how`` says why, for the plan."""

    names: list[str] | None
    classes: int | None
    how: str
    teacher_names: tuple[str, ...] | None = None


def choose_encoding(splits: Mapping[str, Sequence[Any]], teacher: TeacherLabels, *, column: str,
                    sources: Mapping[str, str]) -> LabelEncoding:
    """Decide the ids of every split's labels (``splits``: split -> raw label values) at once."""
    from kdistill.data import label_values_are_ints

    every = [value for values in splits.values() for value in values]
    if label_values_are_ints(every):
        how = "integer labels are class ids"
        if teacher.names:
            how += " (teacher " + ", ".join(f"{i} = {name}" for i, name in enumerate(teacher.names)) + ")"
        return LabelEncoding(None, teacher.classes, how, teacher.names)
    if teacher.names:
        known = set(teacher.names)
        for split, values in splits.items():
            for row, value in enumerate(values):
                if value is None or str(value) in known:
                    continue
                raise DataError(
                    f"{sources.get(split, split)}: record {row} has the label '{value}' in '{column}', which the "
                    f"teacher does not know{suggest(str(value), teacher.names) or '.'} The teacher's labels "
                    f"({teacher.source}): {', '.join(teacher.names)}."
                )
        order = ", ".join(f"{i} = {name}" for i, name in enumerate(teacher.names))
        return LabelEncoding(list(teacher.names), teacher.classes, f"the teacher's ids ({order}), from {teacher.source}",
                             teacher.names)
    train = splits.get("train") or every
    names = sorted({str(value) for value in train if value is not None})
    order = ", ".join(f"{i} = {name}" for i, name in enumerate(names))
    return LabelEncoding(names, teacher.classes or len(names),
                         f"ids in sorted order of the training labels ({order}); the teacher names no classes "
                         f"({teacher.source})")


def check_label_range(labels: Sequence[int], classes: int | None, *, source: str, column: str,
                      records: Sequence[int] | None = None, names: Sequence[str] | None = None,
                      what: str = "the models' classes") -> None:
    """Every id in ``[0, classes)`` (only ``≥ 0`` when ``classes`` is None); else a DataError naming
    the record, the value and the valid range."""
    for position, value in enumerate(labels):
        if value >= 0 and (classes is None or value < classes):
            continue
        row = records[position] if records is not None else position
        if classes is None:
            valid = "labels are class ids, whole numbers from 0"
        else:
            meaning = f" ({', '.join(f'{i} = {n}' for i, n in enumerate(names))})" if names else ""
            valid = f"labels must be whole numbers from 0 to {classes - 1}{meaning}"
        raise DataError(f"{source}: record {row} has the label {value} in '{column}', outside {what}: {valid}.")


def too_many_classes(role: str, outputs: int, classes: int, *, hf: bool = True) -> str:
    """The sentence for data with more classes than a model's classifier has outputs."""
    head = f"{role}: its classifier has {outputs} outputs but the data has {classes} classes"
    if role == "teacher":
        return (f"{head}: the teacher was not trained for these labels (check data.label and teacher.path). "
                f"teacher.num_labels: {classes} would give it a new, untrained head, which only matches of hidden "
                "states and attentions may use.")
    if hf:
        return f"{head}; set {role}.num_labels: {classes} (or check data.label)."
    return f"{head}; check data.label and the model's output size."


__all__ = ["LabelEncoding", "class_names", "is_classifier", "TeacherLabels", "check_label_range", "choose_encoding", "teacher_labels",
           "too_many_classes"]
