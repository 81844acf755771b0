"""``kdistill capture CONFIG``: the teacher's top-k next-token log-probabilities, stored once, read by many runs.

    capture: {path: captures/smollm2-k128, k: 128}    # in a causal-LM run config (k: 128 is the default)
    kdistill capture lm.yaml                           # the teacher runs once over the training data
    kdistill run lm.yaml                               # trains from the capture: the teacher never runs

What is stored. For every loss-bearing token of the stage's training data (``loss_mask`` = 1: the
positions whose next token carries loss) one row: ``example`` (int32, the item's ``index``),
``position`` (int32, its position in the example), ``ids`` (the k most likely next tokens: uint16
when the vocabulary has at most 65,536 entries, else int32), ``logprobs`` (their log-probabilities
at T = 1, float16) and ``tail`` (1 − the sum of their probabilities, float32: a tail of 1e-9 is
below float16's smallest number). Rows are ordered by example, then position. Bytes per token:
12 + k·(2 + 2) = 524 at k = 128 (268 at k = 64) with uint16 ids (12 + 6k with int32 ids); a float32 logits row of
SmolLM2's 49,152-word vocabulary is 196,608. :func:`bytes_per_token` computes it; ``kdistill capture``
and ``kdistill plan`` print it. Arrow adds a few hundred bytes per record batch of 1,000 rows plus
the schema and two JSON files (under 1% beyond a few thousand tokens; the test allows 1% + 16 KiB).

The folder is a ``datasets`` Dataset saved with ``save_to_disk``: ``datasets.load_from_disk(path)``
reads it, memory-mapped; ``kdistill-capture.json`` beside it records the key and the counts.

The key. The teacher's weights (:func:`kdistill.cache_keys.teacher_fingerprint`), the tokenised data
(token ids and loss masks of every example, :func:`kdistill.cache_keys.data_fingerprint`), the
tokenizer (its class, vocabulary and special tokens) and k. A run that finds a capture made with any
other is refused with a ConfigError naming which differs; one that finds none captures first.

Resume. The teacher runs over ``capture.chunk`` examples at a time (length-sorted batches of
``capture.batch_size`` inside a chunk), each chunk written to ``<path>.partial/chunk-NNNNN.arrow``
(a temporary file, then renamed). An interrupted capture (even SIGKILL) resumes from its finished
chunks and ends with the same bytes as an uninterrupted one: the dataset is assembled from the
chunks into a temporary folder (with a fingerprint drawn from the key, not at random) renamed
into place. A partial capture made with another key or other chunking is started again.

How a run uses it. A stage whose only teacher-reading matches are ``logits``↔``logits`` ``token_kl``
trains from the capture: those matches become ``token_topk_kl`` (:mod:`kdistill.losses.topk`; ``loss``
chooses ``tail`` or ``renormalised``, temperature and T² as the match had them) and every batch
carries the stored top-k as ``teacher_features``, so the teacher never runs in training (it is still
loaded: the final evaluation compares it with the student). A stage reading anything else (hidden
states, attentions, another loss) runs the live teacher; ``kdistill plan`` says which and why.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from kdistill.errors import ConfigError, DataError
from kdistill.features import Features
from kdistill.files import atomic_write_text
from kdistill.losses.topk import IDS_KEY, TAIL_KEY, teacher_topk

META_FILE = "kdistill-capture.json"
FORMAT_VERSION = 1
KEY_PARTS = ("teacher", "data", "tokenizer", "k")
CONVERTIBLE = "token_kl"  # the match loss a capture replaces (forward KL has an exact top-k form)
_WHY = {"teacher": "the teacher's weights", "data": "the tokenised data (token ids or loss masks)",
        "tokenizer": "the tokenizer", "k": "k"}


# ---------------------------------------------------------------------------------------------
# Sizes and keys


def id_dtype(vocabulary: int) -> np.dtype:
    """uint16 when every id of ``vocabulary`` fits in it, else int32."""
    return np.dtype(np.uint16) if vocabulary <= 2**16 else np.dtype(np.int32)


def bytes_per_token(k: int, vocabulary: int) -> int:
    """Stored bytes per loss-bearing token: example + position (int32 each), k ids, k float16
    log-probabilities, a float32 tail."""
    return 4 + 4 + k * (id_dtype(vocabulary).itemsize + 2) + 4


def tokenizer_digest(tokenizer: Any) -> str:
    """The tokenizer's class, vocabulary and special tokens, as a digest."""
    described = {"class": type(tokenizer).__name__, "vocab": sorted(tokenizer.get_vocab().items()),
                 "special": getattr(tokenizer, "special_tokens_map", {}), "size": len(tokenizer)}
    return hashlib.blake2b(json.dumps(described, sort_keys=True, default=str).encode(), digest_size=20).hexdigest()


