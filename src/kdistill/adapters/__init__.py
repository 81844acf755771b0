"""Adapters turn ``(model, batch)`` into :class:`~kdistill.features.Features`, picked automatically.

- any Hugging Face ``PreTrainedModel``: :class:`HFAdapter` reads the ``ModelOutput`` and asks for
  exactly the outputs the matches need (attention weights only when a match reads them);
- any other ``nn.Module``: :class:`ModuleAdapter`, forward hooks by module path (``module:layer2``);
- a user function ``(model, batch) -> Features | dict``: :class:`FunctionAdapter`, the escape hatch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from torch import nn

from kdistill.adapters.base import FunctionAdapter, ModuleAdapter, model_inputs
from kdistill.adapters.hf import HFAdapter, is_hf_model
from kdistill.refs import Ref

__all__ = ["FunctionAdapter", "HFAdapter", "ModuleAdapter", "make_adapter", "is_hf_model", "model_inputs"]


def make_adapter(
    model: nn.Module,
    refs: Iterable[Ref],
    adapter: Callable | None = None,
    *,
    attention: str = "auto",
    where: str = "model",
):
    """The adapter for ``model`` that can produce every ref in ``refs`` (checked now, not mid-run)."""
    refs = list(refs)
    if adapter is not None:
        return FunctionAdapter(model, refs, adapter, where=where)
    if is_hf_model(model):
        return HFAdapter(model, refs, attention=attention, where=where)
    return ModuleAdapter(model, refs, where=where)
