"""User data to padded batches: read records, pick columns, split, tokenise once, bucket by length.

The pipeline::

    records = load_records("train.csv")                      # list of dicts
    table = text_table(records, text="sentence", label="label", source="train.csv")
    dataset = TokenizedDataset(table.texts, table.labels, tokenizer, max_length=64)
    loader = make_loader(dataset, batch_size=32, shuffle=True, seed=0)

Batches are dicts of LongTensors padded to the longest example *of the batch*; the
:class:`LengthBucketSampler` groups examples of similar length so little padding is left.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler, SequentialSampler

from kdistill.errors import ConfigError, DataError, suggest

Record = dict[str, Any]
Text = str | tuple[str, str]

FORMATS = ("csv", "tsv", "jsonl", "json", "hf")
_EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json"}
SEQUENCE_KEYS = ("input_ids", "attention_mask", "token_type_ids")


# ---------------------------------------------------------------------------------------------
# Reading records


def load_records(path: str | Path, *, format: str | None = None) -> list[Record]:
    """Read a CSV, TSV, JSON-lines (or JSON array) file, or a ``datasets`` folder, into dicts.

    ``format`` is one of ``csv, tsv, jsonl, json, hf``; by default it follows the extension, and
    a folder is read as a Hugging Face dataset saved with ``save_to_disk`` (needs ``datasets``).
    CSV/TSV values stay strings; :func:`text_table` turns integer-looking labels into ints.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"Data file '{path}' does not exist.")
    if format is None:
        format = "hf" if path.is_dir() else _EXTENSIONS.get(path.suffix.lower())
        if format is None:
            raise DataError(
                f"Cannot tell the format of '{path}' from its extension; "
                f"pass format= one of {', '.join(FORMATS)}."
            )
    if format not in FORMATS:
        raise ConfigError(f"data.format: unknown format '{format}'{suggest(format, FORMATS)} Available: {', '.join(FORMATS)}.")
    if format == "hf":
        records = _read_hf_folder(path)
    else:
        if path.is_dir():
            raise DataError(f"'{path}' is a folder, but format '{format}' needs a file.")
        try:
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as exc:
            raise DataError(f"'{path}' is not UTF-8 (byte {exc.start} is 0x{exc.object[exc.start]:02x}); save it as UTF-8.") from None
        if format in ("csv", "tsv"):
            records = _parse_delimited(text, "," if format == "csv" else "\t", path)
        elif format == "json" and text.lstrip().startswith("["):
            records = _parse_json_array(text, path)
        else:
            records = _parse_json_lines(text, path)
    if not records:
        raise DataError(f"Data file '{path}' holds no records.")
    return records


def _parse_delimited(text: str, delimiter: str, path: Path) -> list[Record]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        return []
    except csv.Error as exc:
        raise DataError(f"'{path}' line 1 cannot be parsed: {exc}.") from None
    twice = sorted({name for name in header if header.count(name) > 1})
    if twice:
        raise DataError(f"'{path}' line 1 names the column '{twice[0]}' more than once (header: "
                        f"{', '.join(header)}); rename the columns so that each name is used once.")
    records = []
    try:
        for row in reader:
            if not row:
                continue
            if len(row) != len(header):
                raise DataError(
                    f"'{path}' line {reader.line_num} has {len(row)} fields, but the header has {len(header)}."
                )
            records.append(dict(zip(header, row)))
    except csv.Error as exc:
        raise DataError(f"'{path}' line {reader.line_num} cannot be parsed: {exc}.") from None
    return records


def _parse_json_lines(text: str, path: Path) -> list[Record]:
    records = []
    for number, line in enumerate(text.split("\n"), start=1):  # not splitlines: U+2028 is valid inside JSON
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"'{path}' line {number} is not valid JSON: {exc.msg} (column {exc.colno}).") from None
        if not isinstance(record, dict):
            raise DataError(f"'{path}' line {number} is a JSON {type(record).__name__}, not an object.")
        records.append(record)
    return records


def _parse_json_array(text: str, path: Path) -> list[Record]:
    try:
        records = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"'{path}' line {exc.lineno} is not valid JSON: {exc.msg} (column {exc.colno}).") from None
    for position, record in enumerate(records):
        if not isinstance(record, dict):
            raise DataError(f"'{path}' item {position} is a JSON {type(record).__name__}, not an object.")
    return records


