"""Multi-teacher distillation: a weighted ensemble's soft targets, plus intermediate matches to any teacher.

``L = α·T²·KL(p̄^T ‖ p_s^T) + (1−α)·CE(y, z_s) + Σ intermediate`` where p̄^T = Σᵢ wᵢ·softmax(zᵢ/T) is
the weighted average of the teachers' *distributions* at temperature T (Hinton et al. 2015's
ensemble soft targets; the Distiller averages them for ``teacher_name: ensemble``), with weights
``teacher_weights`` (normalised; default equal). ``intermediate`` adds matches from named teachers'
features (hidden states, attention …) to the student's — TextBrewer's MultiTeacherDistiller supports
logits only, and averages the teachers' *logits* rather than their probabilities.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from kdistill.distiller import ENSEMBLE
from kdistill.errors import ConfigError, suggest
from kdistill.matches import Match
from kdistill.methods import Recipe, Stage, register_method
from kdistill.methods._common import check_choice, one_minus
from kdistill.ranges import ALPHA, TEMPERATURE, OneOf
from kdistill.schedules import Scalar

SOFT_LOSSES = ("kl", "soft_ce")
INTERMEDIATE_KEYS = ("teacher_name", "teacher", "student", "loss", "weight", "args", "projection", "name",
                     "start", "stop")


def _intermediate_match(index: int, spec: Mapping[str, Any], teacher_names: Sequence[str] | None) -> Match:
    where = f"method_args.intermediate[{index}]"
    if isinstance(spec, Match):
        match = spec
    else:
        if not isinstance(spec, Mapping):
            raise ConfigError(f"{where}: expected a mapping such as {{teacher_name: big, teacher: hidden.6, "
                              f"student: hidden.3, loss: hidden_mse}}, got {spec!r}.")
        unknown = [k for k in spec if k not in INTERMEDIATE_KEYS]
        if unknown:
            raise ConfigError(f"{where}: unknown key '{unknown[0]}'{suggest(unknown[0], INTERMEDIATE_KEYS)} "
                              f"Valid keys: {', '.join(INTERMEDIATE_KEYS)}.")
        if "teacher" not in spec:
            raise ConfigError(f"{where}: 'teacher' (the teacher's feature ref, e.g. hidden.6) is required.")
        match = Match(**dict(spec))
    if teacher_names is not None and match.teacher_name not in (None, ENSEMBLE, *teacher_names):
        raise ConfigError(f"{where}.teacher_name: no teacher named '{match.teacher_name}'"
                          f"{suggest(str(match.teacher_name), teacher_names)} Teachers: {', '.join(teacher_names)}.")
    return match


@register_method("multiteacher", ranges={"temperature": TEMPERATURE, "alpha": ALPHA, "loss": OneOf(SOFT_LOSSES)})
def multiteacher(*, teacher: nn.Module | Mapping[str, nn.Module] | None = None, student: nn.Module | None = None,
                 temperature: Scalar = 4.0, alpha: Scalar = 0.5, loss: str = "kl",
                 teacher_weights: Mapping[str, float] | None = None,
                 intermediate: Sequence[Mapping[str, Any]] = ()) -> Recipe:
    """Ensemble soft targets (probabilities averaged at T, T² in the loss) + hard labels + intermediate matches.

    teacher: a dict name -> model (several teachers; one model is refused). teacher_weights: name -> weight of the average
    (normalised; default equal). intermediate: ``[{teacher_name, teacher, student, loss, weight, args,
    projection}]`` — matches to one named teacher.
    """
    method = "multiteacher"
    check_choice(method, "loss", loss, SOFT_LOSSES)
    if teacher is not None and not isinstance(teacher, Mapping):  # one model: Hinton KD under another name
        raise ConfigError(f"teacher: method '{method}' averages several teachers, but it was given one model; pass "
                          "a dict name -> model (in a config: teachers: {name: {path: …}, …}), or use method "
                          "'hinton' for one teacher.")
    names = list(teacher) if isinstance(teacher, Mapping) else None
    if teacher_weights is not None:
        if not isinstance(teacher_weights, Mapping) or not teacher_weights:
            raise ConfigError(f"method_args.teacher_weights: {method} expects a mapping teacher name -> weight, "
                              f"got {teacher_weights!r}.")
        for name, value in teacher_weights.items():
            if names is not None and name not in names:
                raise ConfigError(f"method_args.teacher_weights: no teacher named '{name}'{suggest(name, names)} "
                                  f"Teachers: {', '.join(names)}.")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"method_args.teacher_weights.{name}: expected a weight ≥ 0, got {value!r}.")
        if sum(teacher_weights.values()) <= 0:
            raise ConfigError("method_args.teacher_weights: the weights sum to 0; give at least one positive weight.")
    soft = Match("logits", "logits", loss, alpha, args={"temperature": temperature, "t2_scale": True},
                 teacher_name=ENSEMBLE, name="soft")
    matches = [soft] + [_intermediate_match(i, spec, names) for i, spec in enumerate(intermediate)]
    notes = ["soft targets: the teachers' probabilities at T averaged with teacher_weights (not their logits), "
             "KL with T²; hard labels weighted 1 − α."]
    return Recipe(method, [Stage("distil", matches, hard_label_weight=one_minus(alpha))],
                  teacher_weights=dict(teacher_weights) if teacher_weights is not None else None, notes=notes)


__all__ = ["multiteacher"]
