"""The CNNs of the quality table's vision rows, as factories its configs name
(``factory: quality_models:small_cnn``, with ``python_path`` the benchmarks folder)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

FASHION_MEAN, FASHION_STD = 0.2860, 0.3530


class SmallCNN(nn.Module):
    """(conv 3×3 → batch norm → ReLU → 2×2 max-pool) per width, then a linear head on the global mean.

    ``features.i`` is block i's output, (B, widths[i], H, W): what ``module:features.i`` refs read.
    Inputs are Fashion-MNIST images scaled to [0, 1]; the model standardises them itself.
    """

    def __init__(self, widths: Sequence[int], classes: int = 10):
        super().__init__()
        blocks, channels = [], 1
        for width in widths:
            blocks.append(nn.Sequential(nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                        nn.MaxPool2d(2)))
            channels = width
        self.features = nn.Sequential(*blocks)
        self.head = nn.Linear(channels, classes)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        inputs = (inputs - FASHION_MEAN) / FASHION_STD
        return self.head(self.features(inputs).mean(dim=(2, 3)))


def small_cnn(widths: Sequence[int], weights: str | None = None) -> SmallCNN:
    """A SmallCNN of ``widths``; with ``weights``, the trained one saved there (a run's student.safetensors)."""
    model = SmallCNN(widths)
    if weights is not None:
        from safetensors.torch import load_model

        load_model(model, weights)
    return model