def _read_hf_folder(path: Path) -> list[Record]:
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"'{path}' is a Hugging Face dataset folder; reading it needs 'pip install datasets'."
        ) from None
    try:
        loaded = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as exc:
        raise DataError(f"'{path}' is not a dataset saved with save_to_disk: {exc}.") from None
    if isinstance(loaded, datasets.DatasetDict):
        raise DataError(
            f"'{path}' holds several splits ({', '.join(loaded)}); point at one of its sub-folders."
        )
    return [dict(row) for row in loaded]


# ---------------------------------------------------------------------------------------------
# Columns and labels


MISSING_TEXT = ("error", "skip")


@dataclass(frozen=True)
class TextTable:
    """Texts (strings, or pairs for two text columns) and integer labels picked from records.

    ``label_names[i]`` is the original value of label id ``i`` when labels were strings
    (ids follow the sorted order of the names, or the ``label_names`` passed in); ``None`` when
    the labels were integers. ``records[i]`` is the position in the file of the record that
    gave ``texts[i]``; ``skipped`` lists the positions of records left out for a missing text
    (``missing_text="skip"``).
    """

    texts: list[Text]
    labels: list[int] | None
    label_names: list[str] | None
    text_columns: tuple[str, ...]
    label_column: str | None
    records: list[int] | None = None
    skipped: tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(self.texts)


