"""Schedules: values that change over training (temperature, a match's weight, Theseus' rate).

A schedule is a small frozen dataclass called as ``schedule(step, total_steps) -> float``. Plain
numbers are constant schedules everywhere a schedule is accepted. ``start``/``end`` steps given
as floats in [0, 1] are fractions of the whole run.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Union

from kdistill.errors import ConfigError, unknown_choice


def step_at(point: int | float, total_steps: int | None, *, what: str = "a point of the run") -> int:
    """A point of the run as a step: an integer is a step; a float in [0, 1] is that fraction of
    ``total_steps``, rounded. A fraction without ``total_steps`` is a ConfigError naming ``what`` —
    never a silent step 0. The one rule for match start/stop, schedule ends and Theseus' phases."""
    if isinstance(point, float) and 0.0 <= point <= 1.0:
        if total_steps is None:
            raise ConfigError(f"{what}: {point} is a fraction of the run, so the run's number of steps must be "
                              "known (the Trainer passes it); give a step number (an integer) to use it outside a run.")
        return int(round(point * total_steps))
    return int(point)


def _at(point: int | float | None, total: int | None, default: int) -> int:
    return default if point is None else step_at(point, total, what="schedule")


@dataclass(frozen=True)
class Constant:
    value: float

    def __call__(self, step: int, total_steps: int | None = None) -> float:
        return float(self.value)


@dataclass(frozen=True)
class Linear:
    """Linear from ``start_value`` at ``start`` to ``end_value`` at ``end`` (default: the last step), flat outside."""

    start_value: float
    end_value: float
    start: int | float = 0
    end: int | float | None = None

    def __call__(self, step: int, total_steps: int | None = None) -> float:
        begin = _at(self.start, total_steps, 0)
        finish = _at(self.end, total_steps, max(total_steps or 1, 1))
        if finish <= begin:
            return float(self.end_value if step >= begin else self.start_value)
        fraction = min(max((step - begin) / (finish - begin), 0.0), 1.0)
        return float(self.start_value + fraction * (self.end_value - self.start_value))


@dataclass(frozen=True)
class Cosine:
    """Cosine from ``start_value`` to ``end_value`` between ``start`` and ``end``."""

    start_value: float
    end_value: float
    start: int | float = 0
    end: int | float | None = None

    def __call__(self, step: int, total_steps: int | None = None) -> float:
        fraction = Linear(0.0, 1.0, self.start, self.end)(step, total_steps)
        return float(self.end_value + (self.start_value - self.end_value) * 0.5 * (1 + math.cos(math.pi * fraction)))


@dataclass(frozen=True)
class Piecewise:
    """``values[i]`` from ``boundaries[i-1]`` on (``values`` has one more entry than ``boundaries``)."""

    boundaries: tuple[int | float, ...]
    values: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.values) != len(self.boundaries) + 1:
            raise ConfigError("piecewise schedule: 'values' needs exactly one more entry than 'boundaries'.")

    def __call__(self, step: int, total_steps: int | None = None) -> float:
        value = self.values[0]
        for boundary, next_value in zip(self.boundaries, self.values[1:]):
            if step >= _at(boundary, total_steps, 0):
                value = next_value
        return float(value)


@dataclass(frozen=True)
class Ramp:
    """``start_value + slope · step``, stopping at ``end_value``: a fixed change per step, whatever the run's length.

    BERT-of-Theseus' curriculum p(t) = min(1, k·t + b) is ``Ramp(b, k, 1.0)``. ``slope`` must move
    from ``start_value`` towards ``end_value`` (negative to go down).
    """

    start_value: float
    slope: float
    end_value: float

    def __post_init__(self) -> None:
        if self.slope == 0 or (self.end_value - self.start_value) * self.slope < 0:
            raise ConfigError(f"a ramp schedule's slope {self.slope} does not lead from start_value "
                              f"{self.start_value} to end_value {self.end_value}; give a slope of the sign of "
                              f"end_value − start_value.")

    def __call__(self, step: int, total_steps: int | None = None) -> float:
        value = self.start_value + self.slope * step
        return float(min(value, self.end_value) if self.slope > 0 else max(value, self.end_value))


Schedule = Union[Constant, Linear, Cosine, Piecewise, Ramp]
SCHEDULES = {"constant": Constant, "linear": Linear, "cosine": Cosine, "piecewise": Piecewise, "ramp": Ramp}
Scalar = Union[float, int, Schedule]


def value_at(value: Scalar, step: int, total_steps: int | None = None) -> float:
    """The value of a number or schedule at ``step``."""
    return float(value) if isinstance(value, (int, float)) else value(step, total_steps)


def schedule_from_dict(data: dict, *, path: str = "schedule") -> Schedule:
    """``{"schedule": "linear", "start_value": 0.3, "end_value": 1.0}`` -> ``Linear(...)``."""
    data = dict(data)
    kind = data.pop("schedule", None)
    if kind not in SCHEDULES:
        raise unknown_choice(f"{path}.schedule", "schedule", str(kind), SCHEDULES)
    cls = SCHEDULES[kind]
    try:
        if kind == "piecewise":
            return cls(tuple(data.pop("boundaries")), tuple(data.pop("values")), **data)
        return cls(**data)
    except (TypeError, KeyError) as exc:
        fields = ", ".join(cls.__dataclass_fields__)
        raise ConfigError(f"{path}: bad arguments for a '{kind}' schedule ({exc}); it takes {fields}.") from None
    except ConfigError as exc:  # the schedule's own check, e.g. a ramp's slope
        raise ConfigError(f"{path}: {exc}") from None


def schedule_to_dict(value: Scalar) -> float | dict:
    if isinstance(value, (int, float)):
        return value
    name = next(k for k, v in SCHEDULES.items() if isinstance(value, v))
    return {"schedule": name, **asdict(value)}


def maybe_schedule(value: object, *, path: str) -> object:
    """Turn schedule dicts found in config values into schedules; leave everything else."""
    if isinstance(value, dict) and "schedule" in value:
        return schedule_from_dict(value, path=path)
    return value
