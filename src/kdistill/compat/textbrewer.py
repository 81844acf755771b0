"""TextBrewer's API (0.2.1) on kdistill's engine: change the import line, keep the script.

    from kdistill.compat.textbrewer import GeneralDistiller, TrainingConfig, DistillationConfig

What happens underneath:

- the distiller calls each model itself and hands the adaptor a
  :class:`~kdistill.compat.legacy.LegacyOutputs` — a real tuple such as ``(last_hidden_state,
  pooler_output, hidden_states, attentions)`` for a ``BertModel`` — so adaptors written for old
  ``transformers`` unpack it unchanged, with attention weights that are never an empty tuple;
- the adaptor's dict (``logits``, ``logits_mask``, ``labels``, ``losses``, ``inputs_mask``,
  ``hidden``, ``attention``) becomes a :class:`~kdistill.features.Features`; ``layer_T``/``layer_S``
  index the adaptor's lists, exactly as in TextBrewer (``hidden.4`` = ``results['hidden'][4]``);
- every ``intermediate_matches`` entry and the logits KD term become :class:`~kdistill.Match`
  objects run by :class:`~kdistill.Distiller` (see :data:`LOSS_MAP` for the loss names);
- ``distiller.train`` steps *your* optimizer (projections are added to it as new parameter
  groups, as TextBrewer did), saves safetensors state dicts under ``output_dir`` at most
  ``ckpt_frequency`` times per epoch, and logs to ``log_dir`` (``metrics.jsonl`` + TensorBoard);
  the loop is :func:`kdistill.compat.textbrewer_loop.train_loop`, shared by every class here;
- ``MultiTaskDistiller`` draws each batch's task with P ∝ ``len(dataloader) ** tau`` and distils it
  from that task's teacher; ``BasicTrainer`` trains one model on its adaptor's ``losses``.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from kdistill.compat.legacy import LegacyCaller, move_to_device
from kdistill.compat.textbrewer_config import (  # noqa: F401 - re-exported
    _ARGS,
    _BATCH,
    ADAPTOR_KEYS,
    FEATURES,
    KD_LOSS_TYPES,
    LOSS_MAP,
    MODULE,
    PROJECTIONS,
    TEMPERATURE_SCHEDULERS,
    WEIGHT_SCHEDULERS,
    DistillationConfig,
    IntermediateMatch,
    TrainingConfig,
    _check_keys,
    _Config,
)
from kdistill.compat.textbrewer_loop import (  # noqa: F401 - checkpoint_steps re-exported
    LoopHooks,
    checkpoint_steps,
    cycle,
    plan_steps,
    save_checkpoint,
    scheduler_maker,
    train_loop,
)
from kdistill.compat.textbrewer_losses import (  # noqa: F401 - re-exported: YAML names them here
    _dynamic_temperature,
    _heads,
    _probability_shift,
    _require_probabilities,
    attention_ce,
    attention_ce_mean,
    attention_mse_sum,
    projection_factory,
    relu_projection,
    tanh_projection,
    textbrewer_kd,
    token_gram_mse,
)
from kdistill.distiller import ENSEMBLE, Distiller
from kdistill.errors import ConfigError, FeatureError
from kdistill.features import Features
from kdistill.losses import get_loss
from kdistill.matches import Match
from kdistill.schedules import Linear, Scalar, value_at

logger = logging.getLogger("kdistill.compat.textbrewer")
_TASK = "textbrewer_task"  # the task a MultiTaskDistiller batch belongs to


# ---------------------------------------------------------------------------------------------
# Translation: TextBrewer config -> kdistill matches (one table, used by Python and YAML alike)


def _refs(feature: str, layers: int | Sequence[int]) -> str:
    kind = "hidden" if feature == "hidden" else "attn"
    if isinstance(layers, (list, tuple)):
        return ",".join(f"{kind}.{i}" for i in layers)
    return f"{kind}.{layers}"


def translate_match(entry: IntermediateMatch | Mapping, index: int = 0, *, python: bool = True) -> Match:
    """One ``intermediate_matches`` entry as a kdistill Match (see :data:`LOSS_MAP`).

    python: True for ``GeneralDistiller`` (refs index the adaptor's lists; TextBrewer-initialised
    projections, relu/tanh kept; ``attention_mse`` with ``kind='scores'`` so adaptors returning
    pre-softmax scores lose only their masked entries). False for native YAML (refs are the model's
    own hidden states / attention probabilities; ``linear`` projections are kdistill's own,
    ``relu``/``tanh`` the factories ``kdistill.compat.textbrewer:relu_projection`` / ``tanh_projection``).
    A pair ``proj`` on ``fsp``/``nst`` is not expressible as a Match projection; GeneralDistiller adds it.
    """
    path = f"intermediate_matches[{index}]"
    entry = IntermediateMatch.from_dict(entry, path=path)
    loss: str | Callable = LOSS_MAP[entry.loss]
    args: dict[str, Any] = {}
    teacher_layers, student_layers = entry.layer_T, entry.layer_S
    if entry.loss in ("nst", "mmd") and entry.is_pair:
        if teacher_layers[0] == teacher_layers[1] and student_layers[0] == student_layers[1]:
            teacher_layers, student_layers = teacher_layers[0], student_layers[0]
        else:
            loss = f"{MODULE}:token_gram_mse"
    if entry.loss == "attention_mse" and python:
        args["kind"] = "scores"
    if entry.loss == "attention_ce" and python:
        loss = f"{MODULE}:attention_ce"
    projection: Any = "auto"
    if entry.proj is not None and not entry.is_pair:
        if python:
            projection = projection_factory(entry.proj[0])
        else:
            projection = "linear" if entry.proj[0] == "linear" else f"{MODULE}:{entry.proj[0]}_projection"
    elif entry.proj is not None:
        projection = None
    return Match(
        teacher=_refs(entry.feature, teacher_layers),
        student=_refs(entry.feature, student_layers),
        loss=loss,
        weight=float(entry.weight),
        args=args,
        projection=projection,
        name=entry.name(),
    )


def weight_schedule(base: float, scheduler: str | None) -> Scalar:
    """TextBrewer's weight schedulers *replace* the weight with f(progress), f = 1 − x or x."""
    if scheduler == "linear_decay":
        return Linear(1.0, 0.0)
    if scheduler == "linear_growth":
        return Linear(0.0, 1.0)
    return float(base)


