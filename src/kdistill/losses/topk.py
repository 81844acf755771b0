"""Token KL from the teacher's top-k next-token distribution (a ``kdistill capture``, or live logits).

A capture stores, per loss-bearing token, the teacher's k largest log-probabilities at T = 1, their
token ids and the probability mass left over (the *tail*, 1 − Σ top-k probabilities). Two losses
follow from that, both forward KL(p_teacher ‖ p_student), chosen by ``topk``:

- ``tail`` (default): k + 1 categories — the k teacher tokens and one bucket for every other token.
  Teacher: its k log-probabilities and log(tail). Student: its full-vocabulary log-softmax gathered
  at the k ids, and log(1 − Σ its probabilities there). The teacher's tail mass keeps the student
  from piling everything onto the k tokens; at k = V the bucket is empty and this is ``token_kl``.
- ``renormalised``: k categories — the teacher's top-k probabilities renormalised to sum to 1, the
  student's log-softmax over the full vocabulary gathered at the same ids and renormalised over them.
  What the student does outside the k ids is not seen. At k = V this is ``token_kl`` too.

Temperature. The capture holds log-probabilities at T = 1. T acts on the categories' log-masses:
both sides' (k or k + 1) log-masses are divided by T and renormalised (a log-softmax over the
categories). For ``renormalised`` this is exactly softmax(z/T) restricted to the k ids, for both
models. For ``tail`` the bucket is tempered as one category (mass^(1/T), renormalised), which is not
the tempered mass of the tokens inside it — exact at T = 1 only. Scaling: × T² when ``t2_scale``.
Reduction: summed over the categories, mean over the valid (mask = 1) tokens; 0 when there are none.

The teacher input is either dense logits (…, V) — its top-k is taken here, at T = 1, in float32 (live,
or for ``kdistill plan``) — or the stored top-k log-probabilities (…, k) with ``teacher_features.extra``
holding ``topk_ids`` (…, k) and ``topk_tail`` (…) (:mod:`kdistill.capture`'s batches). The student's
rows are visited ``chunk_tokens`` at a time as in :mod:`kdistill.losses.vocab` (memory-safe).
"""

from __future__ import annotations

import torch
from torch import Tensor

from kdistill.errors import ShapeError
from kdistill.losses import register_loss
from kdistill.losses._common import kl_rows, require_positive, t2_factor, token_mask
from kdistill.losses.vocab import CHUNK, _Chunked, _flat
from kdistill.ranges import FLAG, TEMPERATURE, OneOf, Range

TOPK_MODES = ("tail", "renormalised")
MODE = OneOf(TOPK_MODES, why="tail adds one bucket for the mass outside the top k; renormalised drops it")
K = Range(1, integer=True, why="how many of the teacher's most likely tokens are kept per position")
IDS_KEY, TAIL_KEY = "topk_ids", "topk_tail"
_TINY = 1e-30  # the smallest remaining mass the student's bucket is given (log 0 would make its gradient NaN)
_EXACT_IDS = 2**24  # ids travel through the chunked loss as float32, exact below 2^24


