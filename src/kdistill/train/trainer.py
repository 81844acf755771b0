"""The Trainer: optimiser, LR schedule, accumulation, clipping, mixed precision, evaluation,
checkpoints, metrics and a progress bar, on Hugging Face Accelerate.

The loop reads top to bottom: forward, backward, clip, step, log, evaluate, save.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import sys
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from kdistill.adapters.base import to_device
from kdistill.distiller import Distiller
from kdistill.errors import ConfigError, NonFiniteLossError
from kdistill.on_policy import maybe_sampled
from kdistill.train.checkpoint import (
    TrainPosition,
    latest_good_checkpoint,
    load_checkpoint,
    save_checkpoint,
    save_weights,
)
from kdistill.train.evaluate import evaluate_classifier
from kdistill.train.logging import MetricsLog, notice
from kdistill.train.optim import WarmupDecay, freeze_parameters, make_adamw, make_scheduler, parameter_groups
from kdistill.train.sharding import (
    check_fsdp_is_on,
    full_model_state,
    full_state,
    is_sharded,
    student_part,
    whole_for_evaluation,
)

NONFINITE_ACTIONS = ("stop", "skip")


@dataclass
class TrainConfig:
    """Everything about optimisation; no model or data here.

    epochs / max_steps: the run length (max_steps, if set, wins). Steps are optimiser steps.
    warmup: fraction of the run (< 1) or a number of steps for linear warm-up.
    freeze: globs over student parameter names (``*word_embeddings*``: ~6× faster on CPU).
    eval_every / save_every: in steps; ``None`` = at the end of every epoch.
    metric: the evaluation key that decides "best" and early stopping.
    on_nonfinite: ``stop`` (raise, naming the loss part) or ``skip`` (drop the step and go on).
    layerdrop: probability that each student block is skipped in a training step (LayerDrop, so
        blocks can be cut at export with ``--keep-layers``); 0 = off. Removed again after training.
    unpad: the linear layers of the student's and the teachers' blocks skip padding rows
        (:mod:`kdistill.unpad`; exact for attention-only transformers). Worth it on random batches
        padded to their longest example; length-bucketed batches have little padding left.
        Removed again after training.
    """

    lr: float = 5e-5
    projection_lr: float | None = None
    weight_decay: float = 0.01
    epochs: int = 1
    max_steps: int | None = None
    warmup: float = 0.1
    lr_schedule: str = "linear"
    grad_accum: int = 1
    max_grad_norm: float | None = 1.0
    mixed_precision: str = "no"
    freeze: list[str] = field(default_factory=list)
    seed: int = 0
    log_every: int = 10
    eval_every: int | None = None
    save_every: int | None = None
    keep_last: int = 2
    metric: str = "accuracy"
    greater_is_better: bool = True
    early_stop_patience: int | None = None
    on_nonfinite: str = "stop"
    progress: bool = True
    tensorboard: bool = True
    layerdrop: float = 0.0
    unpad: bool = False


@dataclass(frozen=True)
class TrainState:
    """Read-only view handed to callbacks."""

    step: int
    total_steps: int
    epoch: int
    parts: dict[str, float]
    lr: float
    metrics: dict[str, float] | None = None


@dataclass
class TrainResult:
    steps: int
    history: list[dict]
    best_metric: float | None
    best_step: int | None
    final_metrics: dict[str, float]
    output_dir: Path | None
    skipped_steps: int = 0
    effective_batch_size: int | None = None  # per-process batch × processes × grad_accum
    processes: int = 1
    total_steps: int | None = None  # the run's planned length (steps < total_steps: stopped early)
    # Sharded (FSDP) training: the trained student's FULL state dict on the main process (empty
    # elsewhere); the student module itself stays sharded. None when training was not sharded.
    student_state: dict[str, torch.Tensor] | None = None


class Callback:
    """Observe training. Every hook gets a read-only :class:`TrainState`; none may change the loss.

    ``on_evaluate`` may return True to ask the trainer to stop (custom early stopping).
    """

    def on_train_start(self, state: TrainState) -> None: ...
    def on_step(self, state: TrainState) -> None: ...
    def on_evaluate(self, state: TrainState) -> bool | None: ...
    def on_epoch_end(self, state: TrainState) -> None: ...
    def on_train_end(self, state: TrainState) -> None: ...


def run_length(epochs: float, max_steps: int | None, batches: int, grad_accum: int = 1) -> tuple[int, int | None]:
    """TrainConfig's ``(epochs, max_steps)`` for a length given in epochs, fractions allowed: a
    fractional one is ``round(epochs × optimiser steps per epoch)`` steps (at least 1); a set
    ``max_steps`` wins. ``batches``: the loader's batches per epoch."""
    if max_steps is None and not float(epochs).is_integer():
        max_steps = max(1, round(epochs * math.ceil(batches / grad_accum)))
    return max(int(math.ceil(epochs)), 1), max_steps


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class _Session:
    """What one call of :meth:`Trainer.train` works with, from start to end."""

    accelerator: Any
    model: Any
    optimizer: Any
    scheduler: Any
    loader: Any
    total: int
    processes: int
    effective: int | None
    position: TrainPosition
    checkpoints: Path | None
    log: MetricsLog
    bar: Any
    state: TrainState
    last_metrics: dict[str, float]
    running: dict[str, float] = field(default_factory=dict)
    skipped: int = 0