def capture_key(teacher: torch.nn.Module, dataset: Any, tokenizer: Any, k: int) -> dict[str, Any]:
    """What a capture is keyed by (:data:`KEY_PARTS`), each part on its own so a mismatch can be named."""
    from kdistill.cache_keys import data_fingerprint, teacher_fingerprint

    return {"teacher": teacher_fingerprint(teacher), "data": data_fingerprint(dataset)[0],
            "tokenizer": tokenizer_digest(tokenizer), "k": int(k)}


def key_differences(recorded: dict[str, Any], key: dict[str, Any]) -> list[str]:
    """The key parts that differ, as phrases (``the teacher's weights``, ``k (64 then, 32 now)``)."""
    out = []
    for part in KEY_PARTS:
        if recorded.get(part) != key[part]:
            out.append(f"k ({recorded.get(part)} then, {key[part]} now)" if part == "k" else _WHY[part])
    return out


def _fingerprint(key: dict[str, Any]) -> str:
    return hashlib.blake2b(json.dumps(key, sort_keys=True).encode(), digest_size=8).hexdigest()


# ---------------------------------------------------------------------------------------------
# Which stages read it


def capture_matches(matches: Sequence[Any], capture: Any) -> tuple[list[Any] | None, str]:
    """``matches`` with each ``logits``↔``logits`` ``token_kl`` turned into ``token_topk_kl`` reading the
    capture, or ``(None, why)`` when a match reads more of the teacher (the stage then runs it live)."""
    out = []
    for match in matches:
        refs = [str(ref) for ref in match.teacher_refs()]
        if not refs:
            out.append(match)
            continue
        name = match.name or match.default_name()
        if refs != ["logits"] or [str(r) for r in match.student_refs()] != ["logits"]:
            return None, f"match '{name}' reads the teacher's {', '.join(refs)}, which a capture does not hold"
        if match.loss_name != CONVERTIBLE:
            return None, (f"match '{name}' uses loss '{match.loss_name}'; a capture serves '{CONVERTIBLE}' "
                          "(its top-k form is token_topk_kl)")
        if match.teacher_name not in (None, "teacher"):
            return None, f"match '{name}' reads teacher '{match.teacher_name}'; a capture holds one teacher"
        args = {key: value for key, value in match.args.items() if key in ("temperature", "t2_scale", "chunk_tokens")}
        if "vocab_size" in match.args:
            return None, f"match '{name}' sets vocab_size (padded embeddings); the capture stores the teacher's ids"
        out.append(match.with_(loss="token_topk_kl", args={**args, "k": capture.k, "topk": capture.loss},
                               name=name))
    if not any(m.loss_name == "token_topk_kl" for m in out):
        return None, "no match of this stage reads the teacher's logits"
    return out, ""


def stage_reads_capture(config: Any, part: Any, teacher: torch.nn.Module) -> tuple[bool, str]:
    """Whether stage ``part`` trains from ``config.capture`` (else why it runs the teacher live)."""
    if config.capture is None:
        return False, "no capture"
    if part.teacher is not teacher:
        return False, "its teacher is the chain's assistant, not the captured teacher"
    if len(part.datasets) != 1 or not _is_lm_dataset(part.datasets[0]):
        return False, "it trains on more than one causal-LM dataset"
    matches, why = capture_matches(part.stage.matches, config.capture)
    return matches is not None, why


