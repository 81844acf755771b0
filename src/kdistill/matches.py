"""Matches (teacher ref, student ref, loss, weight, args, projection) and layer-map helpers.

Routing lives here, never inside a loss: a match says *which* tensors meet *which* loss.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from kdistill.errors import ConfigError
from kdistill.refs import Ref, format_refs, parse_ref
from kdistill.schedules import Scalar, step_at

@dataclass
class Match:
    """One term of the distillation loss: ``weight · loss(student[student_ref], teacher[teacher_ref], **args)``.

    teacher, student: refs (``"hidden.4"``, ``"attn.-1"``, ``"logits"``, ``"module:layer3"``);
        ``student`` defaults to the teacher's ref.
    loss: a registered loss name, ``"pkg.module:function"`` or a callable.
    weight: a number or a schedule. args: keyword hyper-parameters of the loss (numbers or schedules).
    projection: ``"auto"`` (linear where widths differ and the loss needs equal widths),
        ``"linear"``/``"mlp"``/factory (always), ``None`` (never: a width mismatch is an error).
    teacher_name: which teacher (multi-teacher runs); ``"ensemble"`` averages all teachers.
    start, stop: the match is active for ``start <= step < stop`` (floats in [0, 1] are fractions
        of the run) — how staged methods such as TinyBERT switch from layers to predictions.
    """

    teacher: str
    student: str | None = None
    loss: str | Callable = "hidden_mse"
    weight: Scalar = 1.0
    args: dict[str, Any] = field(default_factory=dict)
    projection: str | Callable | None = "auto"
    teacher_name: str | None = None
    name: str | None = None
    start: int | float = 0
    stop: int | float | None = None

    def __post_init__(self) -> None:
        if self.student is None:
            self.student = self.teacher

    @property
    def loss_name(self) -> str:
        return self.loss if isinstance(self.loss, str) else getattr(self.loss, "__name__", "custom")

    def teacher_refs(self, where: str = "match") -> tuple[Ref, ...]:
        return parse_ref(self.teacher, where=f"{where}.teacher")

    def student_refs(self, where: str = "match") -> tuple[Ref, ...]:
        return parse_ref(self.student, where=f"{where}.student")

    def default_name(self) -> str:
        short = self.loss_name.rsplit(":", 1)[-1]
        if self.teacher == self.student:
            return f"{short}[{self.student}]"
        return f"{short}[{self.student}<-{self.teacher}]"

    def active(self, step: int, total_steps: int | None) -> bool:
        def at(point):
            return step_at(point, total_steps, what=f"match '{self.name or self.default_name()}' start/stop")

        if step < at(self.start):
            return False
        return self.stop is None or step < at(self.stop)

    def with_(self, **changes: Any) -> Match:
        return replace(self, **changes)


# ---------------------------------------------------------------------------------------------
# Layer maps: lists of (teacher_index, student_index) over *hidden-state* indices (0 = embeddings).


def uniform_layer_map(teacher_layers: int, student_layers: int, *, embeddings: bool = True) -> list[tuple[int, int]]:
    """TinyBERT's g(m) = m·k with k = L_t / L_s: student output m ↔ teacher output m·k (0 ↔ 0)."""
    if student_layers <= 0 or teacher_layers <= 0:
        raise ConfigError("layer map: layer counts must be positive.")
    if teacher_layers % student_layers:
        # Non-integer ratio: spread evenly and always end on the last layer.
        pairs = [(round(m * teacher_layers / student_layers), m) for m in range(1, student_layers + 1)]
    else:
        k = teacher_layers // student_layers
        pairs = [(m * k, m) for m in range(1, student_layers + 1)]
    return ([(0, 0)] if embeddings else []) + pairs


def last_k_layer_map(teacher_layers: int, student_layers: int) -> list[tuple[int, int]]:
    """PKD-last: student outputs 1..M ↔ the teacher's last M outputs."""
    offset = teacher_layers - student_layers
    if offset < 0:
        raise ConfigError("layer map: the student has more layers than the teacher.")
    return [(offset + m, m) for m in range(1, student_layers + 1)]


def skip_layer_map(teacher_layers: int, student_layers: int) -> list[tuple[int, int]]:
    """PKD-skip: student outputs 1..M ↔ teacher outputs k, 2k, …, M·k (k = L_t // L_s)."""
    k = max(teacher_layers // student_layers, 1)
    return [(m * k, m) for m in range(1, student_layers + 1)]


def explicit_layer_map(pairs: Sequence[Sequence[int]]) -> list[tuple[int, int]]:
    """A user's list of ``[teacher, student]`` pairs, validated for shape (ranges are checked later)."""
    result = []
    for i, pair in enumerate(pairs):
        if len(pair) != 2 or not all(isinstance(x, int) for x in pair):
            raise ConfigError(f"layer_map[{i}]: expected [teacher_index, student_index], got {pair!r}.")
        result.append((int(pair[0]), int(pair[1])))
    return result


def hidden_matches(layer_map: Sequence[tuple[int, int]], *, loss: str = "hidden_mse", weight: Scalar = 1.0,
                   projection: str | None = "auto", **kwargs: Any) -> list[Match]:
    """One hidden-state match per pair of the layer map."""
    return [Match(f"hidden.{t}", f"hidden.{s}", loss, weight, projection=projection, **kwargs) for t, s in layer_map]


def attention_matches(layer_map: Sequence[tuple[int, int]], *, loss: str = "attention_mse", weight: Scalar = 1.0,
                      kind: str = "attn", **kwargs: Any) -> list[Match]:
    """Attention matches for the blocks whose *outputs* the layer map pairs (hidden m ↔ block m−1)."""
    return [
        Match(f"{kind}.{t - 1}", f"{kind}.{s - 1}", loss, weight, **kwargs)
        for t, s in layer_map
        if t > 0 and s > 0
    ]


def describe_match(match: Match) -> str:
    refs = f"{match.teacher} -> {match.student}"
    return f"{match.name or match.default_name()}: {refs}, loss={match.loss_name}, weight={match.weight}"


__all__ = [
    "Match", "uniform_layer_map", "last_k_layer_map", "skip_layer_map", "explicit_layer_map",
    "hidden_matches", "attention_matches", "describe_match", "format_refs",
]
