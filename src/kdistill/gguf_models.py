"""Hugging Face model folders made once from GGUF files (llama.cpp's one-file format).

transformers reads a GGUF file (``from_pretrained(folder, gguf_file=…)``) by de-quantising every
tensor to float32, but refuses to ``save_pretrained`` the result, and the read takes tens of seconds.
:func:`converted_folder` does it once: the weights go into a plain model built from the same config,
saved with the tokenizer (chat template included) into ``<cache>/models/<name>-<key>``, where the key
fingerprints the GGUF file's bytes. Later calls return that folder, which loads like any other.

A folder is reused only when its ``kdistill-gguf.json`` (written last, inside the atomic write) names
the same key and every file it lists has the size it recorded; anything else is converted again.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

from kdistill.errors import MissingDependencyError
from kdistill.files import atomic_folder, atomic_write_text, cache_root, fingerprint

GGUF_INSTALL = "pip install gguf  (or: pip install 'kdistill[lm]')"
MARKER = "kdistill-gguf.json"
# Bumped when the conversion changes, so folders made by an older one are not reused.
_CONVERSION = 1


def require_gguf(what: str) -> None:
    """A :class:`MissingDependencyError` naming the install command when ``gguf`` is absent."""
    if importlib.util.find_spec("gguf") is None:
        raise MissingDependencyError(
            f"{what} is stored as a GGUF file, and reading it needs the 'gguf' package, which is not "
            f"installed (an optional extra of kdistill). Install with: {GGUF_INSTALL}"
        )


def tensor_types(gguf_file: Path) -> dict[str, int]:
    """How many tensors of each GGML type the file holds, e.g. ``{'Q4_1': 210, 'F32': 61, 'Q8_0': 1}``."""
    require_gguf(str(gguf_file))
    from collections import Counter

    from gguf import GGUFReader

    return dict(Counter(tensor.tensor_type.name for tensor in GGUFReader(gguf_file).tensors))


def converted_folder(gguf_file: Path, name: str) -> Path:
    """The Hugging Face folder of ``gguf_file`` in kdistill's cache, converted now if absent or incomplete."""
    key = fingerprint(gguf_file, _CONVERSION)
    folder = cache_root() / "models" / f"{name}-{key}"
    if _complete(folder, key):
        return folder
    require_gguf(name)
    print(f"kdistill: converting {gguf_file.name} to a Hugging Face folder (once; it takes up to a minute): "
          f"{folder}", file=sys.stderr, flush=True)
    model, tokenizer = load_gguf(gguf_file)
    from kdistill.models import save_pretrained

    with atomic_folder(folder) as tmp:
        save_pretrained(model, tmp)
        tokenizer.save_pretrained(tmp)
        files = {path.name: path.stat().st_size for path in sorted(tmp.iterdir()) if path.is_file()}
        marker = {"key": key, "gguf": gguf_file.name, "files": files}
        atomic_write_text(tmp / MARKER, json.dumps(marker, indent=1) + "\n")
    return folder


def load_gguf(gguf_file: Path) -> tuple[Any, Any]:
    """``(model, tokenizer)`` read from a GGUF file, the model rebuilt as a plain (savable) float32 one."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    settings = loaded.config.to_dict()
    settings.pop("quantization_config", None)  # it marks the model as GGUF-loaded, which cannot be saved
    settings.pop("_model_name_or_path", None)
    config = type(loaded.config).from_dict(settings)
    model = AutoModelForCausalLM.from_config(config, dtype=loaded.dtype)
    model.load_state_dict(loaded.state_dict())
    model.eval()
    # The GGUF tokenizer has no length limit; the model's context is its limit (SmolLM2: 8,192 tokens).
    tokenizer.model_max_length = config.max_position_embeddings
    return model, tokenizer


def _complete(folder: Path, key: str) -> bool:
    """Whether ``folder`` is a finished conversion of the GGUF file with this key."""
    try:
        marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
        files = marker["files"]
        return marker["key"] == key and bool(files) and all(
            (folder / name).is_file() and (folder / name).stat().st_size == size for name, size in files.items()
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


__all__ = ["GGUF_INSTALL", "MARKER", "converted_folder", "load_gguf", "require_gguf", "tensor_types"]