def is_missing_text(value: Any) -> bool:
    """The one rule for a missing text, in every format: no value (JSON ``null``, a column a
    ``datasets`` row leaves empty), a float NaN (JSON ``NaN``, pandas' empty cell) or a string that is
    empty or only white space (an empty CSV cell). The string ``"nan"`` is a text like any other."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def text_table(
    records: Sequence[Mapping[str, Any]],
    *,
    text: str | Sequence[str] = "text",
    label: str | None = "label",
    label_names: Sequence[str] | None = None,
    source: str = "data",
    missing_text: str = "error",
) -> TextTable:
    """Pick one text column (or a pair such as ``["question", "sentence"]``) and an optional label.

    Labels: ints are kept (integer-looking strings, as CSV gives them, count as ints); other
    strings become ids in sorted order, or in the order of ``label_names`` when given (the
    training table's names for validation or test data, or the teacher's own). ``source`` (a
    file name) goes into errors. A record whose text is missing (:func:`is_missing_text`) is a
    :class:`DataError` naming it (``missing_text="error"``), or is left out and counted in
    ``skipped`` (``missing_text="skip"``).
    """
    text_columns = (text,) if isinstance(text, str) else tuple(text)
    if len(text_columns) not in (1, 2):
        raise ConfigError(f"data.text: give one text column or a pair, not {len(text_columns)}: {list(text_columns)}.")
    if missing_text not in MISSING_TEXT:
        raise ConfigError(f"data.missing_text: {missing_text!r} is not a valid choice. Choose one of: "
                          f"{', '.join(MISSING_TEXT)}.")
    columns = list(text_columns) + ([label] if label is not None else [])
    for column in columns:
        require_column(records, column, source)

    texts: list[Text] = []
    kept: list[int] = []
    skipped: list[int] = []
    for row, record in enumerate(records):
        empty = [column for column in text_columns if is_missing_text(record[column])]
        if empty:
            if missing_text == "skip":
                skipped.append(row)
                continue
            raise DataError(
                f"{source}: record {row} has no text in '{empty[0]}' (got {record[empty[0]]!r}); "
                "a missing, NaN, empty or blank text is refused. Fix the record, or set "
                "data.missing_text: skip to leave such records out (the plan counts them)."
            )
        for column in text_columns:
            if isinstance(record[column], (list, dict)):
                raise DataError(f"{source}: record {row} has a JSON {type(record[column]).__name__} in "
                                f"'{column}' ({record[column]!r}); a text is one string.")
        values = [str(record[column]) for column in text_columns]
        texts.append(values[0] if len(values) == 1 else (values[0], values[1]))
        kept.append(row)

    if label is None:
        return TextTable(texts, None, None, text_columns, None, kept, tuple(skipped))
    labels, names = encode_labels([records[row][label] for row in kept], label, label_names, source, kept)
    return TextTable(texts, labels, names, text_columns, label, kept, tuple(skipped))


def require_column(records: Sequence[Mapping[str, Any]], column: str, source: str) -> None:
    for row, record in enumerate(records):
        if column not in record:
            existing = sorted(record)
            where = "" if row == 0 else f" (record {row})"
            raise DataError(
                f"{source}: no column '{column}'{where}{suggest(column, existing)} "
                f"Columns: {', '.join(map(str, existing))}."
            )


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
        try:  # "2.0", as a spreadsheet or pandas writes an integer column: the class 2, as JSON's 2.0 is
            number = float(value)
        except ValueError:
            return None
        return int(number) if number.is_integer() else None
    return None


def label_values_are_ints(values: Sequence[Any]) -> bool:
    """Whether every label is an integer (or an integer-looking string, as CSV gives them)."""
    return all(_as_int(value) is not None for value in values)


def encode_labels(
    values: list[Any], column: str, label_names: Sequence[str] | None, source: str,
    rows: Sequence[int] | None = None,
) -> tuple[list[int], list[str] | None]:
    rows = list(range(len(values))) if rows is None else list(rows)
    for row, value in zip(rows, values):
        if is_missing_text(value):  # the one rule for a missing value: None, NaN, empty or blank
            raise DataError(f"{source}: record {row} has an empty '{column}'; every labelled record needs one.")
        if isinstance(value, (list, dict)):
            raise DataError(f"{source}: record {row} has a JSON {type(value).__name__} in '{column}' ({value!r}); "
                            "a label is one class: an integer or a string.")
    if label_names is None:
        if label_values_are_ints(values):
            return [_as_int(value) for value in values], None  # type: ignore[misc]
        for row, value in zip(rows, values):
            if isinstance(value, float):
                raise DataError(
                    f"{source}: record {row} has the label {value} in '{column}'; labels must be classes "
                    "(integers or strings), not real numbers."
                )
        label_names = sorted({str(value) for value in values})
    ids = {name: index for index, name in enumerate(label_names)}
    labels = []
    for row, value in zip(rows, values):
        if str(value) not in ids:
            raise DataError(
                f"{source}: record {row} has the label '{value}', unknown to the training labels "
                f"({', '.join(label_names)})."
            )
        labels.append(ids[str(value)])
    return labels, list(label_names)


def split_records(
    records: Sequence[Any], *, ratios: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0
) -> dict[str, list[Any]]:
    """Shuffle with ``seed`` and cut into ``train``/``validation``/``test`` (two ratios: no test).

    Deterministic given (records, ratios, seed). Validation and test sizes are rounded; train gets
    the rest. Use explicit files per split instead when the data comes split.
    """
    names = ("train", "validation", "test")[: len(ratios)]
    if len(ratios) not in (2, 3) or any(r < 0 for r in ratios) or not math.isclose(sum(ratios), 1.0, abs_tol=1e-6):
        raise ConfigError(
            f"data.split: ratios {list(ratios)} must be two or three non-negative numbers that sum to 1."
        )
    order = np.random.default_rng(seed).permutation(len(records))
    sizes = [round(len(records) * r) for r in ratios[1:]]
    train_size = len(records) - sum(sizes)
    bounds = np.cumsum([train_size, *sizes])[:-1]
    return {name: [records[i] for i in part] for name, part in zip(names, np.split(order, bounds))}


# ---------------------------------------------------------------------------------------------
# Tokenising once


class _Encoded:
    """Token ids of many examples in one flat int32 array plus offsets (compact, cheap to pickle)."""

    def __init__(self, tokenizer: Any, texts: Sequence[Text], max_length: int, chunk: int = 4096):
        ids, types, lengths = [], [], []
        self.has_token_type_ids = False
        for start in range(0, len(texts), chunk):
            part = texts[start : start + chunk]
            pairs = bool(part) and not isinstance(part[0], str)
            first = [t[0] if pairs else t for t in part]
            second = [t[1] for t in part] if pairs else None
            encoded = tokenizer(first, second, truncation=True, max_length=max_length, padding=False)
            self.has_token_type_ids = "token_type_ids" in encoded
            for index, example in enumerate(encoded["input_ids"]):
                ids.extend(example)
                lengths.append(len(example))
                if self.has_token_type_ids:
                    types.extend(encoded["token_type_ids"][index])
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)])
        self.input_ids = np.asarray(ids, dtype=np.int32)
        self.token_type_ids = np.asarray(types, dtype=np.int8) if self.has_token_type_ids else None

    def example(self, index: int) -> dict[str, list[int]]:
        start, end = self.offsets[index], self.offsets[index + 1]
        out = {"input_ids": self.input_ids[start:end].tolist(), "attention_mask": [1] * int(end - start)}
        if self.token_type_ids is not None:
            out["token_type_ids"] = self.token_type_ids[start:end].tolist()
        return out


def _pad_id(tokenizer: Any) -> int:
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return 0


class TokenizedDataset(Dataset):
    """Texts tokenised once, up front (batched, truncated to ``max_length``, unpadded).

    ``texts``: strings, or ``(first, second)`` pairs. ``labels``: ints or ``None`` (unlabelled).
    An item is a dict of lists: ``input_ids``, ``attention_mask``, ``token_type_ids`` (when the
    tokenizer makes them), ``labels`` (when labelled) and ``index`` (the position, the key of
    the teacher cache).

    With a ``student_tokenizer`` (a student with another vocabulary) the teacher's encoding stays at
    the top level and the student's is added under ``student_inputs``, a dict of the same keys.
    ``lengths`` (for bucketing) is the longer of the two encodings per example.
    """

    def __init__(
        self,
        texts: Sequence[Text],
        labels: Sequence[int] | None,
        tokenizer: Any,
        *,
        max_length: int = 64,
        student_tokenizer: Any = None,
    ):
        if labels is not None and len(labels) != len(texts):
            raise DataError(f"{len(texts)} texts but {len(labels)} labels; they must match one to one.")
        if max_length < 1:
            raise ConfigError(f"data.max_length: {max_length} must be at least 1.")
        self.max_length = max_length
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self.teacher = _Encoded(tokenizer, texts, max_length)
        self.student = None if student_tokenizer is None else _Encoded(student_tokenizer, texts, max_length)
        self.pad_token_id = _pad_id(tokenizer)
        self.student_pad_token_id = None if student_tokenizer is None else _pad_id(student_tokenizer)
        self.lengths = self.teacher.lengths if self.student is None else np.maximum(self.teacher.lengths, self.student.lengths)

    def __len__(self) -> int:
        return len(self.teacher.lengths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item: dict[str, Any] = self.teacher.example(index)
        if self.labels is not None:
            item["labels"] = int(self.labels[index])
        item["index"] = int(index)
        if self.student is not None:
            item["student_inputs"] = self.student.example(index)
        return item

    def collator(self) -> Collator:
        """The :class:`Collator` with this dataset's pad ids."""
        return Collator(self.pad_token_id, self.student_pad_token_id)


