"""The checks of a sentence-embedding run (``teacher.task: embedding``) before any weight loads.

Called by :mod:`kdistill.config` after the sections are typed; every problem is a ``path: problem``
sentence. It also fills ``teacher.pooling``/``student.pooling`` when unset (the folder's
sentence-transformers Pooling config, else the teacher's, else mean), so the resolved config says
which pooling the run used.
"""

from __future__ import annotations

from typing import Any

from kdistill.embedding import POOLINGS, folder_pooling
from kdistill.errors import RefError
from kdistill.refs import parse_ref

_EXAMPLE = "{teacher: embedding, student: embedding, loss: cosine}"


def embedding_problems(teacher: Any, student: Any, data: Any, matches: list, top: Any) -> list[str]:
    """What is wrong with the embedding settings of a config (typed sections; None where a section failed)."""
    if teacher is None:
        return []
    if teacher.task != "embedding":
        return _outside_embedding_runs(teacher, student, matches)
    problems: list[str] = []
    if student is not None and student.task != "embedding":
        if "task" in student.model_fields_set:
            problems.append(f"student.task: '{student.task}', but the teacher's task is embedding: the student of an "
                            "embedding teacher is an embedding model too; set student.task: embedding or leave it out.")
        else:
            student.task = "embedding"
    teacher.pooling = _pooling(teacher, "teacher", None, problems)
    if student is not None:
        student.pooling = _pooling(student, "student", teacher.pooling, problems)
    for i, spec in enumerate(matches):
        for role in ("teacher", "student"):
            text = getattr(spec, role, None) if spec is not None else None
            if _reads(text, "logits"):
                problems.append(f"matches[{i}].{role}: 'logits': an embedding model (task: embedding) is an encoder "
                                f"without a head, so it has no logits; match the sentence embedding ({_EXAMPLE}, or "
                                "loss: hidden_mse) or hidden states ('hidden.N').")
    if top is not None:
        weight = top.hard_label_weight
        if isinstance(weight, (int, float)) and not isinstance(weight, bool) and weight > 0:
            problems.append("hard_label_weight: an embedding model has no classifier to learn the labels with; the "
                            "labels of an embedding run only measure it (nearest-neighbour accuracy). Remove it.")
        if top.cache == "logits":
            problems.append("cache: 'logits' stores a classifier's outputs; an embedding model has none. Use "
                            "cache: teacher (it stores the teacher's embeddings) or no cache.")
    if data is not None:
        problems += _evaluation_data(data)
    return problems


def _outside_embedding_runs(teacher: Any, student: Any, matches: list) -> list[str]:
    problems = []
    for role, spec in (("teacher", teacher), ("student", student)):
        if spec is not None and spec.pooling is not None:
            problems.append(f"{role}.pooling: pools a sentence embedding, which only an embedding run makes; the "
                            f"teacher's task is '{teacher.task}'. Set teacher.task: embedding, or remove "
                            f"{role}.pooling.")
    for i, spec in enumerate(matches):
        for role in ("teacher", "student"):
            if spec is not None and _reads(getattr(spec, role), "embedding"):
                problems.append(f"matches[{i}].{role}: 'embedding' is the pooled sentence embedding of an embedding "
                                f"model, but the teacher's task is '{teacher.task}'. Set teacher.task: embedding, or "
                                "match 'pooled' or 'hidden.-1'.")
    return problems


def _reads(text: Any, kind: str) -> bool:
    if not isinstance(text, str) or text.endswith(".*"):
        return False
    try:
        return any(ref.kind == kind for ref in parse_ref(text))
    except RefError:
        return False  # reported by the match check


def _pooling(spec: Any, role: str, default: str | None, problems: list[str]) -> str:
    """``spec.pooling``, else the folder's sentence-transformers pooling, else ``default``, else mean."""
    if spec.pooling is not None:
        return spec.pooling
    found = folder_pooling(spec.path) if spec.path is not None else None
    if found is None:
        return default or "mean"
    if found not in POOLINGS:
        problems.append(f"{role}.pooling: the folder '{spec.path}' pools its sentence embedding with '{found}' "
                        f"(modules.json → the Pooling config), which kdistill does not compute; set {role}.pooling "
                        f"to one of {', '.join(POOLINGS)} to distil that pooling instead.")
        return "mean"
    return found


def _evaluation_data(data: Any) -> list[str]:
    """An embedding run is measured on labelled splits: the train split as the nearest-neighbour index
    and a validation or test split to classify."""
    problems = []
    if data.kind not in (None, "classification"):
        problems.append(f"data.kind: '{data.kind}', but an embedding run reads texts with labels (kind: "
                        "classification, the default); unlabelled training text goes in data.unlabelled.")
    if data.label is None and data.builtin is None:
        problems.append("data.label: null, but an embedding run is measured by nearest-neighbour label accuracy "
                        "(each validation/test text takes the label of its nearest train text by cosine), so its "
                        "splits need labels: name the label column, and put unlabelled training text in "
                        "data.unlabelled (with data.distil_on: train+unlabelled).")
    if data.train is not None and data.validation is None and data.test is None:
        problems.append("data.test: an embedding run is measured on a labelled validation or test split against "
                        "the train split, but only data.train is given; add data.test (or data.validation).")
    if data.split is not None and len(data.split) >= 2 and not any(data.split[1:]):
        problems.append(f"data.split: {data.split} leaves no validation or test split to measure the embeddings on; "
                        "give a validation and/or test fraction.")
    return problems


__all__ = ["embedding_problems"]
