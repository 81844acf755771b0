"""Error classes. Every error a user can cause is a KdistillError with a sentence they can act on."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class KdistillError(Exception):
    """Base class of every error kdistill raises on purpose (the CLI prints these without a traceback)."""


class ConfigError(KdistillError, ValueError):
    """A configuration value is wrong. The message names the config path, the value and the valid choices."""


class RefError(ConfigError):
    """A feature reference (``hidden.4``, ``attn.-1``, ``module:encoder.layer.0``) is malformed or out of range."""


class ShapeError(KdistillError, ValueError):
    """Two tensors of a match cannot be compared (e.g. widths differ and no projection was configured)."""


class FeatureError(KdistillError, RuntimeError):
    """A model did not produce a feature a match needs (e.g. SDPA attention returned no weights)."""


class NonFiniteLossError(KdistillError, FloatingPointError):
    """A loss part became NaN or infinite; the message names the part."""


class DataError(KdistillError, ValueError):
    """Input data is missing, empty or lacks a configured column."""


class CheckpointError(KdistillError, RuntimeError):
    """A checkpoint is missing, corrupted or does not fit the run."""


class MissingDependencyError(KdistillError, ImportError):
    """An optional extra (onnx, onnxruntime, gguf) is needed and not installed; the message says how to install it."""


def suggest(value: str, choices: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` when a close match exists, else ``""``."""
    close = difflib.get_close_matches(str(value), list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def unknown_choice(path: str, kind: str, value: str, choices: Iterable[str]) -> ConfigError:
    """The standard 'unknown X' error: path, bad value, suggestion, sorted valid choices."""
    choices = sorted(choices)
    return ConfigError(
        f"{path}: unknown {kind} '{value}'{suggest(value, choices) or '.'} Available: {', '.join(choices)}."
    )
