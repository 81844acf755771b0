"""Methods: named recipes that expand into matches, stages and a student construction.

``kdistill.methods.expand("tinybert", teacher, student, **options)`` returns a :class:`Recipe`;
``recipe.to_dict()`` is what ``kdistill plan`` prints, so a user can copy and edit it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from kdistill.matches import Match
from kdistill.ranges import check_arguments
from kdistill.registry import Registry
from kdistill.schedules import Scalar, schedule_to_dict

METHODS: Registry[Callable[..., Recipe]] = Registry("method")
register_method = METHODS.register


@dataclass
class Stage:
    """One training phase of a recipe.

    data: ``"train"`` (the labelled task data) or ``"unlabelled"`` (raw text the teacher labels;
        general distillation, augmentation). teacher: which model of a chain teaches this stage
        (``"teacher"`` or ``"assistant"``); the stage's student is the chain's next model.
    epochs: this stage's length; None uses ``training.epochs``. training: overrides (e.g. lr).
    """

    name: str
    matches: list[Match]
    hard_label_weight: Scalar = 0.0
    epochs: float | None = None
    data: str = "train"
    teacher: str = "teacher"
    training: dict[str, Any] = field(default_factory=dict)


@dataclass
class Recipe:
    """What a method expands to.

    student_init: how to build the student when the config does not give one, e.g.
        ``{"from_teacher": {"layers": [1, 3, 5]}}`` or ``{"config": {"num_layers": 3}}``.
    student_wrapper: ``(teacher, student) -> nn.Module`` for methods that train a wrapper
        (BERT-of-Theseus); the wrapper exposes ``.export()`` returning the stand-alone student.
    assistant: for teacher-assistant chains, how to build the assistant (like student_init).
    teacher_weights: for several teachers, name -> weight of the ``ensemble`` average (the
        Distiller's ``teacher_weights``); None: equal weights.
    """

    method: str
    stages: list[Stage]
    student_init: dict | None = None
    student_wrapper: Callable[[nn.Module, nn.Module], nn.Module] | None = None
    assistant: dict | None = None
    notes: list[str] = field(default_factory=list)
    teacher_weights: dict[str, float] | None = None

    @property
    def matches(self) -> list[Match]:
        """The matches of the last stage (the whole recipe for single-stage methods)."""
        return self.stages[-1].matches

    def to_dict(self) -> dict:
        """A YAML-ready description: the config a user can copy and edit."""
        out = {
            "method": self.method,
            "student_init": self.student_init,
            "assistant": self.assistant,
            "stages": [
                {
                    "name": stage.name,
                    "data": stage.data,
                    "teacher": stage.teacher,
                    "epochs": stage.epochs,
                    "hard_label_weight": schedule_to_dict(stage.hard_label_weight),
                    "training": stage.training,
                    "matches": [match_to_dict(m) for m in stage.matches],
                }
                for stage in self.stages
            ],
            "notes": self.notes,
        }
        if self.teacher_weights is not None:
            out["teacher_weights"] = dict(self.teacher_weights)
        return out


def match_to_dict(match: Match) -> dict:
    out: dict[str, Any] = {"teacher": match.teacher, "student": match.student, "loss": match.loss_name,
                           "weight": schedule_to_dict(match.weight)}
    if match.args:
        out["args"] = {k: schedule_to_dict(v) if not isinstance(v, (str, bool, list)) else v
                       for k, v in match.args.items()}
    if match.projection != "auto":
        out["projection"] = match.projection if isinstance(match.projection, (str, type(None))) else "custom"
    for key in ("teacher_name", "name"):
        if getattr(match, key) is not None:
            out[key] = getattr(match, key)
    if match.start:
        out["start"] = match.start
    if match.stop is not None:
        out["stop"] = match.stop
    return out


def chain_learners(stages: list[Stage], student: nn.Module, assistant: nn.Module | None) -> list[nn.Module]:
    """The model each stage trains. In a chain teacher -> assistant -> student, the stages the teacher
    teaches train the assistant until the assistant has taught; every other stage (e.g. a final
    fine-tuning) trains the student."""
    learners, taught_by_assistant = [], False
    for stage in stages:
        taught_by_assistant = taught_by_assistant or stage.teacher == "assistant"
        trains_assistant = assistant is not None and stage.teacher == "teacher" and not taught_by_assistant
        learners.append(assistant if trains_assistant else student)
    return learners


def expand(name: str, teacher: nn.Module | None = None, student: nn.Module | None = None, *,
           path: str = "method", **options: Any) -> Recipe:
    """Expand method ``name`` for these models (layer counts are read from them where given).

    Options outside the ranges the method declares raise a ConfigError naming ``method_args.<option>``.
    """
    factory = METHODS.get(name, path=path)
    check_arguments(factory, options, "method_args")
    return factory(teacher=teacher, student=student, **options)


from kdistill.methods import hinton as _hinton  # noqa: E402,F401  (registers)
from kdistill.methods import distilbert as _distilbert  # noqa: E402,F401  (registers)
from kdistill.methods import minilm as _minilm  # noqa: E402,F401  (registers)
from kdistill.methods import multiteacher as _multiteacher  # noqa: E402,F401  (registers)
from kdistill.methods import pkd as _pkd  # noqa: E402,F401  (registers)
from kdistill.methods import theseus as _theseus  # noqa: E402,F401  (registers)
from kdistill.methods import tinybert as _tinybert  # noqa: E402,F401  (registers)

__all__ = ["METHODS", "Recipe", "Stage", "chain_learners", "expand", "match_to_dict", "register_method"]
