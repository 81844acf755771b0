"""``DistillationTrainer``: kdistill's Distiller as the loss of a ``transformers.Trainer``.

    trainer = DistillationTrainer(model=student, teacher=teacher, method="hinton",
                                  method_args={"temperature": 4.0, "alpha": 0.5},
                                  args=TrainingArguments(...), train_dataset=..., data_collator=...)
    trainer.train()

Everything but the loss is the Trainer's own: ``TrainingArguments``, the optimiser, schedule,
callbacks, evaluation, checkpoints, resume, Accelerate/DeepSpeed/FSDP, ``push_to_hub``.

- The method expands exactly as in ``kdistill run`` (:func:`kdistill.run_build.expand_method`);
  ``matches`` join the method's matches (or stand alone).
- The Distiller is prepared on the first training batch when the Trainer is made: shapes are checked
  and projections made before any optimiser exists. The projections then sit on the student as the
  sub-module ``kdistill_projections``, so the Trainer optimises, clips, wraps (DDP/FSDP/DeepSpeed)
  and checkpoints them with the student.
- Saved folders (``save_model``, ``checkpoint-N``) hold the student alone, loadable by
  ``from_pretrained``; the projections go beside it in ``kdistill_projections.safetensors`` and come
  back on resume. The teacher is never saved: it is frozen, not a sub-module, and given again on resume.
- Training logs each loss part as ``loss/<part>`` beside the Trainer's ``loss``, both averaged over the
  optimiser steps since the last log (gradient accumulation included).
- Evaluation and prediction run the student alone, as in fine-tuning: ``eval_loss`` is the student's
  own loss on the labels, not the distillation loss.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from transformers import Trainer

from kdistill.adapters.base import to_device
from kdistill.distiller import Distiller
from kdistill.errors import CheckpointError, ConfigError
from kdistill.matches import Match
from kdistill.schedules import Scalar, maybe_schedule

PROJECTIONS_NAME = "kdistill_projections.safetensors"
PROJECTIONS_MODULE = "kdistill_projections"  # the student's sub-module holding the projections
PART_PREFIX = "loss/"


def build_distiller(teacher: nn.Module | Mapping[str, nn.Module], student: nn.Module, *, method: str | None = None,
                    method_args: Mapping[str, Any] | None = None, matches: Sequence[Match] = (),
                    hard_label_weight: Scalar | None = None, attention: str = "auto") -> Distiller:
    """The Distiller of ``method`` (expanded as ``kdistill run`` expands it) plus ``matches``.

    Only one-stage methods: a method of several stages, a wrapped student (BERT-of-Theseus) or a
    teacher assistant is a run of several trainings, which ``kdistill run`` drives.
    """
    from kdistill.run_build import expand_method

    if method is None and not matches:
        raise ConfigError("method: DistillationTrainer needs a kdistill method (e.g. method='hinton') or "
                          "matches=[kdistill.Match(...)]; got neither.")
    teacher_weights, hard = None, 0.0
    own = list(matches)
    if method is not None:
        recipe = expand_method(method, dict(method_args or {}), teacher, student)
        several = [] if len(recipe.stages) == 1 else [f"{len(recipe.stages)} stages"]
        several += ["a wrapped student"] if recipe.student_wrapper is not None else []
        several += ["a teacher assistant"] if recipe.assistant else []
        if several:
            raise ConfigError(f"method: '{method}' trains {' and '.join(several)}, which one Trainer cannot; run it "
                              "with `kdistill run`, or give its single-stage form (see `kdistill plan`) as matches.")
        stage = recipe.stages[0]
        own = list(stage.matches) + own
        hard, teacher_weights = stage.hard_label_weight, recipe.teacher_weights
    elif method_args:
        raise ConfigError(f"method_args: {sorted(method_args)} given without a method; set method= or drop them.")
    if hard_label_weight is not None:
        hard = maybe_schedule(hard_label_weight, path="hard_label_weight")
    return Distiller(teacher, student, own, hard_label_weight=hard, teacher_weights=teacher_weights,
                     attention=attention)


class DistillationTrainer(Trainer):
    """A ``transformers.Trainer`` whose loss is kdistill's Distiller. ``model`` is the student.

    teacher: the teacher model, or ``teachers={name: model}`` for several. method / method_args: a
    kdistill method (``kdistill methods`` lists them). matches: ``kdistill.Match`` list, added to the
    method's. hard_label_weight: overrides the method's weight of the student's loss on the labels.
    attention: how attention features are read (``auto``/``hooks``/``eager``). Every other argument
    is the Trainer's.
    """

    loss_is_scaled_for_ga = False  # the Distiller's loss is a per-batch mean: the Trainer divides it

    def __init__(self, model: nn.Module | None = None, args: Any = None, *, teacher: nn.Module | None = None,
                 teachers: Mapping[str, nn.Module] | None = None, method: str | None = None,
                 method_args: Mapping[str, Any] | None = None, matches: Sequence[Match] = (),
                 hard_label_weight: Scalar | None = None, attention: str = "auto", **trainer_args: Any):
        if model is None or trainer_args.get("model_init") is not None:
            raise ConfigError("model: give the student model itself (model=...); DistillationTrainer does not "
                              "support model_init (hyper-parameter search rebuilds the model).")
        if (teacher is None) == (teachers is None):
            raise ConfigError("teacher: give exactly one of teacher=<model> or teachers={name: model}.")
        super().__init__(model=model, args=args, **trainer_args)
        self.distiller = build_distiller(teacher if teachers is None else dict(teachers), model, method=method,
                                         method_args=method_args, matches=matches,
                                         hard_label_weight=hard_label_weight, attention=attention)
        self._part_sums: dict[str, torch.Tensor] = {}
        self._part_steps: dict[str, float] = {}
        if self.train_dataset is not None:
            self._prepare_distiller()

    # ------------------------------------------------------------------ set-up
    def _prepare_distiller(self) -> None:
        """Shapes checked and projections made on the first training batch, before any optimiser."""
        if self.distiller.prepared:
            return
        device = _device_of(self.model)
        self._place_teachers(device)
        # A DataLoader draws its seed from the global RNG: drawn on a fork, the run's shuffles and
        # dropout masks are those of the same Trainer without kdistill.
        with torch.random.fork_rng(devices=[]):
            loader = self._get_dataloader(self.train_dataset, "Training", self._train_batch_size)
            batch = next(iter(loader))
        self.distiller.prepare(to_device(batch, device))
        if len(self.distiller.projections):
            if self.optimizer is not None:
                raise ConfigError(
                    "optimizers: the matches need projections (" + ", ".join(
                        p.name for p in self.distiller.plan if p.projection) + "), which an optimiser built "
                    "before the trainer cannot hold; leave optimizers unset or pass optimizer_cls_and_kwargs.")
            self.model.add_module(PROJECTIONS_MODULE, self.distiller.projections)

    def _place_teachers(self, device: torch.device) -> None:
        for model in self.distiller.teachers.values():
            param = next(model.parameters(), None)
            if param is not None and param.device != device:
                model.to(device)

    def train(self, *args: Any, **kwargs: Any):
        if self.train_dataset is not None:
            self._prepare_distiller()  # a train_dataset set after __init__; projections before resume loads
        return super().train(*args, **kwargs)

    # ------------------------------------------------------------------ the loss
    def compute_loss(self, model: nn.Module, inputs: dict, return_outputs: bool = False,
                     num_items_in_batch: Any = None):
        if not model.training:  # evaluation and prediction: the student alone, as in fine-tuning
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        self._place_teachers(self.args.device)
        adapter = self.distiller.student_adapter
        unwrapped = adapter.model
        adapter.model = model  # through the DDP/DeepSpeed wrapper, so gradients are synchronised
        try:
            out = self.distiller(inputs, step=self.state.global_step, total_steps=self.state.max_steps or None)
        finally:
            adapter.model = unwrapped
        # Each micro-batch adds 1/accumulation: per optimiser step the parts are the mean over its
        # micro-batches, as the loss the Trainer logs.
        share = 1.0 / max(getattr(self, "current_gradient_accumulation_steps", 1), 1)
        for name, value in out.parts.items():
            self._part_sums[name] = self._part_sums.get(name, 0.0) + value.detach().float() * share
            self._part_steps[name] = self._part_steps.get(name, 0.0) + share
        if return_outputs:
            return out.loss, {"loss": out.loss, "logits": out.student_features.logits}
        return out.loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """A training log (one holding the Trainer's ``loss``) gains ``loss/<part>`` for each loss part."""
        if "loss" in logs and self._part_sums:
            names = sorted(self._part_sums)
            values = torch.stack([torch.as_tensor(self._part_sums[n], device=self.args.device) for n in names])
            if self.args.world_size > 1:
                values = self.accelerator.reduce(values, reduction="mean")
            for name, value in zip(names, values.tolist()):
                logs[f"{PART_PREFIX}{name}"] = value / self._part_steps[name]
            self._part_sums.clear()
            self._part_steps.clear()
        super().log(logs, start_time)

    # ------------------------------------------------------------------ saving and loading
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """The student as a ``from_pretrained`` folder; its projections beside it in their own file."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if PROJECTIONS_MODULE not in self.model._modules:
            return super()._save(output_dir, state_dict=state_dict)
        full = state_dict if state_dict is not None else self.model.state_dict()
        prefix = f"{PROJECTIONS_MODULE}."
        student = {k: v for k, v in full.items() if not k.startswith(prefix)}
        projections = {k[len(prefix):]: v for k, v in full.items() if k.startswith(prefix)}
        super()._save(output_dir, state_dict=student)
        if self.args.should_save and projections:
            from safetensors.torch import save_file

            save_file({k: v.detach().cpu().contiguous() for k, v in projections.items()},
                      os.path.join(output_dir, PROJECTIONS_NAME), metadata={"format": "pt"})

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        self._load_projections(resume_from_checkpoint)

    def _load_best_model(self) -> None:
        super()._load_best_model()
        if self.state.best_model_checkpoint is not None:
            self._load_projections(self.state.best_model_checkpoint)

    def _load_projections(self, folder: str) -> None:
        if not len(self.distiller.projections):
            return
        path = os.path.join(folder, PROJECTIONS_NAME)
        if not os.path.isfile(path):
            raise CheckpointError(f"resume_from_checkpoint: '{folder}' has no {PROJECTIONS_NAME}, but the matches "
                                  "train projections; resume from a checkpoint DistillationTrainer wrote with these "
                                  "matches.")
        from safetensors.torch import load_file

        try:
            self.distiller.projections.load_state_dict(load_file(path, device=str(_device_of(self.model))))
        except RuntimeError as exc:
            raise CheckpointError(f"resume_from_checkpoint: '{path}' does not fit this run's projections "
                                  f"(were the matches or models changed?): {exc}") from None

    def _issue_warnings_after_load(self, load_result: Any) -> None:
        # The projections are missing from the student's weights file on purpose (their own file).
        missing = [k for k in load_result.missing_keys if not k.startswith(f"{PROJECTIONS_MODULE}.")]
        super()._issue_warnings_after_load(load_result._replace(missing_keys=missing))


def _device_of(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


__all__ = ["DistillationTrainer", "PROJECTIONS_NAME", "build_distiller"]