def _is_lm_dataset(dataset: Any) -> bool:
    from kdistill.lm_data import LMDataset

    return isinstance(dataset, LMDataset)


# ---------------------------------------------------------------------------------------------
# Writing


@torch.no_grad()
def _chunk_table(distiller: Any, dataset: Any, indices: range, k: int, batch_size: int, ids_type: np.dtype):
    """The rows of the examples ``indices`` (ordered by example, then position) as a pyarrow Table."""
    import pyarrow as pa

    from kdistill.adapters.base import to_device
    from kdistill.run_data import lm_collate

    collate = lm_collate(dataset)
    device = next(iter(distiller.teachers.values())).parameters().__next__().device
    order = sorted(indices, key=lambda i: (-int(dataset.lengths[i]), i))
    found: dict[int, tuple] = {}
    for start in range(0, len(order), batch_size):
        batch = collate([dataset[i] for i in order[start:start + batch_size]])
        (features,) = distiller.teacher_features(to_device(batch, device)).values()
        top, ids, tail = teacher_topk(features.logits, k)
        for row, example in enumerate(batch["index"].tolist()):
            positions = batch["loss_mask"][row].nonzero().reshape(-1)
            found[example] = (positions.numpy().astype(np.int32), ids[row, positions].cpu().numpy().astype(ids_type),
                              top[row, positions].cpu().numpy().astype(np.float16),
                              tail[row, positions].cpu().numpy().astype(np.float32))
    parts = [found[i] for i in indices]
    examples = np.concatenate([np.full(len(p[0]), i, np.int32) for i, p in zip(indices, parts)])
    columns = [np.concatenate([p[c] for p in parts]) for c in range(4)]
    return pa.table({
        "example": pa.array(examples), "position": pa.array(columns[0]),
        "ids": pa.FixedSizeListArray.from_arrays(pa.array(columns[1].reshape(-1)), k),
        "logprobs": pa.FixedSizeListArray.from_arrays(pa.array(columns[2].reshape(-1)), k),
        "tail": pa.array(columns[3]),
    })


def _write_table(table: Any, file: Path) -> None:
    import pyarrow as pa

    tmp = file.with_name(f".{file.name}.tmp{os.getpid()}")
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    os.replace(tmp, file)


def _read_table(file: Path) -> Any:
    import pyarrow as pa

    return pa.ipc.open_file(pa.memory_map(str(file))).read_all()


def _open_partial(partial: Path, settings: dict[str, Any]) -> None:
    """``partial`` ready for these settings: kept when they match, else emptied (nothing there is final)."""
    file = partial / META_FILE
    if file.is_file() and json.loads(file.read_text(encoding="utf-8")) != settings:
        shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    if not file.is_file():
        atomic_write_text(file, json.dumps(settings, indent=2, sort_keys=True))


def write_capture(path: Path, distiller: Any, dataset: Any, key: dict[str, Any], *, chunk: int, batch_size: int,
                  vocabulary: int, progress: bool = True) -> dict[str, Any]:
    """Capture ``dataset`` with the distiller's teacher into ``path`` (resuming ``<path>.partial``); the record."""
    import datasets
    import pyarrow as pa

    k = key["k"]
    settings = {"key": key, "chunk": chunk, "batch_size": batch_size, "format": FORMAT_VERSION}
    partial = path.with_name(f"{path.name}.partial")
    _open_partial(partial, settings)
    ids_type = id_dtype(vocabulary)
    starts = list(range(0, len(dataset), chunk))
    bar = tqdm(total=len(dataset), desc="capture (teacher top-k)", unit="example", disable=not progress)
    for number, start in enumerate(starts):
        file = partial / f"chunk-{number:05d}.arrow"
        if not file.is_file():
            indices = range(start, min(start + chunk, len(dataset)))
            _write_table(_chunk_table(distiller, dataset, indices, k, batch_size, ids_type), file)
        bar.update(min(chunk, len(dataset) - start))
    bar.close()
    table = pa.concat_tables([_read_table(partial / f"chunk-{n:05d}.arrow") for n in range(len(starts))])
    record = {"format": FORMAT_VERSION, "key": key, "examples": len(dataset), "tokens": table.num_rows,
              "vocabulary": vocabulary, "ids": ids_type.name, "bytes_per_token": bytes_per_token(k, vocabulary)}
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    datasets.Dataset(table, fingerprint=_fingerprint(key)).save_to_disk(str(tmp))
    atomic_write_text(tmp / META_FILE, json.dumps(record, indent=2, sort_keys=True))
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
    shutil.rmtree(partial, ignore_errors=True)
    return record