def kd_match(config: DistillationConfig, *, teacher_name: str | None = None) -> Match:
    """The logits term: ``soft_ce`` (no T²) or ``logits_mse``, or ``textbrewer_kd`` for dynamic options."""
    weight = weight_schedule(config.kd_loss_weight, config.kd_loss_weight_scheduler)
    dynamic = config.temperature_scheduler not in ("none", "constant") or config.probability_shift
    if dynamic:
        loss: str = f"{MODULE}:textbrewer_kd"
        args: dict[str, Any] = {"temperature": float(config.temperature), "kd_loss_type": config.kd_loss_type,
                                "temperature_scheduler": config.temperature_scheduler
                                if config.temperature_scheduler not in ("none", "constant") else None,
                                "probability_shift": bool(config.probability_shift)}
    elif config.kd_loss_type == "ce":
        loss, args = "soft_ce", {"temperature": float(config.temperature), "t2_scale": False}
    else:
        loss, args = "logits_mse", {"temperature": float(config.temperature)}
    return Match("logits", "logits", loss, weight, args, projection=None, teacher_name=teacher_name, name="kd_loss")


# ---------------------------------------------------------------------------------------------
# Distillers


def _as_config(value, cls, name: str):
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        return cls.from_dict(value)
    raise ConfigError(f"{name}: expected a {cls.__name__} (or a dict of its fields), got {type(value).__name__}.")


def _split(batch: object) -> tuple[object, object]:
    """TextBrewer's batch convention: ``{'teacher': ..., 'student': ...}`` feeds the models separately."""
    if isinstance(batch, Mapping) and "teacher" in batch and "student" in batch:
        return batch["teacher"], batch["student"]
    return batch, batch


def _one(value: object, key: str, who: str) -> object:
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise FeatureError(f"{who}: returned {len(value)} '{key}' tensors; kdistill.compat distils one "
                               "logits tensor per model (one head per task: MultiTaskDistiller, one adaptor per "
                               "task).")
        return value[0]
    return value


def results_to_features(results: Mapping, *, who: str = "adaptor") -> Features:
    """A TextBrewer adaptor's dict as Features: lists keep their indices, so layer_T=4 is ``hidden.4``."""
    if not isinstance(results, Mapping):
        raise FeatureError(f"{who} returned {type(results).__name__}; a TextBrewer adaptor returns a dict with "
                           f"some of the keys {', '.join(ADAPTOR_KEYS)}.")
    features = Features()
    logits = _one(results.get("logits"), "logits", who)
    logits_mask = _one(results.get("logits_mask"), "logits_mask", who)
    labels = results.get("labels")
    if logits is not None and logits_mask is not None and logits.dim() == 3:
        keep = logits_mask.to(logits.device) != 0
        logits = logits[keep]
        if isinstance(labels, Tensor) and labels.shape == keep.shape:
            labels = labels[keep]
    features.logits = logits
    if results.get("hidden") is not None:
        features.hidden = tuple(results["hidden"])
    if results.get("attention") is not None:
        features.attentions = _IndexView(results["attention"])
    features.attention_mask = results.get("inputs_mask")
    if labels is not None:
        features.extra["labels"] = _one(labels, "labels", who)
    if results.get("losses") is not None:
        losses = results["losses"]
        features.extra["losses"] = list(losses) if isinstance(losses, (list, tuple)) else [losses]
    return features


