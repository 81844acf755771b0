"""How the teacher cache lays features out on disk: one layout per stored feature, token axes trimmed
to each example's length, top-k logits stored as values and ids (:mod:`kdistill.cache`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from kdistill.features import Features
from kdistill.refs import Ref


@dataclass(frozen=True)
class FeatureLayout:
    """How one stored feature lies on disk.

    ``shape``: one example's shape without the batch axis, ``-1`` on token axes (their size is the
    example's length). ``topk``: 0 for a dense feature; else k, and the classes axis is the last.
    """

    teacher: str
    ref: str
    shape: tuple[int, ...]
    topk: int = 0

    @property
    def token_axes(self) -> tuple[int, ...]:
        return tuple(axis for axis, size in enumerate(self.shape) if size == -1)

    def example_shape(self, length: int) -> tuple[int, ...]:
        return tuple(length if size == -1 else size for size in self.shape)

    def stored_shape(self, length: int) -> tuple[int, ...]:
        """The stored per-example shape: the class axis is cut to k for top-k logits."""
        shape = self.example_shape(length)
        return shape[:-1] + (self.topk,) if self.topk else shape


# ---------------------------------------------------------------------------------------------
# Helpers


def _token_axes(ref: Ref, value: Tensor, batch_length: int) -> tuple[int, ...]:
    """Token axes of a batched feature (batch axis = 0), by kind; module outputs by size."""
    if ref.kind in ("hidden", "query", "key", "value"):
        return (1,)
    if ref.kind in ("attn", "attn_scores"):
        return (2, 3)
    if ref.kind in ("logits", "module") and value.dim() >= 3 and value.shape[1] == batch_length:
        return (1,)
    return ()


def _trim(layout: FeatureLayout, length: int) -> tuple[slice, ...]:
    return tuple(slice(0, length) if size == -1 else slice(None) for size in layout.shape)


def _store_topk(layout: FeatureLayout, logits: Tensor, maps: dict, offsets: dict, example: int) -> None:
    log_probs = logits.float().log_softmax(-1)
    top, classes = log_probs.topk(layout.topk, dim=-1)
    rest = torch.log1p(-top.exp().sum(-1).clamp(max=1.0 - 1e-7)) if layout.topk < logits.shape[-1] \
        else torch.full(top.shape[:-1], -math.inf)
    for suffix, array in (("values", top), ("classes", classes.int()), ("rest", rest)):
        start, end = offsets[suffix][example], offsets[suffix][example + 1]
        maps[suffix][start:end] = array.cpu().numpy().reshape(-1)


def _read_topk(layout: FeatureLayout, maps: dict, offsets: dict, indices: np.ndarray, lengths: np.ndarray,
               batch_length: int) -> Tensor:
    classes_count = layout.shape[-1]
    tail_classes = classes_count - layout.topk
    out = torch.zeros((len(indices), *layout.example_shape(batch_length)), dtype=torch.float32)
    for row, example in enumerate(indices):
        length = int(lengths[example])
        shape = layout.stored_shape(length)
        part = {}
        for suffix in ("values", "classes", "rest"):
            start, end = offsets[suffix][example], offsets[suffix][example + 1]
            part[suffix] = torch.from_numpy(np.array(maps[suffix][start:end]))
        values = part["values"].view(shape)
        classes = part["classes"].view(shape).long()
        rest = part["rest"].view(shape[:-1])
        if tail_classes:
            fill = (rest - math.log(tail_classes)).clamp_min(-1e4)
        else:
            fill = torch.full(shape[:-1], -1e4)
        dense = fill.unsqueeze(-1).expand(*shape[:-1], classes_count).clone()
        dense.scatter_(-1, classes, values)
        out[row][_trim(layout, length)] = dense
    return out


def topk_soft_targets(logits: Tensor, k: int) -> Tensor:
    """What the cache stores and a loss sees for ``logits`` kept as top-k (for tests and docs)."""
    layout = FeatureLayout("teacher", "logits", (int(logits.shape[-1]),), min(k, int(logits.shape[-1])))
    counts = {"values": layout.topk, "classes": layout.topk, "rest": 1}
    rows = []
    for row in logits:
        maps = {"values": np.zeros(layout.topk, np.float32), "classes": np.zeros(layout.topk, np.int32),
                "rest": np.zeros(1, np.float32)}
        offsets = {suffix: np.array([0, n]) for suffix, n in counts.items()}
        _store_topk(layout, row, maps, offsets, 0)
        rows.append(_read_topk(layout, maps, offsets, np.array([0]), np.array([1]), 1)[0])
    return torch.stack(rows)


def _put(features: Features, ref: Ref, value: Tensor) -> None:
    if ref.kind == "hidden":
        hidden = list(features.hidden or ())
        hidden.extend([None] * (ref.index + 1 - len(hidden)))
        hidden[ref.index] = value
        features.hidden = tuple(hidden)
    elif ref.kind == "logits":
        features.logits = value
    elif ref.kind == "pooled":
        features.pooled = value
    elif ref.kind == "embedding":
        features.embedding = value
    elif ref.kind == "module":
        features.modules[ref.path] = value
    else:
        table = {"attn": features.attentions, "attn_scores": features.attention_scores,
                 "query": features.queries, "key": features.keys, "value": features.values}[ref.kind]
        table[ref.index] = value


def _model_device(model: nn.Module | None) -> torch.device:
    if model is None:
        return torch.device("cpu")
    for param in model.parameters():
        return param.device
    return torch.device("cpu")