class Trainer:
    """Train ``distiller.student`` (and its projections) on ``train_data``.

    train_data: a DataLoader (or any re-iterable of batches with ``len``). Resume is exact mid-epoch
        when an epoch's order depends only on the epoch: kdistill.data.make_loader's samplers
        (``set_epoch``) and torch's RandomSampler (its draws come from a stream seeded per epoch).
    eval_data / metric_fn: ``metric_fn(student, eval_data, device) -> dict``; default: accuracy
        and macro-F1 of the student's logits.
    output_dir: where checkpoints, ``metrics.jsonl``, TensorBoard events and ``best/`` go.
    on_policy: :class:`kdistill.on_policy.OnPolicy` settings: a causal-LM batch drawn for it is replaced by
        the student's own completions of its prompts before the forward (GKD); None: never.
    """

    def __init__(
        self,
        distiller: Distiller,
        train_data: Iterable,
        *,
        config: TrainConfig | None = None,
        eval_data: Iterable | None = None,
        metric_fn: Callable | None = None,
        callbacks: Sequence[Callback] = (),
        output_dir: str | os.PathLike | None = None,
        accelerator: Any = None,
        name: str = "distil",
        on_policy: Any = None,
    ):
        self.name = name  # what the progress bar calls this training: the stage's real name
        self.distiller = distiller
        self.train_data = train_data
        self.config = config or TrainConfig()
        self.eval_data = eval_data
        self.metric_fn = metric_fn
        self.callbacks = list(callbacks)
        self.output_dir = Path(output_dir) if output_dir else None
        self._accelerator = accelerator
        self.on_policy = on_policy
        self._evaluated_at: int | None = None
        self._saved_at: int | None = None
        _check_config(self.config)

    # ------------------------------------------------------------------ setup
    def _steps_per_epoch(self, loader: Iterable | None = None) -> int:
        try:
            batches = len(self.train_data if loader is None else loader)
        except TypeError:
            raise ConfigError("training: the training data has no length; set training.max_steps.") from None
        return max(math.ceil(batches / self.config.grad_accum), 1)

    def total_steps(self, loader: Iterable | None = None) -> int:
        """Optimiser steps of the run; ``loader``: the loader as prepared (under N processes each
        process sees 1/N of the batches, so an epoch has 1/N of the steps)."""
        if self.config.max_steps:
            return self.config.max_steps
        return self._steps_per_epoch(loader) * self.config.epochs

    def _sampler(self):
        return getattr(self.train_data, "batch_sampler", None)

    def _set_epoch(self, loader, epoch: int) -> None:
        # Accelerate's prepared loader re-applies its own epoch counter on every iter() (and a
        # fresh one in a resumed run starts at 0), so it must be told the epoch too.
        for obj in (loader, self._sampler(), getattr(self.train_data, "sampler", None)):
            if obj is not None and hasattr(obj, "set_epoch"):
                obj.set_epoch(epoch)

    # ------------------------------------------------------------------ the loop
    def train(self, *, resume: bool | str | os.PathLike = False) -> TrainResult:
        """Train to the end (``resume``: True for the last checkpoint of ``output_dir``, or a path)."""
        from kdistill.layerdrop import disable_layerdrop, enable_layerdrop
        from kdistill.unpad import disable_unpadding, enable_unpadding

        from kdistill.progress import stage_callbacks

        with contextlib.ExitStack() as undo:  # the models leave as plain models: same state dict, every block runs
            observers = stage_callbacks(self.name)  # inside `kdistill run`: the run's progress lines and run.log
            self.callbacks += observers
            undo.callback(lambda: [self.callbacks.remove(observer) for observer in observers])
            if self.config.layerdrop:
                self._check_layerdrop()
                enable_layerdrop(self.distiller.student, self.config.layerdrop)
                undo.callback(disable_layerdrop, self.distiller.student)
            if self.config.unpad:
                for model in [self.distiller.student, *self.distiller.teachers.values()]:
                    try:
                        changed = isinstance(model, nn.Module) and enable_unpadding(model)
                    except ConfigError as exc:
                        raise ConfigError(f"training.unpad: true needs transformer blocks, but {exc}") from None
                    if changed:
                        undo.callback(disable_unpadding, model)
            return self._train(resume=resume)

    def _check_layerdrop(self) -> None:
        from kdistill.refs import ATTENTION_KINDS, QKV_KINDS

        reads = sorted({str(ref) for bound in self.distiller.bound for ref in bound.student_refs
                        if ref.kind in (*ATTENTION_KINDS, *QKV_KINDS)})
        if reads:
            raise ConfigError(f"training.layerdrop: {self.config.layerdrop} skips whole student blocks, which then "
                              f"compute no attention, but matches read the student's {', '.join(reads)}. Use "
                              "layerdrop with hidden-state and logit matches only, or set training.layerdrop: 0.")

    def _train(self, *, resume: bool | str | os.PathLike = False) -> TrainResult:
        cfg = self.config
        run = self._start(resume)
        for callback in self.callbacks:
            if hasattr(callback, "on_train_start"):  # a duck-typed callback written before the hook existed
                callback.on_train_start(run.state)
        position = run.position
        stop = False
        run.model.train()
        try:
            while position.step < run.total and not stop:
                if position.epoch >= cfg.epochs and not cfg.max_steps:
                    break
                self._set_epoch(run.loader, position.epoch)
                batches = (run.accelerator.skip_first_batches(run.loader, position.batch_in_epoch)
                           if position.batch_in_epoch else run.loader)
                for batch in _off_global_rng(batches, (cfg.seed, position.epoch)):
                    position.batch_in_epoch += 1
                    if not self._optimise(run, batch) or not run.accelerator.sync_gradients:
                        continue
                    stop = self._after_step(run)
                    # A run that ends on an epoch's last batch still ends that epoch (for-else below:
                    # epoch-end callbacks, evaluation and checkpoint).
                    if stop or (position.step >= run.total and not run.accelerator.gradient_state.end_of_dataloader):
                        break
                else:
                    stop = self._end_epoch(run)
            # However the run ended (max_steps mid-epoch, early stop), its last step is evaluated
            # and checkpointed once, so it can be resumed and reported.
            if self._evaluated_at != position.step:
                run.last_metrics, _ = self._evaluate(run.model, run.accelerator, position, run.log, run.state)
            if self._saved_at != position.step:
                self._save(run.accelerator, run.model, run.optimizer, run.scheduler, position, run.checkpoints)
        finally:
            run.bar.close()
            run.log.close()
        final = TrainState(position.step, run.total, position.epoch, {}, run.scheduler.get_last_lr()[0],
                           run.last_metrics)
        for callback in self.callbacks:
            callback.on_train_end(final)
        run.accelerator.wait_for_everyone()
        student_state = student_part(full_model_state(run.model)) if is_sharded(run.model) else None
        return TrainResult(position.step, run.log.records, position.best_metric, position.best_step, run.last_metrics,
                           self.output_dir, run.skipped, run.effective, run.processes, run.total, student_state)

    def _start(self, resume: bool | str | os.PathLike) -> _Session:
        """Seed, place and freeze the models, prepare the Distiller on the first batch, build the
        optimiser and schedule, resume from a checkpoint, open the log and the progress bar."""
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        cfg = self.config
        # find_unused_parameters: a match that is off for part of the run (start/stop) or a Theseus
        # block not sampled leaves parameters without a gradient, which plain DDP refuses.
        accelerator = self._accelerator or Accelerator(
            mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.grad_accum,
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        )
        check_fsdp_is_on(accelerator)
        seed_everything(cfg.seed)
        distiller = self.distiller
        device = accelerator.device
        distiller.to(device)
        for teacher in distiller.teachers.values():
            teacher.to(device)
        if cfg.freeze:
            freeze_parameters(distiller.student, cfg.freeze)
        # The first batch is drawn whether or not the Distiller was prepared before (``kdistill run``
        # prepares every stage first): iterating a DataLoader takes a seed from the global RNG, so
        # the dropout masks that follow do not depend on who prepared it.
        first = next(iter(self.train_data))
        if not distiller.prepared:
            distiller.prepare(to_device(first, device))
        if not any(p.requires_grad for p in distiller.parameters()):
            raise ConfigError("training: the student has no trainable parameter (all frozen?); "
                              "check training.freeze and that the student is not a frozen teacher.")
        # Under N processes the prepared loader gives each process 1/N of the batches, so the run
        # has 1/N of the steps. The LR scheduler is left unprepared and stepped once per optimiser
        # step: Accelerate would step it N times per step (right only for a schedule sized for one
        # process, and wrong for max_steps).
        loader = accelerator.prepare(self.train_data)
        total = self.total_steps(loader)
        warmup = int(cfg.warmup * total) if cfg.warmup < 1 else int(cfg.warmup)
        optimizer = make_adamw(parameter_groups(distiller, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                                projection_lr=cfg.projection_lr))
        scheduler = make_scheduler(optimizer, kind=cfg.lr_schedule, warmup_steps=warmup, total_steps=total)
        model, optimizer = accelerator.prepare(distiller, optimizer)
        processes = accelerator.num_processes
        per_process = _batch_size(self.train_data)
        effective = per_process * processes * cfg.grad_accum if per_process else None
        position = TrainPosition()
        checkpoints = self.output_dir / "checkpoints" if self.output_dir else None
        if resume:
            # A sharded model loads through its FSDP wrapper (each process keeps its shard).
            target = model if is_sharded(model) else accelerator.unwrap_model(model)
            position = self._resume(resume, checkpoints, target, optimizer, scheduler)
            _stretch_schedule(scheduler, warmup, total)
        is_main = accelerator.is_main_process
        # The log holds each step once: the steps up to the checkpoint resumed from, then this run's.
        log = MetricsLog(self.output_dir if is_main else None, tensorboard=cfg.tensorboard, keep_until=position.step)
        last_metrics: dict[str, float] = {}
        if position.step >= total and position.step:  # resumed at its end: evaluated and saved before
            self._evaluated_at = self._saved_at = position.step
            last_metrics = _evaluation_at(log.kept, position.step)
        bar = tqdm(total=total, initial=position.step, disable=not (cfg.progress and is_main),
                   desc=self.name, dynamic_ncols=True)
        if cfg.progress and is_main:
            tqdm.write(f"kdistill: {self.name}: effective batch size {effective or '?'} = {per_process or '?'} per "
                       f"process × {processes} process{'es' if processes != 1 else ''} × grad_accum {cfg.grad_accum}; "
                       f"{total} optimiser steps", file=sys.stderr)
        state = TrainState(position.step, total, position.epoch, {}, scheduler.get_last_lr()[0])
        return _Session(accelerator, model, optimizer, scheduler, loader, total, processes, effective, position,
                        checkpoints, log, bar, state, last_metrics)

    def _optimise(self, run: _Session, batch: Any) -> bool:
        """Forward, backward and (at the end of an accumulation) an optimiser step on ``batch``; the loss
        parts join ``run.running``. False when a non-finite loss skipped the batch (``on_nonfinite: skip``)."""
        cfg, accelerator, position = self.config, run.accelerator, run.position
        options = {}
        if self.on_policy is not None:  # GKD: this batch may become the student's own completions
            batch, sampled = maybe_sampled(self.on_policy, accelerator.unwrap_model(run.model).student, batch,
                                           epoch=position.epoch, batch_index=position.batch_in_epoch)
            options = {"hard_label": False} if sampled else {}
        with accelerator.accumulate(run.model):
            try:
                out, failure = run.model(batch, step=position.step, total_steps=run.total, **options), None
            except NonFiniteLossError as exc:
                out, failure = None, exc
            if run.processes > 1:  # every process skips (or stops) together, or the others would hang
                failure = _agree_on_failure(accelerator, failure, position.step)
            if failure is not None:
                if cfg.on_nonfinite == "stop":
                    raise NonFiniteLossError(f"{failure} Stopping (training.on_nonfinite: stop).") from None
                warnings.warn(f"{failure} Skipping this step (training.on_nonfinite: skip).", stacklevel=1)
                run.optimizer.zero_grad(set_to_none=True)
                run.skipped += 1
                return False
            accelerator.backward(out.loss)
            if accelerator.sync_gradients and cfg.max_grad_norm:
                accelerator.clip_grad_norm_(run.model.parameters(), cfg.max_grad_norm)
            run.optimizer.step()
            if accelerator.sync_gradients and not run.optimizer.step_was_skipped:
                run.scheduler.step()
            run.optimizer.zero_grad(set_to_none=True)
        for name, value in {"loss": out.loss.detach(), **out.parts}.items():
            run.running[name] = run.running.get(name, 0.0) + float(value) / cfg.grad_accum
        return True

    def _after_step(self, run: _Session) -> bool:
        """Count the optimiser step; log, call back, evaluate and checkpoint as configured. True: stop."""
        cfg, position = self.config, run.position
        position.step += 1
        parts = dict(run.running) if run.processes == 1 else _mean_over_processes(run.accelerator, run.running)
        run.running.clear()
        run.state = state = TrainState(position.step, run.total, position.epoch, parts, run.scheduler.get_last_lr()[0])
        run.bar.update(1)
        run.bar.set_postfix({k: f"{v:.3g}" for k, v in list(parts.items())[:4]}, refresh=False)
        if position.step % cfg.log_every == 0 or position.step == run.total:
            run.log.log(position.step, {**parts, "lr": state.lr, "epoch": position.epoch})
        for callback in self.callbacks:
            callback.on_step(state)
        stop = False
        if cfg.eval_every and position.step % cfg.eval_every == 0:
            run.last_metrics, stop = self._evaluate(run.model, run.accelerator, position, run.log, state)
        if cfg.save_every and position.step % cfg.save_every == 0:
            self._save(run.accelerator, run.model, run.optimizer, run.scheduler, position, run.checkpoints)
        return stop

    def _end_epoch(self, run: _Session) -> bool:
        """An epoch's end: callbacks, and evaluation and a checkpoint unless they go by steps. True: stop."""
        cfg, position = self.config, run.position
        position.epoch += 1
        position.batch_in_epoch = 0
        run.state = state = TrainState(position.step, run.total, position.epoch, {}, run.scheduler.get_last_lr()[0])
        for callback in self.callbacks:
            callback.on_epoch_end(state)
        stop = False
        if not cfg.eval_every:
            run.last_metrics, stop = self._evaluate(run.model, run.accelerator, position, run.log, state)
        if not cfg.save_every:
            self._save(run.accelerator, run.model, run.optimizer, run.scheduler, position, run.checkpoints)
        return stop

    # ------------------------------------------------------------------ pieces
    def _evaluate(self, model, accelerator, position: TrainPosition, log: MetricsLog, state: TrainState):
        self._evaluated_at = position.step
        if self.eval_data is None:
            return {}, False
        cfg = self.config
        student = accelerator.unwrap_model(model).student
        with whole_for_evaluation(model):  # a sharded student's root parameters, gathered
            metrics = {k: float(v) for k, v in self._metrics(student, accelerator).items()}
        log.log(position.step, metrics, kind="eval")
        stop = False
        value = metrics.get(cfg.metric)
        if value is not None:
            better = (position.best_metric is None
                      or (value > position.best_metric if cfg.greater_is_better else value < position.best_metric))
            if better:
                position.best_metric, position.best_step = value, position.step
                position.evals_without_improvement = 0
                if self.output_dir is not None:
                    self._save_best(accelerator, model, student)
            else:
                position.evals_without_improvement += 1
                if cfg.early_stop_patience and position.evals_without_improvement >= cfg.early_stop_patience:
                    stop = True
        state = TrainState(state.step, state.total_steps, state.epoch, state.parts, state.lr, metrics)
        for callback in self.callbacks:
            stop = bool(callback.on_evaluate(state)) or stop
        return metrics, stop

    def _metrics(self, student, accelerator) -> dict:
        if self.metric_fn is not None:
            # A user's function sees all the evaluation data in every process (same result everywhere).
            return self.metric_fn(student, self.eval_data, accelerator.device)
        if accelerator.num_processes > 1 and isinstance(self.eval_data, torch.utils.data.DataLoader):
            if getattr(self, "_sharded_eval", None) is None:  # each process evaluates 1/N of the batches
                self._sharded_eval = accelerator.prepare_data_loader(self.eval_data)
            return _gathered_metrics(student, self._sharded_eval, accelerator)
        return evaluate_classifier(student, self.eval_data, device=accelerator.device, inputs_key="student_inputs")

    def _save(self, accelerator, model, optimizer, scheduler, position: TrainPosition, checkpoints: Path | None):
        self._saved_at = position.step
        if checkpoints is None:
            return
        accelerator.wait_for_everyone()
        gathered = full_state(model, optimizer) if is_sharded(model) else None  # every process gathers
        if accelerator.is_main_process:
            save_checkpoint(checkpoints, accelerator.unwrap_model(model), optimizer, scheduler, position,
                            keep_last=self.config.keep_last, gathered=gathered)

    def _save_best(self, accelerator, model, student) -> None:
        """``best/student.safetensors`` from the main process; a sharded student is gathered first."""
        state = student_part(full_model_state(model)) if is_sharded(model) else None  # every process gathers
        if accelerator.is_main_process:
            (self.output_dir / "best").mkdir(parents=True, exist_ok=True)
            save_weights(student, self.output_dir / "best" / "student.safetensors", state=state)

    def _resume(self, resume, checkpoints: Path | None, model, optimizer, scheduler) -> TrainPosition:
        """The position of the checkpoint to continue from. ``resume=True`` and no checkpoint at all:
        step 0, said aloud; checkpoints but none usable: CheckpointError (latest_good_checkpoint)."""
        if resume is True:
            if checkpoints is None:
                raise ConfigError("resume: needs an output_dir holding checkpoints.")
            found = latest_good_checkpoint(checkpoints)
            if found is None:
                notice(f"resume: no checkpoint in '{checkpoints}'; training from step 0 (metrics.jsonl starts afresh).")
                return TrainPosition()
            path, state = found
        else:
            from kdistill.train.checkpoint import verify_checkpoint

            path = Path(resume)
            state = verify_checkpoint(path)
        position = load_checkpoint(path, state, model, optimizer, scheduler)
        notice(f"resume: continuing from checkpoint '{path}' (step {position.step}).")
        return position


