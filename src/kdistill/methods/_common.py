"""Helpers the method recipes share: layer counts, head counts and widths from models or options."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from torch import nn

from kdistill.errors import ConfigError, unknown_choice
from kdistill.schedules import SCHEDULES, Constant, Cosine, Linear, Piecewise, Ramp, Scalar


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def layer_count(model: nn.Module | None, option: int | None, *, role: str, method: str) -> int:
    """The number of blocks of ``model`` (teacher, student, …), or ``option`` when no model is given.

    A model and a disagreeing option is an error rather than a silent choice.
    """
    if model is not None:
        from kdistill.models import block_count

        count = block_count(model)
        if option is not None and option != count:
            raise ConfigError(f"method_args.{role}_layers: {option!r}, but the {role} model has {count} layers; "
                              f"leave the option out when the model is given.")
        return count
    if option is None:
        raise ConfigError(f"{method}: cannot tell how many layers the {role} has: give the {role} model "
                          f"or the option '{role}_layers'.")
    if not _is_count(option):
        raise ConfigError(f"method_args.{role}_layers: {method} expects a positive integer, got {option!r}.")
    return option


def head_count(model: nn.Module | None, option: int | None, *, role: str, method: str,
               required: bool = True) -> int | None:
    """Attention heads of ``model`` (from its config), else ``option``."""
    if model is not None:
        from kdistill.adapters.hf import hf_num_heads

        count = hf_num_heads(model)
        if count is not None:
            if option is not None and option != count:
                raise ConfigError(f"method_args.{role}_heads: {option!r}, but the {role} model has {count} "
                                  f"attention heads; leave the option out when the model is given.")
            return count
    if option is None:
        if not required:
            return None
        raise ConfigError(f"{method}: cannot tell how many attention heads the {role} has: give the {role} "
                          f"model or the option '{role}_heads'.")
    if not _is_count(option):
        raise ConfigError(f"method_args.{role}_heads: {method} expects a positive integer, got {option!r}.")
    return option


WIDTH_KEYS = ("hidden_size", "n_embd", "dim", "d_model")


def hidden_width(model: nn.Module | None) -> int | None:
    """The hidden width a Hugging Face config declares (``hidden_size``, ``n_embd``, ``dim`` …)."""
    config = getattr(model, "config", None)
    for key in WIDTH_KEYS:
        value = getattr(config, key, None)
        if _is_count(value):
            return value
    return None


def check_choice(method: str, option: str, value: object, choices: Iterable[str]) -> str:
    choices = list(choices)
    if value not in choices:
        raise unknown_choice(f"method_args.{option}", f"{method} {option.replace('_', ' ')}", str(value), choices)
    return value  # type: ignore[return-value]


def check_fraction(method: str, option: str, value: object) -> float:
    """A fraction of the run in [0, 1], returned as a float (an int 1 would mean *step* 1 to a Match)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ConfigError(f"method_args.{option}: {method} expects a fraction of the run between 0 and 1, "
                          f"got {value!r}.")
    return float(value)


def check_layer_list(method: str, option: str, layers: object, count: int) -> list[int]:
    """A list of 0-based block indices of a model with ``count`` blocks."""
    if not isinstance(layers, (list, tuple)) or not layers:
        raise ConfigError(f"method_args.{option}: {method} expects a non-empty list of 0-based layer indices, "
                          f"got {layers!r}.")
    for position, index in enumerate(layers):
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
            raise ConfigError(f"method_args.{option}[{position}]: {index!r} is not a layer of the teacher "
                              f"(0–{count - 1}).")
    return list(layers)


def one_minus(value: Scalar) -> Scalar:
    """1 − value for a number or a schedule, as the same kind of schedule (so ``to_dict`` can print it)."""
    if isinstance(value, (int, float)):
        return 1.0 - value
    if isinstance(value, Constant):
        return Constant(1.0 - value.value)
    if isinstance(value, (Linear, Cosine)):
        return dataclasses.replace(value, start_value=1.0 - value.start_value, end_value=1.0 - value.end_value)
    if isinstance(value, Piecewise):
        return Piecewise(value.boundaries, tuple(1.0 - v for v in value.values))
    if isinstance(value, Ramp):
        return Ramp(1.0 - value.start_value, -value.slope, 1.0 - value.end_value)
    raise ConfigError(f"cannot take 1 − {value!r}: give a number or a kdistill schedule "
                      f"({', '.join(SCHEDULES)}).")
