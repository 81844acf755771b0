"""Checkpoints: atomic, checksummed, safe to load, enough for an exact continuation.

Layout of ``<output>/checkpoints/step-0000100/``:

- ``model.safetensors``   student + projection weights (safetensors; never pickle)
- ``optimizer.pt``        optimiser and LR-scheduler state (loaded with ``weights_only=True``)
- ``rng.safetensors``     torch CPU (and CUDA) generator states
- ``state.json``          step, epoch, position in the epoch, python/numpy RNG, best metric,
                          sha256 of every other file — written last, so its presence marks a
                          complete checkpoint

A checkpoint folder is written under a temporary name and renamed into place, so a crash never
leaves a half-written ``step-*`` folder. A checksum mismatch is reported with the path and resume
falls back to the previous good checkpoint; when no checkpoint is good, resume stops with a
CheckpointError listing each one and why it was refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from kdistill.errors import CheckpointError
from kdistill.files import atomic_write_text  # noqa: F401 - also re-exported from here

PREFIX = "step-"


@dataclass
class TrainPosition:
    """Where the run is: optimiser steps done, epoch, batches of that epoch consumed."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = state
    py_state = random.getstate()
    np_state = np.random.get_state()
    plain = {
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    return tensors, plain


def set_rng_state(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
    version, internal, gauss = plain["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = plain["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def save_checkpoint(directory: Path, model: nn.Module, optimizer, scheduler, position: TrainPosition,
                    *, keep_last: int = 2, schedule_state: dict | None = None,
                    gathered: tuple[dict[str, torch.Tensor], dict] | None = None) -> Path:
    """Write ``directory/step-N`` atomically and prune to the last ``keep_last`` checkpoints.

    gathered: the model's and the optimiser's FULL state dicts when training is sharded
    (:func:`kdistill.train.sharding.full_state`); written instead of ``model``'s and ``optimizer``'s
    own, which hold only this process's shard.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"{PREFIX}{position.step:07d}"
    tmp = directory / f".tmp-{final.name}-{os.getpid()}"
    # Only one process writes checkpoints, so any other temporary folder is the remains of a save
    # that was killed half-way: never a checkpoint (it has no place in list_checkpoints), removed here.
    for stale in directory.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp.mkdir()
    if gathered is None:
        save_model(model, str(tmp / "model.safetensors"))
        optimizer_state = optimizer.state_dict()
    else:  # clones: tied weights may share storage, which save_file refuses
        model_state, optimizer_state = gathered
        save_file({name: tensor.contiguous().clone() for name, tensor in model_state.items()},
                  str(tmp / "model.safetensors"))
    torch.save({"optimizer": optimizer_state, "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
    tensors, plain = rng_state()
    save_file(tensors, str(tmp / "rng.safetensors"))
    files = ["model.safetensors", "optimizer.pt", "rng.safetensors"]
    for name in files:
        with open(tmp / name, "rb+") as handle:
            os.fsync(handle.fileno())
    state = {
        "position": position.__dict__,
        "rng": plain,
        "schedule_state": schedule_state or {},
        "sha256": {name: sha256(tmp / name) for name in files},
    }
    atomic_write_text(tmp / "state.json", json.dumps(state))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(directory)
    for old in list_checkpoints(directory)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints (those with a state.json), oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / "state.json").exists()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def verify_checkpoint(path: Path) -> dict:
    """The parsed state.json if every file matches its checksum; else CheckpointError naming the file."""
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint {path}: state.json is unreadable ({exc}).") from None
    for name, expected in state.get("sha256", {}).items():
        file = path / name
        if not file.exists():
            raise CheckpointError(f"checkpoint {path}: {name} is missing.")
        if sha256(file) != expected:
            raise CheckpointError(f"checkpoint {path}: {name} is corrupted (checksum mismatch).")
    return state


def latest_good_checkpoint(directory: Path) -> tuple[Path, dict] | None:
    """The newest checkpoint that verifies; corrupted ones are reported and skipped.

    None when there is no checkpoint at all. When there are checkpoints but none verifies, a
    CheckpointError lists each one and why it was refused: starting again from step 0 is the
    caller's decision, never a silent fallback.
    """
    checkpoints = list_checkpoints(directory)
    refused = []
    for path in reversed(checkpoints):
        try:
            found = path, verify_checkpoint(path)
        except CheckpointError as exc:
            refused.append(str(exc))
            continue
        for reason in refused:
            warnings.warn(f"{reason} Falling back to the previous checkpoint.", stacklevel=2)
        return found
    if not checkpoints:
        return None
    raise CheckpointError(f"resume: none of the {len(checkpoints)} checkpoints in '{directory}' is usable:\n"
                          + "\n".join(f"  - {reason}" for reason in refused)
                          + "\nkdistill does not restart from step 0 on its own: to train again from step 0, run "
                            "without resume (`kdistill run CONFIG --overwrite` removes this run's checkpoints and "
                            "metrics), or put back a good checkpoint.")


def load_checkpoint(path: Path, state: dict, model: nn.Module, optimizer, scheduler) -> TrainPosition:
    """Restore weights, optimiser, scheduler and RNG states; return the position to continue from.

    A sharded ``model`` (FSDP) loads the full state dicts the checkpoint holds, keeping its shard;
    every process must call it then.
    """
    from kdistill.train.sharding import is_sharded

    if is_sharded(model):
        return _load_sharded(path, state, model, optimizer, scheduler)
    try:
        missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=False)
    except RuntimeError as exc:  # shape mismatches: torch lists every tensor, keep the first
        detail = " ".join(str(exc).split("\n\t")[1:2]) or str(exc)
        raise CheckpointError(f"checkpoint {path} does not fit this model: {detail.strip()} "
                              "Was it written by another config?") from None
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {path} does not fit this model: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}. Was it written by another config?")
    blob = _optimizer_blob(path)
    optimizer.load_state_dict(blob["optimizer"])
    return _restore_rest(path, state, scheduler, blob)


def _optimizer_blob(path: Path) -> dict:
    try:  # weights_only: tensors and plain containers only, never arbitrary pickled objects
        return torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError for a forbidden object, RuntimeError for a bad zip
        raise CheckpointError(f"checkpoint {path}: optimizer.pt was refused or is unreadable "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
                              "kdistill loads optimiser states with weights_only=True and never unpickles "
                              "code; delete this checkpoint to fall back to an earlier one.") from None


def _restore_rest(path: Path, state: dict, scheduler, blob: dict) -> TrainPosition:
    """The LR schedule and the RNG states; the position to continue from."""
    scheduler.load_state_dict(blob["scheduler"])
    set_rng_state(load_file(str(path / "rng.safetensors")), state["rng"])
    return TrainPosition(**state["position"])


def _load_sharded(path: Path, state: dict, model: nn.Module, optimizer, scheduler) -> TrainPosition:
    """load_checkpoint for a sharded model: the full state dicts, each process keeping its shard."""
    from kdistill.train.sharding import load_full_state

    blob = _optimizer_blob(path)
    try:  # strict: torch names the missing and unexpected tensors
        load_full_state(model, optimizer, load_file(str(path / "model.safetensors")), blob["optimizer"])
    except (RuntimeError, KeyError, ValueError) as exc:
        detail = " ".join(str(exc).split())[:300]
        raise CheckpointError(f"checkpoint {path} does not fit this model: {detail} "
                              "Was it written by another config?") from None
    return _restore_rest(path, state, scheduler, blob)


def save_weights(model: nn.Module, path: Path, *, state: dict[str, torch.Tensor] | None = None) -> None:
    """Save a module's weights atomically as safetensors (``state``: its FULL state dict, gathered
    when training is sharded, written instead of the module's own shard)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    if state is None:
        save_model(model, str(tmp))
    else:  # clones: tied weights may share storage, which save_file refuses
        save_file({name: tensor.contiguous().clone() for name, tensor in state.items()}, str(tmp))
    os.replace(tmp, path)
