"""TextBrewer's training loop, written once for every class of :mod:`kdistill.compat.textbrewer`.

The distillers and ``BasicTrainer`` differ only in what one micro-batch's loss is, which parameters
are clipped and what a checkpoint holds (:class:`LoopHooks`); how many steps run and when a
checkpoint is due (:class:`Steps`), accumulation, mixed precision, the scheduler, logging and
``callback(model=..., step=global_step)`` are the same for all of them, as they were in TextBrewer.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kdistill.compat.textbrewer_config import TrainingConfig
from kdistill.errors import ConfigError

logger = logging.getLogger("kdistill.compat.textbrewer")


@dataclass(frozen=True)
class LoopHooks:
    """What the loop asks of the object it trains.

    model: handed to ``callback`` after each checkpoint and put back in train mode after it.
    prepare: called with the first micro-batch, before the scheduler is built (a distiller builds
        its engine there, so the projections it adds to the optimizer are scheduled too).
    loss: ``(micro_batch, global_step, total_steps) -> (loss, {name: detached part})``.
    parameters: what ``max_grad_norm`` clips. save: writes the checkpoint files of a global step.
    """

    model: nn.Module
    prepare: Callable[[Any], None]
    loss: Callable[[Any, int, int], tuple[Tensor, dict[str, Tensor]]]
    parameters: Callable[[], Iterable[Tensor]]
    save: Callable[[int], None]


@dataclass(frozen=True)
class Steps:
    """How long a run is: ``epochs`` is ``[None]`` when it runs by ``num_steps``."""

    total: int
    epochs: list[int | None]
    steps_per_epoch: int | None


def plan_steps(config: TrainingConfig, dataloader, num_epochs, num_steps) -> Steps:
    """TextBrewer's two ways to say how long to train: ``num_steps`` (then ``ckpt_steps`` says how
    often to save) or ``num_epochs`` of ``len(dataloader) // gradient_accumulation_steps`` steps each."""
    if num_epochs is None and num_steps is None:
        raise ConfigError("train: give num_epochs or num_steps.")
    if num_steps is not None:
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
            raise ConfigError(f"train: num_steps must be a positive integer, got {num_steps!r}.")
        if config.ckpt_steps is None:
            raise ConfigError("train(num_steps=...) needs TrainingConfig.ckpt_steps (how often to save).")
        return Steps(num_steps, [None], None)
    accumulation = config.gradient_accumulation_steps
    steps_per_epoch = len(dataloader) // accumulation
    if steps_per_epoch == 0:
        raise ConfigError(f"train: the dataloader has {len(dataloader)} batches, fewer than "
                          f"gradient_accumulation_steps={accumulation}: no optimiser step would run.")
    return Steps(steps_per_epoch * int(num_epochs), list(range(int(num_epochs))), steps_per_epoch)


