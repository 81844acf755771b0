"""What the teacher cache is keyed by: the teacher's weights, the data's token ids, and collators that
must not draw random masks (:mod:`kdistill.cache`)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Subset

from kdistill.errors import ConfigError

_RANDOM_COLLATORS = ("DataCollatorForLanguageModeling", "DataCollatorForWholeWordMask")

# ---------------------------------------------------------------------------------------------
# Fingerprints


def _hash_tensor(digest: Any, name: str, tensor: Tensor) -> None:
    tensor = tensor.detach().to("cpu").contiguous()
    digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
    if tensor.numel():
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())


def teacher_fingerprint(model: nn.Module) -> str:
    """Hash of the model's class, config and every state-dict tensor (weights and buffers)."""
    digest = hashlib.blake2b(digest_size=20)
    digest.update(f"{type(model).__module__}.{type(model).__qualname__}|".encode())
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        plain = {k: v for k, v in config.to_dict().items()
                 if not k.startswith("_") and k not in ("output_attentions", "output_hidden_states",
                                                        "return_dict", "attn_implementation",
                                                        "transformers_version", "torch_dtype", "dtype")}
        digest.update(json.dumps(plain, sort_keys=True, default=str).encode())
    from kdistill.embedding import pooling_of

    pooling = pooling_of(model)  # an embedding teacher's pooling changes what 'embedding' stores
    if pooling is not None:
        digest.update(f"pooling={pooling}|".encode())
    for name, tensor in sorted(model.state_dict().items()):
        _hash_tensor(digest, name, tensor)
    return digest.hexdigest()


def _base_dataset(dataset: Any) -> tuple[Any, np.ndarray | None]:
    """The dataset whose items carry ``index`` and, for a ``Subset``, the base indices it draws."""
    indices = None
    while isinstance(dataset, Subset):
        inner = np.asarray(dataset.indices, dtype=np.int64)
        indices = inner if indices is None else inner[indices]
        dataset = dataset.dataset
    return dataset, indices


def data_fingerprint(dataset: Any) -> tuple[str, dict]:
    """Hash of the token ids of every example, and the tokenisation settings that shaped them.

    A :class:`kdistill.data.TokenizedDataset` or :class:`kdistill.lm_data.LMDataset` is hashed from its
    flat arrays (fast); any other dataset item by item (every list, array or tensor value of every item).
    """
    base, indices = _base_dataset(dataset)
    digest = hashlib.blake2b(digest_size=20)
    settings: dict[str, Any] = {"dataset": type(base).__name__, "examples": len(base)}
    encoded = getattr(base, "teacher", None)
    if encoded is not None and hasattr(encoded, "input_ids") and hasattr(encoded, "offsets"):
        digest.update(np.ascontiguousarray(encoded.input_ids).tobytes())
        digest.update(np.ascontiguousarray(encoded.offsets).tobytes())
        if getattr(encoded, "token_type_ids", None) is not None:
            digest.update(np.ascontiguousarray(encoded.token_type_ids).tobytes())
        settings.update(max_length=getattr(base, "max_length", None),
                        pad_token_id=getattr(base, "pad_token_id", None),
                        token_type_ids=bool(getattr(encoded, "has_token_type_ids", False)))
    elif all(isinstance(getattr(base, name, None), np.ndarray) for name in ("input_ids", "labels", "offsets")):
        # A causal-LM dataset (kdistill.lm_data.LMDataset): flat token ids, labels (its loss masks), offsets.
        for name in ("input_ids", "labels", "offsets"):
            digest.update(f"{name}|".encode() + np.ascontiguousarray(getattr(base, name)).tobytes())
    else:
        for position in range(len(base)):
            item = base[position]
            values = item.items() if isinstance(item, Mapping) else enumerate(item)
            for key, value in sorted(values, key=lambda kv: str(kv[0])):
                if key == "student_inputs":
                    continue
                array = np.asarray(value.detach().cpu() if isinstance(value, Tensor) else value)
                digest.update(f"{position}|{key}|{array.dtype}|{array.shape}|".encode())
                digest.update(np.ascontiguousarray(array).tobytes())
    if indices is not None:
        digest.update(b"subset|" + indices.tobytes())
        settings["subset"] = len(indices)
    return digest.hexdigest(), settings


def _example_lengths(dataset: Any) -> np.ndarray:
    """Each example's token count (the teacher's encoding); 1 for examples without tokens."""
    encoded = getattr(dataset, "teacher", None)
    if encoded is not None and hasattr(encoded, "lengths"):
        return np.asarray(encoded.lengths, dtype=np.int64)
    lengths = []
    for position in range(len(dataset)):
        item = dataset[position]
        ids = item.get("input_ids") if isinstance(item, Mapping) else None
        lengths.append(len(ids) if ids is not None else 1)
    return np.asarray(lengths, dtype=np.int64)


def check_deterministic(*objects: Any) -> None:
    """Refuse inputs that differ each time an example is drawn (see the module docstring)."""
    for obj in objects:
        seen = set()
        while obj is not None and id(obj) not in seen:
            seen.add(id(obj))
            name = type(obj).__name__
            if getattr(obj, "deterministic", True) is False or getattr(obj, "random_augmentation", False) is True:
                raise ConfigError(
                    f"cache: {name} marks its examples as random (deterministic = False or "
                    "random_augmentation = True), so the teacher's answer changes every epoch and a "
                    "cache would serve stale targets. Run without 'cache: teacher', or augment offline "
                    "so each example is fixed."
                )
            if any(cls.__name__ in _RANDOM_COLLATORS for cls in type(obj).__mro__):
                raise ConfigError(
                    f"cache: the collator {name} masks tokens at random on the fly, so the teacher "
                    "sees different inputs every epoch and cannot be cached. Run without "
                    "'cache: teacher', or mask once offline and keep the masked ids in the data."
                )
            obj = getattr(obj, "dataset", None)
