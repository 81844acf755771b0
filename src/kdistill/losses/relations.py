"""MiniLM self-attention relations: compare token-to-token relations, so widths and heads may differ."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from kdistill.errors import ConfigError, ShapeError
from kdistill.losses import register_loss
from kdistill.losses._common import causal_keys, mean_or_zero, token_mask, upcast
from kdistill.ranges import Range

_RELATION_HEADS = Range(1, integer=True, why="the relation heads; each model's width must be divisible by it")


def _key_mask(keep: Tensor, causal: bool) -> Tensor:
    """(B, 1, T, T) bool: the keys each query's relation covers — real ones, and if ``causal`` none after it."""
    keys = keep[:, None, None, :]
    return keys & causal_keys(keep.shape[1], keep.device) if causal else keys


def _relation_log_probs(x: Tensor, num_heads: int, keep: Tensor, keys: Tensor) -> Tensor:
    """(B, T, D) → log softmax(X Xᵀ / √d_head) per head, (B, heads, T, T), over ``keys`` (from _key_mask)."""
    batch, length, width = x.shape
    x = torch.where(keep[..., None], x, 0.0)  # padding may hold anything; keep it out of every product
    heads = x.reshape(batch, length, num_heads, width // num_heads).transpose(1, 2)
    scores = heads @ heads.transpose(-1, -2) / math.sqrt(width // num_heads)
    # finfo.min rather than −inf: an all-padding row stays finite, so no NaN reaches the gradients.
    scores = scores.masked_fill(~keys, torch.finfo(scores.dtype).min)
    return F.log_softmax(scores, dim=-1)


@register_loss(ranges={"num_heads": _RELATION_HEADS}, width_free=True)
def relation_kl(student: Tensor, teacher: Tensor, *, num_heads: int, mask: Tensor | None = None,
                causal: bool = False) -> Tensor:
    """MiniLM v2 self-attention relation: KL(R_teacher ‖ R_student), R = softmax(X Xᵀ / √d_head) per head.

    student: (B, T, Ds), teacher: (B, T, Dt) — queries, keys or values; widths may differ, each must
    be divisible by ``num_heads`` (the relation heads, d_head = D / num_heads per model).
    mask: (B, T) of 0/1; padded keys get no relation weight and padded queries are skipped.
    causal: query i relates only to keys j ≤ i (decoder-only models; the Distiller fills it).
    Reduction: summed over keys, mean over batch · heads · valid queries. Scaling: none.
    """
    return _relation_kl("relation_kl", student, teacher, num_heads=num_heads, mask=mask, causal=causal)


@register_loss(ranges={"num_heads": _RELATION_HEADS}, width_free=True)
def value_relation_kl(student: Tensor, teacher: Tensor, *, num_heads: int,
                      mask: Tensor | None = None, causal: bool = False) -> Tensor:
    """MiniLM v1 value relation: relation_kl applied to the values, with the models' head count.

    student: (B, T, Ds), teacher: (B, T, Dt) value vectors (heads concatenated); mask: (B, T) of 0/1;
    causal: query i relates only to keys j ≤ i (decoder-only models; the Distiller fills it).
    Reduction: summed over keys, mean over batch · heads · valid queries. Scaling: none.
    """
    return _relation_kl("value_relation_kl", student, teacher, num_heads=num_heads, mask=mask, causal=causal)


def _relation_kl(loss: str, student: Tensor, teacher: Tensor, *, num_heads: int,
                 mask: Tensor | None, causal: bool) -> Tensor:
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
        raise ConfigError(f"{loss}: num_heads must be a positive integer, got {num_heads!r}.")
    if student.dim() != 3 or teacher.dim() != 3:
        raise ShapeError(f"{loss}: expected (B, T, D) features; got student {tuple(student.shape)}, "
                         f"teacher {tuple(teacher.shape)}.")
    if student.shape[:2] != teacher.shape[:2]:
        raise ShapeError(f"{loss}: (batch, tokens) differ (student {tuple(student.shape[:2])}, teacher "
                         f"{tuple(teacher.shape[:2])}): tokenize the batch once for both models.")
    for role, width in (("student", student.shape[-1]), ("teacher", teacher.shape[-1])):
        if width % num_heads:
            raise ShapeError(f"{loss}: the {role}'s width {width} is not divisible by num_heads={num_heads} "
                             f"(student {student.shape[-1]}, teacher {teacher.shape[-1]}): choose a number "
                             f"of relation heads that divides both widths.")
    student, teacher = upcast(student, teacher)
    keep = token_mask(loss, mask, student)
    if keep is None:
        keep = torch.ones(student.shape[:2], dtype=torch.bool, device=student.device)
    keys = _key_mask(keep, causal)
    log_r_student = _relation_log_probs(student, num_heads, keep, keys)
    log_r_teacher = _relation_log_probs(teacher, num_heads, keep, keys)
    log_ratio = torch.where(keys, log_r_teacher - log_r_student, 0.0)
    per_query = (log_r_teacher.exp() * log_ratio).sum(-1)  # (B, heads, T)
    return mean_or_zero(per_query[keep[:, None, :].expand_as(per_query)])
