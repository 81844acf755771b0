"""The seed author's KnowledgeDistillation library (1.0.4) on kdistill's engine.

    from kdistill.compat.knowledge_distillation import KnowledgeDistiller, MultiLayerBasedDistillationLoss
    from kdistill.compat.knowledge_distillation import MultiLayerBasedDistillationEvaluator

``distill_config`` is a list of ``{teacher_layer_name, teacher_layer_output_name, student_layer_name,
student_layer_output_name, loss: {loss_function, args}, weight}``; the output adaptors turn a model's
output into ``{layer_name: {output_name: tensor}}``. Each entry becomes a kdistill
:class:`~kdistill.Match` whose refs name the adaptor's entries (``module:bert_layer3/hidden_states``)
and whose loss is kdistill's (:data:`LOSS_MAP`). The adaptors receive a
:class:`~kdistill.compat.legacy.LegacyOutputs`, so ``last_hidden_state, pooler_output,
hidden_states, attentions = model_output`` works on today's ``transformers``.
"""

from __future__ import annotations

import abc
import inspect
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kdistill.compat.legacy import LegacyCaller, save_pretrained
from kdistill.distiller import Distiller
from kdistill.errors import ConfigError, FeatureError, suggest
from kdistill.features import Features
from kdistill.losses import LOSSES, get_loss
from kdistill.matches import Match

logger = logging.getLogger("kdistill.compat.knowledge_distillation")

ENTRY_KEYS = ("teacher_layer_name", "teacher_layer_output_name", "student_layer_name",
              "student_layer_output_name", "loss", "weight")

LOSS_MAP: dict[str, tuple[str, dict[str, Any], float]] = {
    "mse": ("hidden_mse", {}, 1.0),
    "mse_with_mask": ("hidden_mse", {}, 1.0),
    "attention_mse_with_mask": ("attention_mse", {}, 1.0),
    "cos": ("cosine", {}, 0.5),
    "cross_entropy": ("soft_ce", {"temperature": 1.0, "t2_scale": False}, 1.0),
}
"""KnowledgeDistillation's loss_function -> (kdistill loss, default args, weight factor).

``mse``/``mse_with_mask`` -> ``hidden_mse`` (mean over valid tokens × dims; the old ``mse`` also
averaged padding, identical without padding or on (B, D) features); ``attention_mse_with_mask`` ->
``attention_mse`` (mean over valid (query, key) entries: identical); ``cos`` (0.5 − 0.5·cos) ->
``cosine`` (1 − cos) at half the weight; ``cross_entropy`` -> ``soft_ce`` at T = 1 without T² (the
student's cross-entropy against the teacher's distribution; the old one crashed: it passed four
arguments to ``nn.CrossEntropyLoss``). Any other name is looked up in kdistill's loss registry
(``kl``, ``attention_kl``, ``"pkg.module:fn"`` …) with ``args`` passed through.
"""


def _ref(layer: str, output: str) -> str:
    return f"module:{layer}/{output}"


def _check_entry(entry: object, index: int) -> Mapping:
    path = f"distill_config[{index}]"
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{path}: expected a dict with {', '.join(ENTRY_KEYS)}, got {type(entry).__name__}.")
    for key in entry:
        if key not in ENTRY_KEYS:
            raise ConfigError(f"{path}: unknown key '{key}'{suggest(key, ENTRY_KEYS)} Each entry takes: "
                              f"{', '.join(ENTRY_KEYS)}.")
    missing = [key for key in ENTRY_KEYS if key not in entry]
    if missing:
        raise ConfigError(f"{path}: missing {', '.join(missing)}.")
    loss = entry["loss"]
    if not isinstance(loss, Mapping) or "loss_function" not in loss:
        raise ConfigError(f"{path}.loss: expected {{loss_function: name, args: {{...}}}}, got {loss!r}.")
    unknown = [k for k in loss if k not in ("loss_function", "args")]
    if unknown:
        raise ConfigError(f"{path}.loss: unknown key '{unknown[0]}'; it takes loss_function and args.")
    if not isinstance(loss.get("args", {}) or {}, Mapping):
        raise ConfigError(f"{path}.loss.args: expected a dict of keyword arguments, got {loss['args']!r}.")
    name = loss["loss_function"]
    if name not in LOSS_MAP and name not in LOSSES and not (isinstance(name, str) and ":" in name):
        choices = [*LOSS_MAP, *LOSSES.names()]
        raise ConfigError(f"{path}.loss.loss_function: unknown loss '{name}'{suggest(str(name), choices)} "
                          f"Available: {', '.join(LOSS_MAP)} (KnowledgeDistillation's) or any kdistill loss: "
                          f"{', '.join(LOSSES.names())}.")
    weight = entry["weight"]
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise ConfigError(f"{path}.weight: expected a number, got {weight!r}.")
    return entry


