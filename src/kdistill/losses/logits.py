"""Losses on output logits: soft cross-entropy, KL, reverse KL, JSD, logit MSE, hard-label CE.

Logits are (B, C) per example or (B, T, C) per token. With a token axis the loss is computed per
token and averaged over valid tokens (mask == 1); a (B, C) input ignores the mask.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from kdistill.errors import ShapeError
from kdistill.losses import register_loss
from kdistill.losses._common import (kl_rows, mean_or_zero, require_positive, require_same_shape, t2_factor,
                                     token_mask, upcast)
from kdistill.ranges import FLAG, PROBABILITY, TEMPERATURE, WHOLE

_CLASSES_HINT = "the student's output layer must predict the teacher's classes (or vocabulary)"


def _valid_rows(loss: str, student: Tensor, teacher: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """Student and teacher logits of valid examples or tokens, as (N, C) in float32/float64."""
    require_same_shape(loss, student, teacher, last="numbers of classes", hint=_CLASSES_HINT)
    keep = token_mask(loss, mask, student)
    if keep is not None:
        student, teacher = student[keep], teacher[keep]
    classes = student.shape[-1]
    return upcast(student.reshape(-1, classes), teacher.reshape(-1, classes))


@register_loss(ranges={"temperature": TEMPERATURE, "t2_scale": FLAG}, width_free=True, topk=True)
def soft_ce(student: Tensor, teacher: Tensor, *, temperature: float = 1.0, t2_scale: bool = True,
            mask: Tensor | None = None) -> Tensor:
    """Hinton soft cross-entropy −Σ softmax(teacher/T)·log_softmax(student/T).

    student, teacher: logits (B, C) or (B, T, C); mask: (B, T) of 0/1, used only with a token axis.
    Reduction: summed over classes, mean over examples (or over valid tokens).
    Scaling: multiplied by T² when ``t2_scale`` (Hinton, DistilBERT); TinyBERT's prediction loss has
    no T² — use ``t2_scale=False`` for it. The minimum is the teacher's entropy, not 0 (see ``kl``).
    """
    require_positive("soft_ce", "temperature", temperature)
    student, teacher = _valid_rows("soft_ce", student, teacher, mask)
    teacher_probs = F.softmax(teacher / temperature, dim=-1)
    student_log_probs = F.log_softmax(student / temperature, dim=-1)
    per_row = -(teacher_probs * student_log_probs.masked_fill(teacher_probs == 0, 0.0)).sum(-1)
    return mean_or_zero(per_row) * t2_factor(temperature, t2_scale)


@register_loss(ranges={"temperature": TEMPERATURE, "t2_scale": FLAG}, width_free=True, topk=True)
def kl(student: Tensor, teacher: Tensor, *, temperature: float = 1.0, t2_scale: bool = True,
       mask: Tensor | None = None) -> Tensor:
    """KL(p_teacher ‖ p_student) of the temperature-softened distributions (= soft_ce − teacher entropy).

    student, teacher: logits (B, C) or (B, T, C); mask: (B, T) of 0/1, used only with a token axis.
    Reduction: summed over classes, mean over examples (or over valid tokens) — 'batchmean', not
    PyTorch's default per-element mean. Scaling: × T² when ``t2_scale``. Zero when student = teacher.
    """
    require_positive("kl", "temperature", temperature)
    student, teacher = _valid_rows("kl", student, teacher, mask)
    per_row = kl_rows(F.log_softmax(teacher / temperature, -1), F.log_softmax(student / temperature, -1))
    return mean_or_zero(per_row) * t2_factor(temperature, t2_scale)


@register_loss(ranges={"temperature": TEMPERATURE, "t2_scale": FLAG}, width_free=True, topk=True)
def reverse_kl(student: Tensor, teacher: Tensor, *, temperature: float = 1.0, t2_scale: bool = True,
               mask: Tensor | None = None) -> Tensor:
    """Reverse KL(p_student ‖ p_teacher): mode-seeking, the student may ignore teacher modes.

    student, teacher: logits (B, C) or (B, T, C); mask: (B, T) of 0/1, used only with a token axis.
    Reduction: summed over classes, mean over examples (or over valid tokens). Scaling: × T² when
    ``t2_scale``. Zero when student = teacher.
    """
    require_positive("reverse_kl", "temperature", temperature)
    student, teacher = _valid_rows("reverse_kl", student, teacher, mask)
    per_row = kl_rows(F.log_softmax(student / temperature, -1), F.log_softmax(teacher / temperature, -1))
    return mean_or_zero(per_row) * t2_factor(temperature, t2_scale)


@register_loss(ranges={"temperature": TEMPERATURE, "t2_scale": FLAG}, width_free=True, topk=True)
def jsd(student: Tensor, teacher: Tensor, *, temperature: float = 1.0, t2_scale: bool = True,
        mask: Tensor | None = None) -> Tensor:
    """Jensen–Shannon divergence ½KL(p_s ‖ m) + ½KL(p_t ‖ m), m = ½(p_s + p_t); symmetric, ≤ log 2.

    student, teacher: logits (B, C) or (B, T, C); mask: (B, T) of 0/1, used only with a token axis.
    Reduction: summed over classes, mean over examples (or over valid tokens). Scaling: × T² when
    ``t2_scale`` (default, like ``kl``); set it False for the plain divergence in nats.
    """
    require_positive("jsd", "temperature", temperature)
    student, teacher = _valid_rows("jsd", student, teacher, mask)
    log_p_s = F.log_softmax(student / temperature, -1)
    log_p_t = F.log_softmax(teacher / temperature, -1)
    log_m = torch.logaddexp(log_p_s, log_p_t) - math.log(2.0)
    per_row = 0.5 * kl_rows(log_p_s, log_m) + 0.5 * kl_rows(log_p_t, log_m)
    return mean_or_zero(per_row) * t2_factor(temperature, t2_scale)


@register_loss(ranges={"temperature": TEMPERATURE})
def logits_mse(student: Tensor, teacher: Tensor, *, temperature: float = 1.0,
               mask: Tensor | None = None) -> Tensor:
    """Mean squared difference of temperature-divided logits, mean(((student − teacher) / T)²).

    student, teacher: logits (B, C) or (B, T, C); mask: (B, T) of 0/1, used only with a token axis.
    Reduction: mean over every class of every example (or valid token) — per element, like
    TextBrewer's 'mse'. Scaling: none; note T²·this is mean((s − t)²), independent of T.
    """
    require_positive("logits_mse", "temperature", temperature)
    student, teacher = _valid_rows("logits_mse", student, teacher, mask)
    return mean_or_zero(((student - teacher) / temperature).square())


@register_loss(ranges={"ignore_index": WHOLE, "label_smoothing": PROBABILITY},
               width_free=True)
def hard_ce(student: Tensor, teacher: Tensor | None = None, *, labels: Tensor, ignore_index: int = -100,
            label_smoothing: float = 0.0) -> Tensor:
    """Ordinary cross-entropy of the student's logits with the true labels; the teacher is ignored.

    student: logits (B, C) with labels (B,), or (B, T, C) with labels (B, T); labels equal to
    ``ignore_index`` (−100) are skipped. Reduction: mean over non-ignored labels (0 if none).
    Scaling: none (no temperature).
    """
    if tuple(labels.shape) != tuple(student.shape[:-1]):
        raise ShapeError(f"hard_ce: labels have shape {tuple(labels.shape)} but the logits "
                         f"{tuple(student.shape)} need {tuple(student.shape[:-1])}: pass one class id per "
                         f"example (or per token), with {ignore_index} where there is none.")
    labels = labels.to(student.device).reshape(-1).long()
    keep = labels != ignore_index
    (logits,) = upcast(student.reshape(-1, student.shape[-1])[keep])
    if logits.numel() == 0:
        return logits.sum()
    return F.cross_entropy(logits, labels[keep], label_smoothing=label_smoothing)
