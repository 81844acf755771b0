"""Model outputs as the tuples pre-4.0 ``transformers`` returned, for adaptors written against them.

The adaptors in TextBrewer's and KnowledgeDistillation's examples unpack a model's output::

    last_hidden_state, pooler_output, hidden_states, attentions = model_outputs

Today a ``BertModel`` returns a ``ModelOutput``: a dict-like object whose unpacking walks its
*keys*; with attentions on it has five of them (an empty ``cross_attentions`` is included), and
the default SDPA attention returns *no* attention weights (``attentions == ()``). :class:`LegacyCaller`
calls the model itself and hands the adaptor a :class:`LegacyOutputs`: a real tuple of exactly the
values the old library returned — for ``BertModel`` ``(last_hidden_state, pooler_output,
hidden_states, attentions)``, hidden states and attentions present when the model's config asks
for them — that also answers ``out.pooler_output`` and ``out["pooler_output"]``.

Attention weights are computed from hooked query/key projections where that is exact (BERT-like
encoders; the model keeps its fast SDPA kernel), otherwise the model is switched to eager
attention. They are never an empty tuple: a model that produces none raises a FeatureError.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from kdistill.adapters.base import first_tensor, to_device
from kdistill.models import save_pretrained  # noqa: F401  (re-exported for compat users)
from kdistill.adapters.hf import (
    ATTENTION_MODES,
    attention_from_qk,
    find_projection,
    hf_num_heads,
    hooks_are_exact,
    is_causal_model,
    is_hf_model,
)
from kdistill.errors import ConfigError, FeatureError

# Output fields the pre-4.0 tuples never carried unless a model was used as a decoder.
_DECODER_ONLY_FIELDS = ("cross_attentions", "past_key_values", "cache")
# Keyword arguments the caller decides itself (a user's explicit value still wins, see __call__).
_OUTPUT_FLAGS = ("output_hidden_states", "output_attentions", "return_dict")


class LegacyOutputs(tuple):
    """A tuple of a model's output values, in the order old ``transformers`` returned them, with names.

    ``a, b, c, d = out`` unpacks the values; ``out[1]``, ``out["pooler_output"]``,
    ``out.pooler_output``, ``out.keys()``, ``out.get(name)`` and ``out.to_tuple()`` also work, so
    adaptors written for tuples and for ``ModelOutput`` both run unchanged.
    """

    def __new__(cls, items: Sequence[tuple[str, Any]]):
        items = list(items)
        self = super().__new__(cls, tuple(value for _, value in items))
        self._names = tuple(name for name, _ in items)
        return self

    def __getitem__(self, key):
        if isinstance(key, str):
            if key not in self._names:
                raise KeyError(f"'{key}' is not among this output's fields: {', '.join(self._names)}.")
            return tuple.__getitem__(self, self._names.index(key))
        return tuple.__getitem__(self, key)

    def __getattr__(self, name: str):
        names = self.__dict__.get("_names", ())
        if name in names:
            return tuple.__getitem__(self, names.index(name))
        raise AttributeError(f"LegacyOutputs has no field '{name}'; fields: {', '.join(names)}.")

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            return key in self._names
        return any(value is key for value in self)

    def keys(self) -> list[str]:
        return list(self._names)

    def values(self) -> list[Any]:
        return list(self)

    def items(self) -> list[tuple[str, Any]]:
        return list(zip(self._names, self))

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self._names else default

    def to_tuple(self) -> tuple:
        return tuple(self)

    def __reduce__(self):
        return (LegacyOutputs, (self.items(),))

    def __repr__(self) -> str:
        def describe(value):
            if isinstance(value, Tensor):
                return f"Tensor{tuple(value.shape)}"
            if isinstance(value, (tuple, list)):
                return f"{type(value).__name__} of {len(value)}"
            return type(value).__name__

        return "LegacyOutputs(" + ", ".join(f"{n}={describe(v)}" for n, v in self.items()) + ")"


class HookedAttentions(Sequence):
    """Attention probabilities of every block, computed from hooked queries/keys when first read.

    A read-only sequence (``len``, indexing, iteration, ``tuple(...)``): an adaptor that hands only
    three of twelve layers to its losses pays for three softmaxes, not twelve. Each block's map is
    ``softmax(q·kᵀ/√d + mask)`` of shape (B, H, T, T), computed once and kept.
    """

    def __init__(self, queries: Sequence[Tensor], keys: Sequence[Tensor], num_heads: int, mask: Tensor | None):
        self._queries, self._keys = list(queries), list(keys)
        self._num_heads, self._mask = num_heads, mask
        self._done: dict[int, Tensor] = {}

    def __len__(self) -> int:
        return len(self._queries)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return tuple(self[i] for i in range(*index.indices(len(self))))
        if not -len(self) <= index < len(self):
            raise IndexError(f"attention index {index} is out of range: the model has {len(self)} layers.")
        index %= len(self)
        if index not in self._done:
            scores = attention_from_qk(self._queries[index], self._keys[index], self._num_heads, self._mask)
            self._done[index] = scores.softmax(-1)
        return self._done[index]

    def __repr__(self) -> str:
        return f"HookedAttentions({len(self)} layers, {len(self._done)} computed)"


def split_batch(batch: object) -> tuple[tuple, dict]:
    """How the old libraries fed a batch: ``model(**batch)`` for a dict, ``model(*batch)`` for a sequence."""
    if isinstance(batch, Mapping):
        return (), dict(batch)
    if isinstance(batch, (tuple, list)):
        return tuple(batch), {}
    return (batch,), {}


class LegacyCaller:
    """Call ``model`` the way TextBrewer and KnowledgeDistillation did and return what their adaptors expect.

    Hugging Face models get a :class:`LegacyOutputs`; any other model's output is returned as is.
    Hidden states and attentions are included when the model's config asks for them
    (``output_hidden_states=True``, ``output_attentions=True``, as the seed article's configs do).

    attention: ``"auto"`` (hooked q/k where exact, else eager), ``"hooks"`` or ``"eager"``.
    Hooked attentions are the softmax probabilities *before* attention dropout; eager attention
    returns them after dropout in training mode (identical in eval mode).
    """

    def __init__(self, model: nn.Module, *, attention: str = "auto", where: str = "model"):
        if attention not in ATTENTION_MODES:
            raise ConfigError(f"{where}.attention: '{attention}' is not one of {', '.join(ATTENTION_MODES)}.")
        self.model = model
        self.where = where
        self.is_hf = is_hf_model(model)
        config = getattr(model, "config", None)
        self.want_hidden = bool(getattr(config, "output_hidden_states", False))
        self.want_attentions = bool(getattr(config, "output_attentions", False))
        self.attention_mode: str | None = None
        self._projections: list[tuple[nn.Module, nn.Module]] = []
        self._num_heads = hf_num_heads(model) if self.is_hf else None
        self._forward_signature = _signature(model)
        self._requested = attention
        if self.is_hf and self.want_attentions:
            self.attention_mode = self._pick_mode(attention)

    def _pick_mode(self, requested: str) -> str:
        # HookedAttentions has no causal mask and no fused-projection split: encoders only.
        exact = hooks_are_exact(self.model) and not is_causal_model(self.model)
        if requested == "hooks" and not exact:
            raise ConfigError(
                f"{self.where}: attention from hooked queries/keys is only exact for BERT-like encoders with "
                f"absolute positions, not '{getattr(self.model.config, 'model_type', '?')}'; use attention='eager'."
            )
        if requested in ("auto", "hooks") and exact:
            from kdistill.models import find_layer_list

            _, blocks = find_layer_list(self.model)
            for block in blocks:
                query, key = find_projection(block, "query"), find_projection(block, "key")
                if query is None or key is None:
                    break
                self._projections.append((query, key))
            else:
                return "hooks"
            self._projections.clear()
        if getattr(self.model.config, "_attn_implementation", "eager") != "eager":
            # SDPA and flash kernels return no attention weights; eager attention does.
            self.model.set_attn_implementation("eager")
        return "eager"

    def __call__(self, batch: object, **model_kwargs: Any):
        args, kwargs = split_batch(batch)
        kwargs.update(model_kwargs)
        if not self.is_hf:
            return self.model(*args, **kwargs)
        want_hidden = kwargs.pop("output_hidden_states", self.want_hidden)
        want_attentions = kwargs.pop("output_attentions", self.want_attentions)
        kwargs.pop("return_dict", None)
        if want_attentions and self.attention_mode is None:
            self.attention_mode = self._pick_mode(self._requested)
        use_hooks = bool(want_attentions) and self.attention_mode == "hooks"
        captured: dict[tuple[int, str], Tensor] = {}
        handles = []
        if use_hooks:
            for index, (query, key) in enumerate(self._projections):
                handles.append(query.register_forward_hook(_store(captured, (index, "query"))))
                handles.append(key.register_forward_hook(_store(captured, (index, "key"))))
        try:
            output = self.model(*args, **kwargs, output_hidden_states=bool(want_hidden),
                                output_attentions=bool(want_attentions) and not use_hooks, return_dict=True)
        finally:
            for handle in handles:
                handle.remove()
        if not isinstance(output, Mapping):
            return output
        attentions = None
        if want_attentions:
            if use_hooks:
                count = len(self._projections)
                attentions = HookedAttentions([captured[(i, "query")] for i in range(count)],
                                              [captured[(i, "key")] for i in range(count)],
                                              self._num_heads, self._attention_mask(args, kwargs))
            else:
                attentions = output.get("attentions")
            if not attentions:
                raise FeatureError(
                    f"{self.where}: the model returned no attention weights (an empty tuple) although its config "
                    "asks for them; its attention implementation drops them. kdistill switched it to eager "
                    "attention; a custom model must return attention probabilities itself."
                )
        return legacy_outputs(output, attentions=attentions, hidden=bool(want_hidden))

    def _attention_mask(self, args: tuple, kwargs: dict) -> Tensor | None:
        if self._forward_signature is None:
            return kwargs.get("attention_mask")
        try:
            bound = self._forward_signature.bind_partial(*args, **kwargs)
        except TypeError:
            return kwargs.get("attention_mask")
        mask = bound.arguments.get("attention_mask")
        if not isinstance(mask, Tensor):
            return None
        if mask.dim() != 2:
            raise FeatureError(f"{self.where}: hooked attention needs a (batch, tokens) attention_mask, got shape "
                               f"{tuple(mask.shape)}; pass attention='eager' to the distiller.")
        return mask


def legacy_outputs(output: Mapping, *, attentions: tuple | None, hidden: bool) -> LegacyOutputs:
    """The old-style tuple of ``output``'s values in field order: no decoder-only fields, no empty tuples."""
    names = [f.name for f in dataclasses.fields(output)] if dataclasses.is_dataclass(output) else list(output)
    items = []
    for name in names:
        if name == "attentions":
            if attentions is not None:
                items.append((name, attentions if isinstance(attentions, HookedAttentions) else tuple(attentions)))
            continue
        value = output.get(name)
        if value is None or (name == "hidden_states" and not hidden):
            continue
        if name in _DECODER_ONLY_FIELDS:
            continue
        if isinstance(value, tuple) and not value:
            continue
        items.append((name, tuple(value) if isinstance(value, (tuple, list)) else value))
    return LegacyOutputs(items)


def _store(captured: dict, key: tuple[int, str]):
    def hook(_module, _inputs, output):
        captured[key] = first_tensor(output)

    return hook


def _signature(model: nn.Module) -> inspect.Signature | None:
    try:
        return inspect.signature(model.forward)
    except (TypeError, ValueError):
        return None


move_to_device = to_device  # the public name of the compat layer

__all__ = [
    "HookedAttentions", "LegacyCaller", "LegacyOutputs", "legacy_outputs", "move_to_device", "save_pretrained",
    "split_batch",
]
