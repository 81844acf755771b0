"""Shared pieces of the reliability tests: a tiny run config, a subprocess that runs kdistill, and
reading a student back."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
DATA = ROOT / "examples" / "data"

BASE = {
    "teacher": {"factory": "reliability._models:bert", "args": {"num_layers": 2, "hidden_size": 32, "dropout": 0.0}},
    "student": {"from_teacher": {"num_layers": 1, "hidden_size": 16, "num_attention_heads": 2,
                                 "intermediate_size": 32}},
    "data": {"train": str(DATA / "reviews_train.csv"), "validation": str(DATA / "reviews_validation.csv"),
             "tokenizer": str(DATA / "tiny_tokenizer"), "max_length": 16, "batch_size": 4, "eval_batch_size": 3},
    "matches": [{"teacher": "logits", "student": "logits", "loss": "reliability._models:probe_kl",
                 "args": {"temperature": 2.0}, "name": "soft"}],
    "hard_label_weight": 0.5,
    "training": {"lr": 1e-2, "epochs": 1, "warmup": 0.25, "log_every": 1, "progress": False, "tensorboard": False},
    "python_path": [str(TESTS)],
    "seed": 0,
}


def merge(base: dict, changes: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def write_config(folder: Path, output_dir: Path, name: str = "run.yaml", **changes) -> Path:
    """A run config for the tiny models (64 train and 16 validation reviews) in ``folder``."""
    raw = merge(BASE, {"output_dir": str(output_dir), **changes})
    path = Path(folder) / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def kdistill_env(**extra: str) -> dict[str, str]:
    """Environment of a kdistill subprocess: the source tree importable, one thread per process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KDISTILL_TEST_", "RANK", "WORLD_SIZE",
                                                                    "LOCAL_RANK", "MASTER_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", **extra)
    return env


def kdistill_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "kdistill", *args]


def start_kdistill(*args: str, **env: str) -> subprocess.Popen:
    """``python -m kdistill ARGS`` started in the background (text pipes for stdout and stderr)."""
    return subprocess.Popen(kdistill_command(*args), env=kdistill_env(**env), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def run_kdistill(*args: str, timeout: float = 240, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(kdistill_command(*args), env=kdistill_env(**env), cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, check=False)


def saved_student(run_dir: Path) -> dict[str, torch.Tensor]:
    """The student a finished run saved (``student/model.safetensors``)."""
    from safetensors.torch import load_file

    return load_file(str(Path(run_dir) / "student" / "model.safetensors"))


def state_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