def translate_loss(entry: Mapping) -> tuple[str, dict[str, Any], float]:
    """(kdistill loss name, args, weight) for one distill_config entry."""
    name = entry["loss"]["loss_function"]
    args = dict(entry["loss"].get("args") or {})
    loss, defaults, factor = LOSS_MAP.get(name, (name, {}, 1.0))
    return loss, {**defaults, **args}, float(entry["weight"]) * factor


def translate_entry(entry: Mapping, index: int = 0) -> Match:
    """One distill_config entry as a Match on the adaptors' entries (``module:<layer>/<output>`` refs)."""
    entry = _check_entry(entry, index)
    loss, args, weight = translate_loss(entry)
    teacher = _ref(entry["teacher_layer_name"], entry["teacher_layer_output_name"])
    student = _ref(entry["student_layer_name"], entry["student_layer_output_name"])
    name = (f"{entry['loss']['loss_function']}[{entry['student_layer_name']}.{entry['student_layer_output_name']}"
            f"<-{entry['teacher_layer_name']}.{entry['teacher_layer_output_name']}]")
    return Match(teacher, student, loss, weight, args, projection="auto", name=name)


def adaptor_output_to_features(output: object, *, mask: Tensor | None, who: str) -> Features:
    """``{layer: {output_name: tensor}}`` as Features whose ``modules`` are keyed ``layer/output_name``."""
    if not isinstance(output, Mapping):
        raise FeatureError(f"{who} returned {type(output).__name__}; an output adaptor returns "
                           "{layer_name: {output_name: tensor}}.")
    features = Features(attention_mask=mask)
    for layer, outputs in output.items():
        if not isinstance(outputs, Mapping):
            raise FeatureError(f"{who}: entry '{layer}' is a {type(outputs).__name__}, not a dict "
                               "{output_name: tensor}.")
        for name, value in outputs.items():
            features.modules[f"{layer}/{name}"] = value
    return features


def _input_mask(inputs: object) -> Tensor | None:
    if isinstance(inputs, Mapping):
        mask = inputs.get("attention_mask")
        return mask if isinstance(mask, Tensor) else None
    return None


class MultiLayerBasedDistillationLoss(nn.Module):
    """``distill_config`` + the two output adaptors. ``loss_model(teacher_output, student_output,
    teacher_input, student_input)`` returns the weighted sum, as in the original library.

    ``matches`` holds the kdistill translation (one :class:`~kdistill.Match` per entry);
    :class:`KnowledgeDistiller` runs them through kdistill's :class:`~kdistill.Distiller`. Masked
    losses use the *teacher* input's ``attention_mask`` for both models, as the original did.
    """

    def __init__(self, distill_config: Sequence[Mapping] | None = None, teacher_output_adaptor: Callable | None = None,
                 student_output_adaptor: Callable | None = None):
        super().__init__()
        if not distill_config:
            raise ConfigError("distill_config: needs at least one entry {teacher_layer_name, ..., loss, weight}.")
        for name, adaptor in (("teacher_output_adaptor", teacher_output_adaptor),
                              ("student_output_adaptor", student_output_adaptor)):
            if not callable(adaptor):
                raise ConfigError(f"{name}: a function model_output -> {{layer: {{output_name: tensor}}}} is "
                                  f"needed, got {type(adaptor).__name__}.")
        self.distill_config = list(distill_config)
        self.teacher_output_adaptor = teacher_output_adaptor
        self.student_output_adaptor = student_output_adaptor
        self.matches = [translate_entry(entry, i) for i, entry in enumerate(self.distill_config)]

    def features(self, output: object, inputs: object, *, teacher_inputs: object, role: str) -> Features:
        adaptor = self.teacher_output_adaptor if role == "teacher" else self.student_output_adaptor
        mask = _input_mask(teacher_inputs)
        if mask is None:
            mask = _input_mask(inputs)
        return adaptor_output_to_features(adaptor(output), mask=mask, who=f"{role}_output_adaptor")

    def forward(self, teacher_output, student_output, teacher_input_data, student_input_data) -> Tensor:
        """The loss without a Distiller (for users who call the loss model in their own loop)."""
        teacher = self.features(teacher_output, teacher_input_data, teacher_inputs=teacher_input_data, role="teacher")
        student = self.features(student_output, student_input_data, teacher_inputs=teacher_input_data, role="student")
        total: Tensor | None = None
        for index, match in enumerate(self.matches):
            term = match.weight * _match_loss(match, index, student, teacher)
            total = term if total is None else total + term
        return total


