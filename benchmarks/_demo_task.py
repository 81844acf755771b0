"""The demo's labelled task for the small demo benchmarks (layerdrop_demo.py, bucketing_demo.py)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from kdistill import demo, packaged


@dataclass
class DemoTask:
    """Settings (labelled sentences only, no baseline, no latency), data, the cached teacher and its logits."""

    settings: demo.DemoSettings
    data: demo.DemoData
    teacher: nn.Module
    logits: dict[str, np.ndarray]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)


def load(args: argparse.Namespace) -> DemoTask:
    """The fine-tuned teacher (fine-tuned and cached on first use) and its cached training logits."""
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = demo.DemoSettings(unlabelled=False, epochs=args.epochs, seed=args.seed, baseline=False, latency=False)
    teacher_path = packaged.minilm_teacher_path()
    data = demo.load_demo_data(settings, teacher_path)
    teacher, _ = demo.fine_tune_teacher(settings, data, teacher_path, print)
    folder = demo.teacher_cache_dir(settings, teacher_path)
    return DemoTask(settings, data, teacher, {"train": demo.cached_teacher_logits(teacher, data.train, folder, "train")})
