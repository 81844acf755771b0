"""Valid ranges of hyper-parameters, declared where a loss or method is registered.

    @register_loss(ranges={"temperature": TEMPERATURE, "t2_scale": FLAG})
    def kl(student, teacher, *, temperature=1.0, ...): ...

A :class:`Range` bounds a number (or a schedule); a :class:`OneOf` lists the valid values of an
option (``FLAG``: true or false). Structured options (lists of layers, mappings) are checked by
the method itself, which sees the models. :func:`argument_problems` checks a call's arguments
against the declared ranges; ``kdistill validate`` (the config checker) and the runtime
(``methods.expand``, the Distiller binding a match's loss) both use it, so what ``validate``
refuses never runs from Python either. A schedule is in range when every value it takes is: its
``start_value`` and ``end_value`` (linear, cosine), ``value`` (constant) or each of ``values``
(piecewise) — the extremes over any run.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kdistill.errors import ConfigError, suggest
from kdistill.schedules import SCHEDULES, Constant, Piecewise, Schedule

_ATTRIBUTE = "__kdistill_ranges__"


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class Range:
    """Numbers from ``low`` to ``high`` (None: unbounded); ``*_open`` excludes the bound itself.

    integer: whole numbers only (a count, an index, a seed), never a schedule. why: what the
    parameter means, said in the error so the user sees why the bound is there.
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False
    why: str = ""

    def describe(self) -> str:
        """E.g. "between 0 and 1", "greater than 0", "a whole number, at least 1"."""
        low = None if self.low is None else ("greater than " if self.low_open else "at least ") + _number(self.low)
        high = None if self.high is None else ("less than " if self.high_open else "at most ") + _number(self.high)
        if low and high and not (self.low_open or self.high_open):
            bounds = f"between {_number(self.low)} and {_number(self.high)}"
        else:
            bounds = " and ".join(b for b in (low, high) if b)
        if self.integer:
            return "a whole number" + (f", {bounds}" if bounds else "")
        return bounds or "a finite number"

    def _because(self) -> str:
        return f" ({self.why})" if self.why else ""

    def _in_range(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def problem(self, value: Any, where: str) -> str | None:
        """The sentence saying why ``value`` is not valid at config path ``where``; None when it is."""
        if isinstance(value, tuple(SCHEDULES.values())):
            if self.integer:
                return f"{where}: expected {self.describe()}, not a schedule{self._because()}."
            for field, number in schedule_values(value):
                found = self.problem(number, f"{where}.{field}")
                if found:
                    return found
            return None
        if callable(value) and not self.integer:
            return None  # a user's own schedule function: only its calls give numbers
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return (f"{where}: expected {'a whole number' if self.integer else 'a number or a schedule'}, got "
                    f"{value!r}; it must be {self.describe()}{self._because()}.")
        if self.integer and not isinstance(value, int):
            return f"{where}: {_number(value)} is not a whole number; it must be {self.describe()}{self._because()}."
        if not self._in_range(value):
            return f"{where}: {_number(value)} is out of range; it must be {self.describe()}{self._because()}."
        return None


@dataclass(frozen=True)
class OneOf:
    """One of a fixed set of values (a string option such as ``task``, or true/false)."""

    choices: tuple
    why: str = ""

    def describe(self) -> str:
        return "one of " + ", ".join(str(c).lower() if isinstance(c, bool) else str(c) for c in self.choices)

    def problem(self, value: Any, where: str) -> str | None:
        # bool is an int: True must not pass for 1 (nor 1 for True)
        if any(value is c or (type(value) is type(c) and value == c) for c in self.choices):
            return None
        words = [str(c) for c in self.choices]
        hint = suggest(value, words) if isinstance(value, str) else None
        because = f" ({self.why})" if self.why else ""
        return f"{where}: {value!r} is not valid{hint or '.'} It must be {self.describe()}{because}."


FLAG = OneOf((True, False))
POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)
PROBABILITY = Range(0, 1)
COUNT = Range(1, integer=True)
WHOLE = Range(integer=True)

TEMPERATURE = Range(0, low_open=True, why="the softmax temperature T; T = 0 divides by zero")
WEIGHT = Range(0, why="a weight multiplies its loss; a negative weight would train the student to maximise it")
LAYERS = Range(1, integer=True, why="a number of layers")
HEADS = Range(1, integer=True, why="a number of attention heads")
FRACTION = Range(0, 1, why="a fraction of the run")
ALPHA = Range(0, 1, why="the weight of the soft-target loss; the hard-label weight is 1 − alpha")


def schedule_values(schedule: Schedule) -> list[tuple[str, float]]:
    """(field, value) of the values a schedule moves between; every value it takes lies among or between them."""
    if isinstance(schedule, Constant):
        return [("value", schedule.value)]
    if isinstance(schedule, Piecewise):
        return [(f"values[{i}]", v) for i, v in enumerate(schedule.values)]
    return [("start_value", schedule.start_value), ("end_value", schedule.end_value)]


def declare(obj: Callable, ranges: Mapping[str, Range | OneOf]) -> None:
    """Attach ``ranges`` (parameter name -> Range) to ``obj``; every name must be one of its parameters."""
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        params = None
    unknown = [name for name in ranges if params is not None and name not in params]
    if unknown:
        raise ConfigError(f"ranges for {getattr(obj, '__name__', obj)!r} name no parameter of it: "
                          f"{', '.join(unknown)}; its parameters are: {', '.join(params)}.")
    setattr(obj, _ATTRIBUTE, {**declared(obj), **ranges})


def declared(obj: object) -> dict[str, Range | OneOf]:
    """The ranges declared for ``obj`` (empty when none were)."""
    return dict(getattr(obj, _ATTRIBUTE, None) or {})


def argument_problems(obj: object, args: Mapping[str, Any], where: str) -> list[str]:
    """Every argument of ``args`` outside the range declared for it, as ``where.name: …`` sentences.

    None passes where None is the parameter's default (it means "work it out", e.g. from the model).
    """
    ranges = declared(obj)
    if not ranges:
        return []
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        params = {}
    problems = []
    for name, value in args.items():
        if name not in ranges:
            continue
        if value is None and name in params and params[name].default is None:
            continue
        problem = ranges[name].problem(value, f"{where}.{name}")
        if problem:
            problems.append(problem)
    return problems


def check_arguments(obj: object, args: Mapping[str, Any], where: str) -> None:
    """Raise one ConfigError listing every argument outside its declared range."""
    problems = argument_problems(obj, args, where)
    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        raise ConfigError(f"{len(problems)} arguments are out of range:\n" + "\n".join(f"  - {p}" for p in problems))


def check_value(spec: Range | OneOf, value: Any, where: str) -> None:
    """Raise a ConfigError when ``value`` is outside ``spec`` (a match's weight, the hard-label weight)."""
    problem = spec.problem(value, where)
    if problem:
        raise ConfigError(problem)


__all__ = ["ALPHA", "COUNT", "FLAG", "FRACTION", "HEADS", "LAYERS", "NON_NEGATIVE", "POSITIVE", "PROBABILITY",
           "TEMPERATURE", "WEIGHT", "WHOLE", "OneOf", "Range", "argument_problems", "check_arguments", "check_value",
           "declare", "declared", "schedule_values"]
