"""LayerDrop: structured dropout of whole transformer blocks, so a model can be cut shallower later.

Fan, Grave & Joulin (2019), *Reducing Transformer Depth on Demand with Structured Dropout*: in
training, each block is skipped with probability ``p`` (its output is its input); at inference all
blocks run. A model trained this way loses little when whole layers are removed afterwards, so
one training run serves several depths (``keep_layers(model, "every_other")`` after ``p=0.5``).

How it is done: each block of the model's block list (:func:`kdistill.models.find_layer_list`)
gets an instance-level ``forward`` that either calls the block's own forward or returns the
hidden states unchanged. The block keeps its class, its parameters and its name, so

- the state dict, checkpoints, ``freeze`` patterns and ``save_pretrained`` see no difference;
- transformers' output recorders (hooks on the block class, which collect ``hidden_states``)
  still fire, so ``hidden_states`` keeps ``num_layers + 1`` entries — a skipped block's entry
  equals its input;
- :func:`disable_layerdrop` deletes the override and leaves no trace.

A skipped block computes no attention, so attention features of a skipped block do not exist in
that step (attention matches on a LayerDrop student fail in train mode; hidden-state and logit
matches work). Under DistributedDataParallel a skipped block has unused parameters: seed every
rank alike (the draws use torch's global generator, so equal seeds drop the same blocks on every
rank) or set ``find_unused_parameters=True``.
"""

from __future__ import annotations

import types
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kdistill.errors import ConfigError
from kdistill.models import find_layer_list, student_from_teacher

_STATE = "_kdistill_layerdrop"


@dataclass
class LayerDropState:
    """Per block: the drop probability, what its forward returns, and counters (calls in train mode, skips)."""

    p: float
    inner_forward: Any = None  # an instance-level forward that was there before (accelerate hooks …)
    output_kind: str | None = None  # "tensor" or "tuple:<n>"; learnt from the block's first real output
    train_calls: int = 0
    skipped: int = 0


def _identity_output(kind: str, hidden_states: torch.Tensor) -> Any:
    if kind == "tensor":
        return hidden_states
    length = int(kind.split(":")[1])
    return (hidden_states,) + (None,) * (length - 1)


def _output_kind(output: Any) -> str | None:
    if isinstance(output, torch.Tensor):
        return "tensor"
    if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
        return f"tuple:{len(output)}"
    return None  # a format we cannot imitate: this block is never skipped


def _layerdrop_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    state: LayerDropState = self.__dict__[_STATE]
    inner = state.inner_forward if state.inner_forward is not None else types.MethodType(type(self).forward, self)
    if self.training and state.p > 0:
        state.train_calls += 1
        # Drawn on every training call (also before the output format is known), so the random
        # stream does not depend on what the block returned.
        drop = bool(torch.rand(()) < state.p)
        hidden_states = args[0] if args else kwargs.get("hidden_states")
        if drop and state.output_kind is not None and isinstance(hidden_states, torch.Tensor):
            state.skipped += 1
            return _identity_output(state.output_kind, hidden_states)
    output = inner(*args, **kwargs)
    if state.output_kind is None:
        state.output_kind = _output_kind(output) or "unsupported"
    return output


def enable_layerdrop(model: nn.Module, p: float) -> nn.ModuleList:
    """Make every block of ``model`` skip itself with probability ``p`` in train mode; returns the block list.

    In eval mode every block runs. Calling it again changes ``p`` (counters restart). A block's
    output format (a tensor for BERT in transformers 5, a tuple in older versions and some other
    models) is learnt from its first real call; until then the block is not skipped.
    """
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
        raise ConfigError(f"layerdrop: p={p!r} must be a probability in [0, 1).")
    _, blocks = find_layer_list(model)
    for block in blocks:
        previous = block.__dict__.get(_STATE)
        if previous is not None:
            inner = previous.inner_forward
        else:
            inner = block.__dict__.get("forward")  # keep another wrapper's instance forward underneath ours
        block.__dict__[_STATE] = LayerDropState(p=float(p), inner_forward=inner)
        block.forward = types.MethodType(_layerdrop_forward, block)
    return blocks


def disable_layerdrop(model: nn.Module) -> int:
    """Remove LayerDrop from every module of ``model``; returns how many blocks had it."""
    removed = 0
    for module in model.modules():
        state = module.__dict__.pop(_STATE, None)
        if state is None:
            continue
        removed += 1
        if state.inner_forward is not None:
            module.forward = state.inner_forward
        else:
            module.__dict__.pop("forward", None)
    return removed


def layerdrop_stats(model: nn.Module) -> list[LayerDropState | None]:
    """Per block: its :class:`LayerDropState` (``train_calls``, ``skipped``, ``p``), or None without LayerDrop."""
    _, blocks = find_layer_list(model)
    return [block.__dict__.get(_STATE) for block in blocks]


def parse_keep_layers(spec: str | Sequence[int], num_layers: int, *, where: str = "--keep-layers") -> list[int]:
    """``"0,2,4"``, ``[0, 2, 4]`` or ``"every_other"`` (layers 0, 2, 4 …) → checked layer indices."""
    if isinstance(spec, str):
        text = spec.strip().replace("-", "_")
        if text in ("every_other", "everyother", "even"):
            return list(range(0, num_layers, 2))
        if text == "odd":
            return list(range(1, num_layers, 2))
        try:
            layers = [int(part) for part in spec.split(",") if part.strip()]
        except ValueError:
            raise ConfigError(
                f"{where}: '{spec}' is neither a comma-separated list of layer indices (0,2,4) nor 'every_other'."
            ) from None
    else:
        layers = list(spec)
    if not layers:
        raise ConfigError(f"{where}: keep at least one layer.")
    for index in layers:
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < num_layers:
            raise ConfigError(f"{where}: layer {index!r} is out of range: the model has {num_layers} layers (0–{num_layers - 1}).")
    if len(set(layers)) != len(layers):
        raise ConfigError(f"{where}: layer indices {layers} repeat; list each kept layer once.")
    return layers


def keep_layers(model: nn.Module, layers: str | Sequence[int]) -> nn.Module:
    """A copy of ``model`` with only the blocks ``layers`` (indices, ``"0,2,4"`` or ``"every_other"``).

    The copy has no LayerDrop (prune a LayerDrop-trained model for serving); ``model`` is unchanged.
    The config's layer count follows, so the result saves and reloads with ``save_pretrained``.
    """
    _, blocks = find_layer_list(model)
    chosen = parse_keep_layers(layers, len(blocks))
    pruned = student_from_teacher(model, chosen)
    disable_layerdrop(pruned)
    pruned.train(model.training)
    return pruned


__all__ = [
    "LayerDropState",
    "disable_layerdrop",
    "enable_layerdrop",
    "keep_layers",
    "layerdrop_stats",
    "parse_keep_layers",
]