def _match_loss(match: Match, index: int, student: Features, teacher: Features) -> Tensor:
    loss = get_loss(match.loss, path=f"distill_config[{index}].loss.loss_function")
    kwargs = dict(match.args)
    if "mask" in inspect.signature(loss).parameters:
        kwargs["mask"] = student.attention_mask
    return loss(student.get(match.student_refs()[0]), teacher.get(match.teacher_refs()[0]), **kwargs)


class IEvaluator(metaclass=abc.ABCMeta):
    """The evaluator interface: ``evaluate(teacher_model, student_model, dev_data, dev_data_adaptor, epoch,
    step, loss_value)`` is called after every optimiser step."""

    @abc.abstractmethod
    def evaluate(self, *args, **kwargs):
        ...


class MultiLayerBasedDistillationEvaluator(IEvaluator):
    """Logs the loss every ``print_loss_step`` steps (and appends it to ``save_dir/LossValue.txt`` when
    ``save_step`` is set); saves the student every ``save_step`` steps of an epoch to
    ``save_dir/<epoch>-<step>`` — ``save_pretrained`` (safetensors) for Hugging Face models, else
    ``model.safetensors``."""

    def __init__(self, save_dir, save_step=None, print_loss_step=20):
        super().__init__()
        if isinstance(print_loss_step, bool) or not isinstance(print_loss_step, int) or print_loss_step < 1:
            raise ConfigError(f"print_loss_step: must be a positive integer, got {print_loss_step!r}.")
        if save_step is not None and (not isinstance(save_step, int) or save_step < 1):
            raise ConfigError(f"save_step: must be a positive integer or None, got {save_step!r}.")
        self.save_step = save_step
        self.print_loss_step = print_loss_step
        self.save_dir = os.path.abspath(save_dir) if save_dir else None
        self.loss_file: Path | None = None
        if self.save_dir:
            os.makedirs(self.save_dir, exist_ok=True)
            if save_step:
                self.loss_file = Path(self.save_dir) / "LossValue.txt"
                self.loss_file.write_text("", encoding="utf-8")

    def evaluate(self, teacher_model, student_model, dev_data, dev_data_adaptor, epoch, step, loss_value):
        value = float(loss_value)
        if step > 0 and step % self.print_loss_step == 0:
            line = f"epoch:{epoch},\tstep:{step},\tloss value:{value}"
            logger.info(line)
            if self.loss_file is not None:
                with open(self.loss_file, "a", encoding="utf-8") as handle:
                    handle.write(line + "\n")
        if self.save_dir and self.save_step and step > 0 and step % self.save_step == 0:
            save_path = Path(self.save_dir) / f"{epoch}-{step}"
            save_path.mkdir(parents=True, exist_ok=True)
            if hasattr(student_model, "save_pretrained"):
                save_pretrained(student_model, save_path)
            else:
                from kdistill.train.checkpoint import save_weights

                save_weights(student_model, save_path / "model.safetensors")