class _IndexView(Mapping):
    """The adaptor's attention list as Features' ``{index: tensor}`` without reading every entry
    (a HookedAttentions computes a block's map only when a match reads it)."""

    def __init__(self, values: Sequence):
        self._values = values

    def __getitem__(self, index):
        if not isinstance(index, int) or not -len(self._values) <= index < len(self._values):
            raise KeyError(index)
        return self._values[index]

    def __iter__(self):
        return iter(range(len(self._values)))

    def __len__(self) -> int:
        return len(self._values)


class BasicDistiller:
    """TextBrewer's ``BasicDistiller``: the logits KD term and the adaptor's ``losses``; no intermediate matches.

    Use as ``with distiller: distiller.train(optimizer, dataloader, num_epochs=...)``.
    After training: ``distiller.engine`` is the kdistill :class:`Distiller` that computed every loss
    (its ``plan`` lists each match with shapes), ``distiller.history`` one dict per optimiser step.
    attention: how attention weights reach the adaptor (``auto``/``hooks``/``eager``, see LegacyCaller).
    """

    uses_intermediate_matches = False
    print_freq = 20

    def __init__(self, train_config: TrainingConfig, distill_config: DistillationConfig, model_T, model_S,
                 adaptor_T, adaptor_S, *, attention: str = "auto"):
        self.t_config = _as_config(train_config, TrainingConfig, "train_config")
        self.d_config = _as_config(distill_config, DistillationConfig, "distill_config")
        self.model_T = model_T
        self.model_S = model_S
        self.adaptor_T = adaptor_T
        self.adaptor_S = adaptor_S
        self.teachers = self._teacher_dict(model_T)
        self.teacher_adaptors = self._teacher_adaptors(adaptor_T)
        self.student_adaptors = self._student_adaptors(adaptor_S)
        for role, adaptors in (("adaptor_T", self.teacher_adaptors), ("adaptor_S", self.student_adaptors)):
            for name, adaptor in adaptors.items():
                if not callable(adaptor):
                    where = role if len(adaptors) == 1 and name in (None, "teacher") else f"{role}[{name!r}]"
                    raise ConfigError(f"{where}: an adaptor is a function (batch, model_outputs) -> dict, got "
                                      f"{type(adaptor).__name__}.")
        self.callers = {name: LegacyCaller(model, attention=attention, where=f"model_T '{name}'")
                        for name, model in self.teachers.items()}
        self.student_caller = LegacyCaller(model_S, attention=attention, where="model_S")
        self.engine: Distiller | None = None
        self.history: list[dict] = []
        self.hard_label_weight: Scalar = weight_schedule(self.d_config.hard_label_weight,
                                                         self.d_config.hard_label_weight_scheduler)
        self._model_args: dict = {}
        self._projection_options: dict[str, dict] = {}

    # ------------------------------------------------------------------ models and adaptors
    def _teacher_dict(self, model_T) -> dict[str, nn.Module]:
        if isinstance(model_T, (list, tuple, Mapping)):
            raise ConfigError(f"{type(self).__name__}: model_T is one model; for several teachers use "
                              "MultiTeacherDistiller (a list), for one teacher per task MultiTaskDistiller (a dict).")
        return {"teacher": model_T}

    def _teacher_adaptors(self, adaptor_T) -> dict[str, Callable]:
        return {name: adaptor_T for name in self.teachers}

    def _student_adaptors(self, adaptor_S) -> dict[str | None, Callable]:
        """The student's adaptor by the task a wrapped batch names (``None``: no task)."""
        return {None: adaptor_S}

    def __enter__(self):
        self._modes = ({name: m.training for name, m in self.teachers.items()}, self.model_S.training)
        for model in self.teachers.values():
            model.eval()
        self.model_S.train()
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        teacher_modes, student_mode = self._modes
        for name, model in self.teachers.items():
            model.train(teacher_modes[name])
        self.model_S.train(student_mode)

    def _teacher_features(self, name: str) -> Callable:
        def adapter(model, wrapped):
            teacher_batch, _ = _split(wrapped[_BATCH])
            outputs = self.callers[name](teacher_batch, **wrapped.get(_ARGS, {}))
            who = "adaptor_T" if len(self.teachers) == 1 else f"adaptor_T of '{name}'"
            return results_to_features(self.teacher_adaptors[name](teacher_batch, outputs), who=who)

        return adapter

    def _student_features(self, model, wrapped) -> Features:
        _, student_batch = _split(wrapped[_BATCH])
        outputs = self.student_caller(student_batch, **wrapped.get(_ARGS, {}))
        task = wrapped.get(_TASK)
        who = "adaptor_S" if task is None else f"adaptor_S of '{task}'"
        return results_to_features(self.student_adaptors[task](student_batch, outputs), who=who)

    # ------------------------------------------------------------------ building the engine
    def _matches(self, teacher: dict[str, Features], student: Features) -> list[Match]:
        """The matches for the features the adaptors actually returned (probed on the first batch)."""
        have_teacher_logits = all(f.logits is not None for f in teacher.values())
        if student.logits is None or not have_teacher_logits:
            raise FeatureError(f"{type(self).__name__} distils logits: both adaptors must return 'logits' "
                               f"(adaptor_S returned {'none' if student.logits is None else 'logits'}).")
        return [kd_match(self.d_config)]

    def _build_engine(self, wrapped: dict, optimizer, teachers: dict[str, nn.Module]) -> Distiller:
        """The kdistill engine for ``teachers``, its matches probed on ``wrapped``; its projections join
        ``optimizer`` as new parameter groups (as TextBrewer's did)."""
        with torch.no_grad():
            teacher = {name: self._teacher_features(name)(model, wrapped) for name, model in teachers.items()}
            student = self._student_features(self.model_S, wrapped)
        matches = self._matches(teacher, student)
        if not matches and not student.extra.get("losses"):
            raise ConfigError("nothing to distil: the adaptors return no 'logits' in common, there are no "
                              "intermediate_matches and adaptor_S returns no 'losses'.")
        adapters = {name: self._teacher_features(name) for name in teachers}
        engine = Distiller(teachers, self.model_S, matches, teacher_adapter=adapters,
                           student_adapter=self._student_features)
        self._extend_engine(engine)
        engine.to(next(self.model_S.parameters()).device)
        engine.prepare(wrapped)
        self._check_projections(engine)
        for key, module in engine.projections.items():
            options = self._projection_options.get(key, {})
            optimizer.add_param_group({"params": list(module.parameters()), **options})
            logger.info("added projection %s (%s) to the optimizer", key, type(module).__name__)
        return engine

    def _extend_engine(self, engine: Distiller) -> None:
        """Hook for GeneralDistiller: projections kdistill's Match cannot express."""

    def _check_projections(self, engine: Distiller) -> None:
        """Hook for GeneralDistiller: declared projection widths against the real features."""

    # ------------------------------------------------------------------ training
    def train(self, optimizer, dataloader, num_epochs=None, scheduler_class=None, scheduler_args=None,
              scheduler=None, max_grad_norm=-1.0, num_steps=None, callback=None, batch_postprocessor=None,
              **args):
        """Train the student: TextBrewer's ``train`` with the same arguments and the same loop.

        ``args`` are extra keyword arguments for both models' forward. ``callback(model=student,
        step=global_step)`` runs after each checkpoint. Returns ``self.history``.
        """
        caching = bool(self.d_config.is_caching_logits) and not self.uses_intermediate_matches
        if num_steps is not None and caching:
            raise ConfigError("is_caching_logits=True cannot be combined with train(num_steps=...); "
                              "train by num_epochs or turn caching off.")
        steps = plan_steps(self.t_config, dataloader, num_epochs, num_steps)
        device = self._to_device(args)
        cache = self._cache(dataloader, batch_postprocessor, device, optimizer) if caching else None

        def batches(epoch):
            if cache is not None:
                random.shuffle(cache)
                return (self._wrap(batch, None, device, cached=True) for batch in cache)
            source = cycle(dataloader) if epoch is None else dataloader
            return (self._wrap(batch, batch_postprocessor, device, cached=False) for batch in source)

        return self._run(optimizer, steps, device, batches, scheduler_maker(optimizer, scheduler_class,
                                                                            scheduler_args, scheduler),
                         max_grad_norm=max_grad_norm, callback=callback)

    def _run(self, optimizer, steps, device, batches, make_scheduler, *, max_grad_norm, callback) -> list[dict]:
        hooks = LoopHooks(model=self.model_S, prepare=lambda wrapped: self._ensure_engine(wrapped, optimizer),
                          loss=self._loss, parameters=self._trainable_parameters, save=self._save)
        return train_loop(hooks, optimizer, config=self.t_config, device=device, steps=steps, batches=batches,
                          make_scheduler=make_scheduler, max_grad_norm=max_grad_norm, callback=callback,
                          history=self.history, print_freq=self.print_freq)

    def _to_device(self, model_args: dict) -> torch.device:
        device = self.t_config.resolved_device()
        for model in [*self.teachers.values(), self.model_S]:
            model.to(device)
        for engine in self._engines():
            engine.to(device)
        self._model_args = model_args
        return device

    def _ensure_engine(self, wrapped: dict, optimizer) -> None:
        """Build the engine on the first batch (then the scheduler is made: projections are scheduled too)."""
        if self.engine is None:
            self.engine = self._build_engine(wrapped, optimizer, self.teachers)

    def _engines(self) -> list[Distiller]:
        """Every kdistill engine built so far (one here; one per task in MultiTaskDistiller)."""
        return [] if self.engine is None else [self.engine]

    def _engine_for(self, wrapped: dict) -> Distiller:
        return self.engine

    def _trainable_parameters(self) -> list[Tensor]:
        """The student's and the projections' parameters (what ``max_grad_norm`` clips)."""
        projections = [p for engine in self._engines() for p in engine.projections.parameters()]
        return [*self.model_S.parameters(), *projections]

    def _projection_state(self) -> dict[str, Tensor]:
        return dict(self.engine.projections.state_dict()) if self.engine is not None else {}

    def _wrap(self, batch, batch_postprocessor, device, *, cached: bool) -> dict:
        if cached:
            batch, teacher_logits = batch
            features = {name: Features(logits=logits.to(device)) for name, logits in teacher_logits.items()}
            return {_BATCH: batch, _ARGS: self._model_args, "teacher_features": features}
        if batch_postprocessor is not None:
            batch = batch_postprocessor(batch)
        return {_BATCH: move_to_device(batch, device), _ARGS: self._model_args}

    def _cache(self, dataloader, batch_postprocessor, device, optimizer) -> list:
        """TextBrewer's ``is_caching_logits``: run the teachers once, keep (batch, logits on CPU)."""
        logger.info("Caching batches and the teachers' logits ...")
        cache = []
        for batch in dataloader:
            wrapped = self._wrap(batch, batch_postprocessor, device, cached=False)
            self._ensure_engine(wrapped, optimizer)
            features = self.engine.teacher_features(wrapped)
            cache.append((wrapped[_BATCH], {name: f.logits.detach().cpu() for name, f in features.items()}))
        return cache

    def _loss(self, wrapped: dict, step: int, total: int) -> tuple[Tensor, dict[str, Tensor]]:
        out = self._engine_for(wrapped)(wrapped, step=step, total_steps=total)
        parts = dict(out.parts)
        loss = out.loss
        losses = out.student_features.extra.get("losses") if out.student_features is not None else None
        if losses:
            weight = value_at(self.hard_label_weight, step, total)
            hard = sum(l.mean() for l in losses) * weight
            parts["hard_label"] = hard.detach()
            loss = loss + hard
        return loss, parts

    def _save(self, global_step: int) -> None:
        save_checkpoint(self.t_config.output_dir, global_step, self.model_S, self._projection_state())


