"""The Distiller: one batch -> the total loss and its named parts. Knows nothing of optimisers."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from kdistill.adapters import make_adapter
from kdistill.errors import ConfigError, NonFiniteLossError, ShapeError
from kdistill.features import Features
from kdistill.losses import argument_problems, get_loss, loss_properties
from kdistill.losses._common import upcast
from kdistill.matches import Match
from kdistill.projection import OnAxis, make_projection
from kdistill.ranges import WEIGHT, check_arguments, check_value
from kdistill.refs import Ref, format_refs
from kdistill.schedules import Scalar, value_at

ENSEMBLE = "ensemble"
_OPTIONAL_LOSS_INPUTS = ("mask", "teacher_mask", "labels", "student_features", "teacher_features", "causal")


@dataclass
class DistillOutput:
    """``loss``: the scalar to back-propagate. ``parts``: each weighted term, detached, by name."""

    loss: Tensor
    parts: dict[str, Tensor]
    student_features: Features | None = None


@dataclass
class MatchPlan:
    """What one match resolved to on the first batch (printed by ``kdistill plan``)."""

    name: str
    teacher: str
    student: str
    loss: str
    weight: Scalar
    teacher_shape: tuple
    student_shape: tuple
    projection: str | None
    teacher_name: str


@dataclass
class _Bound:
    """A match with its refs parsed, loss resolved and the loss's optional inputs known."""

    match: Match
    index: int
    name: str
    teacher_refs: tuple[Ref, ...]
    student_refs: tuple[Ref, ...]
    loss_fn: Callable
    accepts: frozenset[str] = field(default_factory=frozenset)


def freeze_teacher(model: nn.Module) -> nn.Module:
    """The one place a teacher is frozen: eval mode, no parameter requires grad."""
    model.eval()
    model.requires_grad_(False)
    return model


