"""Models and a controllable loss for the reliability tests, importable from a run's config as
``reliability._models:…`` (the tests put ``tests/`` on the config's ``python_path``).

Nothing here is downloaded: a 2-layer, 32-wide random BERT over the examples' tiny tokenizer.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from torch import Tensor

TOKENIZER = Path(__file__).resolve().parents[2] / "examples" / "data" / "tiny_tokenizer"

# In-process control of ``probe_kl`` (the tests set these; a fresh process reads the environment).
# Calls are counted from the first, which is Distiller.prepare's check of the loss on the first
# batch; a training step's call follows. ``crash_once_exists``: a path (e.g. a checkpoint folder)
# whose appearance makes the next call crash, which does not depend on that count.
CONTROL: dict[str, object] = {"calls": 0, "nan_at": None, "crash_once_exists": None}


class SimulatedCrash(RuntimeError):
    """What ``probe_kl`` raises once ``CONTROL["crash_once_exists"]`` exists: a run dying mid-training."""


def bert(num_layers: int = 2, hidden_size: int = 32, dropout: float = 0.0, init_range: float = 0.2,
         seed: int = 0):
    """A seeded random ``BertForSequenceClassification``; a wide ``init_range`` gives confident logits,
    so the soft loss (and its gradient) is far from zero."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=len((TOKENIZER / "vocab.txt").read_text(encoding="utf-8").split()), hidden_size=hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=2, intermediate_size=2 * hidden_size,
        max_position_embeddings=64, num_labels=2, initializer_range=init_range,
        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return BertForSequenceClassification(config)


def probe_kl(student: Tensor, teacher: Tensor, *, temperature: float = 2.0) -> Tensor:
    """kdistill's ``kl`` loss, plus test hooks: NaN on call N, a crash, a pause per call.

    Environment (for runs in a subprocess): KDISTILL_TEST_SLEEP seconds per call;
    KDISTILL_TEST_NAN_AT=N[@RANK] — NaN on the N-th call (1-based), only in process RANK if given.
    """
    from kdistill.losses import kl

    CONTROL["calls"] = calls = int(CONTROL["calls"]) + 1
    pause = float(os.environ.get("KDISTILL_TEST_SLEEP", "0") or 0)
    if pause:
        time.sleep(pause)
    crash_path = CONTROL["crash_once_exists"]
    if crash_path is not None and Path(crash_path).exists():
        raise SimulatedCrash(f"simulated crash: {crash_path} exists")
    loss = kl(student, teacher, temperature=temperature)
    nan_at = CONTROL["nan_at"]
    spec = os.environ.get("KDISTILL_TEST_NAN_AT")
    if spec:
        at, _, rank = spec.partition("@")
        if not rank or rank == os.environ.get("RANK", "0"):
            nan_at = int(at)
    if nan_at == calls:
        return loss * float("nan")
    return loss