class GeneralDistiller(BasicDistiller):
    """TextBrewer's ``GeneralDistiller``: logits KD (when both adaptors return ``logits``) plus
    ``intermediate_matches``. ``custom_matches`` (TextBrewer's experimental hooks) is not supported:
    name sub-modules in a native kdistill match (``module:PATH``) instead.
    """

    uses_intermediate_matches = True

    def __init__(self, train_config, distill_config, model_T, model_S, adaptor_T, adaptor_S,
                 custom_matches=None, *, attention: str = "auto"):
        if custom_matches:
            raise ConfigError("custom_matches: not supported by kdistill.compat; use a native kdistill Match with "
                              "'module:<path>' refs (forward hooks) instead.")
        super().__init__(train_config, distill_config, model_T, model_S, adaptor_T, adaptor_S, attention=attention)
        self.matches_by_engine_index: list[int | None] = []
        self._pair_projections: dict[str, nn.Module] = {}

    def _matches(self, teacher: dict[str, Features], student: Features) -> list[Match]:
        (teacher_features,) = teacher.values()
        matches: list[Match] = []
        self.matches_by_engine_index = []
        if teacher_features.logits is not None and student.logits is not None:
            matches.append(kd_match(self.d_config))
            self.matches_by_engine_index.append(None)
        elif (teacher_features.logits is None) != (student.logits is None):
            logger.warning("only one adaptor returns 'logits': the KD term is skipped (as in TextBrewer).")
        for i, entry in enumerate(self.d_config.intermediate_matches):
            self._check_indices(i, entry, teacher_features, student)
            match = translate_match(entry, i, python=True)
            if entry.proj is not None:
                options = dict(entry.proj[3]) if len(entry.proj) == 4 else {}
                # The engine keys a match's projection by its position: "m<index>".
                key = f"pair{i}" if entry.is_pair else f"m{len(matches)}"
                self._projection_options[key] = options
                if entry.is_pair:
                    match = self._pair_projected(i, entry, match, student)
            matches.append(match)
            self.matches_by_engine_index.append(i)
        return matches

    @staticmethod
    def _check_indices(i: int, entry: IntermediateMatch, teacher: Features, student: Features) -> None:
        for role, features, layers in (("T", teacher, entry.layer_T), ("S", student, entry.layer_S)):
            if entry.feature == "hidden":
                count = len(features.hidden or ())
            else:
                count = len(features.attentions)
            for layer in layers if isinstance(layers, (list, tuple)) else [layers]:
                if not -count <= layer < count:
                    raise ConfigError(
                        f"intermediate_matches[{i}].layer_{role}: {layer} is out of range: adaptor_{role} returned "
                        f"{count} '{entry.feature}' tensors (indices 0–{count - 1}). layer_{role} indexes the "
                        "adaptor's list, not the model's layers."
                    )

    def _pair_projected(self, i: int, entry: IntermediateMatch, match: Match, student: Features) -> Match:
        """fsp/nst pairs with a ``proj``: project both student features (a Match projects one tensor)."""
        kind, dim_in, dim_out = entry.proj[:3]
        widths = {student.hidden[layer].shape[-1] if entry.feature == "hidden" else student.attentions[layer].shape[-1]
                  for layer in entry.layer_S}
        if widths != {dim_in}:
            raise ConfigError(f"intermediate_matches[{i}].proj: declares student width {dim_in}, but the student's "
                              f"features are {sorted(widths)} wide.")
        module = projection_factory(kind)(dim_in, dim_out)
        self._pair_projections[f"pair{i}"] = module
        base = get_loss(match.loss, path=f"intermediate_matches[{i}].loss")

        def projected(student, teacher, *, mask=None):
            return base(tuple(module(s) for s in student), teacher, mask=mask)

        projected.__name__ = match.loss.rsplit(":", 1)[-1]
        return match.with_(loss=projected, projection=None)

    def _extend_engine(self, engine: Distiller) -> None:
        for key, module in self._pair_projections.items():
            engine.projections[key] = module

    def _check_projections(self, engine: Distiller) -> None:
        for plan, entry_index in zip(engine.plan, self.matches_by_engine_index):
            if entry_index is None:
                continue
            entry = self.d_config.intermediate_matches[entry_index]
            if entry.proj is None or entry.is_pair:
                continue
            student_width, teacher_width = plan.student_shape[-1], plan.teacher_shape[-1]
            if (student_width, teacher_width) != tuple(entry.proj[1:3]):
                raise ConfigError(
                    f"intermediate_matches[{entry_index}].proj: declares {entry.proj[1]} -> {entry.proj[2]} "
                    f"(student width -> teacher width), but the features are {student_width} -> {teacher_width} "
                    f"wide ('{plan.student}' -> '{plan.teacher}')."
                )


