"""Projections: learned maps from the student's width to the teacher's, inserted where widths differ."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from kdistill.errors import ConfigError, unknown_choice

PROJECTION_KINDS = ("linear", "mlp")


def make_projection(kind: str | Callable[[int, int], nn.Module], in_features: int, out_features: int,
                    *, path: str = "projection") -> nn.Module:
    """A module mapping (..., in_features) -> (..., out_features).

    ``linear`` (TinyBERT's W_h), ``mlp`` (Linear-GELU-Linear) or a factory ``(in, out) -> nn.Module``.
    """
    if callable(kind):
        module = kind(in_features, out_features)
        if not isinstance(module, nn.Module):
            raise ConfigError(f"{path}: the projection factory must return an nn.Module, got {type(module).__name__}.")
        return module
    if kind == "linear":
        return nn.Linear(in_features, out_features)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(in_features, out_features), nn.GELU(), nn.Linear(out_features, out_features))
    raise unknown_choice(path, "projection", str(kind), [*PROJECTION_KINDS, "auto", "none"])


class OnAxis(nn.Module):
    """Applies ``module`` along axis ``dim`` instead of the last one (the channels of (B, C, H, W) maps)."""

    def __init__(self, module: nn.Module, dim: int):
        super().__init__()
        self.module = module
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        return self.module(x.movedim(self.dim, -1)).movedim(-1, self.dim)