class Distiller(nn.Module):
    """Teacher(s), student and matches. ``distiller(batch, step=...)`` returns a :class:`DistillOutput`.

    teacher: a model, or a dict ``name -> model`` for several teachers (``teacher_weights`` weight
        the ``"ensemble"`` average). The teachers are *not* sub-modules: they are frozen, never in
        the state dict, never optimised. ``None``: no teacher, the student learns from labels
        alone (the no-distillation baseline, trained by the same loop).
    hard_label_weight: weight of ``hard_label_loss(student logits, batch["labels"])``; skipped for
        batches without labels (unlabelled text labelled by the teacher).
    teacher_adapter / student_adapter: optional ``(model, batch) -> Features`` functions.
    attention: how HF attention features are produced: ``auto``/``hooks``/``eager`` (see adapters.hf).
    """

    def __init__(
        self,
        teacher: nn.Module | Mapping[str, nn.Module] | None,
        student: nn.Module,
        matches: Sequence[Match] = (),
        *,
        hard_label_weight: Scalar = 0.0,
        hard_label_loss: str | Callable = "hard_ce",
        hard_label_args: Mapping | None = None,
        teacher_weights: Mapping[str, float] | None = None,
        teacher_adapter: Callable | Mapping[str, Callable] | None = None,
        student_adapter: Callable | None = None,
        attention: str = "auto",
    ):
        super().__init__()
        self.student = student
        teachers = dict(teacher) if isinstance(teacher, Mapping) else ({} if teacher is None else {"teacher": teacher})
        if not teachers and matches:
            raise ConfigError("teacher: matches need a teacher model (teacher=None trains on labels alone).")
        # Stored in a plain dict so they never enter state_dict(), parameters() or .train().
        self.teachers: dict[str, nn.Module] = {name: freeze_teacher(model) for name, model in teachers.items()}
        weights = dict(teacher_weights or {name: 1.0 for name in self.teachers})
        total = sum(weights.values()) or 1.0
        self.teacher_weights = {name: weights.get(name, 0.0) / total for name in self.teachers}
        check_value(WEIGHT, hard_label_weight, "hard_label_weight")
        self.hard_label_weight = hard_label_weight
        self.hard_label_args = dict(hard_label_args or {})
        self.hard_label_fn = get_loss(hard_label_loss, path="hard_label_loss")
        self.bound = [self._bind(i, match) for i, match in enumerate(matches)]
        self._assign_names()
        self.projections = nn.ModuleDict()
        self.prepared = False
        self.plan: list[MatchPlan] = []

        student_refs = [ref for b in self.bound for ref in b.student_refs]
        if _uses_hard_labels(hard_label_weight):
            student_refs.append(Ref("logits"))
        self.student_adapter = make_adapter(student, student_refs, student_adapter, attention=attention,
                                            where="student")
        self.teacher_adapters = {}
        adapters = teacher_adapter if isinstance(teacher_adapter, Mapping) else {n: teacher_adapter for n in self.teachers}
        for name, model in self.teachers.items():
            refs = [ref for b in self.bound if self._reads_teacher(b, name) for ref in b.teacher_refs]
            self.teacher_adapters[name] = make_adapter(model, refs, adapters.get(name), attention=attention,
                                                       where=f"teacher '{name}'" if len(self.teachers) > 1 else "teacher")
        # Refs resolved against the models (negative indices made positive, ranges checked).
        for b in self.bound:
            b.student_refs = tuple(r.resolved(self.student_adapter.num_layers, where=f"{b.name}.student")
                                   for r in b.student_refs)
            teacher_names = list(self.teachers) if b.match.teacher_name == ENSEMBLE else [self._teacher_of(b)]
            per_teacher = {name: tuple(r.resolved(self.teacher_adapters[name].num_layers, where=f"{b.name}.teacher")
                                       for r in b.teacher_refs) for name in teacher_names}
            if len(set(per_teacher.values())) > 1:
                # One set of refs serves every teacher of an ensemble: 'hidden.-1' of a 12- and a
                # 6-layer teacher would silently read layer 6 of both.
                raise ConfigError(f"{b.name}.teacher: '{b.match.teacher}' names different layers in the ensemble's "
                                  f"teachers ({', '.join(f'{n}: {format_refs(r)}' for n, r in per_teacher.items())}); "
                                  "use teachers of equal depth or one match per teacher.")
            if per_teacher:
                b.teacher_refs = next(iter(per_teacher.values()))

    # ------------------------------------------------------------------ construction helpers
    def _bind(self, index: int, match: Match) -> _Bound:
        where = f"matches[{index}]"
        if not isinstance(match, Match):
            raise ConfigError(f"{where}: expected a kdistill.Match, got {type(match).__name__}.")
        loss_fn = get_loss(match.loss, path=f"{where}.loss")
        try:
            params = inspect.signature(loss_fn).parameters
        except (TypeError, ValueError):
            params = {}
        accepts = frozenset(p for p in _OPTIONAL_LOSS_INPUTS if p in params)
        problems = argument_problems(loss_fn, match.loss_name, match.args, f"{where}.args")
        if problems:
            raise ConfigError(problems[0] if len(problems) == 1 else "\n".join(problems))
        check_value(WEIGHT, match.weight, f"{where}.weight")
        check_arguments(loss_fn, match.args, f"{where}.args")
        if match.teacher_name not in (None, ENSEMBLE) and match.teacher_name not in self.teachers:
            raise ConfigError(f"{where}.teacher_name: no teacher named '{match.teacher_name}'; "
                              f"teachers are: {', '.join(self.teachers)} (or '{ENSEMBLE}').")
        return _Bound(match, index, "", match.teacher_refs(where), match.student_refs(where), loss_fn, accepts)

    def _teacher_of(self, bound: _Bound) -> str:
        return bound.match.teacher_name or next(iter(self.teachers))

    def _reads_teacher(self, bound: _Bound, name: str) -> bool:
        return bound.match.teacher_name == ENSEMBLE or self._teacher_of(bound) == name

    # ------------------------------------------------------------------ naming
    def _assign_names(self) -> None:
        seen: dict[str, int] = {}
        for b in self.bound:
            base = b.match.name or b.match.default_name()
            seen[base] = seen.get(base, 0) + 1
            b.name = base if seen[base] == 1 else f"{base}#{seen[base]}"

    def part_names(self) -> list[str]:
        names = [b.name for b in self.bound]
        if _uses_hard_labels(self.hard_label_weight):
            names.append("hard_label")
        return names

    # ------------------------------------------------------------------ forward
    def teacher_features(self, batch: Mapping, names: Iterable[str] | None = None) -> dict[str, Features]:
        """The features of the teachers in ``names`` (default: all) for ``batch``: the one no-grad
        place teachers run. A batch may carry precomputed ``teacher_features`` (the teacher cache).
        """
        cached = batch.get("teacher_features") if isinstance(batch, Mapping) else None
        if cached is not None:
            return cached if isinstance(cached, Mapping) else {next(iter(self.teachers)): cached}
        wanted = self.teacher_adapters if names is None else {n: self.teacher_adapters[n] for n in names}
        with torch.no_grad():
            return {name: adapter(batch) for name, adapter in wanted.items()}

    def remove_hooks(self) -> None:
        """Take off the forward hooks the adapters put on the models (a teacher outlives its stage)."""
        for adapter in [self.student_adapter, *self.teacher_adapters.values()]:
            hooks = getattr(adapter, "hooks", None)
            if hooks is not None:
                hooks.remove()

    def active_teachers(self, step: int, total_steps: int | None) -> list[str]:
        """Teachers some match active at ``step`` reads; the others are not run at all."""
        return [name for name in self.teachers
                if any(self._reads_teacher(b, name) and b.match.active(step, total_steps) for b in self.bound)]

    def student_features(self, batch: Mapping) -> Features:
        student_batch = batch.get("student_inputs", batch) if isinstance(batch, Mapping) else batch
        return self.student_adapter(student_batch)

    def forward(self, batch: Mapping, *, step: int = 0, total_steps: int | None = None,
                check_finite: bool = True, hard_label: bool = True) -> DistillOutput:
        """The loss of ``batch`` at ``step``. ``hard_label=False`` leaves the hard-label loss out (a batch
        of the student's own samples, :mod:`kdistill.on_policy`: its tokens are no labels to learn)."""
        if not self.prepared:
            self.prepare(batch)
            if len(self.projections):  # made now, after any optimiser was built: they would never train
                raise ConfigError(
                    f"the matches need projections ({', '.join(p.name for p in self.plan if p.projection)}): call "
                    "distiller.prepare(first_batch) before building the optimiser, so they are trained with the "
                    "student (the Trainer does this).")
        teacher = self.teacher_features(batch, self.active_teachers(step, total_steps))
        student = self.student_features(batch)
        labels = _student_labels(batch)
        parts: dict[str, Tensor] = {}
        total: Tensor | None = None
        for b in self.bound:
            if not b.match.active(step, total_steps):
                continue
            weight = value_at(b.match.weight, step, total_steps)
            if weight == 0.0:
                continue
            term = weight * self._match_loss(b, student, teacher, labels, step, total_steps, _loss_masks(batch))
            parts[b.name] = term
            total = term if total is None else total + term
        hard_weight = value_at(self.hard_label_weight, step, total_steps)
        if hard_weight and labels is not None and hard_label:
            term = hard_weight * self.hard_label_fn(student.logits, None, labels=labels, **self.hard_label_args)
            parts["hard_label"] = term
            total = term if total is None else total + term
        if total is None:
            total = next(p for p in self.student.parameters()).sum() * 0.0
        if check_finite and not torch.isfinite(total.detach()):
            bad = [name for name, value in parts.items() if not torch.isfinite(value.detach())]
            raise NonFiniteLossError(f"step {step}: the loss is not finite; the part(s) responsible: "
                                     f"{', '.join(bad) or 'the sum'}.")
        return DistillOutput(total, {k: v.detach() for k, v in parts.items()}, student)

    def _match_loss(self, b: _Bound, student: Features, teacher: dict[str, Features], labels,
                    step: int, total_steps: int | None, loss_masks: tuple | None = None) -> Tensor:
        student_value = self._select(student, b.student_refs)
        teacher_value = self._teacher_value(b, teacher, step, total_steps)
        key = f"m{b.index}"
        if key in self.projections:
            student_value = self.projections[key](student_value)
        kwargs = {key: value_at(v, step, total_steps) if _is_schedule(v) else v for key, v in b.match.args.items()}
        # A causal-LM batch's ``loss_mask`` marks the positions whose next token carries loss: the
        # logits are compared there (each model's own where the student has its own tokenizer);
        # hidden states and attentions over every real token.
        student_mask, teacher_mask = loss_masks or (None, None)
        reads_logits = b.student_refs == (Ref("logits"),) and b.teacher_refs == (Ref("logits"),)
        if "mask" in b.accepts:
            kwargs["mask"] = student_mask if reads_logits and student_mask is not None else student.attention_mask
        if "teacher_mask" in b.accepts and b.match.teacher_name != ENSEMBLE:
            own = teacher_mask if reads_logits and teacher_mask is not None else None
            kwargs["teacher_mask"] = own if own is not None else teacher[self._teacher_of(b)].attention_mask
        if "labels" in b.accepts:
            kwargs["labels"] = labels
        if "causal" in b.accepts:  # a decoder-only student: no query relates to a later token
            kwargs["causal"] = student.causal
        if "student_features" in b.accepts:
            kwargs["student_features"] = student
        if "teacher_features" in b.accepts:
            # An ensemble match has no single teacher: it gets every teacher's features by name.
            kwargs["teacher_features"] = teacher if b.match.teacher_name == ENSEMBLE else teacher[self._teacher_of(b)]
        return b.loss_fn(student_value, teacher_value, **kwargs)

    @staticmethod
    def _select(features: Features, refs: tuple[Ref, ...]):
        values = tuple(features.get(ref) for ref in refs)
        return values[0] if len(values) == 1 else values

    def _teacher_value(self, b: _Bound, teacher: dict[str, Features], step: int, total_steps: int | None):
        if b.match.teacher_name != ENSEMBLE:
            return self._select(teacher[self._teacher_of(b)], b.teacher_refs)
        values = {name: self._select(feats, b.teacher_refs) for name, feats in teacher.items()}
        temperature = b.match.args.get("temperature")
        if b.teacher_refs == (Ref("logits"),) and temperature is not None:
            # Average the soft targets, not the logits: T·log Σ w_i softmax(z_i / T) has
            # softmax(· / T) equal to the weighted mean of the teachers' distributions.
            # In the teachers' precision, half precision raised to float32 (as the losses do).
            t = value_at(temperature, step, total_steps)
            logits = dict(zip(values, upcast(*values.values())))
            mixed = sum(self.teacher_weights[n] * (v / t).softmax(-1) for n, v in logits.items())
            return t * mixed.clamp_min(1e-12).log()
        return sum(self.teacher_weights[n] * v for n, v in values.items())

    # ------------------------------------------------------------------ first batch
    @torch.no_grad()
    def prepare(self, batch: Mapping) -> list[MatchPlan]:
        """Run one batch: check every match's shapes, insert projections where widths differ.

        Called once before the optimiser is built (the Trainer does it), so projections are trained.
        """
        was_training = self.student.training
        self.student.eval()
        try:
            teacher = self.teacher_features(batch)
            student = self.student_features(batch)
        finally:
            self.student.train(was_training)
        self.plan = []
        for b in self.bound:
            student_value = self._select(student, b.student_refs)
            teacher_value = self._teacher_value(b, teacher, 0, None)
            projection = self._maybe_project(b, student_value, teacher_value)
            self.plan.append(MatchPlan(
                b.name, format_refs(b.teacher_refs), format_refs(b.student_refs), b.match.loss_name,
                b.match.weight, _shape(teacher_value), _shape(student_value), projection,
                self._teacher_of(b),
            ))
        self.prepared = True
        # Check every loss runs on these shapes now rather than mid-run.
        labels = _student_labels(batch)
        for b in self.bound:
            try:
                self._match_loss(b, student, teacher, labels, 0, None, _loss_masks(batch))
            except ShapeError as exc:
                raise ShapeError(f"{b.name}: {exc}") from None
        return self.plan

    def _maybe_project(self, b: _Bound, student_value, teacher_value) -> str | None:
        if not isinstance(student_value, Tensor) or not isinstance(teacher_value, Tensor):
            return None
        # (B, C, H, W) feature maps (CNNs via module hooks) have their width on the channel axis.
        axis = 1 if student_value.dim() >= 4 and teacher_value.dim() == student_value.dim() else -1
        s_width, t_width = student_value.shape[axis], teacher_value.shape[axis]
        kind = b.match.projection
        needs_equal = not loss_properties(b.loss_fn).width_free
        if kind == "auto":
            if s_width == t_width or not needs_equal:
                return None
            kind = "linear"
        elif kind in (None, "none"):
            if s_width != t_width and needs_equal:
                raise ShapeError(
                    f"{b.name}: widths differ (student '{format_refs(b.student_refs)}' is {s_width}, teacher "
                    f"'{format_refs(b.teacher_refs)}' is {t_width}) and the match has no projection. "
                    "Add `projection: linear` to the match (a learned map trained with the student)."
                )
            return None
        module = make_projection(kind, s_width, t_width, path=f"{b.name}.projection")
        if axis != -1:
            module = OnAxis(module, axis)
        device = next(self.student.parameters()).device
        self.projections[f"m{b.index}"] = module.to(device=device, dtype=student_value.dtype)
        return f"{kind} {s_width}->{t_width}"

    # ------------------------------------------------------------------ bookkeeping
    def trainable_state_dict(self) -> dict[str, Tensor]:
        """Student and projection weights (never the teachers)."""
        return self.state_dict()