class MultiTeacherDistiller(BasicDistiller):
    """TextBrewer's ``MultiTeacherDistiller``: logits KD from the teachers' ensemble; no intermediate matches.

    model_T: a list of teachers; adaptor_T: one adaptor or one per teacher. Difference: kdistill's
    ensemble averages the teachers' *temperature-softened probabilities*; TextBrewer averaged logits.
    """

    def _teacher_dict(self, model_T) -> dict[str, nn.Module]:
        if not isinstance(model_T, (list, tuple)) or not model_T:
            raise ConfigError("MultiTeacherDistiller: model_T must be a non-empty list of teacher models.")
        return {f"teacher_{i}": model for i, model in enumerate(model_T)}

    def _teacher_adaptors(self, adaptor_T) -> dict[str, Callable]:
        if isinstance(adaptor_T, (list, tuple)):
            if len(adaptor_T) != len(self.teachers):
                raise ConfigError(f"MultiTeacherDistiller: {len(adaptor_T)} adaptors for "
                                  f"{len(self.teachers)} teachers.")
            return dict(zip(self.teachers, adaptor_T))
        return {name: adaptor_T for name in self.teachers}

    def _matches(self, teacher: dict[str, Features], student: Features) -> list[Match]:
        super()._matches(teacher, student)
        return [kd_match(self.d_config, teacher_name=ENSEMBLE)]