def read_record(path: Path) -> dict[str, Any] | None:
    """The record of a complete capture in ``path`` (None when there is none)."""
    file = Path(path) / META_FILE
    return json.loads(file.read_text(encoding="utf-8")) if file.is_file() else None


def check_record(path: Path, record: dict[str, Any], key: dict[str, Any]) -> None:
    """Refuse a capture made for another teacher, data, tokenizer or k, naming which."""
    differs = key_differences(record.get("key", {}), key)
    if differs:
        raise ConfigError(f"capture.path: '{path}' holds a capture made with other {', '.join(differs)} than this "
                          "run's; give capture.path a new folder (or delete that one, and it is captured again).")


def ensure_capture(spec: Any, distiller: Any, dataset: Any, key: dict[str, Any], vocabulary: int, *,
                   batch_size: int, progress: bool = True) -> dict[str, Any]:
    """The record of the capture ``spec.path`` for ``key``: read when complete, captured first when absent."""
    path = Path(spec.path)
    record = read_record(path)
    if record is not None:
        check_record(path, record, key)
        return record
    if path.exists() and any(path.iterdir()):
        raise ConfigError(f"capture.path: '{path}' exists and is not a kdistill capture; give capture.path a new "
                          "folder (nothing of yours is replaced).")
    return write_capture(path, distiller, dataset, key, chunk=spec.chunk, batch_size=batch_size,
                         vocabulary=vocabulary, progress=progress)


# ---------------------------------------------------------------------------------------------
# Reading


class Capture:
    """A complete capture, memory-mapped: ``capture[i]`` is example i's rows (positions, ids, log-probs, tail)."""

    def __init__(self, path: str | os.PathLike):
        import datasets

        self.path = Path(path)
        self.record = read_record(self.path)
        if self.record is None:
            raise DataError(f"capture.path: '{path}' holds no complete capture ({META_FILE} is missing).")
        table = datasets.load_from_disk(str(self.path)).data.table
        self.k = int(self.record["key"]["k"])
        self._columns = {name: [_numpy(chunk) for chunk in table.column(name).chunks]
                         for name in ("position", "ids", "logprobs", "tail")}
        self._bounds = np.cumsum([0] + [len(c) for c in self._columns["position"]])
        examples = np.concatenate([_numpy(c) for c in table.column("example").chunks]) if table.num_rows else \
            np.zeros(0, np.int32)
        self._starts = np.searchsorted(examples, np.arange(int(self.record["examples"]) + 1))

    def __len__(self) -> int:
        return len(self._starts) - 1

    def __getitem__(self, example: int) -> dict[str, np.ndarray]:
        start, end = int(self._starts[example]), int(self._starts[example + 1])
        return {name: self._rows(name, start, end) for name in self._columns}

    def _rows(self, name: str, start: int, end: int) -> np.ndarray:
        first = int(np.searchsorted(self._bounds, start, side="right")) - 1
        pieces = []
        while start < end:
            local = start - int(self._bounds[first])
            take = min(end, int(self._bounds[first + 1])) - start
            pieces.append(self._columns[name][first][local:local + take])
            start += take
            first += 1
        if not pieces:
            shape = (0, self.k) if name in ("ids", "logprobs") else (0,)
            return np.zeros(shape, self._columns[name][0].dtype if self._columns[name] else np.float32)
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