def teacher_topk(logits: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """The top-k of ``logits`` (…, V) at T = 1, in float32 (float64 stays float64).

    Returns (log-probabilities (…, k), token ids (…, k) int64, remaining mass (…) = 1 − Σ top-k
    probabilities, ≥ 0). k larger than V is cut to V.
    """
    log_probs = logits.float().log_softmax(-1) if logits.dtype != torch.float64 else logits.log_softmax(-1)
    top, ids = log_probs.topk(min(k, logits.shape[-1]), dim=-1)
    tail = (-torch.expm1(top.logsumexp(-1).clamp(max=0.0))).clamp_min(0.0)
    return top, ids, tail


def _log_rest(log_mass: Tensor) -> Tensor:
    """log(1 − exp(log_mass)), the log of what is left of a distribution after ``log_mass``."""
    return (-torch.expm1(log_mass.clamp(max=0.0))).clamp_min(_TINY).log()


def _rows(mode: str, k: int, temperature: float):
    """The per-token loss of student logit rows (n, V) against packed teacher rows (n, 2k + 1)."""
    def rows(student: Tensor, packed: Tensor) -> Tensor:
        top, ids, tail = packed[:, :k], packed[:, k:2 * k].long(), packed[:, 2 * k]
        student_top = student.log_softmax(-1).gather(-1, ids)
        if mode == "tail":
            top = torch.cat([top, tail.clamp_min(0).log().unsqueeze(-1)], dim=-1)
            student_top = torch.cat([student_top, _log_rest(student_top.logsumexp(-1)).unsqueeze(-1)], dim=-1)
        return kl_rows((top / temperature).log_softmax(-1), (student_top / temperature).log_softmax(-1))

    return rows


def _teacher_parts(teacher: Tensor, teacher_features, k: int) -> tuple[Tensor, Tensor, Tensor]:
    extra = getattr(teacher_features, "extra", None) or {}
    if IDS_KEY not in extra:
        return teacher_topk(teacher.detach(), k)
    ids, tail = extra[IDS_KEY], extra[TAIL_KEY]
    if teacher.shape != ids.shape or tail.shape != teacher.shape[:-1]:
        raise ShapeError(f"token_topk_kl: stored top-k log-probabilities {tuple(teacher.shape)}, ids "
                         f"{tuple(ids.shape)} and tail {tuple(tail.shape)} do not fit one another.")
    return teacher.detach(), ids, tail


@register_loss(ranges={"k": K, "topk": MODE, "temperature": TEMPERATURE, "t2_scale": FLAG, "chunk_tokens": CHUNK},
               width_free=True)
def token_topk_kl(student: Tensor, teacher: Tensor, *, k: int = 64, topk: str = "tail", temperature: float = 1.0,
                  t2_scale: bool = True, chunk_tokens: int = 256, mask: Tensor | None = None,
                  teacher_features=None) -> Tensor:
    """Forward KL(p_teacher ‖ p_student) over the teacher's top-k tokens per position (module docstring).

    student: logits (B, T, V) or (N, V). teacher: logits (…, V) (top-k taken here at T = 1) or stored
    top-k log-probabilities (…, k) with ``teacher_features.extra['topk_ids']`` / ``['topk_tail']``.
    mask: (B, T) of 0/1. topk: ``tail`` (k + 1 categories) or ``renormalised`` (k). Reduction: summed
    over the categories, mean over valid tokens. Scaling: × T² when ``t2_scale``.
    """
    require_positive("token_topk_kl", "temperature", temperature)
    top, ids, tail = _teacher_parts(teacher, teacher_features, k)
    if top.shape[:-1] != student.shape[:-1]:
        raise ShapeError(f"token_topk_kl: the student's logits {tuple(student.shape)} and the teacher's top-k "
                         f"{tuple(top.shape)} cover different tokens; both models must see the same batch.")
    largest = int(ids.max()) if ids.numel() else 0
    if student.shape[-1] >= _EXACT_IDS or largest >= student.shape[-1]:
        raise ShapeError(f"token_topk_kl: a teacher token id is outside the student's vocabulary of "
                         f"{student.shape[-1]} (or the vocabulary exceeds {_EXACT_IDS:,}); teacher and student "
                         "must share one tokenizer.")
    kept = top.shape[-1]
    dtype = torch.float64 if student.dtype == torch.float64 else torch.float32
    packed = torch.cat([top.to(dtype), ids.to(dtype), tail.to(dtype).unsqueeze(-1)], dim=-1)
    keep = token_mask("token_topk_kl", mask, student)
    rows = torch.arange(student.numel() // student.shape[-1], device=student.device)
    if keep is not None:
        rows = rows[keep.reshape(-1)]
    value = _Chunked.apply(_flat(student), _flat(packed.to(student.device)), rows, rows, _rows(topk, kept, temperature),
                           1.0, chunk_tokens, (None, None))
    return value * t2_factor(temperature, t2_scale)


__all__ = ["TOPK_MODES", "teacher_topk", "token_topk_kl"]