def train_loop(hooks: LoopHooks, optimizer, *, config: TrainingConfig, device: torch.device, steps: Steps,
               batches: Callable[[int | None], Iterable], make_scheduler: Callable[[], Any], max_grad_norm: float,
               callback: Callable | None, history: list[dict], print_freq: int = 20) -> list[dict]:
    """Run TextBrewer's loop: forward, accumulate, clip, step, log, checkpoint; returns ``history``.

    batches(epoch): the micro-batches of an epoch (``None``: the endless stream of a ``num_steps`` run).
    Checkpoints: by epochs, at :func:`checkpoint_steps` of every ``ckpt_epoch_frequency``-th epoch and
    the last; by steps, every ``ckpt_steps`` steps and at the last step.
    """
    accumulation = config.gradient_accumulation_steps
    points = checkpoint_steps(steps.steps_per_epoch, config.ckpt_frequency) if steps.steps_per_epoch else set()
    print_every = max((steps.steps_per_epoch or config.ckpt_steps or 1) // print_freq, 1)
    scaler, autocast = _mixed_precision(config.fp16, device)
    log = _open_log(config.log_dir)
    scheduler, prepared, global_step = None, False, 0
    try:
        for epoch in steps.epochs:
            optimizer.zero_grad()
            running: dict[str, float] = {}
            for index, batch in enumerate(batches(epoch)):
                if not prepared:
                    hooks.prepare(batch)
                    scheduler, prepared = make_scheduler(), True
                with autocast():
                    loss, parts = hooks.loss(batch, global_step, steps.total)
                scaled = loss / accumulation
                (scaler.scale(scaled) if scaler else scaled).backward()
                for name, value in {"total_loss": loss.detach(), **parts}.items():
                    running[name] = running.get(name, 0.0) + float(value) / accumulation
                if (index + 1) % accumulation:
                    continue
                _optimizer_step(optimizer, scaler, max_grad_norm, scheduler, hooks.parameters)
                global_step += 1
                record = {"step": global_step, "epoch": 0 if epoch is None else epoch, **running}
                running = {}
                history.append(record)
                if log is not None:
                    log.log(global_step, {k: v for k, v in record.items() if k != "step"})
                if global_step % print_every == 0:
                    logger.info("Global step: %d/%d, epoch step: %d, total_loss: %.6g", global_step, steps.total,
                                index + 1, record["total_loss"])
                if epoch is None:
                    due = global_step % config.ckpt_steps == 0 or global_step == steps.total
                else:
                    epoch_step = global_step - epoch * steps.steps_per_epoch
                    last_epoch = epoch + 1 == len(steps.epochs)
                    due = epoch_step in points and ((epoch + 1) % config.ckpt_epoch_frequency == 0 or last_epoch)
                if due:
                    hooks.save(global_step)
                    if callback is not None:
                        logger.info("Running callback function...")
                        callback(model=hooks.model, step=global_step)
                        hooks.model.train()
                if global_step >= steps.total:
                    break
            if epoch is not None:
                logger.info("Epoch %d finished", epoch + 1)
    finally:
        if log is not None:
            log.close()
    return history


def checkpoint_steps(steps_per_epoch: int, frequency: int) -> set[int]:
    """Optimiser steps within an epoch (1-based) after which to save: the end of each 1/frequency of it.

    At most ``frequency`` of them and at most one per step, so an epoch shorter than ``frequency``
    steps saves at every step — as TextBrewer did (``checkpoint_steps(20, 10)`` = every second step).
    """
    if not frequency or not steps_per_epoch:
        return set()
    return {math.ceil(steps_per_epoch * (i + 1) / frequency) for i in range(frequency)}


def save_checkpoint(output_dir: str, global_step: int, model: nn.Module,
                    projections: dict[str, Tensor] | None = None) -> None:
    """``output_dir/gs<step>.safetensors`` (the model's state dict), and the projections' beside it."""
    from kdistill.train.checkpoint import save_weights

    directory = Path(output_dir)
    directory.mkdir(parents=True, exist_ok=True)
    logger.info("Saving at global step %d to %s", global_step, directory / f"gs{global_step}.safetensors")
    save_weights(model, directory / f"gs{global_step}.safetensors")
    if projections:
        save_weights(model, directory / f"gs{global_step}.projections.safetensors", state=projections)


def cycle(dataloader) -> Iterator:
    """Re-iterate the dataloader forever (a fresh shuffle each pass; itertools.cycle would replay pass one)."""
    while True:
        empty = True
        for batch in dataloader:
            empty = False
            yield batch
        if empty:
            raise ConfigError(f"train: a dataloader ({type(dataloader).__name__}) yielded no batches.")


def _optimizer_step(optimizer, scaler, max_grad_norm, scheduler, parameters: Callable[[], Iterable[Tensor]]) -> None:
    if scaler is not None:
        scaler.unscale_(optimizer)
    if max_grad_norm is not None and max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(parameters(), max_grad_norm)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad()


def scheduler_maker(optimizer, scheduler_class, scheduler_args, scheduler) -> Callable[[], Any]:
    """TextBrewer's ``scheduler_class(optimizer=..., **scheduler_args)``, else the given ``scheduler``."""
    if scheduler_class is None:
        return lambda: scheduler
    return lambda: scheduler_class(optimizer=optimizer, **(scheduler_args or {}))


def _mixed_precision(fp16: bool, device: torch.device):
    if not fp16:
        return None, nullcontext
    if device.type != "cuda":
        warnings.warn("TrainingConfig.fp16=True needs a CUDA device; training in float32.", stacklevel=3)
        return None, nullcontext
    return torch.amp.GradScaler("cuda"), lambda: torch.autocast("cuda", dtype=torch.float16)


def _open_log(log_dir: str | None):
    if log_dir is None:
        return None
    from kdistill.train.logging import MetricsLog

    return MetricsLog(Path(log_dir), tensorboard=True)