class KnowledgeDistiller:
    """The original's ``KnowledgeDistiller``, same arguments (and positional order).

    ``distillate()`` runs ``num_epoch`` epochs: ``train_data_adaptor(device, batch)`` gives the two
    models' inputs; the teacher runs without gradients; the loss is kdistill's
    :class:`~kdistill.Distiller` over ``loss_model.matches``; ``optimizer`` steps; the evaluator sees
    every step. Projections inserted for width mismatches are added to ``optimizer``. A loss model
    of your own (any ``nn.Module`` with the original ``forward`` signature) is called as is.
    """

    def __init__(self, teacher_model, student_model, train_dataloader, dev_dataloader, device, loss_model, optimizer,
                 evaluator, num_epoch, train_data_adaptor, dev_data_adaptor, *, attention: str = "auto"):
        self.device = torch.device(device) if not isinstance(device, torch.device) else device
        self.teacher_model = teacher_model.to(self.device)
        self.student_model = student_model.to(self.device)
        self.train_dataloader = train_dataloader
        self.dev_dataloader = dev_dataloader
        self.loss_model = loss_model
        self.optimizer = optimizer
        self.evaluator = evaluator
        if isinstance(num_epoch, bool) or not isinstance(num_epoch, int) or num_epoch < 1:
            raise ConfigError(f"num_epoch: must be a positive integer, got {num_epoch!r}.")
        self.num_epoch = num_epoch
        if not callable(train_data_adaptor):
            raise ConfigError("train_data_adaptor: a function (device, batch) -> (teacher_inputs, student_inputs) "
                              "is needed.")
        self.train_data_adaptor = train_data_adaptor
        self.dev_data_adaptor = dev_data_adaptor
        self.teacher_caller = LegacyCaller(teacher_model, attention=attention, where="teacher_model")
        self.student_caller = LegacyCaller(student_model, attention=attention, where="student_model")
        self.engine: Distiller | None = None
        self.history: list[dict] = []

    def _teacher_features(self, model, wrapped) -> Features:
        output = self.teacher_caller(wrapped["teacher_inputs"])
        return self.loss_model.features(output, wrapped["teacher_inputs"], teacher_inputs=wrapped["teacher_inputs"],
                                        role="teacher")

    def _student_features(self, model, wrapped) -> Features:
        output = self.student_caller(wrapped["student_inputs_kd"])
        return self.loss_model.features(output, wrapped["student_inputs_kd"],
                                        teacher_inputs=wrapped["teacher_inputs"], role="student")

    def _build(self, wrapped: dict) -> None:
        self.engine = Distiller(self.teacher_model, self.student_model, self.loss_model.matches,
                                teacher_adapter=self._teacher_features, student_adapter=self._student_features)
        self.engine.to(self.device)
        self.engine.prepare(wrapped)
        if len(self.engine.projections):
            self.optimizer.add_param_group({"params": list(self.engine.projections.parameters())})
            logger.info("widths differ: added %d learned projection(s) to the optimizer: %s",
                        len(self.engine.projections),
                        ", ".join(f"{p.name} ({p.projection})" for p in self.engine.plan if p.projection))

    def distillate(self):
        """Train the student; returns ``self.history`` (epoch, step, loss and its parts per step)."""
        ours = isinstance(self.loss_model, MultiLayerBasedDistillationLoss)
        self.teacher_model.eval()
        self.student_model.train()
        for epoch in range(self.num_epoch):
            for step, batch_data in enumerate(self.train_dataloader):
                teacher_inputs, student_inputs = self.train_data_adaptor(self.device, batch_data)
                if ours:
                    wrapped = {"teacher_inputs": teacher_inputs, "student_inputs_kd": student_inputs}
                    if self.engine is None:
                        self._build(wrapped)
                    out = self.engine(wrapped)
                    loss, parts = out.loss, {k: float(v) for k, v in out.parts.items()}
                else:
                    with torch.no_grad():
                        teacher_output = self.teacher_caller(teacher_inputs)
                    student_output = self.student_caller(student_inputs)
                    loss = self.loss_model(teacher_output, student_output, teacher_inputs, student_inputs)
                    parts = {}
                loss.backward()
                self.optimizer.step()
                self.optimizer.zero_grad()
                self.history.append({"epoch": epoch, "step": step, "loss": float(loss.detach()), **parts})
                if self.evaluator is not None:
                    self.evaluator.evaluate(self.teacher_model, self.student_model, self.dev_dataloader,
                                            self.dev_data_adaptor, epoch, step, loss.detach())
        return self.history


__all__ = [
    "IEvaluator", "KnowledgeDistiller", "LOSS_MAP", "MultiLayerBasedDistillationEvaluator",
    "MultiLayerBasedDistillationLoss", "adaptor_output_to_features", "translate_entry", "translate_loss",
]