class MultiTaskDistiller(GeneralDistiller):
    """TextBrewer's ``MultiTaskDistiller``: one teacher per task distilled into one student.

    model_T, adaptor_T, adaptor_S: dicts keyed by task name (the same names). Each micro-batch comes
    from one task, drawn by :func:`task_probabilities`; that task's teacher and adaptors alone
    compute its loss, as :class:`GeneralDistiller` would (logits KD when both adaptors return
    ``logits``, ``intermediate_matches``, the adaptor's ``losses`` × ``hard_label_weight``).
    Train by ``num_steps`` only. ``distiller.engines`` holds one kdistill :class:`Distiller` per
    task (each with its own projections; TextBrewer shared one per match across tasks);
    ``distiller.sampled_tasks`` the task of every micro-batch, in order.
    """

    def __init__(self, train_config, distill_config, model_T, model_S, adaptor_T, adaptor_S, *,
                 attention: str = "auto"):
        super().__init__(train_config, distill_config, model_T, model_S, adaptor_T, adaptor_S, attention=attention)
        self.engines: dict[str, Distiller] = {}
        self.sampled_tasks: list[str] = []

    def _teacher_dict(self, model_T) -> dict[str, nn.Module]:
        if not isinstance(model_T, Mapping) or not model_T:
            raise ConfigError("MultiTaskDistiller: model_T must be a non-empty dict {task name: teacher model}, "
                              f"got {type(model_T).__name__}.")
        return dict(model_T)

    def _teacher_adaptors(self, adaptor_T) -> dict[str, Callable]:
        return self._by_task(adaptor_T, "adaptor_T")

    def _student_adaptors(self, adaptor_S) -> dict[str | None, Callable]:
        return self._by_task(adaptor_S, "adaptor_S")

    def _by_task(self, value, name: str) -> dict:
        """``value`` as a dict with exactly the tasks of model_T (an error names the missing/extra ones)."""
        if not isinstance(value, Mapping):
            raise ConfigError(f"MultiTaskDistiller: {name} must be a dict {{task name: ...}} with the tasks of "
                              f"model_T ({', '.join(map(str, self.teachers))}), got {type(value).__name__}.")
        missing = [task for task in self.teachers if task not in value]
        extra = [task for task in value if task not in self.teachers]
        if missing or extra:
            raise ConfigError(f"MultiTaskDistiller: {name} has the tasks {', '.join(map(str, value)) or 'none'}; "
                              f"model_T has {', '.join(map(str, self.teachers))}"
                              + (f" (missing: {', '.join(map(str, missing))})" if missing else "")
                              + (f" (unknown: {', '.join(map(str, extra))})" if extra else "") + ".")
        return {task: value[task] for task in self.teachers}

    def _ensure_engine(self, wrapped: dict, optimizer) -> None:
        task = wrapped[_TASK]
        if task not in self.engines:
            self.engines[task] = self._build_engine(wrapped, optimizer, {task: self.teachers[task]})

    def _engines(self) -> list[Distiller]:
        return list(self.engines.values())

    def _engine_for(self, wrapped: dict) -> Distiller:
        return self.engines[wrapped[_TASK]]

    def _projection_state(self) -> dict[str, Tensor]:
        return {f"{task}.{key}": value for task, engine in self.engines.items()
                for key, value in engine.projections.state_dict().items()}

    def train(self, optimizer, dataloaders, num_steps, scheduler_class=None, scheduler_args=None, scheduler=None,
              max_grad_norm=-1.0, tau=1, callback=None, batch_postprocessors=None, **args):
        """Train the student for ``num_steps`` optimiser steps: TextBrewer's multi-task loop.

        dataloaders: ``{task: dataloader}``; every micro-batch is drawn from task *d* with probability
        ∝ ``len(dataloaders[d]) ** tau`` (uniform when a dataloader has no length), with numpy's global
        random state as TextBrewer did (``np.random.seed`` makes the draw repeatable).
        batch_postprocessors: ``{task: function}`` applied to that task's batches. Saves every
        ``TrainingConfig.ckpt_steps`` steps and at the last, then calls ``callback(model=student,
        step=global_step)``. ``args`` go to every model's forward. Returns ``self.history``.
        """
        dataloaders = self._by_task(dataloaders, "dataloaders")
        postprocessors = self._by_task(batch_postprocessors, "batch_postprocessors") if batch_postprocessors \
            else {task: None for task in self.teachers}
        probabilities = task_probabilities(dataloaders, tau)
        steps = plan_steps(self.t_config, None, None, num_steps)
        device = self._to_device(args)
        streams = {task: cycle(loader) for task, loader in dataloaders.items()}

        def draw(task: str) -> dict:
            wrapped = self._wrap(next(streams[task]), postprocessors[task], device, cached=False)
            return {**wrapped, _TASK: task}

        # Every task's engine is built on its first batch before training, so all projections are in
        # the optimizer (and the scheduler) from the start; that batch is then the task's first one.
        pending = {task: draw(task) for task in dataloaders}
        for wrapped in pending.values():
            self._ensure_engine(wrapped, optimizer)
        tasks = list(dataloaders)
        weights = None if probabilities is None else [probabilities[task] for task in tasks]

        def batches(_epoch):
            while True:
                # np.random.choice(tasks, p=weights) as TextBrewer (the same draw), keeping the keys' type
                task = tasks[np.random.choice(len(tasks), p=weights)]
                self.sampled_tasks.append(task)
                yield pending.pop(task) if task in pending else draw(task)

        return self._run(optimizer, steps, device, batches,
                         scheduler_maker(optimizer, scheduler_class, scheduler_args, scheduler),
                         max_grad_norm=max_grad_norm, callback=callback)