def _check_config(cfg: TrainConfig) -> None:
    problems = []
    if cfg.on_nonfinite not in NONFINITE_ACTIONS:
        problems.append(f"training.on_nonfinite: '{cfg.on_nonfinite}' is not one of {', '.join(NONFINITE_ACTIONS)}")
    if cfg.mixed_precision not in ("no", "bf16", "fp16"):
        problems.append(f"training.mixed_precision: '{cfg.mixed_precision}' is not one of no, bf16, fp16")
    if cfg.grad_accum < 1:
        problems.append("training.grad_accum: must be at least 1")
    if cfg.epochs < 1 and not cfg.max_steps:
        problems.append("training.epochs: must be at least 1 (or set training.max_steps)")
    if problems:
        raise ConfigError("; ".join(problems) + ".")


def _stretch_schedule(scheduler, warmup_steps: int, total_steps: int) -> None:
    """After a resume: the LR schedule spans this run's length. A checkpoint restores the schedule
    of the run that wrote it; continued to a larger max_steps, its linear decay would hold the LR
    at 0 from the old end on. The same length leaves the restored state untouched (exact resume)."""
    changed = False
    for function in scheduler.lr_lambdas:
        if isinstance(function, WarmupDecay) and (function.total_steps, function.warmup_steps) != (total_steps, warmup_steps):
            function.total_steps, function.warmup_steps = total_steps, warmup_steps
            changed = True
    if changed:
        lrs = [base * function(scheduler.last_epoch) for base, function in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
        for group, lr in zip(scheduler.optimizer.param_groups, lrs):
            group["lr"] = lr
        scheduler._last_lr = lrs


def _evaluation_at(records: list[dict], step: int) -> dict[str, float]:
    """The metrics of the last evaluation logged at ``step`` (without its bookkeeping keys)."""
    for record in reversed(records):
        if record.get("kind") == "eval" and record.get("step") == step:
            return {k: v for k, v in record.items() if k not in ("kind", "step", "time")}
    return {}


def _batch_size(data) -> int | None:
    """Examples per batch of a DataLoader (its batch sampler's size when it has one); None if unknown."""
    size = getattr(data, "batch_size", None) or getattr(getattr(data, "batch_sampler", None), "batch_size", None)
    return size if isinstance(size, int) else None


def _agree_on_failure(accelerator, failure: NonFiniteLossError | None, step: int) -> NonFiniteLossError | None:
    """A non-finite loss in any process is a failure in every process (they skip or stop together)."""
    flags = accelerator.gather(torch.tensor([float(failure is not None)], device=accelerator.device))
    if failure is not None or not bool(flags.any()):
        return failure
    ranks = ", ".join(str(i) for i, flag in enumerate(flags.tolist()) if flag)
    return NonFiniteLossError(f"step {step}: the loss of process {ranks} is not finite (its message names the part).")


def _mean_over_processes(accelerator, running: dict[str, float]) -> dict[str, float]:
    """The logged loss parts averaged over the processes: the loss of the whole (global) batch."""
    names = sorted(running)
    values = accelerator.reduce(torch.tensor([running[n] for n in names], dtype=torch.float64,
                                             device=accelerator.device), reduction="mean")
    return {name: float(values[names.index(name)]) for name in running}


@torch.no_grad()
def _gathered_metrics(student, sharded_loader, accelerator) -> dict[str, float]:
    """Accuracy and macro-F1 over a loader split across the processes, the predictions gathered.

    ``gather_for_metrics`` drops the examples Accelerate repeats to give every process equal batches.
    """
    from kdistill.train.evaluate import classification_metrics, predict

    predictions, labels = [], []
    for batch in sharded_loader:  # read to the end: Accelerate tracks the loader being read
        prediction, label = predict(student, [batch], device=accelerator.device, inputs_key="student_inputs")
        if label is None:
            label = torch.full_like(prediction, -1)
        prediction, label = accelerator.gather_for_metrics((prediction.to(accelerator.device),
                                                            label.to(accelerator.device)))
        predictions.append(prediction.cpu())
        labels.append(label.cpu())
    if not predictions or bool((torch.cat(labels) < 0).any()):
        return {}  # no labels: nothing to score (as evaluate_classifier)
    return classification_metrics(torch.cat(predictions), torch.cat(labels))


_END = object()


def _off_global_rng(batches: Iterable, seed: tuple[int, int]):
    """Yield from ``batches`` with data loading on its own torch RNG stream, seeded by (run seed, epoch).

    A DataLoader draws a seed from the global torch RNG on every ``iter()``, a RandomSampler its
    permutation. On the model's stream, a resumed run (one ``iter()`` more) would shift every later
    dropout mask, and an epoch's order would depend on what the model drew before it. On a stream
    of their own, seeded per epoch, the order is the same whether a run was resumed or not (a
    mid-epoch resume then skips exactly the batches already seen).
    """
    iterator, data_state = None, None
    while True:
        with torch.random.fork_rng(devices=[]):
            if data_state is None:
                torch.manual_seed(int(np.random.SeedSequence(list(seed)).generate_state(1)[0]))
            else:
                torch.set_rng_state(data_state)
            if iterator is None:
                iterator = iter(batches)
            batch = next(iterator, _END)
            data_state = torch.get_rng_state()
        if batch is _END:
            return
        yield batch



