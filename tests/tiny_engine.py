"""Tiny models and data shared by the engine tests (adapters, distiller, trainer, e2e runs).

Everything is built from configs with fixed seeds: 2 layers, hidden 32 or smaller, no downloads.
Imported as a plain module (``tests/`` is on ``sys.path`` under pytest's default import mode).
"""

from __future__ import annotations

import torch
import transformers
from torch import nn
from torch.utils.data import Dataset

VOCAB = 100
MAX_LEN = 8


def bert_config(layers: int = 2, hidden: int = 32, *, dropout: float = 0.1, labels: int = 2) -> transformers.BertConfig:
    return transformers.BertConfig(
        num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=2, intermediate_size=2 * hidden,
        vocab_size=VOCAB, max_position_embeddings=16, num_labels=labels,
        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
    )


def tiny_bert(layers: int = 2, hidden: int = 32, *, seed: int = 0, dropout: float = 0.1, labels: int = 2,
              cls=transformers.BertForSequenceClassification) -> nn.Module:
    torch.manual_seed(seed)
    return cls(bert_config(layers, hidden, dropout=dropout, labels=labels))


def token_batch(batch: int = 3, length: int = 7, *, seed: int = 0, lengths: list[int] | None = None,
                labels: int | None = 2) -> dict:
    """A padded batch: ids, 0/1 attention mask (row b has ``lengths[b]`` real tokens) and labels."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (batch, length), generator=generator)
    lengths = lengths or [length] * batch
    mask = (torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]).long()
    out = {"input_ids": ids * mask, "attention_mask": mask}
    if labels:
        out["labels"] = torch.randint(0, labels, (batch,), generator=generator)
    return out


class TokenDataset(Dataset):
    """``size`` padded token examples as dicts; the label is a function of the tokens (learnable)."""

    def __init__(self, size: int = 48, length: int = MAX_LEN, *, seed: int = 1, with_labels: bool = True):
        generator = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(5, VOCAB, (size, length), generator=generator)
        lengths = torch.randint(3, length + 1, (size,), generator=generator)
        self.mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
        self.ids *= self.mask
        self.labels = (self.ids[:, 1] > VOCAB // 2).long()
        self.with_labels = with_labels

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        item = {"input_ids": self.ids[index], "attention_mask": self.mask[index]}
        if self.with_labels:
            item["labels"] = self.labels[index]
        return item


class SmallCNN(nn.Module):
    """conv-bn-relu × 3 then a linear head on the global average: ``module:features.N`` are (B, C, H, W)."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 32), classes: int = 10, *, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        blocks, channels = [], 1
        for width in widths:
            blocks.append(nn.Sequential(nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()))
            channels = width
        self.features = nn.Sequential(*blocks)
        self.head = nn.Linear(channels, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images).mean(dim=(2, 3)))


class DigitsDataset(Dataset):
    """scikit-learn's 8×8 digits as ``{"inputs": (1, 8, 8) float, "labels": int}``."""

    def __init__(self, start: int = 0, stop: int | None = None):
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.tensor(digits.images[start:stop], dtype=torch.float32) / 16.0
        self.images = images[:, None]
        self.labels = torch.tensor(digits.target[start:stop], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return {"inputs": self.images[index], "labels": self.labels[index]}


def student_params(distiller) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in distiller.named_parameters()}


# ---------------------------------------------------------------------------------------------
# Whole runs


class Crash(Exception):
    """Raised by :class:`CrashAt` to interrupt a run the way a killed job would."""


def crash_at(step: int):
    from kdistill import Callback

    class CrashAt(Callback):
        def on_step(self, state):
            if state.step == step:
                raise Crash(f"interrupted after step {step}")

    return CrashAt()


def bert_distiller(*, student_hidden: int = 16, dropout: float = 0.1, student_seed: int = 1,
                   hard_label_weight: float = 0.5, matches=None):
    """A 2-layer, 32-wide random BERT teacher and a 2-layer student, with logit, hidden and attention matches."""
    from kdistill import Distiller, Match

    teacher = tiny_bert(2, 32, seed=0, dropout=dropout)
    student = tiny_bert(2, student_hidden, seed=student_seed, dropout=dropout)
    if matches is None:
        matches = [
            Match("logits", loss="kl", args={"temperature": 2.0}),
            Match("hidden.-1", "hidden.-1"),
            Match("attn.1", loss="attention_mse"),
        ]
    return Distiller(teacher, student, matches, hard_label_weight=hard_label_weight)


def token_loader(batch_size: int = 4, *, size: int = 48, shuffle: bool = True, seed: int = 3, with_labels: bool = True):
    """A DataLoader whose seeded batch sampler supports ``set_epoch`` (deterministic order per epoch)."""
    from kdistill.data import make_loader

    return make_loader(TokenDataset(size, with_labels=with_labels), batch_size, shuffle=shuffle, seed=seed, bucket=False)


def quiet_config(**overrides):
    from kdistill import TrainConfig

    settings = dict(lr=1e-3, progress=False, tensorboard=False, log_every=1)
    settings.update(overrides)
    return TrainConfig(**settings)


def fixed_loss(distiller, batch: dict) -> torch.Tensor:
    """The distiller's loss on ``batch`` in eval mode (no dropout), as a plain tensor."""
    if not distiller.prepared:
        distiller.prepare(batch)
    was_training = distiller.training
    distiller.eval()
    try:
        with torch.no_grad():
            return distiller(batch).loss
    finally:
        distiller.train(was_training)
