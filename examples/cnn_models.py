"""Small CNNs for distillation through module hooks (``module:embed`` refs), on 8×8 digits.

Any ``nn.Module`` works as teacher or student: the refs ``logits`` (what ``forward`` returns)
and ``module:<path>`` (a forward hook on that sub-module) need no adaptor.
"""

from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    """conv → conv → pool → ``embed`` (Linear) → ``head`` (Linear). Input (B, 1, 8, 8)."""

    def __init__(self, channels: int = 16, width: int = 64, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        )
        self.embed = nn.Sequential(nn.Linear(8 * channels, width), nn.ReLU())
        self.head = nn.Linear(width, num_classes)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(self.features(inputs)))


def teacher_cnn(channels: int = 16, width: int = 64, seed: int = 0) -> SmallCNN:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return SmallCNN(channels, width)


def student_cnn(channels: int = 4, width: int = 16, seed: int = 1) -> SmallCNN:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return SmallCNN(channels, width)
