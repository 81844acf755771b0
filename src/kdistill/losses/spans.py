"""Losses on a question-answering model's span logits: start and end distributions over allowed positions.

A QA model's ``logits`` feature is ``(B, 2, T)``: row 0 the start logits, row 1 the end logits over
the window's tokens (:mod:`kdistill.qa_spans`). The batch's ``loss_mask`` (B, T) marks the positions
an answer may start or end at: the window's context tokens and CLS, which stands for "the answer is
not in this window" (the label of such windows, as Hugging Face's ``run_qa.py``). Question tokens,
special tokens and padding are masked out *before* the softmax, so they never take probability mass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdistill.errors import ShapeError
from kdistill.losses import register_loss
from kdistill.losses._common import kl_rows, require_positive, t2_factor, upcast
from kdistill.ranges import FLAG, TEMPERATURE


def _span_rows(loss: str, student: Tensor, teacher: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Student and teacher span logits as (B, 2, T) in float32/float64 and the allowed positions (B, 1, T)."""
    if student.dim() != 3 or student.shape[1] != 2 or student.shape != teacher.shape:
        raise ShapeError(f"{loss}: expects the span logits of two question-answering models, (batch, 2, tokens) "
                         f"each (start and end), got student {tuple(student.shape)} and teacher "
                         f"{tuple(teacher.shape)}; match 'logits' of models loaded with task: question-answering.")
    if mask is None:
        keep = torch.ones(student.shape[0], 1, student.shape[2], dtype=torch.bool, device=student.device)
    elif tuple(mask.shape) != (student.shape[0], student.shape[2]):
        raise ShapeError(f"{loss}: mask has shape {tuple(mask.shape)} but the span logits' (batch, tokens) are "
                         f"{(student.shape[0], student.shape[2])}: pass the batch's loss_mask.")
    else:
        keep = (mask.to(student.device) != 0)[:, None, :]
    student, teacher = upcast(student, teacher)
    return student, teacher, keep


@register_loss(ranges={"temperature": TEMPERATURE, "t2_scale": FLAG}, width_free=True)
def span_kl(student: Tensor, teacher: Tensor, *, temperature: float = 1.0, t2_scale: bool = True,
            mask: Tensor | None = None) -> Tensor:
    """KL(p_teacher ‖ p_student) of the start and of the end distributions, each a softmax at temperature T
    over the allowed positions only.

    student, teacher: span logits (B, 2, T) (start, end); mask: (B, T) of 0/1, the positions an answer
    may start or end at (context tokens and CLS); None allows every position. Disallowed positions
    are removed before the softmax, so their logits never change the loss. Reduction: summed over
    positions, mean over the 2·B distributions (= the mean of the start and end KLs, each averaged
    over the batch). Scaling: × T² when ``t2_scale``. Zero when student = teacher on the allowed positions.
    """
    require_positive("span_kl", "temperature", temperature)
    student, teacher, keep = _span_rows("span_kl", student, teacher, mask)
    lowest = torch.finfo(student.dtype).min
    log_q = F.log_softmax((student / temperature).masked_fill(~keep, lowest), dim=-1)
    log_p = F.log_softmax((teacher / temperature).masked_fill(~keep, lowest), dim=-1)
    # Disallowed positions have p = 0 exactly (exp of the lowest value), so kl_rows drops them.
    per_row = kl_rows(log_p, log_q.masked_fill(~keep, 0.0))
    return per_row.mean() * t2_factor(temperature, t2_scale)


__all__ = ["span_kl"]
