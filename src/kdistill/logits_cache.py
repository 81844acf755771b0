"""``cache: logits``: the teacher's logits computed once, before training, and read from disk after.

    cache: logits     # in a run config

A stage whose matches read nothing of the teacher but its ``logits`` (Hinton KD, a soft-target
stage) trains from stored logits: the teacher runs once over the stage's data — each part (the
labelled split, the unlabelled texts) on its own, in length-sorted batches of
``data.eval_batch_size`` — instead of once per epoch, and not at all in a later run over the same
data. Other stages (hidden states, attentions) run the teacher live; ``kdistill plan`` says which.

The logits are stored in float32, exactly as computed (``cache: teacher`` stores every feature a
stage reads, in float16, filled during the first epoch: :mod:`kdistill.cache`). They live in
``<cache>/teacher-logits/<key>.npy`` (``$KDISTILL_CACHE`` or ``~/.cache/kdistill``), keyed by the
teacher's weights, the tokenised texts and the batch size, so a second run — another student,
another seed — reuses them, and anything else computes them afresh. Written to a temporary file,
then renamed: an interrupted run leaves nothing half-written.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from kdistill.features import Features
from kdistill.files import cache_root

CACHE_DIR = "teacher-logits"


def reads_only_logits(distiller: Any) -> bool:
    """Whether every match of ``distiller`` that reads a teacher reads only its ``logits`` (one teacher)."""
    reading = [b for b in distiller.bound if b.teacher_refs]
    return (len(distiller.teachers) == 1 and bool(reading)
            and all(str(ref) == "logits" for b in reading for ref in b.teacher_refs))


def logits_file(teacher_key: str, dataset: Any, batch_size: int) -> Path:
    """Where the logits of ``dataset`` (a TokenizedDataset) by the teacher ``teacher_key`` are stored."""
    digest = hashlib.sha256(teacher_key.encode())
    digest.update(dataset.teacher.input_ids.tobytes())
    digest.update(dataset.teacher.offsets.tobytes())
    digest.update(str(batch_size).encode())
    return cache_root() / CACHE_DIR / f"{digest.hexdigest()[:24]}.npy"


@torch.no_grad()
def compute_logits(distiller: Any, dataset: Any, batch_size: int, *, desc: str) -> np.ndarray:
    """The teacher's logits for every example of ``dataset``, in its order (computed in length-sorted
    batches of ``batch_size``, longest first)."""
    from kdistill.adapters.base import to_device
    from kdistill.data import LengthBucketSampler

    teacher = next(iter(distiller.teachers.values()))
    device = next(teacher.parameters()).device
    sampler = LengthBucketSampler(dataset.lengths, batch_size, shuffle=False)
    collate = dataset.collator()
    out: np.ndarray | None = None
    for indices in tqdm(list(sampler), desc=desc, leave=False):
        batch = to_device(collate([dataset[i] for i in indices]), device)
        (features,) = distiller.teacher_features(batch).values()
        logits = features.logits.float().cpu().numpy()
        if out is None:
            out = np.zeros((len(dataset), *logits.shape[1:]), dtype=np.float32)
        out[indices] = logits
    assert out is not None, "an empty dataset has no logits"
    return out


def cached_logits(distiller: Any, teacher_key: str, dataset: Any, batch_size: int, *, name: str) -> np.ndarray:
    """The stored logits of ``dataset``, computed and stored first when the cache lacks them."""
    path = logits_file(teacher_key, dataset, batch_size)
    if path.is_file():
        logits = np.load(path, allow_pickle=False)
        if len(logits) == len(dataset):
            return logits
    logits = compute_logits(distiller, dataset, batch_size, desc=f"teacher logits ({name})")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.npy")
    np.save(tmp, logits)
    os.replace(tmp, path)
    return logits


def teacher_key(teacher: nn.Module) -> str:
    """The teacher's weights as a digest (:func:`kdistill.cache.teacher_fingerprint`)."""
    from kdistill.cache import teacher_fingerprint

    return teacher_fingerprint(teacher)


def describe(distiller: Any, datasets: Sequence[Any], batch_size: int) -> str:
    """What ``cache: logits`` does for a stage, for ``kdistill plan``."""
    if not reads_only_logits(distiller):
        return "none (a match of this stage reads more than the teacher's logits); the teacher runs live"
    key = teacher_key(next(iter(distiller.teachers.values())))
    bases = [getattr(d, "dataset", d) for d in datasets]
    stored = sum(logits_file(key, base, batch_size).is_file() for base in bases)
    where = cache_root() / CACHE_DIR
    if stored == len(bases):
        return f"the teacher's logits (float32), stored in {where}: the teacher does not run"
    return (f"the teacher's logits (float32), computed once before training over {sum(len(b) for b in bases):,} "
            f"examples and stored in {where}; the teacher does not run during training")


class WithTeacherLogits(Dataset):
    """``dataset``'s items, each carrying its row of ``logits`` (``teacher_logits``)."""

    def __init__(self, dataset: Any, logits: np.ndarray):
        self.dataset = dataset
        self.logits = logits
        self.lengths = getattr(dataset, "lengths", None)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        item = dict(self.dataset[index])
        item["teacher_logits"] = self.logits[index]
        return item


class LogitsCollator:
    """Collates like ``collate`` and turns the items' stacked logits into ``teacher_features``."""

    def __init__(self, collate: Any):
        self.collate = collate

    def __call__(self, examples: Sequence[dict]) -> dict:
        logits = torch.from_numpy(np.stack([e.pop("teacher_logits") for e in examples]))
        batch = self.collate(examples)
        batch["teacher_features"] = Features(logits=logits, attention_mask=batch.get("attention_mask"))
        return batch


__all__ = ["LogitsCollator", "WithTeacherLogits", "cached_logits", "compute_logits", "describe", "logits_file",
           "reads_only_logits", "teacher_key"]
