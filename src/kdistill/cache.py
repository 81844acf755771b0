"""The teacher-output cache (offline distillation): run the teacher once, read its features after.

A distillation step is a teacher forward plus a student forward and backward. When the inputs of
an example are the same every epoch, the teacher's answer is too, so the first pass stores exactly
the teacher features the matches read and later epochs (and later runs) read them from disk::

    cache = TeacherCache("runs/cache", distiller, dataset=train_set)   # float16, memory-mapped
    loader = cached_loader(make_loader(train_set, 32, shuffle=True), cache)
    Trainer(distiller, loader, config=cfg).train()                     # the teacher runs in epoch 1 only

What is stored. For every teacher and every teacher ref a match reads (``hidden.4``, ``attn.3``,
``logits`` …), one flat file holds the examples one after another, each trimmed to its own length
(``kdistill.data._Encoded`` does the same for token ids): a hidden state of an example of length L is
L·D numbers, an attention map H·L·L. Offsets follow from the example lengths, saved beside the
files. Values are float16 by default (``dtype=torch.float32`` for full precision).

How a batch sees it. :func:`cached_loader` (or :meth:`TeacherCache.attach`) puts
``batch["teacher_features"]`` (a dict ``teacher name -> Features``) into every batch, padded to the
batch's length: padded positions read 0 (pre-softmax ``attn_scores``: the dtype's minimum, like a
live masked score), cast to float32, with the batch's attention mask. Losses mask padding anyway,
so the loss matches the live teacher's to float16 precision. A batch holding an example not yet
stored runs the teacher (under ``torch.inference_mode``) on that batch, stores the new examples, and
is served from the store like any other.

Top-k logits (``logits_topk=k``). For a large vocabulary (MLM heads) only the k largest
log-probabilities per row, their class ids and the log of the remaining probability mass are kept
(float32). The loss sees dense "logits" rebuilt as log-probabilities: the k kept classes carry their
exact log-probabilities, every other class ``log(rest / (C - k))`` — the remaining mass spread
evenly. At temperature 1 the soft targets are exact on the top k and the tail carries the right
total; at another temperature the top-k ratios stay exact and the tail is approximate. Only
distribution losses (registered with ``topk=True``: ``soft_ce``, ``kl``, ``reverse_kl``, ``jsd``, the
``token_*`` losses and ``uld``) may read top-k logits; ``logits_mse`` compares raw logit values, which
are gone, and is refused.

The key. The folder name is a hash of the teacher's weights (every tensor of its state dict), its
class and config, the data (the token ids of every example), the tokenisation settings, the stored
feature set, the dtype and top-k. Any change gives a new folder; nothing stale is ever read.

Integrity. Files are filled in a private temporary folder; when every example is stored, the
metadata (which records every file's size) is written last and the folder is renamed into place.
Only a renamed folder whose metadata and file sizes agree is read as complete: an interrupted
fill is never mistaken for a finished one (it is simply redone).

Refused inputs. The cache is only right when an example's inputs are the same every time it is
drawn. A dataset or collator with ``deterministic = False`` (or ``random_augmentation = True``), and
transformers' on-the-fly masking collators (``DataCollatorForLanguageModeling`` and its whole-word
variant), are refused with a :class:`ConfigError`: run those without the cache, or make the
randomness part of the data (e.g. augment offline, as :mod:`kdistill.methods.augment` does).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import uuid
import warnings
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from kdistill.adapters import FunctionAdapter, make_adapter
from kdistill.adapters.base import to_device
from kdistill.cache_keys import (  # noqa: F401 - re-exported
    _base_dataset,
    _example_lengths,
    check_deterministic,
    data_fingerprint,
    teacher_fingerprint,
)
from kdistill.cache_layout import (  # noqa: F401 - re-exported
    FeatureLayout,
    _model_device,
    _put,
    _read_topk,
    _store_topk,
    _token_axes,
    _trim,
    topk_soft_targets,
)
from kdistill.errors import ConfigError, DataError
from kdistill.features import Features
from kdistill.losses import loss_properties, topk_losses
from kdistill.refs import Ref, parse_ref

FORMAT_VERSION = 1
META_FILE = "meta.json"
LENGTHS_FILE = "lengths.npy"
_STORAGE_DTYPES = {torch.float16: np.float16, torch.float32: np.float32}


# ---------------------------------------------------------------------------------------------
# The cache


class TeacherCache:
    """Teacher features stored on disk per example, keyed by the example's ``index``.

    directory: the parent folder; the cache lives in ``directory/teacher-<key>``.
    distiller_or_refs: a :class:`~kdistill.Distiller` (its teachers, adapters and the teacher refs
        its matches read), or ``(teacher_model, refs)`` with refs such as ``["hidden.4", "attn.3"]``.
    dataset: the dataset the loader draws from (items carry ``index``); bound later by
        :func:`cached_loader` when omitted.
    dtype: storage type, ``torch.float16`` (default) or ``torch.float32``.
    logits_topk: keep only the k most likely classes of ``logits`` (see the module docstring).
    extra_refs: refs to store besides those the matches read (for a loss that reads
        ``teacher_features`` directly: it sees only stored refs and the attention mask).
    attention: attention mode of the adapter built for ``(teacher_model, refs)``.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        distiller_or_refs: Any,
        dataset: Any = None,
        *,
        dtype: torch.dtype = torch.float16,
        logits_topk: int | None = None,
        extra_refs: Sequence[str] = (),
        attention: str = "auto",
    ):
        if dtype not in _STORAGE_DTYPES:
            raise ConfigError(f"TeacherCache: dtype {dtype} is not one of torch.float16, torch.float32.")
        if logits_topk is not None and (not isinstance(logits_topk, int) or logits_topk < 1):
            raise ConfigError(f"TeacherCache: logits_topk {logits_topk!r} must be a positive integer (or None).")
        self.directory = Path(directory)
        self.dtype = dtype
        self.logits_topk = logits_topk
        self.teachers, self.adapters, self.refs = self._teachers_and_refs(distiller_or_refs, extra_refs, attention)
        self._check_topk(distiller_or_refs)
        self.dataset = None
        self.key: str | None = None
        self.path: Path | None = None
        self.layouts: list[FeatureLayout] | None = None
        self.lengths: np.ndarray | None = None
        self._required: np.ndarray | None = None
        self._filled: np.ndarray | None = None
        self._maps: list[dict[str, np.memmap]] | None = None
        self._offsets: list[dict[str, np.ndarray]] | None = None
        self._tmp: Path | None = None
        self._cleanup: weakref.finalize | None = None
        self._complete = False
        self._key_parts: dict | None = None
        self.teacher_runs = 0
        if dataset is not None:
            self.bind(dataset)

    # ------------------------------------------------------------------ construction
    @staticmethod
    def _teachers_and_refs(source: Any, extra_refs: Sequence[str], attention: str):
        from kdistill.distiller import ENSEMBLE, Distiller, freeze_teacher

        extra = [ref for text in extra_refs for ref in parse_ref(text, where="cache.extra_refs")]
        if isinstance(source, Distiller):
            if not source.teachers:
                raise ConfigError("cache: the distiller has no teacher, so there is nothing to cache.")
            names = list(source.teachers)
            refs: dict[str, list[Ref]] = {name: [] for name in names}
            for bound in source.bound:
                readers = names if bound.match.teacher_name == ENSEMBLE else [bound.match.teacher_name or names[0]]
                for name in readers:
                    refs[name].extend(bound.teacher_refs)
            adapters = dict(source.teacher_adapters)
            teachers = dict(source.teachers)
            for name in names:
                if not extra:
                    continue
                layers = adapters[name].num_layers
                refs[name].extend(ref.resolved(layers, where="cache.extra_refs") for ref in extra)
                if not isinstance(adapters[name], FunctionAdapter):
                    # The Distiller's adapter produces only what its matches read: one for the union.
                    mode = getattr(adapters[name], "attention_mode", None) or attention
                    adapters[name] = make_adapter(teachers[name], refs[name], attention=mode,
                                                  where=f"cache teacher '{name}'")
        elif isinstance(source, tuple) and len(source) == 2 and isinstance(source[0], nn.Module):
            model, texts = source
            parsed = [ref for text in ([texts] if isinstance(texts, str) else texts)
                      for ref in (parse_ref(text, where="cache.refs") if isinstance(text, str) else (text,))]
            freeze_teacher(model)
            adapter = make_adapter(model, [*parsed, *extra], attention=attention, where="cache teacher")
            teachers, adapters = {"teacher": model}, {"teacher": adapter}
            refs = {"teacher": [ref.resolved(adapter.num_layers, where="cache.refs") for ref in [*parsed, *extra]]}
        else:
            raise ConfigError("cache: expected a Distiller or a (teacher_model, refs) pair, got "
                              f"{type(source).__name__}.")
        unique = {name: sorted(set(found), key=str) for name, found in refs.items()}
        if not any(unique.values()):
            raise ConfigError("cache: no match reads a teacher feature, so there is nothing to cache.")
        return teachers, adapters, unique

    def _check_topk(self, source: Any) -> None:
        if self.logits_topk is None or not hasattr(source, "bound"):
            return
        for bound in source.bound:
            if Ref("logits") in bound.teacher_refs and not loss_properties(bound.loss_fn).topk:
                raise ConfigError(
                    f"TeacherCache: logits_topk is set, but {bound.name} reads the teacher's logits with "
                    f"'{bound.match.loss_name}', which compares logit values; top-k keeps only the "
                    f"distribution. Use one of {', '.join(topk_losses())}, or logits_topk=None."
                )

    # ------------------------------------------------------------------ binding to data
    def bind(self, dataset: Any, *, collate_fn: Any = None) -> TeacherCache:
        """Fix the data: compute the key and open a complete cache if one exists."""
        check_deterministic(dataset, collate_fn)
        if self.dataset is dataset:
            return self
        if self.dataset is not None:
            raise ConfigError("cache: this TeacherCache is already bound to another dataset; make one per dataset.")
        base, indices = _base_dataset(dataset)
        self.dataset = dataset
        self.lengths = _example_lengths(base)
        self._required = np.zeros(len(base), dtype=bool)
        self._required[indices if indices is not None else slice(None)] = True
        data_hash, settings = data_fingerprint(dataset)
        self._key_parts = {
            "format": FORMAT_VERSION,
            "teachers": {name: teacher_fingerprint(model) for name, model in self.teachers.items()},
            "data": data_hash,
            "tokenization": settings,
            "features": {name: [str(r) for r in refs] for name, refs in self.refs.items()},
            "dtype": str(self.dtype),
            "logits_topk": self.logits_topk,
        }
        text = json.dumps(self._key_parts, sort_keys=True, default=str)
        self.key = hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
        self.path = self.directory / f"teacher-{self.key[:20]}"
        self._filled = np.zeros(len(base), dtype=bool)
        self._complete = self._open_complete()
        return self

    def _require_bound(self) -> None:
        if self.dataset is None:
            raise ConfigError("cache: not bound to a dataset yet; pass dataset= or use cached_loader(loader, cache).")

    @property
    def complete(self) -> bool:
        """True when every example is stored (this run's fill finished, or a finished cache was found)."""
        return self._complete

    # ------------------------------------------------------------------ layout
    def _layout_from(self, features: Mapping[str, Features], batch_length: int) -> list[FeatureLayout]:
        layouts = []
        for name, refs in self.refs.items():
            for ref in refs:
                value = features[name].get(ref)
                if not isinstance(value, Tensor):
                    raise ConfigError(f"cache: teacher '{name}' feature '{ref}' is not a tensor; it cannot be stored.")
                shape = list(value.shape[1:])
                for axis in _token_axes(ref, value, batch_length):
                    shape[axis - 1] = -1
                topk = 0
                if ref.kind == "logits" and self.logits_topk is not None:
                    topk = min(self.logits_topk, int(value.shape[-1]))
                layouts.append(FeatureLayout(name, str(ref), tuple(int(s) for s in shape), topk))
        return layouts

    def _files(self, layout: FeatureLayout) -> dict[str, tuple[np.dtype, int]]:
        """File suffix -> (numpy dtype, numbers per token-free unit) of one feature."""
        if layout.topk:
            return {"values": (np.dtype(np.float32), 1), "classes": (np.dtype(np.int32), 1),
                    "rest": (np.dtype(np.float32), 0)}
        return {"values": (np.dtype(_STORAGE_DTYPES[self.dtype]), 1)}

    def _sizes(self, layout: FeatureLayout) -> dict[str, np.ndarray]:
        """Per file, the number of elements each example takes."""
        lengths = self.lengths
        token_axes = layout.token_axes
        fixed = math.prod(s for s in layout.shape if s != -1)
        values = fixed * lengths ** len(token_axes)
        if not layout.topk:
            return {"values": values}
        rows = values // layout.shape[-1]
        return {"values": rows * layout.topk, "classes": rows * layout.topk, "rest": rows}

    def _offsets_of(self, layout: FeatureLayout) -> dict[str, np.ndarray]:
        return {suffix: np.concatenate([[0], np.cumsum(size)]).astype(np.int64)
                for suffix, size in self._sizes(layout).items()}

    def _file_name(self, index: int, suffix: str) -> str:
        return f"f{index:02d}.{suffix}"

    def disk_bytes(self) -> int:
        """Bytes the cache takes (or will take) on disk: for the plan, before any training.

        When the feature widths are not known yet, the teacher runs once on the first example.
        """
        self._require_bound()
        if self.layouts is None:
            first = int(np.flatnonzero(self._required)[0])
            base, _ = _base_dataset(self.dataset)
            item = base[first]
            from kdistill.data import collate

            batch = collate([item], getattr(base, "pad_token_id", 0))
            self._init_layout(self._run_teacher(batch), int(batch["input_ids"].shape[1]) if "input_ids" in batch else 1)
        total = self.lengths.nbytes
        for index, layout in enumerate(self.layouts):
            offsets = self._offsets_of(layout)
            for suffix, (dtype, _) in self._files(layout).items():
                total += int(offsets[suffix][-1]) * dtype.itemsize
        return total

    def describe(self) -> str:
        """One line for the plan: where, what, how big."""
        self._require_bound()
        refs = "; ".join(f"{name}: {', '.join(map(str, refs))}" for name, refs in self.refs.items())
        state = "complete" if self._complete else "to fill in the first epoch"
        topk = f", logits top-{self.logits_topk}" if self.logits_topk else ""
        return (f"teacher cache {self.path} ({state}): {refs}; {str(self.dtype).replace('torch.', '')}"
                f"{topk}; {self.disk_bytes() / 2**20:.1f} MiB on disk")

    # ------------------------------------------------------------------ opening and finishing
    def _open_complete(self) -> bool:
        meta_path = self.path / META_FILE
        if not meta_path.is_file():
            return False
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            if meta.get("key") != self.key or meta.get("format") != FORMAT_VERSION:
                raise ValueError("its key does not match this run")
            layouts = [FeatureLayout(d["teacher"], d["ref"], tuple(d["shape"]), d["topk"]) for d in meta["layouts"]]
            lengths = np.load(self.path / LENGTHS_FILE)
            if not np.array_equal(lengths, self.lengths):
                raise ValueError("its example lengths differ from the data's")
            for name, expected in meta["files"].items():
                size = (self.path / name).stat().st_size
                if size != expected:
                    raise ValueError(f"{name} has {size} bytes, {expected} were written")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            warnings.warn(f"cache: ignoring the unreadable cache {self.path} ({exc}); it will be rebuilt.",
                          stacklevel=3)
            return False
        self.layouts = layouts
        self._open_maps(self.path, mode="r")
        self._filled[:] = True
        return True

    def _init_layout(self, features: Mapping[str, Features], batch_length: int) -> None:
        if self.layouts is None:
            self.layouts = self._layout_from(features, batch_length)

    def _open_maps(self, folder: Path, mode: str) -> None:
        self._maps, self._offsets = [], []
        for index, layout in enumerate(self.layouts):
            offsets = self._offsets_of(layout)
            maps = {}
            for suffix, (dtype, _) in self._files(layout).items():
                count = int(offsets[suffix][-1])
                path = folder / self._file_name(index, suffix)
                maps[suffix] = np.memmap(path, dtype=dtype, mode=mode, shape=(max(count, 1),))
            self._maps.append(maps)
            self._offsets.append(offsets)

    def _start_fill(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._tmp = self.directory / f".tmp-{self.path.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._tmp.mkdir()
        # An unfinished fill leaves nothing behind when the process ends normally.
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(self._tmp), True)
        self._open_maps(self._tmp, mode="w+")

    def _finish(self) -> None:
        """Every example is stored: flush, write the metadata last, rename the folder into place."""
        from kdistill.files import atomic_write_text
        from kdistill.train.checkpoint import fsync_dir

        files = {}
        for index, maps in enumerate(self._maps):
            for suffix, array in maps.items():
                array.flush()
                name = self._file_name(index, suffix)
                with open(self._tmp / name, "rb+") as handle:
                    os.fsync(handle.fileno())
                files[name] = (self._tmp / name).stat().st_size
        np.save(self._tmp / LENGTHS_FILE, self.lengths)
        meta = {"format": FORMAT_VERSION, "key": self.key, "key_parts": self._key_parts,
                "layouts": [asdict(layout) for layout in self.layouts], "files": files,
                "examples": int(self._required.sum())}
        atomic_write_text(self._tmp / META_FILE, json.dumps(meta, indent=1, default=str))
        fsync_dir(self._tmp)
        self._maps = None
        if self.path.exists() and not self._valid_elsewhere():
            shutil.rmtree(self.path)  # a broken folder of this key (e.g. a truncated file): replace it
        try:
            os.replace(self._tmp, self.path)
        except OSError:
            # Another process finished the same cache first: use theirs, drop ours.
            shutil.rmtree(self._tmp, ignore_errors=True)
        self._tmp = None
        if self._cleanup is not None:
            self._cleanup.detach()
            self._cleanup = None
        fsync_dir(self.directory)
        self._complete = self._open_complete()
        if not self._complete:
            raise DataError(f"cache: {self.path} could not be read back after it was written.")

    def _valid_elsewhere(self) -> bool:
        try:
            meta = json.loads((self.path / META_FILE).read_text(encoding="utf-8"))
            return meta.get("key") == self.key and all(
                (self.path / n).stat().st_size == s for n, s in meta["files"].items())
        except (OSError, ValueError, KeyError):
            return False

    def discard(self) -> None:
        """Remove an unfinished fill's temporary folder (a finished cache is kept)."""
        if self._tmp is not None:
            self._maps = None
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
            self._filled[:] = False

    # ------------------------------------------------------------------ the teacher
    def _run_teacher(self, batch: Mapping) -> dict[str, Features]:
        device = _model_device(next(iter(self.teachers.values())))
        inputs = to_device({k: v for k, v in batch.items() if k != "teacher_features"}, device)
        self.teacher_runs += 1
        with torch.inference_mode():
            return {name: adapter(inputs) for name, adapter in self.adapters.items()}

    def _store(self, features: Mapping[str, Features], indices: np.ndarray, rows: np.ndarray) -> None:
        for index, layout in enumerate(self.layouts):
            value = features[layout.teacher].get(parse_ref(layout.ref)[0]).detach()
            maps, offsets = self._maps[index], self._offsets[index]
            if layout.topk:
                for row, example in zip(rows, indices):
                    piece = value[int(row)][_trim(layout, int(self.lengths[example]))]
                    _store_topk(layout, piece, maps, offsets, example)
                continue
            array = self._storable(layout, value[torch.as_tensor(rows)].float().cpu().numpy())
            for position, example in enumerate(indices):
                piece = array[position][_trim(layout, int(self.lengths[example]))]
                start, end = offsets["values"][example], offsets["values"][example + 1]
                maps["values"][start:end] = piece.reshape(-1)

    def _storable(self, layout: FeatureLayout, array: np.ndarray) -> np.ndarray:
        """``array`` in the storage dtype; a value beyond float16's range is an error, not an inf."""
        if self.dtype != torch.float16:
            return array
        if layout.ref.startswith("attn_scores"):
            array = np.clip(array, -65504.0, 65504.0)  # masked scores (dtype min) stay "very negative"
        with np.errstate(over="ignore"):
            converted = array.astype(np.float16)
        if np.isinf(converted).any() and np.isinf(converted[np.isfinite(array)]).any():
            raise ConfigError(
                f"cache: teacher feature '{layout.ref}' has values beyond float16's range (±65504); "
                "use TeacherCache(..., dtype=torch.float32)."
            )
        return converted

    # ------------------------------------------------------------------ batches
    def _batch_indices(self, batch: Mapping) -> np.ndarray:
        if not isinstance(batch, Mapping) or "index" not in batch:
            raise ConfigError("cache: batches need an 'index' per example (TokenizedDataset items carry it); "
                              "the cache keys examples by it.")
        indices = np.asarray(torch.as_tensor(batch["index"]).cpu(), dtype=np.int64).reshape(-1)
        if indices.size and (indices.min() < 0 or indices.max() >= len(self._filled)):
            raise DataError(f"cache: batch index {int(indices.max())} is outside the {len(self._filled)} examples "
                            "the cache was built for.")
        return indices

    def _check_lengths(self, batch: Mapping, indices: np.ndarray) -> None:
        mask = batch.get("attention_mask")
        if mask is None:
            return
        found = torch.as_tensor(mask).sum(dim=1).cpu().numpy()
        expected = self.lengths[indices]
        if not np.array_equal(found, expected):
            raise DataError(
                "cache: the batch's attention mask disagrees with the examples' lengths "
                f"({found.tolist()} vs {expected.tolist()}): the cache needs right-padded batches of "
                "the dataset it was bound to."
            )

    def features(self, batch: Mapping) -> dict[str, Features]:
        """The teacher features of ``batch`` from the store, filling any example not stored yet."""
        self._require_bound()
        indices = self._batch_indices(batch)
        batch_length = int(batch["input_ids"].shape[1]) if "input_ids" in batch else 1
        missing = ~self._filled[indices]
        if missing.any():
            self._check_lengths(batch, indices)
            live = self._run_teacher(batch)
            self._init_layout(live, batch_length)
            if self._maps is None:
                self._start_fill()
            rows = np.flatnonzero(missing)
            new, first = np.unique(indices[rows], return_index=True)
            self._store(live, new, rows[first])
            self._filled[new] = True
            if self._filled[self._required].all():
                self._finish()
        return self._read(batch, indices, batch_length)

    def attach(self, batch: dict) -> dict:
        """``batch`` with ``teacher_features`` from the cache (the Distiller then skips the teacher)."""
        batch["teacher_features"] = self.features(batch)
        return batch

    def fill(self, loader: Iterable) -> TeacherCache:
        """Run the teacher over every batch of ``loader`` (no student) and persist; a no-op when complete."""
        if self.dataset is None:
            self.bind(loader.dataset, collate_fn=getattr(loader, "collate_fn", None))
        if self._complete:
            return self
        for batch in loader:  # a cached_loader fills as it collates; a plain loader's batches are filled here
            if not (isinstance(batch, Mapping) and "teacher_features" in batch):
                if not self._filled[self._batch_indices(batch)].all():
                    self.features(batch)
            if self._complete:
                break
        return self

    def _read(self, batch: Mapping, indices: np.ndarray, batch_length: int) -> dict[str, Features]:
        device = _model_device(next(iter(self.teachers.values())))
        mask = batch.get("attention_mask")
        out = {name: Features(attention_mask=mask) for name in self.teachers}
        for index, layout in enumerate(self.layouts):
            maps, offsets = self._maps[index], self._offsets[index]
            ref = parse_ref(layout.ref)[0]
            fill = torch.finfo(torch.float32).min if ref.kind == "attn_scores" else 0.0
            if layout.topk:
                value = _read_topk(layout, maps, offsets, indices, self.lengths, batch_length)
            else:
                value = torch.full((len(indices), *layout.example_shape(batch_length)), fill, dtype=torch.float32)
                for row, example in enumerate(indices):
                    length = int(self.lengths[example])
                    start, end = offsets["values"][example], offsets["values"][example + 1]
                    piece = torch.from_numpy(np.array(maps["values"][start:end])).view(layout.example_shape(length))
                    value[row][_trim(layout, length)] = piece
            _put(out[layout.teacher], ref, value.to(device))
        if device.type != "cpu" and mask is not None:
            for features in out.values():
                features.attention_mask = mask.to(device)
        return out

    # ------------------------------------------------------------------ pickling for workers
    def __getstate__(self) -> dict:
        if not self._complete:
            raise ConfigError("cache: DataLoader workers can only read a complete cache; fill it first "
                              "(cache.fill(loader)) or use num_workers=0 for the first epoch.")
        state = dict(self.__dict__)
        state["_maps"] = None
        state["_cleanup"] = None
        state["teachers"] = {name: None for name in self.teachers}
        state["adapters"] = {}
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self._complete:
            self._open_maps(self.path, mode="r")


