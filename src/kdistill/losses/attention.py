"""Losses on attention maps (B, H, T, T): TinyBERT's attention MSE and MiniLM v1's attention KL.

A (B, T) mask of 0/1 (1 = real token) removes every entry whose query or key is padding;
``causal=True`` (filled by the Distiller for decoder-only models) removes every key after its query
as well, so a decoder's masked future never counts, not even as two zeros. Masked entries may arrive as −inf, a large negative (−1e4, finfo.min) or probability 0; none leaks or
turns into NaN.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kdistill.errors import ShapeError, unknown_choice
from kdistill.losses import register_loss
from kdistill.losses._common import causal_keys, describe_mismatch, mean_or_zero, token_mask, upcast
from kdistill.ranges import OneOf

MASKED_SCORE = -1e3
"""Pre-softmax scores at or below this are padding or causal masking (−1e4, finfo.min, −inf), never
real scores. TextBrewer zeroed everything ≤ −1e-3, i.e. every negative score."""

_KINDS = ("probs", "scores")


def _check_maps(loss: str, student: Tensor, teacher: Tensor) -> None:
    if student.dim() != 4 or teacher.dim() != 4:
        raise ShapeError(f"{loss}: attention maps must be (B, H, T, T); got student {tuple(student.shape)}, "
                         f"teacher {tuple(teacher.shape)}.")
    if student.shape == teacher.shape:
        return
    if student.shape[0] == teacher.shape[0] and student.shape[1] != teacher.shape[1]:
        raise ShapeError(f"{loss}: head counts differ (student {student.shape[1]}, teacher "
                         f"{teacher.shape[1]}): attention maps compare head by head; use relation_kl "
                         f"(MiniLM v2) on queries/keys/values, which regroups both into the same number "
                         f"of relation heads.")
    raise ShapeError(f"{loss}: {describe_mismatch(student, teacher, last='key lengths')}.")


def _entry_mask(loss: str, mask: Tensor | None, maps: Tensor, causal: bool) -> Tensor:
    """(B, 1, T, T) bool: query and key both real tokens and, if ``causal``, key ≤ query."""
    batch, _, queries, keys = maps.shape
    keep = token_mask(loss, mask, maps[:, 0])
    if keep is None:
        keep = torch.ones(batch, queries, dtype=torch.bool, device=maps.device)
    entries = keep[:, None, :, None] & keep[:, None, None, :]
    if causal and queries == keys:
        entries = entries & causal_keys(queries, maps.device)
    return entries


@register_loss(ranges={"kind": OneOf(_KINDS, why="attention probabilities or pre-softmax scores")},
               width_free=True)
def attention_mse(student: Tensor, teacher: Tensor, *, mask: Tensor | None = None,
                  kind: str = "probs", causal: bool = False) -> Tensor:
    """TinyBERT's attention loss: MSE of attention maps over valid (query, key) entries.

    student, teacher: (B, H, T, T) with equal head counts; mask: (B, T) of 0/1. ``kind="probs"``:
    attention probabilities; ``kind="scores"``: pre-softmax scores (TinyBERT's reference code).
    An entry counts when its query and key are real tokens (with a mask), the key is not after the
    query (``causal``: a decoder-only model's maps) and both values are finite;
    for scores also above −1e3 in both maps (padding and causal masking write −1e4, finfo.min or
    −inf there; legitimate negative scores are kept). Reduction: mean over valid (b, h, query, key)
    entries — TinyBERT's code averages over all entries, zeros included. Scaling: none.
    """
    if kind not in _KINDS:
        raise unknown_choice("attention_mse.kind", "attention kind", kind, _KINDS)
    _check_maps("attention_mse", student, teacher)
    student, teacher = upcast(student, teacher)
    valid = torch.isfinite(student) & torch.isfinite(teacher)
    if kind == "scores":
        valid &= (student > MASKED_SCORE) & (teacher > MASKED_SCORE)
    valid &= _entry_mask("attention_mse", mask, student, causal)
    # Select before subtracting so masked −inf or huge values never reach the arithmetic (or its grads).
    difference = torch.where(valid, student, 0.0) - torch.where(valid, teacher, 0.0)
    return difference.square().sum() / valid.sum().clamp_min(1)


@register_loss(width_free=True)
def attention_kl(student: Tensor, teacher: Tensor, *, mask: Tensor | None = None, causal: bool = False) -> Tensor:
    """MiniLM v1's attention transfer: KL(A_teacher ‖ A_student) over keys, per head and query.

    student, teacher: attention probabilities (B, H, T, T) with equal head counts; mask: (B, T) of
    0/1 — padded keys are left out of the sum, padded queries out of the mean; ``causal``: keys after
    their query are left out too (a decoder-only model's maps). Zero probabilities
    are safe (0·log 0 = 0; a zero student probability is clamped to the dtype's tiny).
    Reduction: summed over keys, mean over batch · heads · valid queries. Scaling: none.
    """
    _check_maps("attention_kl", student, teacher)
    student, teacher = upcast(student, teacher)
    keep = token_mask("attention_kl", mask, student[:, 0])
    if keep is None:
        keep = torch.ones(student.shape[0], student.shape[2], dtype=torch.bool, device=student.device)
    valid = _entry_mask("attention_kl", mask, student, causal)
    valid = valid & torch.isfinite(student) & torch.isfinite(teacher) & (teacher > 0)
    tiny = torch.finfo(student.dtype).tiny
    student = torch.where(valid, student, 1.0).clamp_min(tiny)
    teacher = torch.where(valid, teacher, 1.0)
    per_query = torch.where(valid, teacher * (teacher.log() - student.log()), 0.0).sum(-1)  # (B, H, T)
    queries = keep[:, None, :].expand_as(per_query)
    return mean_or_zero(per_query[queries])