def _numpy(chunk: Any) -> np.ndarray:
    """A pyarrow column chunk as numpy without a copy: fixed-size lists as (rows, k)."""
    import pyarrow as pa

    if isinstance(chunk.type, pa.FixedSizeListType):
        return chunk.flatten().to_numpy(zero_copy_only=True).reshape(len(chunk), chunk.type.list_size)
    return chunk.to_numpy(zero_copy_only=True)


class CaptureCollator:
    """Collates like ``collate`` (next-token targets) and puts the items' stored top-k into
    ``teacher_features``: logits (B, T, k) float32 log-probabilities, ``extra['topk_ids']`` (B, T, k)
    int64, ``extra['topk_tail']`` (B, T) float32; zeros off the loss-bearing positions."""

    def __init__(self, collate: Any, k: int):
        self.collate = collate
        self.k = k

    def __call__(self, examples: Sequence[dict]) -> dict:
        stored = [e.pop("teacher_logits") for e in examples]
        batch = self.collate(examples)
        shape = (*batch["input_ids"].shape, self.k)
        top, ids, tail = torch.zeros(shape), torch.zeros(shape, dtype=torch.long), torch.zeros(shape[:-1])
        for row, rows in enumerate(stored):
            positions = torch.from_numpy(rows["position"].astype(np.int64))
            expected = batch["loss_mask"][row].nonzero().reshape(-1)
            if not torch.equal(positions, expected):
                raise DataError(f"capture: example {int(batch['index'][row])} has loss-bearing positions "
                                f"{expected.tolist()[:8]}… but the capture stored {positions.tolist()[:8]}…; the "
                                "data changed after the capture was made. Capture again into a new capture.path.")
            top[row, positions] = torch.from_numpy(rows["logprobs"].astype(np.float32))
            ids[row, positions] = torch.from_numpy(rows["ids"].astype(np.int64))
            tail[row, positions] = torch.from_numpy(rows["tail"].astype(np.float32))  # a copy: the map is read-only
        batch["teacher_features"] = Features(logits=top, attention_mask=batch.get("attention_mask"), causal=True,
                                             extra={IDS_KEY: ids, TAIL_KEY: tail})
        return batch


# ---------------------------------------------------------------------------------------------
# In a run


def _teacher_batch_size(config: Any) -> int:
    return config.capture.batch_size or config.data.eval_batch_size or config.data.batch_size


def _vocabulary(teacher: torch.nn.Module, tokenizer: Any) -> int:
    """The width of the teacher's logits (its config's vocab_size), else the tokenizer's size."""
    return int(getattr(getattr(teacher, "config", None), "vocab_size", None) or len(tokenizer))


def _checked_vocabulary(parts: Any) -> int:
    """The teacher's vocabulary, refusing a ``capture.k`` above it."""
    vocabulary = _vocabulary(parts.teacher, parts.tokenizer)
    if parts.config.capture.k > vocabulary:
        raise ConfigError(f"capture.k: {parts.config.capture.k} is more tokens than the teacher's vocabulary of "
                          f"{vocabulary}; give a k from 1 to {vocabulary} (128 is the default for large vocabularies).")
    return vocabulary


def _stage_key(parts: Any, part: Any) -> dict[str, Any]:
    return capture_key(parts.teacher, part.datasets[0], parts.tokenizer, parts.config.capture.k)


def run_capture(parts: Any, part: Any, *, progress: bool = True) -> dict[str, Any]:
    """The capture of stage ``part`` (complete and matching; captured now, by the live teacher, if absent)."""
    from kdistill.run import on_main_process

    vocabulary = _checked_vocabulary(parts)
    key = _stage_key(parts, part)
    distiller = parts.stage_distiller(part.index)
    return on_main_process(ensure_capture, parts.config.capture, distiller, part.datasets[0], key,
                           vocabulary, batch_size=_teacher_batch_size(parts.config),
                           progress=progress)


