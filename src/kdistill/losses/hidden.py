"""Losses on hidden states and feature maps: MSE, cosine, PKD, NST (MMD), FSP, RKD.

Token features are (B, T, D) with a (B, T) mask of 0/1 (1 = real token); padded tokens never
contribute. (B, D) features have no token axis and ignore the mask. Image features are (B, C, H, W).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdistill.errors import ShapeError
from kdistill.losses import register_loss
from kdistill.losses._common import (
    mean_or_zero,
    require_same_shape,
    require_tensor,
    token_mask,
    upcast,
)
from kdistill.ranges import WEIGHT


def _valid_tokens(loss: str, student: Tensor, teacher: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """Same-shape student and teacher with padded tokens removed: (N, ...) when masked, else as given."""
    require_same_shape(loss, student, teacher)
    keep = token_mask(loss, mask, student)
    if keep is not None:
        student, teacher = student[keep], teacher[keep]
    return upcast(student, teacher)


@register_loss()
def hidden_mse(student: Tensor, teacher: Tensor, *, mask: Tensor | None = None) -> Tensor:
    """Mean squared error of two features (TinyBERT's hidden and embedding loss).

    student, teacher: same shape, (B, T, D), (B, D) or any (B, ...); mask: (B, T) of 0/1, applied to
    the token axis of 3-D+ inputs. Reduction: mean over every element of the valid tokens
    (tokens × dims). Scaling: none. Widths must match: add a projection when they differ.
    """
    student, teacher = _valid_tokens("hidden_mse", student, teacher, mask)
    return mean_or_zero((student - teacher).square())


@register_loss()
def cosine(student: Tensor, teacher: Tensor, *, mask: Tensor | None = None) -> Tensor:
    """DistilBERT's cosine-embedding loss with target 1: mean of 1 − cos(student_i, teacher_i).

    student, teacher: (B, T, D) or (B, D); vectors lie along the last axis; mask: (B, T) of 0/1.
    Reduction: mean over valid tokens (or examples). Scaling: none; invariant to the features' scale.
    """
    student, teacher = _valid_tokens("cosine", student, teacher, mask)
    width = student.shape[-1]
    cos = F.cosine_similarity(student.reshape(-1, width), teacher.reshape(-1, width), dim=-1, eps=1e-8)
    return mean_or_zero(1.0 - cos)


def _cls(loss: str, x: Tensor) -> Tensor:
    if x.dim() == 3:
        return x[:, 0]
    if x.dim() == 2:
        return x
    raise ShapeError(f"{loss}: expected (B, T, D) token features or (B, D) [CLS] vectors, got shape "
                     f"{tuple(x.shape)}.")


@register_loss()
def pkd(student: Tensor, teacher: Tensor, *, mask: Tensor | None = None) -> Tensor:
    """Patient-KD: squared distance of the L2-normalised [CLS] vectors.

    student, teacher: (B, T, D) (token 0 is taken) or (B, D). ``mask`` is accepted and unused: [CLS]
    is always a real token. Reduction: squared L2 distance summed over dims, mean over the batch.
    Scaling: none. The paper sums this over layers: give one match per layer pair.
    """
    require_same_shape("pkd", student, teacher)
    student, teacher = upcast(_cls("pkd", student), _cls("pkd", teacher))
    distance = (F.normalize(student, dim=-1) - F.normalize(teacher, dim=-1)).square().sum(-1)
    return mean_or_zero(distance)


def _positions_by_channel(loss: str, x: Tensor, keep: Tensor | None) -> Tensor:
    """(B, T, D) → (B, D, T) with padded tokens zeroed; (B, C, H, W) → (B, C, H·W)."""
    if x.dim() == 3:
        if keep is not None:
            x = torch.where(keep[..., None], x, 0.0)
        return x.transpose(1, 2)
    if x.dim() == 4:
        return x.flatten(2)
    raise ShapeError(f"{loss}: expected (B, T, D) token features or (B, C, H, W) feature maps, got shape "
                     f"{tuple(x.shape)}.")


def _require_same_positions(loss: str, student: Tensor, teacher: Tensor) -> None:
    if student.dim() != teacher.dim() or student.shape[0] != teacher.shape[0]:
        raise ShapeError(f"{loss}: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} must "
                         f"have the same batch and layout; only the widths (channels) may differ.")
    if student.dim() == 3 and student.shape[1] != teacher.shape[1]:
        raise ShapeError(f"{loss}: sequence lengths differ (student {student.shape[1]}, teacher "
                         f"{teacher.shape[1]}): tokenize the batch once for both models.")
    if student.dim() == 4 and student.shape[2:] != teacher.shape[2:]:
        raise ShapeError(f"{loss}: spatial sizes differ (student {tuple(student.shape[2:])}, teacher "
                         f"{tuple(teacher.shape[2:])}): pool the larger map to the smaller size.")


def _mean_squared_dot(a: Tensor, b: Tensor) -> Tensor:
    """Per example, the mean over neuron pairs of the polynomial kernel (aᵢ·bⱼ)²: (B,)."""
    return (a @ b.transpose(1, 2)).square().mean(dim=(1, 2))


@register_loss(width_free=True)
def mmd(student: Tensor, teacher: Tensor, *, mask: Tensor | None = None) -> Tensor:
    """Neuron Selectivity Transfer (Huang & Wang 2017): MMD² between the student's and teacher's neurons.

    student: (B, T, Ds) or (B, Cs, H, W); teacher: (B, T, Dt) or (B, Ct, H, W); widths may differ.
    Each neuron (hidden unit or channel) is a vector over the example's valid tokens (mask: (B, T)
    of 0/1) or spatial positions, L2-normalised. Kernel k(a, b) = (aᵀb)²;
    MMD² = mean k(s, s') + mean k(t, t') − 2 mean k(s, t), each mean over all neuron pairs.
    Reduction: mean over the batch. Scaling: none; the normalisation does not depend on the mask
    (TextBrewer's mmd_loss, a token×token Gram MSE, divides by hidden size without a mask but by
    length with one). Also registered as ``nst``.
    """
    _require_same_positions("mmd", student, teacher)
    keep = token_mask("mmd", mask, student) if student.dim() == 3 else None
    student, teacher = upcast(student, teacher)
    s = F.normalize(_positions_by_channel("mmd", student, keep), dim=-1)
    t = F.normalize(_positions_by_channel("mmd", teacher, keep), dim=-1)
    per_example = _mean_squared_dot(s, s) + _mean_squared_dot(t, t) - 2.0 * _mean_squared_dot(s, t)
    return mean_or_zero(per_example)


register_loss("nst", width_free=True)(mmd)


def _pair(loss: str, features: object, role: str) -> tuple[Tensor, Tensor]:
    if not isinstance(features, (tuple, list)) or len(features) != 2:
        raise ShapeError(f"{loss}: the {role} must be two features of the same size, e.g. "
                         f"'hidden.1,hidden.3' or two module outputs; got {type(features).__name__}"
                         f"{f' of {len(features)}' if isinstance(features, (tuple, list)) else ''}.")
    first, second = (require_tensor(loss, f, role) for f in features)
    return first, second


def _flow_matrix(loss: str, first: Tensor, second: Tensor, mask: Tensor | None, role: str) -> Tensor:
    """G = F1ᵀF2 / N per example, (B, C1, C2); N = spatial positions or valid tokens."""
    if first.dim() not in (3, 4) or first.shape[0] != second.shape[0] or first.dim() != second.dim():
        raise ShapeError(f"{loss}: the {role}'s features must both be (B, T, D) or both (B, C, H, W) of "
                         f"one batch; got {tuple(first.shape)} and {tuple(second.shape)}.")
    if first.dim() == 4 and first.shape[2:] != second.shape[2:]:
        raise ShapeError(f"{loss}: the {role}'s two feature maps differ in size ({tuple(first.shape[2:])} "
                         f"vs {tuple(second.shape[2:])}): pool the larger one to the smaller size.")
    if first.dim() == 3 and first.shape[1] != second.shape[1]:
        raise ShapeError(f"{loss}: the {role}'s two features differ in length ({first.shape[1]} vs "
                         f"{second.shape[1]}).")
    first, second = upcast(first, second)
    keep = token_mask(loss, mask, first) if first.dim() == 3 else None
    a = _positions_by_channel(loss, first, keep)  # (B, C1, N)
    b = _positions_by_channel(loss, second, keep)  # (B, C2, N)
    if keep is not None:
        positions = keep.sum(1).clamp_min(1).to(a.dtype)[:, None, None]
    else:
        positions = a.shape[-1]
    return (a @ b.transpose(1, 2)) / positions


@register_loss(width_free=True)
def fsp(student: tuple[Tensor, Tensor], teacher: tuple[Tensor, Tensor], *,
        mask: Tensor | None = None) -> Tensor:
    """FSP "flow of solution procedure" (Yim et al. 2017): match the Gram matrices between two layers.

    student, teacher: each a pair (F1, F2) of (B, C, H, W) maps of one spatial size, or of (B, T, D)
    token features (mask: (B, T) of 0/1 over T). G = F1ᵀF2 / N, (B, C1, C2), N = H·W or the valid
    token count. Channels C1 and C2 must match between student and teacher.
    Reduction: mean of (G_s − G_t)² over the batch and matrix entries. Scaling: none.
    """
    s1, s2 = _pair("fsp", student, "student")
    t1, t2 = _pair("fsp", teacher, "teacher")
    for which, s, t in (("first", s1, t1), ("second", s2, t2)):
        s_width, t_width = s.shape[1 if s.dim() == 4 else -1], t.shape[1 if t.dim() == 4 else -1]
        if s_width != t_width:
            raise ShapeError(f"fsp: the {which} features' channels differ (student {s_width}, teacher "
                             f"{t_width}): FSP matrices compare channel by channel; add a projection "
                             f"to the student's feature or pick layers of equal width.")
    g_student = _flow_matrix("fsp", s1, s2, mask, "student")
    g_teacher = _flow_matrix("fsp", t1, t2, mask, "teacher")
    return mean_or_zero((g_student - g_teacher).square())


def _embeddings(loss: str, x: Tensor, mask: Tensor | None) -> Tensor:
    """(B, T, D) → mean over valid tokens (B, D); anything else → flattened (B, −1)."""
    if x.dim() == 3:
        keep = token_mask(loss, mask, x)
        if keep is None:
            keep = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        total = torch.where(keep[..., None], x, 0.0).sum(1)
        return total / keep.sum(1, keepdim=True).clamp_min(1).to(x.dtype)
    return x.reshape(x.shape[0], -1)


def _rkd_inputs(loss: str, student: Tensor, teacher: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    if student.shape[0] != teacher.shape[0]:
        raise ShapeError(f"{loss}: batch sizes differ (student {student.shape[0]}, teacher "
                         f"{teacher.shape[0]}): both models must see the same batch.")
    student, teacher = upcast(student, teacher)
    return _embeddings(loss, student, mask), _embeddings(loss, teacher, mask)


def _pairwise_distances(e: Tensor) -> Tensor:
    """(B, D) → (B, B) Euclidean distances, 0 on the diagonal, finite gradients at coincident points."""
    squared = (e[:, None, :] - e[None, :, :]).square().sum(-1)
    distances = squared.clamp_min(1e-12).sqrt()
    off_diagonal = ~torch.eye(len(e), dtype=torch.bool, device=e.device)
    return torch.where(off_diagonal, distances, 0.0)


def _distance_loss(student: Tensor, teacher: Tensor) -> Tensor:
    if len(student) < 2:
        return student[:0].sum()  # 0, attached to the graph: no pairs in a batch of one
    off_diagonal = ~torch.eye(len(student), dtype=torch.bool, device=student.device)
    d_student, d_teacher = _pairwise_distances(student), _pairwise_distances(teacher)
    d_student = d_student / d_student[off_diagonal].mean()
    d_teacher = d_teacher / d_teacher[off_diagonal].mean()
    return F.smooth_l1_loss(d_student, d_teacher, beta=1.0)


def _triplet_cosines(e: Tensor) -> Tensor:
    """cos of the angle at vertex i between j and k, for all (i, j, k): (B, B, B); 0 where degenerate."""
    directions = F.normalize(e[None, :, :] - e[:, None, :], dim=-1)  # [i, j] = unit(e_j − e_i)
    return directions @ directions.transpose(1, 2)


def _angle_loss(student: Tensor, teacher: Tensor) -> Tensor:
    return F.smooth_l1_loss(_triplet_cosines(student), _triplet_cosines(teacher), beta=1.0)


@register_loss(width_free=True)
def rkd_distance(student: Tensor, teacher: Tensor, *, mask: Tensor | None = None) -> Tensor:
    """RKD distance term (Park et al. 2019): Huber loss of pairwise distances, each normalised by its mean.

    student, teacher: (B, ...) with the same B; widths may differ. Per-example embeddings are the
    input flattened to (B, −1), except (B, T, D), which is averaged over valid tokens (mask: (B, T)).
    Distances are divided by their mean over pairs i ≠ j. Reduction: smooth-L1 (β = 1) averaged over
    all B×B entries (the zero diagonal included, as in the reference code). Scaling: none.
    """
    return _distance_loss(*_rkd_inputs("rkd_distance", student, teacher, mask))


@register_loss(width_free=True)
def rkd_angle(student: Tensor, teacher: Tensor, *, mask: Tensor | None = None) -> Tensor:
    """RKD angle term (Park et al. 2019): Huber loss of the cosines of every triplet's angle.

    student, teacher: (B, ...) with the same B; embeddings as in ``rkd_distance``. Reduction:
    smooth-L1 (β = 1) averaged over all B×B×B triplets (degenerate ones count as cosine 0 on both
    sides, as in the reference code). Scaling: none.
    """
    return _angle_loss(*_rkd_inputs("rkd_angle", student, teacher, mask))


@register_loss(ranges={"distance_weight": WEIGHT, "angle_weight": WEIGHT}, width_free=True)
def rkd(student: Tensor, teacher: Tensor, *, distance_weight: float = 25.0, angle_weight: float = 50.0,
        mask: Tensor | None = None) -> Tensor:
    """Relational KD (Park et al. 2019): distance_weight·rkd_distance + angle_weight·rkd_angle.

    student, teacher: (B, ...) with the same B; widths may differ. Embeddings: flattened to (B, −1),
    except (B, T, D), which is averaged over valid tokens (mask: (B, T) of 0/1). Reduction: as in
    ``rkd_distance`` and ``rkd_angle`` (relations within the batch). Scaling: the two weights
    (paper defaults 25 and 50).
    """
    student, teacher = _rkd_inputs("rkd", student, teacher, mask)
    return distance_weight * _distance_loss(student, teacher) + angle_weight * _angle_loss(student, teacher)
