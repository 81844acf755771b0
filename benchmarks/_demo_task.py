"""The demo's labelled task for the small demo benchmarks (layerdrop_demo.py, bucketing_demo.py):
the packaged demo config, labelled sentences only, no baseline, run by ``kdistill run``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from kdistill.config import config_from_dict
from kdistill.demo import demo_raw


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output", default="runs/demo-benchmarks", help="folder of the runs (one per setting)")


def run_demo_task(args: argparse.Namespace, name: str, *overrides: str) -> Any:
    """``kdistill run`` on the demo config (no unlabelled text, no baseline) with ``overrides``; the
    run's reloaded parts: (config, teacher, student, data, loaders)."""
    from kdistill.run import load_run, run

    if args.threads:
        torch.set_num_threads(args.threads)
    output = Path(args.output) / name
    raw = demo_raw(["data.unlabelled=null", "data.distil_on=train", "baseline=false", f"training.epochs={args.epochs}",
                    f"seed={args.seed}", f"output_dir={output}", *overrides])
    run(config_from_dict(raw, source=f"demo task ({name})", import_from_base=False), resume=True)
    return load_run(output)


def accuracy(teacher: torch.nn.Module, model: torch.nn.Module, loader: Any) -> float:
    from kdistill.run import compare

    return compare(teacher, model, loader)["student"]["accuracy"]