class CachingCollator:
    """A collate function that pads with ``collate_fn`` and then attaches the cached teacher features."""

    def __init__(self, collate_fn: Any, cache: TeacherCache):
        self.collate_fn = collate_fn
        self.cache = cache
        self.deterministic = getattr(collate_fn, "deterministic", True)

    def __call__(self, examples: Sequence[Any]) -> dict:
        return self.cache.attach(self.collate_fn(examples))


def cached_loader(loader: DataLoader, cache: TeacherCache) -> DataLoader:
    """A DataLoader like ``loader`` (same dataset, sampler, workers) whose batches carry
    ``teacher_features`` from ``cache``; the first epoch fills it.

    Workers (``num_workers > 0``) need a complete cache (``cache.fill(loader)`` first): a worker
    cannot run the teacher and share what it stored.
    """
    if not isinstance(loader, DataLoader):
        raise ConfigError(f"cache: cached_loader needs a torch DataLoader, got {type(loader).__name__}.")
    cache.bind(loader.dataset, collate_fn=loader.collate_fn)
    if loader.num_workers and not cache.complete:
        raise ConfigError("cache: DataLoader workers can only read a complete cache; call cache.fill(loader) "
                          "first or use num_workers=0 for the first epoch.")
    collate = CachingCollator(loader.collate_fn, cache)
    common = dict(num_workers=loader.num_workers, collate_fn=collate, pin_memory=loader.pin_memory,
                  timeout=loader.timeout, worker_init_fn=loader.worker_init_fn,
                  persistent_workers=loader.persistent_workers if loader.num_workers else False)
    if loader.batch_sampler is not None:
        return DataLoader(loader.dataset, batch_sampler=loader.batch_sampler, **common)
    return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=loader.sampler,
                      drop_last=loader.drop_last, **common)


__all__ = ["TeacherCache", "cached_loader", "CachingCollator", "FeatureLayout", "check_deterministic",
           "teacher_fingerprint", "data_fingerprint", "topk_soft_targets"]
