"""LoRA students: low-rank adapters trained through ``peft``, merged into the weights when saved.

    student: {path: small-lm, lora: {r: 8, alpha: 16, dropout: 0.05, target_modules: [q_proj, v_proj]}}

:func:`add_lora` injects the adapters into the student in place (``peft.inject_adapter_in_model``): the
student stays its own Hugging Face class, so refs, adapters, checkpoints and the Trainer see a plain
model whose only trainable parameters are the adapters' (``lora_A``/``lora_B``); every other
parameter is frozen. ``training.freeze`` applies on top of that (a wrapped layer's weight is then
named ``….base_layer.weight``). :func:`merge_lora` folds each adapter into the weight it adapts and puts
the plain layer back, so the saved ``student/`` is an ordinary Hugging Face folder that loads (and
exports) without ``peft``. The optional extra: ``pip install 'kdistill[peft]'``.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from torch import nn

from kdistill.errors import ConfigError, MissingDependencyError

INSTALL = "pip install 'kdistill[peft]'"


def require_peft(where: str = "student.lora") -> None:
    """A MissingDependencyError naming the extra when ``peft`` is not installed."""
    if importlib.util.find_spec("peft") is None:
        raise MissingDependencyError(f"{where}: LoRA students are trained through the 'peft' package, which is not "
                                     f"installed: {INSTALL} (or pip install peft).")


def add_lora(model: nn.Module, spec: Any, where: str = "student.lora") -> str:
    """Inject LoRA adapters (``spec``: r, alpha, dropout, target_modules) into ``model`` in place and freeze
    everything else; returns a line for the plan (what was wrapped, how many parameters train)."""
    require_peft(where)
    import peft

    config = peft.LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                             target_modules=spec.target_modules)
    try:
        peft.inject_adapter_in_model(config, model)
    except ValueError as exc:
        raise ConfigError(f"{where}.target_modules: {spec.target_modules!r} does not fit the student "
                          f"({type(model).__name__}): {exc} Name its linear layers (e.g. [q_proj, v_proj]) or use "
                          "'all-linear'.") from None
    wrapped = sorted({name.rsplit(".", 1)[-1] for name, _ in _lora_layers(model)})
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return (f"LoRA r={spec.r}, alpha {spec.alpha:g} on {', '.join(wrapped)}: {trainable:,} of {total:,} parameters "
            "train (the adapters); merged into the weights when saved")


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA adapter of ``model`` into the weight it adapts and put the plain layer back, in
    place; ``model`` (unchanged when it has none)."""
    for name, layer in _lora_layers(model):
        layer.merge()
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer.get_base_layer())
    return model


def has_lora(model: nn.Module) -> bool:
    return bool(_lora_layers(model))


def _lora_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    if importlib.util.find_spec("peft") is None:
        return []
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [(name, module) for name, module in model.named_modules() if isinstance(module, BaseTunerLayer)]


__all__ = ["INSTALL", "add_lora", "has_lora", "merge_lora", "require_peft"]
