"""Inputs shared by the loss tests: seeded tensors, padding masks, garbage in padded positions."""

from __future__ import annotations

import math

import torch
from torch import Tensor

GARBAGE = 1e6  # finite but huge: if padding leaked into a loss, the value would show it


def randn(*shape: int, seed: int, dtype: torch.dtype = torch.float64, scale: float = 1.0) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=torch.float64).mul(scale).to(dtype)


def padding_mask(lengths: list[int], length: int) -> Tensor:
    """(B, T) of 0/1 floats, as tokenizers return it: the first ``lengths[b]`` tokens are real."""
    return (torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]).float()


def with_garbage(x: Tensor, mask: Tensor, value: float = GARBAGE) -> Tensor:
    """``x`` (B, T, ...) with every padded token's entries replaced by ``value``."""
    padded = (mask == 0).reshape(*mask.shape, *([1] * (x.dim() - 2)))
    return torch.where(padded, torch.full_like(x, value), x)


def valid_tokens(mask: Tensor | None, batch: int, length: int) -> list[tuple[int, int]]:
    return [(b, i) for b in range(batch) for i in range(length) if mask is None or mask[b, i] != 0]


def huber(x: float) -> float:
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def softmax(row: list[float]) -> list[float]:
    top = max(row)
    exps = [math.exp(v - top) for v in row]
    total = sum(exps)
    return [e / total for e in exps]


def kl_div(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def assert_finite_backward(loss: Tensor, *inputs: Tensor) -> None:
    assert loss.dim() == 0 and torch.isfinite(loss), loss
    loss.backward()
    for x in inputs:
        assert x.grad is not None and torch.isfinite(x.grad).all()
