"""TextBrewer's losses and projections that kdistill's own library lacks, as TextBrewer computes them
(re-exported by :mod:`kdistill.compat.textbrewer`, where YAML names them)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdistill.errors import ConfigError, FeatureError
from kdistill.features import Features
from kdistill.losses import attention_kl, attention_mse
from kdistill.losses._common import upcast


# ---------------------------------------------------------------------------------------------
# Losses TextBrewer has and kdistill's registry does not: thin wrappers over kdistill's losses,
# addressable from YAML as "kdistill.compat.textbrewer:<name>".


def _require_probabilities(loss: str, *maps: Tensor) -> None:
    if any(bool((m < 0).any()) for m in maps):
        raise FeatureError(
            f"{loss}: the attention maps hold negative values, i.e. pre-softmax scores; kdistill compares "
            "attention *probabilities* (transformers' `attentions`). Return probabilities from the adaptor, "
            "or use 'attention_mse' on the scores."
        )


def attention_ce(student: Tensor, teacher: Tensor, *, mask: Tensor | None = None) -> Tensor:
    """TextBrewer's ``attention_ce`` as kdistill's ``attention_kl``: KL(A_teacher ‖ A_student) over keys.

    student, teacher: attention probabilities (B, H, T, T); mask: (B, T) of 0/1. TextBrewer
    soft-maxed whatever the adaptor returned (a double softmax on probabilities); on pre-softmax
    scores its value is this KL plus the teacher's entropy — the same gradient. Reduction: summed
    over keys, mean over batch · heads · valid queries. Scaling: none.
    """
    _require_probabilities("attention_ce", student, teacher)
    return attention_kl(student, teacher, mask=mask)


def attention_ce_mean(student: Tensor, teacher: Tensor, *, mask: Tensor | None = None) -> Tensor:
    """TextBrewer's ``attention_ce_mean``: ``attention_ce`` on the head-averaged maps (B, 1, T, T)."""
    _require_probabilities("attention_ce_mean", student, teacher)
    return attention_kl(_heads(student).mean(1, keepdim=True), _heads(teacher).mean(1, keepdim=True), mask=mask)


def attention_mse_sum(student: Tensor, teacher: Tensor, *, mask: Tensor | None = None) -> Tensor:
    """TextBrewer's ``attention_mse_sum``: ``attention_mse`` of the maps summed over heads.

    student, teacher: (B, H, T, T) or (B, T, T); mask: (B, T) of 0/1. Reduction: mean over valid
    (batch, query, key) entries, like TextBrewer with a mask. Scaling: none.
    """
    return attention_mse(_heads(student).sum(1, keepdim=True), _heads(teacher).sum(1, keepdim=True),
                         mask=mask, kind="scores")


def _heads(maps: Tensor) -> Tensor:
    return maps.unsqueeze(1) if maps.dim() == 3 else maps


def token_gram_mse(student: tuple[Tensor, Tensor], teacher: tuple[Tensor, Tensor], *,
                   mask: Tensor | None = None) -> Tensor:
    """TextBrewer's ``nst``/``mmd`` on two layers: MSE of token×token Gram matrices S₁S₂ᵀ/D vs T₁T₂ᵀ/D.

    student, teacher: pairs of (B, T, D) features (widths may differ between the models); mask:
    (B, T) of 0/1. Reduction: mean over valid (batch, token, token) entries. Scaling: each Gram
    matrix is divided by its features' width D — TextBrewer divided by D without a mask but by the
    padded length T with one; kdistill uses D in both cases.
    """
    if not (isinstance(student, (tuple, list)) and isinstance(teacher, (tuple, list))
            and len(student) == 2 and len(teacher) == 2):
        raise ConfigError("token_gram_mse: needs two layers per model, e.g. layer_T: [2, 4], layer_S: [1, 2].")
    s1, s2, t1, t2 = upcast(*student, *teacher)
    gram_student = s1 @ s2.transpose(1, 2) / s1.shape[-1]
    gram_teacher = t1 @ t2.transpose(1, 2) / t1.shape[-1]
    squared = (gram_student - gram_teacher).square()
    if mask is None:
        return squared.mean()
    keep = (mask.to(squared.device) != 0)
    valid = keep[:, :, None] & keep[:, None, :]
    return torch.where(valid, squared, 0.0).sum() / valid.sum().clamp_min(1)