def task_probabilities(dataloaders: Mapping[str, Any], tau: float) -> dict[str, float] | None:
    """TextBrewer's task sampling: P(d) = |d|^tau / Σ_e |e|^tau, |d| = ``len(dataloaders[d])``.

    The length of a dataloader is its number of batches, so with one batch size this is the data
    sets' sizes raised to tau: tau=1 samples in proportion to size, tau=0 uniformly. ``None``
    (uniform draws, as in TextBrewer) when some dataloader has no ``len``.
    """
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau):
        raise ConfigError(f"train: tau must be a finite number (the exponent of the data set sizes), got {tau!r}.")
    sizes = {task: _length(loader) for task, loader in dataloaders.items()}
    if None in sizes.values():
        logger.info("The size of some datasets is unknown: tasks are sampled uniformly (tau ignored).")
        return None
    empty = [str(task) for task, size in sizes.items() if size == 0]
    if empty:
        raise ConfigError(f"train: dataloaders[{', '.join(empty)}] has no batches; every task needs data.")
    scores = {task: float(size) ** tau for task, size in sizes.items()}
    total = sum(scores.values())
    return {task: score / total for task, score in scores.items()}


def _length(loader) -> int | None:
    """``len(loader)``, or None for an iterable without one (a DataLoader of an IterableDataset raises)."""
    try:
        return len(loader)
    except TypeError:
        return None


