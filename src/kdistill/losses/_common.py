"""Helpers the loss modules share: dtype, shape checks, token masks, safe means."""

from __future__ import annotations

import torch
from torch import Tensor

from kdistill.errors import ConfigError, ShapeError


def upcast(*tensors: Tensor) -> tuple[Tensor, ...]:
    """Cast to float32, or to float64 when any input is float64 (half precision loses KD's small differences)."""
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
    return tuple(t.to(dtype) for t in tensors)


def describe_mismatch(student: Tensor, teacher: Tensor, *, last: str = "widths", hint: str = "") -> str:
    """A sentence naming what differs between two shapes and what to do about it."""
    s, t = tuple(student.shape), tuple(teacher.shape)
    if len(s) != len(t):
        return f"student is {len(s)}-D {s} but teacher is {len(t)}-D {t}: match features of the same kind"
    if s[0] != t[0]:
        return f"batch sizes differ (student {s[0]}, teacher {t[0]}): both models must see the same batch"
    if len(s) >= 3 and s[1] != t[1] and s[2:] == t[2:]:
        return (f"sequence lengths differ (student {s[1]}, teacher {t[1]}): tokenize the batch once "
                f"for both models, with the same padding")
    if s[:-1] == t[:-1]:
        fix = hint or "add a projection to the match"
        return f"{last} differ (student {s[-1]}, teacher {t[-1]}): {fix}"
    return f"shapes differ (student {s}, teacher {t})"


def require_same_shape(loss: str, student: Tensor, teacher: Tensor, *, last: str = "widths",
                       hint: str = "") -> None:
    if student.shape != teacher.shape:
        raise ShapeError(f"{loss}: {describe_mismatch(student, teacher, last=last, hint=hint)}.")


def require_tensor(loss: str, value: object, role: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise ShapeError(f"{loss}: {role} is a {type(value).__name__}, not a tensor: "
                         f"name a single feature (e.g. 'hidden.4'), not several.")
    return value


def token_mask(loss: str, mask: Tensor | None, x: Tensor) -> Tensor | None:
    """The (B, T) mask as bool, or None when there is none or ``x`` has no token axis (2-D input).

    A token axis is axis 1 of an input with three or more axes; it must have the mask's shape.
    """
    if mask is None or x.dim() < 3:
        return None
    if tuple(mask.shape) != tuple(x.shape[:2]):
        raise ShapeError(f"{loss}: mask has shape {tuple(mask.shape)} but the input's (batch, tokens) "
                         f"are {tuple(x.shape[:2])}: pass the attention mask of this batch.")
    return mask.to(x.device) != 0


def causal_keys(length: int, device: torch.device) -> Tensor:
    """(T, T) bool, True where key j ≤ query i: what a decoder-only model's query may attend to."""
    return torch.ones(length, length, dtype=torch.bool, device=device).tril()


def mean_or_zero(values: Tensor) -> Tensor:
    """Mean of ``values``; 0 (still attached to the graph) when nothing is valid, instead of NaN."""
    return values.mean() if values.numel() else values.sum()


def require_positive(loss: str, name: str, value: float | Tensor) -> None:
    """A number (or one-element tensor) > 0; anything else is a ConfigError naming the loss and ``name``."""
    if isinstance(value, Tensor) and value.numel() != 1:
        raise ConfigError(f"{loss}: {name} must be one number > 0, got a tensor of shape {tuple(value.shape)}.")
    if isinstance(value, bool) or not isinstance(value, (int, float, Tensor)):
        raise ConfigError(f"{loss}: {name} must be a number > 0, got {type(value).__name__} {value!r}.")
    if not value > 0:
        raise ConfigError(f"{loss}: {name} must be > 0, got {value!r}.")


def kl_rows(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(p ‖ q) per row from log-probabilities; classes with p = 0 contribute 0 (no 0·log 0 NaN)."""
    p = log_p.exp()
    return (p * (log_p - log_q).masked_fill(p == 0, 0.0)).sum(-1)


def t2_factor(temperature: float, t2_scale: bool) -> float:
    """T² when ``t2_scale`` (Hinton's factor that keeps soft-target gradients on one scale across T), else 1."""
    return temperature**2 if t2_scale else 1.0