def textbrewer_kd(student: Tensor, teacher: Tensor, *, temperature: float, kd_loss_type: str = "ce",
                  temperature_scheduler: Sequence | None = None, probability_shift: bool = False,
                  student_features: Features | None = None) -> Tensor:
    """TextBrewer's logits term with its dynamic options (``flsw``/``cwsm`` temperatures, ``probability_shift``).

    student, teacher: logits (N, C) or (B, T, C). ``ce``: −Σ softmax(t/τ)·log_softmax(s/τ), mean over
    rows, **no T²** (as TextBrewer's ``kd_ce_loss``); ``mse``: mean(((s − t)/τ)²). τ is the
    temperature, or per row from ``flsw``/``cwsm`` (arXiv:1911.07471). ``probability_shift`` swaps the
    teacher's top logit with the label's (labels come from the student adaptor's ``labels``).
    Used only where those options are set; otherwise the plain ``soft_ce``/``logits_mse`` run.
    """
    student, teacher = upcast(student, teacher)
    if probability_shift:
        labels = (student_features.extra.get("labels") if student_features is not None else None)
        if labels is None:
            raise FeatureError("probability_shift=True needs the student adaptor to return 'labels'.")
        teacher = _probability_shift(teacher.clone(), labels)
    tau: Tensor | float = temperature
    if temperature_scheduler:
        tau = _dynamic_temperature(student.detach(), teacher, temperature, temperature_scheduler).unsqueeze(-1)
    if kd_loss_type == "mse":
        return ((student - teacher) / tau).square().mean()
    teacher_probs = F.softmax(teacher / tau, dim=-1)
    return -(teacher_probs * F.log_softmax(student / tau, dim=-1)).sum(-1).mean()


def _dynamic_temperature(student: Tensor, teacher: Tensor, base: float, spec: Sequence) -> Tensor:
    name, *params = spec
    with torch.no_grad():
        if name == "flsw":
            beta, gamma = float(params[0]), float(params[1])
            s = student / (student.norm(dim=-1, keepdim=True) + 1e-4)
            t = teacher / (teacher.norm(dim=-1, keepdim=True) + 1e-4)
            w = (1 - (s * t).sum(-1)).pow(gamma)
        else:  # cwsm
            beta = float(params[0])
            w = 1 / (student.softmax(-1).max(-1).values + 1e-3)
        return base + (w.mean() - w) * beta


def _probability_shift(teacher: Tensor, labels: Tensor) -> Tensor:
    flat = teacher.reshape(-1, teacher.shape[-1])
    labels = labels.reshape(-1).to(flat.device).long()
    top = flat.argmax(-1)
    labels = torch.where(labels < 0, top, labels)
    rows = torch.arange(flat.shape[0], device=flat.device)
    top_values, label_values = flat[rows, top].clone(), flat[rows, labels].clone()
    flat[rows, top] = label_values
    flat[rows, labels] = top_values
    return flat.reshape(teacher.shape)


def projection_factory(kind: str) -> Callable[[int, int], nn.Module]:
    """TextBrewer's projections: Linear (+ ReLU/Tanh), weights N(0, 0.02), zero bias."""

    def build(dim_in: int, dim_out: int) -> nn.Module:
        linear = nn.Linear(dim_in, dim_out)
        nn.init.normal_(linear.weight, std=0.02)
        nn.init.zeros_(linear.bias)
        if kind == "linear":
            return linear
        return nn.Sequential(linear, nn.ReLU() if kind == "relu" else nn.Tanh())

    build.__name__ = kind
    return build


relu_projection = projection_factory("relu")
"""Linear + ReLU (TextBrewer's ``proj: ['relu', ...]``), usable in YAML as
``projection: kdistill.compat.textbrewer:relu_projection``."""
tanh_projection = projection_factory("tanh")
"""Linear + Tanh (TextBrewer's ``proj: ['tanh', ...]``)."""