# ---------------------------------------------------------------------------------------------
# Batching


def collate(
    examples: Sequence[Mapping[str, Any]], pad_token_id: int = 0, student_pad_token_id: int | None = None
) -> dict[str, Any]:
    """Pad each sequence to the longest in *this* batch (right side) and stack into LongTensors.

    ``input_ids`` pad with ``pad_token_id``, ``attention_mask``/``token_type_ids`` with 0, per-token
    ``labels`` (lists) with -100; scalars (``labels``, ``index``) stack to ``(B,)``. A nested
    ``student_inputs`` is padded the same way with ``student_pad_token_id`` (default: ``pad_token_id``).
    """
    batch: dict[str, Any] = {}
    for key in examples[0]:
        values = [example[key] for example in examples]
        if key == "student_inputs":
            pad = pad_token_id if student_pad_token_id is None else student_pad_token_id
            batch[key] = collate(values, pad)
        elif isinstance(values[0], (list, tuple, np.ndarray)):
            pad = pad_token_id if key == "input_ids" else -100 if key == "labels" else 0
            batch[key] = _pad(values, pad)
        else:
            batch[key] = torch.tensor(values)
    return batch


def _pad(sequences: Sequence[Sequence[int]], pad: int) -> torch.Tensor:
    longest = max(len(seq) for seq in sequences)
    out = torch.full((len(sequences), longest), pad, dtype=torch.long)
    for row, seq in enumerate(sequences):
        out[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
    return out


@dataclass(frozen=True)
class Collator:
    """:func:`collate` with fixed pad ids; picklable, so it works with DataLoader workers."""

    pad_token_id: int = 0
    student_pad_token_id: int | None = None

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        return collate(examples, self.pad_token_id, self.student_pad_token_id)


class LengthBucketSampler(Sampler[list[int]]):
    """A batch sampler that puts examples of similar length together, deterministically.

    Shuffled (training): a permutation seeded by ``(seed, epoch)``; each chunk of
    ``batch_size * bucket_size_multiplier`` examples is sorted by length and cut into batches;
    the order of all batches is then shuffled. ``bucket_size_multiplier=1`` gives plain random
    batches. Not shuffled (evaluation): all examples sorted by length, longest first (so a batch
    too big for memory fails at once), ties by index.

    Every index appears exactly once per epoch (``drop_last`` drops only the one short batch).
    Call ``set_epoch(e)`` before each epoch; ``skip(n)`` (or ``start_batch=n``) resumes mid-epoch by
    skipping the first ``n`` batches without touching the data. ``len()`` counts the batches the
    next iteration yields (after a skip); ``num_batches`` counts a whole epoch.
    """

    def __init__(
        self,
        lengths: Sequence[int] | np.ndarray,
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        bucket_size_multiplier: int = 50,
        drop_last: bool = False,
        start_batch: int = 0,
    ):
        if batch_size < 1:
            raise ConfigError(f"data.batch_size: {batch_size} must be at least 1.")
        if bucket_size_multiplier < 1:
            raise ConfigError(f"LengthBucketSampler: bucket_size_multiplier must be at least 1, "
                              f"got {bucket_size_multiplier}.")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.bucket_size_multiplier = bucket_size_multiplier
        self.drop_last = drop_last
        self.epoch = 0
        self.start_batch = 0
        self.skip(start_batch)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's shuffle; also clears any skip."""
        self.epoch = epoch
        self.start_batch = 0

    def skip(self, num_batches: int) -> None:
        """Start the current epoch at batch ``num_batches`` (for resuming a run)."""
        if not 0 <= num_batches <= self.num_batches:
            raise ConfigError(f"cannot skip {num_batches} batches: an epoch has {self.num_batches}.")
        self.start_batch = num_batches

    @property
    def num_batches(self) -> int:
        full, rest = divmod(len(self.lengths), self.batch_size)
        return full + int(rest > 0 and not self.drop_last)

    def __len__(self) -> int:
        return self.num_batches - self.start_batch

    def batches(self) -> list[list[int]]:
        """All batches of the current epoch, skip ignored."""
        count = len(self.lengths)
        if not self.shuffle:
            order = np.lexsort((np.arange(count), -self.lengths))
            batches = [order[i : i + self.batch_size] for i in range(0, count, self.batch_size)]
        else:
            rng = np.random.default_rng([self.seed, self.epoch])
            order = rng.permutation(count)
            bucket = self.batch_size * self.bucket_size_multiplier
            batches = []
            for start in range(0, count, bucket):
                chunk = order[start : start + bucket]
                chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
                batches.extend(chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size))
            batches = [batches[i] for i in rng.permutation(len(batches))]
        if self.drop_last:
            batches = [batch for batch in batches if len(batch) == self.batch_size]
        return [batch.tolist() for batch in batches]

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.batches()[self.start_batch :]