def _loss_masks(batch: object) -> tuple[Tensor | None, Tensor | None]:
    """(student's, teacher's) ``loss_mask`` of a causal-LM batch: the same one unless the student reads
    its own tokenisation (``student_inputs``); ``(None, None)`` for other batches."""
    if not isinstance(batch, Mapping):
        return None, None
    own = batch.get("student_inputs")
    student = own.get("loss_mask") if isinstance(own, Mapping) and "loss_mask" in own else batch.get("loss_mask")
    return student, batch.get("loss_mask")


def _student_labels(batch: object) -> Tensor | None:
    """The labels the student learns: its own tokenisation's next tokens where it has one, else the batch's."""
    if not isinstance(batch, Mapping):
        return None
    own = batch.get("student_inputs")
    return own["labels"] if isinstance(own, Mapping) and "labels" in own else batch.get("labels")


def _uses_hard_labels(weight: Scalar) -> bool:
    return not (isinstance(weight, (int, float)) and weight == 0)


def _is_schedule(value: object) -> bool:
    return callable(value) and not isinstance(value, (int, float, str))


def _shape(value) -> tuple:
    if isinstance(value, Tensor):
        return tuple(value.shape)
    if isinstance(value, tuple):
        return tuple(_shape(v) for v in value)
    return ()


__all__ = ["Distiller", "DistillOutput", "MatchPlan", "freeze_teacher", "ENSEMBLE"]
