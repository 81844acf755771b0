"""Sentence embeddings (``task: embedding``): pooling, the ``embedding`` ref, and how an embedding
student is measured — how all-MiniLM-L6-v2 itself was made.

Teacher and student are encoders loaded with ``AutoModel`` (a sentence-transformers folder such as the
packaged all-MiniLM-L6-v2 loads as its transformer). Their sentence embedding is the last hidden state
pooled over each text's tokens (:func:`pool`): ``mean`` over the real tokens (padding never enters the
mean) or ``cls`` (the first token's state). ``teacher.pooling``/``student.pooling`` choose it; unset, it
is read from the folder's sentence-transformers files (``modules.json`` → the Pooling module's
``config.json``), else the student takes the teacher's, else ``mean``. The pooling travels with the
loaded model as an attribute (:func:`set_pooling`), which the Hugging Face adapter reads to fill the
``embedding`` ref.

Measured on the labelled splits (:func:`compare_embeddings`), by what embeddings are used for:

- ``knn_accuracy``: each test text takes the label of its nearest train text by cosine (k = 1: the
  train split is the index, the test text is never in it);
- ``agreement``: how often the student's nearest train text is the teacher's;
- ``cosine_agreement``: the mean cosine between the student's and the teacher's embedding of each
  text, when their widths are equal (None otherwise: the training projection is not part of the
  exported student, so no student vector lives in the teacher's space);
- ``similarity_correlation``: Pearson's r between the two models' cosine similarities over every pair
  of test texts — defined whatever the widths.

The baseline of an embedding run (``baseline: true``) is the student as built, untrained: what the
copied teacher layers (or a random student) give without distillation.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

POOLINGS = ("mean", "cls")
NEIGHBOURS = 1  # k of the nearest-neighbour label accuracy
_ATTRIBUTE = "kdistill_pooling"
_ST_MODES = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls",
             "pooling_mode_max_tokens": "max", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
             "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}


def pool(hidden: Tensor, mask: Tensor | None, mode: str = "mean") -> Tensor:
    """Sentence embeddings (B, D) from hidden states (B, T, D). ``mean``: the average over the tokens
    where ``mask`` (B, T) is 1 (all tokens without a mask); ``cls``: the first token's state."""
    if mode == "cls":
        return hidden[:, 0]
    if mode != "mean":
        raise ValueError(f"pooling '{mode}' is not one of {', '.join(POOLINGS)}")
    if mask is None:
        return hidden.mean(dim=1)
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


# ---------------------------------------------------------------------------------------------
# Which pooling a model uses