def padding_fraction(lengths: Sequence[int] | np.ndarray, batches: Sequence[Sequence[int]]) -> float:
    """Share of padded positions when each batch is padded to its longest example."""
    lengths = np.asarray(lengths)
    padded = sum(len(batch) * int(lengths[batch].max()) for batch in batches)
    real = sum(int(lengths[batch].sum()) for batch in batches)
    return 1.0 - real / padded if padded else 0.0


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    bucket: bool = True,
    bucket_size_multiplier: int = 50,
    num_workers: int = 0,
    drop_last: bool = False,
    collate_fn: Any = None,
) -> DataLoader:
    """A DataLoader over ``dataset`` whose ``batch_sampler`` supports ``set_epoch`` and ``skip``.

    ``bucket=True`` needs ``dataset.lengths`` (a :class:`TokenizedDataset` has them) and uses a
    :class:`LengthBucketSampler` whose sorted chunks hold ``bucket_size_multiplier`` batches
    (smaller: more random batches, more padding). ``bucket=False``: plain seeded random batches
    when shuffling, the dataset order when not. A dataset with a ``collator()`` (TokenizedDataset,
    LMDataset) is collated with its own pad ids; other datasets (images, tensors) use PyTorch's
    default collation, unless ``collate_fn`` is given.
    """
    lengths = getattr(dataset, "lengths", None)
    if bucket and lengths is None:
        raise ConfigError(
            f"data.bucket: {type(dataset).__name__} has no 'lengths' to bucket by; set bucket to false."
        )
    if bucket:
        batch_sampler: Any = LengthBucketSampler(lengths, batch_size, seed=seed, shuffle=shuffle, drop_last=drop_last,
                                                 bucket_size_multiplier=bucket_size_multiplier)
    elif shuffle:
        placeholder = np.zeros(len(dataset), dtype=np.int64)  # lengths unused with buckets of one batch
        batch_sampler = LengthBucketSampler(
            placeholder, batch_size, seed=seed, shuffle=True, bucket_size_multiplier=1, drop_last=drop_last
        )
    else:
        batch_sampler = BatchSampler(SequentialSampler(dataset), batch_size, drop_last=drop_last)
    if collate_fn is None:
        collator = getattr(dataset, "collator", None)
        collate_fn = collator() if callable(collator) else None
    return DataLoader(dataset, batch_sampler=batch_sampler, collate_fn=collate_fn, num_workers=num_workers)