def capture_loader(parts: Any, part: Any) -> Any:
    """``part.loader``'s batches (same sampler and seed) carrying the stored top-k (captured first if absent)."""
    from kdistill.logits_cache import WithTeacherLogits
    from kdistill.run_data import lm_collate, training_loader

    run_capture(parts, part, progress=parts.config.training.progress)
    capture = Capture(parts.config.capture.path)
    dataset = part.datasets[0]
    return training_loader(parts.config, parts.data, [WithTeacherLogits(dataset, capture)],
                           CaptureCollator(lm_collate(dataset), capture.k))


def use_capture(parts: Any, part: Any) -> bool:
    """Point stage ``part``'s loader at the capture when the stage reads it; whether it does."""
    uses, _ = stage_reads_capture(parts.config, part, parts.teacher)
    if uses:
        part.loader = capture_loader(parts, part)
    return uses


def describe(parts: Any, part: Any) -> str:
    """What ``capture`` does for a stage, for ``kdistill plan`` (a mismatching capture is refused here too)."""
    config = parts.config
    uses, why = stage_reads_capture(config, part, parts.teacher)
    if not uses:
        return f"capture not used ({why}); the teacher runs live"
    spec, vocabulary = config.capture, _checked_vocabulary(parts)
    per_token = bytes_per_token(spec.k, vocabulary)
    tokens = int(part.datasets[0].loss_tokens.total)
    mib = per_token * tokens / 2**20
    size = (f"capture of the top-{spec.k} log-probabilities (float16) and ids ({id_dtype(vocabulary).name}) + "
            f"tail (float32): {per_token} bytes per loss token x {tokens:,} tokens = {mib:.1f} MiB; "
            f"matches token_kl -> token_topk_kl ({spec.loss})")
    record = read_record(Path(spec.path))
    if record is None:
        return (f"{size}; not captured yet: `kdistill run` captures first into {spec.path}, then the teacher "
                "does not run")
    check_record(Path(spec.path), record, _stage_key(parts, part))
    return f"{size}; read from {spec.path} (complete): the teacher does not run in training"


def capture_stage(parts: Any) -> Any:
    """The first stage that trains from the capture; a ConfigError saying why when none does."""
    reasons = []
    for part in parts.stages:
        uses, why = stage_reads_capture(parts.config, part, parts.teacher)
        if uses:
            return part
        reasons.append(f"stage '{part.stage.name}': {why}")
    raise ConfigError(f"capture: no stage of this run can train from a capture ({'; '.join(reasons)}). A capture "
                      f"serves logits-to-logits '{CONVERTIBLE}' matches; remove 'capture' or use such a match.")


# ---------------------------------------------------------------------------------------------
# The verb


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0]
    parser.add_argument("config", metavar="CONFIG", help="a causal-LM run's YAML with a 'capture' section")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="changes to the config, as for run")


def main(args: argparse.Namespace) -> int:
    from kdistill.config import load_config
    from kdistill.run_build import build

    config = load_config(args.config, args.overrides)
    if config.capture is None:
        raise ConfigError(f"capture: '{args.config}' has no 'capture' section; add one, e.g. "
                          "capture: {path: captures/teacher-k128, k: 128}.")
    parts = build(config)
    part = capture_stage(parts)
    vocabulary = _vocabulary(parts.teacher, parts.tokenizer)
    print(f"capture: top-{config.capture.k} of a {vocabulary:,}-token vocabulary, "
          f"{bytes_per_token(config.capture.k, vocabulary)} bytes per loss token, into {config.capture.path}")
    record = run_capture(parts, part, progress=config.training.progress)
    size = sum(f.stat().st_size for f in Path(config.capture.path).iterdir() if f.is_file())
    print(f"done: {record['tokens']:,} loss tokens of {record['examples']:,} examples, {size / 2**20:.2f} MiB "
          f"on disk ({record['bytes_per_token']} bytes per token predicted); `kdistill run {args.config}` trains "
          "from it without running the teacher")
    return 0


__all__ = ["Capture", "CaptureCollator", "add_arguments", "bytes_per_token", "capture_key", "capture_loader",
           "capture_matches", "describe", "ensure_capture", "id_dtype", "main", "read_record", "run_capture",
           "stage_reads_capture", "use_capture", "write_capture"]