def folder_pooling(folder: str | Path | None) -> str | None:
    """The pooling a sentence-transformers folder declares (``mean``, ``cls``, or the name of another
    mode such as ``max``), or None when the folder has no ``modules.json`` with a Pooling module."""
    if folder is None:
        return None
    modules_file = Path(folder) / "modules.json"
    try:
        modules = json.loads(modules_file.read_text(encoding="utf-8"))
        entry = next(m for m in modules if str(m.get("type", "")).endswith("Pooling"))
        settings = json.loads((Path(folder) / entry["path"] / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, StopIteration, TypeError, KeyError, AttributeError):
        return None
    chosen = [mode for key, mode in _ST_MODES.items() if settings.get(key)]
    return chosen[0] if len(chosen) == 1 else "+".join(chosen) if chosen else None


def folder_normalises(folder: str | Path | None) -> bool:
    """Whether a sentence-transformers folder ends with a Normalize module (unit-length embeddings)."""
    try:
        modules = json.loads((Path(folder) / "modules.json").read_text(encoding="utf-8"))  # type: ignore[arg-type]
        return any(str(m.get("type", "")).endswith("Normalize") for m in modules)
    except (OSError, ValueError, TypeError, AttributeError):
        return False


def set_pooling(model: nn.Module, mode: str) -> nn.Module:
    """Mark ``model`` as an embedding model pooled with ``mode`` (copies and deep copies keep it)."""
    setattr(model, _ATTRIBUTE, mode)
    return model


def pooling_of(model: nn.Module) -> str | None:
    """The pooling :func:`set_pooling` gave ``model``; None for a model that is not an embedding model."""
    return getattr(model, _ATTRIBUTE, None)


def is_embedding_model(model: nn.Module) -> bool:
    return pooling_of(model) is not None


def mark_models(config: Any, teacher: nn.Module, *students: nn.Module | None) -> None:
    """Give the run's teacher and students their pooling (``teacher.pooling``/``student.pooling``, filled
    by validation); nothing for a run whose teacher task is not ``embedding``."""
    if config.teacher.task != "embedding":
        return
    set_pooling(teacher, config.teacher.pooling or "mean")
    mode = (config.student.pooling if config.student is not None else None) or config.teacher.pooling or "mean"
    for student in students:
        if student is not None:
            set_pooling(student, mode)


# ---------------------------------------------------------------------------------------------
# Measuring


@torch.no_grad()
def embed(model: nn.Module, loader: Any, *, inputs_key: str | None = None,
          device: torch.device | None = None) -> tuple[Tensor, Tensor | None]:
    """Every example's pooled embedding (N, D) in float32 on the CPU, and its labels (None without)."""
    from kdistill.adapters.base import model_inputs, to_device

    mode = pooling_of(model) or "mean"
    was_training = model.training
    model.eval()
    vectors, labels = [], []
    try:
        for batch in loader:
            batch = to_device(batch, device)
            own = batch[inputs_key] if inputs_key and inputs_key in batch else batch
            args, kwargs = model_inputs(own)
            output = model(*args, **kwargs, return_dict=True)
            vectors.append(pool(output.last_hidden_state, own.get("attention_mask"), mode).float().cpu())
            if "labels" in batch:
                labels.append(torch.as_tensor(batch["labels"]).cpu())
    finally:
        model.train(was_training)
    return torch.cat(vectors), (torch.cat(labels) if labels else None)


def nearest(index: Tensor, queries: Tensor) -> Tensor:
    """For each query (Q, D), the row of ``index`` (N, D) with the highest cosine (ties: the first)."""
    return (F.normalize(queries, dim=-1) @ F.normalize(index, dim=-1).T).argmax(dim=-1)


def similarity_correlation(teacher: Tensor, student: Tensor) -> float:
    """Pearson's r between the cosine similarities of every pair of rows in the two models' embeddings
    (N, D_t) and (N, D_s); the widths may differ. NaN below two pairs."""
    rows = teacher.shape[0]
    pairs = torch.triu_indices(rows, rows, offset=1)
    sims = [(F.normalize(x.double(), dim=-1) @ F.normalize(x.double(), dim=-1).T)[pairs[0], pairs[1]]
            for x in (teacher, student)]
    if sims[0].numel() < 2:
        return float("nan")
    return float(torch.corrcoef(torch.stack(sims))[0, 1])


def compare_embeddings(teacher: nn.Module, student: nn.Module, loader: Any, index_loader: Any) -> dict[str, Any]:
    """Teacher against student on ``loader``'s texts with ``index_loader``'s (the train split) as the
    nearest-neighbour index; the keys the module docstring names."""
    device = next(student.parameters()).device
    index = {role: embed(model, index_loader, inputs_key=key, device=device)
             for role, model, key in (("teacher", teacher, None), ("student", student, "student_inputs"))}
    test = {role: embed(model, loader, inputs_key=key, device=device)
            for role, model, key in (("teacher", teacher, None), ("student", student, "student_inputs"))}
    picked = {role: nearest(index[role][0], test[role][0]) for role in ("teacher", "student")}
    same_width = test["teacher"][0].shape[1] == test["student"][0].shape[1]
    cosine = float(F.cosine_similarity(test["teacher"][0], test["student"][0], dim=-1).mean()) if same_width else None
    result: dict[str, Any] = {
        "examples": int(test["student"][0].shape[0]), "index_examples": int(index["student"][0].shape[0]),
        "k": NEIGHBOURS, "agreement": float((picked["teacher"] == picked["student"]).float().mean()),
    }
    student_scores = {"cosine_agreement": cosine,
                      "similarity_correlation": similarity_correlation(test["teacher"][0], test["student"][0])}
    labels, index_labels = test["student"][1], index["student"][1]
    if labels is not None and index_labels is not None:
        for role in ("teacher", "student"):
            accuracy = float((index_labels[picked[role]] == labels).float().mean())
            result[role] = {"knn_accuracy": accuracy, **(student_scores if role == "student" else {})}
    else:
        result["student"] = student_scores
    return result


def evaluate_embedding_splits(teacher: nn.Module, student: nn.Module, loaders: Mapping[str, Any],
                              splits=("validation", "test")) -> dict[str, Any]:
    """:func:`compare_embeddings` on each of ``splits`` the run has, the train split as the index."""
    return {split: compare_embeddings(teacher, student, loaders[split], loaders["train"])
            for split in splits if split in loaders and "train" in loaders}


# ---------------------------------------------------------------------------------------------
# Tables (report.md and the model card)


def is_embedding_result(metrics: Mapping) -> bool:
    """Whether a summary's ``metrics`` are an embedding run's (:func:`compare_embeddings`)."""
    return any("similarity_correlation" in (result.get("student") or {}) for result in metrics.values())


def embedding_table(metrics: Mapping, baseline: Mapping) -> tuple[list[str], list[list[str]]]:
    """Header and rows: teacher, student and baseline per split — k-NN accuracy, the cosine with the
    teacher's embedding, the correlation of pairwise similarities, the same nearest neighbour."""
    def share(value: Any) -> str:
        return "" if value is None else f"{100 * value:.2f}%"

    def number(value: Any) -> str:
        return "" if value is None else f"{value:.4f}"

    rows = []
    for split, result in metrics.items():
        for role in ("teacher", "student", "baseline"):
            figures = (baseline.get(split) if role == "baseline" else result.get(role)) or {}
            if not figures:
                continue
            agreement = figures.get("agreement") if role == "baseline" else result.get("agreement")
            rows.append([split, role, share(figures.get("knn_accuracy")),
                         "" if role == "teacher" else number(figures.get("cosine_agreement")) or "n/a (widths differ)",
                         number(figures.get("similarity_correlation")) if role != "teacher" else "",
                         share(agreement) if role != "teacher" else ""])
    header = ["split", "model", f"{NEIGHBOURS}-NN accuracy", "cosine with the teacher",
              "similarity correlation", "same nearest neighbour as the teacher"]
    return header, rows


# ---------------------------------------------------------------------------------------------
# The student folder


def write_sentence_transformers_files(folder: Path, mode: str, width: int, *, normalise: bool = False) -> list[str]:
    """``modules.json`` and the Pooling module's ``1_Pooling/config.json`` (and ``2_Normalize`` when the
    teacher normalises), so ``SentenceTransformer(folder)`` pools as the run did; the files written."""
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalise:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (folder / "2_Normalize").mkdir(exist_ok=True)
    settings = {"word_embedding_dimension": width, **{key: False for key in _ST_MODES}}
    settings["pooling_mode_mean_tokens" if mode == "mean" else "pooling_mode_cls_token"] = True
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(settings, indent=2), encoding="utf-8")
    (folder / "modules.json").write_text(json.dumps(modules, indent=2), encoding="utf-8")
    return ["modules.json", "1_Pooling/config.json"]


__all__ = ["NEIGHBOURS", "POOLINGS", "compare_embeddings", "embed", "embedding_table", "evaluate_embedding_splits",
           "folder_pooling", "is_embedding_result",
           "is_embedding_model", "mark_models", "nearest", "pool", "pooling_of", "set_pooling",
           "save_untrained_baseline", "similarity_correlation", "write_sentence_transformers_files"]


def save_untrained_baseline(model: nn.Module, out: Path, tokenizer: Any = None) -> dict[str, Any]:
    """An embedding run's baseline (``baseline: true``): the student as built, saved untrained in
    ``baseline/student`` (``kdistill eval`` reloads it); its record."""
    from kdistill.files import atomic_write_text
    from kdistill.finetune import BASELINE_DIR
    from kdistill.models import save_model_folder

    folder = Path(out) / BASELINE_DIR
    save_model_folder(model, folder / "student", tokenizer)
    record = {"steps": 0, "final_metrics": {}, "seconds": 0.0,
              "note": "the student as built, untrained: the embedding it gives without distillation"}
    atomic_write_text(folder / "stage_done.json", json.dumps(record, indent=2))
    return record
