"""Hugging Face ``datasets`` in: ``Dataset``/``DatasetDict`` objects and folders saved with ``save_to_disk``.

    data: {path: ./sst2}                 # a DatasetDict folder: its train/validation/test splits as they are
    data: {train: ./sst2/train, ...}     # a Dataset folder per split (format hf)

    config_from_dict({..., "data": {"path": dataset_dict}})   # Python: the objects themselves

An object given in a config (Python API) is saved once with ``save_to_disk`` under
``<cache>/datasets/<content digest>`` (``$KDISTILL_CACHE`` or ``~/.cache/kdistill``; a temporary
folder, then renamed) and the config names that folder from then on, so the resolved config, a
resumed run and ``kdistill eval`` read the very same rows. The digest covers the rows (their Arrow
record batches), not the object's identity: the same data gives the same folder in every process.
A DatasetDict's split names are matched exactly (``train``, ``validation``, ``test``); any other
split is refused with the names it has (rename with ``DatasetDict({"validation": d["dev"], …})``).
Columns are checked at validate from the folder's ``dataset_info.json`` (no rows are read).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kdistill.errors import ConfigError, DataError

SPLITS = ("train", "validation", "test")
DATA_KEYS = ("path", "train", "validation", "test", "unlabelled")
CACHE_DIR = "datasets"
_DICT_FILE = "dataset_dict.json"
_INFO_FILE = "dataset_info.json"


def is_dataset_object(value: Any) -> bool:
    """A ``datasets.Dataset`` or ``DatasetDict`` (told by its type, without importing ``datasets``)."""
    kind = type(value)
    return kind.__module__.split(".")[0] == "datasets" and kind.__name__ in ("Dataset", "DatasetDict")


def is_dataset_dict_folder(path: str | os.PathLike | None) -> bool:
    """A folder a ``DatasetDict`` was saved into (it holds ``dataset_dict.json``)."""
    return path is not None and (Path(path) / _DICT_FILE).is_file()


def materialise_data(data: Any) -> Any:
    """``data`` (the config's data section) with every Dataset/DatasetDict object replaced by the folder
    it is saved in; anything else is returned as it is."""
    if not isinstance(data, Mapping) or not any(is_dataset_object(data.get(key)) for key in DATA_KEYS):
        return data
    out = dict(data)
    for key in DATA_KEYS:
        value = out.get(key)
        if not is_dataset_object(value):
            continue
        if type(value).__name__ == "DatasetDict" and key != "path":
            raise ConfigError(f"data.{key}: a DatasetDict (splits {', '.join(value)}) holds several splits; give it "
                              f"as data.path, or one split here (e.g. data.{key}: dataset['{key}']).")
        out[key] = str(save_once(value))
    return out


def save_once(dataset: Any) -> Path:
    """The folder ``dataset`` is saved in, keyed by its rows; saved now (atomically) unless it is there."""
    kind = type(dataset).__name__
    folder = _cache_root() / CACHE_DIR / f"{kind.lower()}-{content_digest(dataset)}"
    if (folder / (_DICT_FILE if kind == "DatasetDict" else _INFO_FILE)).is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    dataset.save_to_disk(str(tmp))
    try:
        os.replace(tmp, folder)
    except OSError:  # another process saved the same rows first
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def content_digest(dataset: Any) -> str:
    """A digest of the rows and columns of a Dataset (or of every split of a DatasetDict, by name)."""
    digest = hashlib.sha256()
    parts = sorted(dataset.items()) if type(dataset).__name__ == "DatasetDict" else [("", dataset)]
    for name, part in parts:
        digest.update(name.encode() + b"\0")
        table = part.with_format(None).data.table
        if getattr(part, "_indices", None) is not None:  # a selection or shuffle: its rows in their order
            table = part.flatten_indices().data.table
        digest.update(str(table.schema).encode())
        for batch in table.to_batches():
            digest.update(batch.serialize().to_pybytes())
    return digest.hexdigest()[:24]


def dataset_dict_splits(path: str | os.PathLike) -> dict[str, list[dict]]:
    """The records of each split of a DatasetDict folder, by kdistill split name."""
    loaded = _load(path)
    unknown = [name for name in loaded if name not in SPLITS]
    if unknown:
        raise DataError(f"'{path}' holds the split(s) {', '.join(unknown)}; kdistill reads train, validation and "
                        f"test (it has {', '.join(loaded)}). Save it with those names, e.g. "
                        "DatasetDict({'train': d['train'], 'validation': d['dev']}).save_to_disk(...).")
    if "train" not in loaded:
        raise DataError(f"'{path}' has no 'train' split (it has {', '.join(loaded)}).")
    return {name: [dict(row) for row in loaded[name]] for name in SPLITS if name in loaded}


def folder_columns(path: str | os.PathLike) -> list[str] | None:
    """Column names of a saved Dataset (or of a DatasetDict's train split), from ``dataset_info.json``;
    None when the folder does not say."""
    folder = Path(path)
    if is_dataset_dict_folder(folder):
        try:
            names = json.loads((folder / _DICT_FILE).read_text(encoding="utf-8")).get("splits", [])
        except (OSError, ValueError):
            return None
        folder = folder / ("train" if "train" in names else (names or [""])[0])
    try:
        features = json.loads((folder / _INFO_FILE).read_text(encoding="utf-8")).get("features")
    except (OSError, ValueError):
        return None
    return list(features) if isinstance(features, dict) else None


def _load(path: str | os.PathLike) -> Any:
    try:
        import datasets
    except ImportError:
        raise DataError(f"'{path}' is a Hugging Face dataset folder; reading it needs `pip install datasets` "
                        "(or `pip install 'kdistill[datasets]'`).") from None
    try:
        return datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as exc:
        raise DataError(f"'{path}' is not a dataset saved with save_to_disk: {exc}.") from None


def _cache_root() -> Path:
    from kdistill.files import cache_root

    return cache_root()


__all__ = ["content_digest", "dataset_dict_splits", "folder_columns", "is_dataset_dict_folder", "is_dataset_object",
           "materialise_data", "save_once"]