class BasicTrainer:
    """TextBrewer's ``BasicTrainer``: plain supervised training (e.g. of the teacher), no distillation.

    The model is called as the distillers call it and ``adaptor(batch, model_outputs)`` must return
    ``{'losses': tensor or list of tensors}``; the loss of a batch is the sum of their means.
    ``with trainer: trainer.train(optimizer, dataloader, num_epochs=...)`` (or ``num_steps=...``)
    runs the distillers' loop: accumulation, clipping, scheduler, checkpoints
    (``output_dir/gs<step>.safetensors``), ``log_dir`` metrics and ``callback(model=model, step=...)``.
    """

    print_freq = 20

    def __init__(self, train_config: TrainingConfig, model: nn.Module, adaptor: Callable, *,
                 attention: str = "auto"):
        self.t_config = _as_config(train_config, TrainingConfig, "train_config")
        if not callable(adaptor):
            raise ConfigError(f"adaptor: an adaptor is a function (batch, model_outputs) -> dict, got "
                              f"{type(adaptor).__name__}.")
        self.model = model
        self.adaptor = adaptor
        self.caller = LegacyCaller(model, attention=attention, where="model")
        self.history: list[dict] = []
        self._model_args: dict = {}

    def __enter__(self):
        self._mode = self.model.training
        self.model.train()
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        self.model.train(self._mode)

    def train(self, optimizer, dataloader, num_epochs=None, scheduler_class=None, scheduler_args=None,
              scheduler=None, max_grad_norm=-1.0, num_steps=None, callback=None, batch_postprocessor=None,
              **args):
        """Train the model: the same arguments and loop as :meth:`BasicDistiller.train`. Returns ``self.history``."""
        steps = plan_steps(self.t_config, dataloader, num_epochs, num_steps)
        device = self.t_config.resolved_device()
        self.model.to(device)
        self._model_args = args

        def batches(epoch):
            source = cycle(dataloader) if epoch is None else dataloader
            for batch in source:
                yield move_to_device(batch if batch_postprocessor is None else batch_postprocessor(batch), device)

        hooks = LoopHooks(model=self.model, prepare=lambda batch: None, loss=self._loss,
                          parameters=self.model.parameters, save=self._save)
        return train_loop(hooks, optimizer, config=self.t_config, device=device, steps=steps, batches=batches,
                          make_scheduler=scheduler_maker(optimizer, scheduler_class, scheduler_args, scheduler),
                          max_grad_norm=max_grad_norm, callback=callback, history=self.history,
                          print_freq=self.print_freq)

    def _loss(self, batch, step: int, total: int) -> tuple[Tensor, dict[str, Tensor]]:
        results = self.adaptor(batch, self.caller(batch, **self._model_args))
        losses = results.get("losses") if isinstance(results, Mapping) else None
        if losses is None or (isinstance(losses, (list, tuple)) and not losses):
            got = sorted(results) if isinstance(results, Mapping) else type(results).__name__
            raise FeatureError(f"adaptor: BasicTrainer optimises the adaptor's 'losses', but it returned {got}; "
                               "return e.g. {'losses': model_outputs.loss}.")
        losses = list(losses) if isinstance(losses, (list, tuple)) else [losses]
        return sum(loss.mean() for loss in losses), {}

    def _save(self, global_step: int) -> None:
        save_checkpoint(self.t_config.output_dir, global_step, self.model)


__all__ = [
    "ADAPTOR_KEYS", "BasicDistiller", "BasicTrainer", "DistillationConfig", "FEATURES", "GeneralDistiller",
    "IntermediateMatch", "LOSS_MAP", "MultiTaskDistiller", "MultiTeacherDistiller", "TrainingConfig", "attention_ce",
    "attention_ce_mean", "attention_mse_sum", "checkpoint_steps", "kd_match", "projection_factory", "relu_projection",
    "results_to_features", "tanh_projection", "task_probabilities", "textbrewer_kd", "token_gram_mse",
    "translate_match", "weight_schedule",
]
