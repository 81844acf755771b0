"""Adapters for plain modules (forward hooks) and user functions, and the hook plumbing they share."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping

from torch import Tensor, nn

from kdistill.errors import ConfigError, DataError, FeatureError, RefError
from kdistill.features import Features, features_from_dict
from kdistill.refs import Ref

# Batch keys that are never model inputs.
NON_INPUT_KEYS = frozenset({"labels", "label", "index", "student_inputs", "teacher_features", "loss_mask"})


def first_tensor(output: object) -> Tensor:
    """The tensor a hooked module produced: itself, the first of a tuple, or ``ModelOutput[0]``."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping):
        output = tuple(output.values())
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise FeatureError(f"a hooked module returned {type(output).__name__}, not a tensor.")


class HookSet:
    """Forward hooks that store module outputs under a key, cleared after every forward pass."""

    def __init__(self) -> None:
        self.outputs: dict[str, Tensor] = {}
        self._handles: list = []

    def add(self, module: nn.Module, key: str, transform: Callable[[Tensor], Tensor] | None = None) -> None:
        def hook(_module, _inputs, output):
            tensor = first_tensor(output)
            self.outputs[key] = transform(tensor) if transform else tensor

        self._handles.append(module.register_forward_hook(hook))

    def take(self) -> dict[str, Tensor]:
        outputs, self.outputs = self.outputs, {}
        return outputs

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def get_submodule(model: nn.Module, path: str, *, where: str) -> nn.Module:
    """``model.get_submodule(path)`` with an error that lists close module names."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        names = [name for name, _ in model.named_modules() if name]
        import difflib

        close = difflib.get_close_matches(path, names, n=3, cutoff=0.5)
        hint = f" Close names: {', '.join(close)}." if close else f" Modules include: {', '.join(names[:8])} …"
        raise RefError(f"{where}: the model has no sub-module 'module:{path}'.{hint}") from None


def model_inputs(batch: object) -> tuple[tuple, dict]:
    """Split a batch into (args, kwargs) for ``model(...)``: dict batches lose non-input keys;
    ``{"inputs": x}`` and ``(x, y)`` tuples call ``model(x)``."""
    if isinstance(batch, Tensor):
        return (batch,), {}
    if isinstance(batch, (tuple, list)):
        return (batch[0],), {}
    if isinstance(batch, Mapping):
        if "inputs" in batch:
            return (batch["inputs"],), {}
        return (), {k: v for k, v in batch.items() if k not in NON_INPUT_KEYS}
    raise DataError(f"cannot feed a batch of type {type(batch).__name__} to a model: a batch must be a tensor, "
                    "an (inputs, labels) tuple or list, or a mapping of model inputs (input_ids, attention_mask, …).")


def to_device(batch: object, device: object) -> object:
    """Every tensor of a (nested) batch on ``device`` (``None``: left where it is). Dicts become dicts,
    lists and tuples keep their type (named tuples too); anything else is returned as it is."""
    if device is None:
        return batch
    if isinstance(batch, Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {key: to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, (tuple, list)):
        moved = [to_device(item, device) for item in batch]
        return type(batch)(*moved) if hasattr(batch, "_fields") else type(batch)(moved)
    return batch


def batch_mask(batch: object) -> Tensor | None:
    if isinstance(batch, Mapping):
        return batch.get("attention_mask")
    return None


def output_logits(output: object) -> Tensor | None:
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping):
        return output.get("logits")
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    return None


class ModuleAdapter:
    """Any ``nn.Module``: ``logits`` is what ``forward`` returns; ``module:PATH`` refs are forward hooks."""

    supported = ("logits", "module")

    def __init__(self, model: nn.Module, refs: Iterable[Ref], *, where: str = "model"):
        self.model = model
        self.hooks = HookSet()
        self.num_layers = None
        for ref in refs:
            if ref.kind == "module":
                module = get_submodule(model, ref.path, where=where)
                self.hooks.add(module, ref.path)
            elif ref.kind not in self.supported:
                raise RefError(
                    f"{where}: '{ref}' needs a Hugging Face model; for a plain nn.Module "
                    f"({type(model).__name__}) use 'logits' or 'module:<path>' "
                    f"(e.g. 'module:{_example_path(model)}')."
                )

    def __call__(self, batch: object) -> Features:
        args, kwargs = model_inputs(batch)
        output = self.model(*args, **kwargs)
        return Features(logits=output_logits(output), modules=self.hooks.take(), attention_mask=batch_mask(batch))


def _example_path(model: nn.Module) -> str:
    names = [name for name, _ in model.named_children()]
    return names[-1] if names else "layer"


class FunctionAdapter:
    """A user function ``(model, batch) -> Features | dict`` (see ``features_from_dict`` for dict keys)."""

    def __init__(self, model: nn.Module, refs: Iterable[Ref], function: Callable, *, where: str = "model"):
        if not callable(function):
            raise ConfigError(f"{where} adapter: expected a function (model, batch) -> Features or dict, got "
                              f"{type(function).__name__} {function!r}.")
        self.model = model
        self.function = function
        self.num_layers = None
        params = inspect.signature(function).parameters
        if len(params) < 2:
            name = getattr(function, "__name__", repr(function))
            raise ConfigError(f"{where} adapter: {name} takes ({', '.join(params)}), but an adapter function takes "
                              "(model, batch); see kdistill.adapters.")

    def __call__(self, batch: object) -> Features:
        result = self.function(self.model, batch)
        if isinstance(result, Features):
            features = result
        elif isinstance(result, Mapping):
            features = features_from_dict(dict(result))
        else:
            raise FeatureError(
                f"adapter function {getattr(self.function, '__name__', self.function)} returned "
                f"{type(result).__name__}; return Features or a dict (logits, hidden, attentions, pooled, …)."
            )
        if features.attention_mask is None:
            features.attention_mask = batch_mask(batch)
        return features

