"""Held-out examples to check an export and measure a model on: a labelled file, a run's own split,
or random token ids when there is no data (``kdistill export`` and ``kdistill bench``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdistill.errors import DataError

DATA_EXTENSIONS = (".csv", ".tsv", ".jsonl", ".json")

Batch = dict[str, torch.Tensor]

# ---------------------------------------------------------------------------------------------
# Held-out data: the run's test split, a data file, or nothing


@dataclass
class HeldOut:
    """Labelled (or unlabelled) examples to check and measure on, and where they came from."""

    texts: list[Any]
    labels: list[int] | None
    source: str
    max_length: int = 128


def _table(path: Path, text_column: Any, label_column: str | None, source: str, max_length: int,
           label_names: Sequence[str] | None = None) -> HeldOut:
    """A labelled file; string labels take the ids of ``label_names`` (the model's own ``id2label``)."""
    from kdistill.data import label_values_are_ints, load_records, text_table

    records = load_records(path)
    if label_column is not None and label_column not in records[0]:
        label_column = None
    names = label_names
    if label_column is not None and names and label_values_are_ints([r.get(label_column) for r in records]):
        names = None  # integer labels are class ids as they stand
    table = text_table(records, text=text_column, label=label_column, source=str(path), label_names=names)
    return HeldOut(table.texts, table.labels, source, max_length)


def _from_run(run_dir: Path, split: str) -> HeldOut | None:
    """The run's own ``split``, rebuilt by the run's rules (:class:`kdistill.run_folder.RunFolder`)."""
    from kdistill.run_folder import RunFolder

    folder = RunFolder(run_dir)
    if not folder.is_run:
        return None
    table = folder.split(split)
    if table is None:
        return None
    return HeldOut(list(table.texts), table.labels, f"{split} split of the run in {run_dir}",
                   folder.config().data.max_length)


def held_out(
    run_dir: str | Path | None,
    *,
    split: str = "test",
    data: str | Path | None = None,
    text_column: Any = "text",
    label_column: str | None = "label",
    max_length: int | None = None,
    label_names: Sequence[str] | None = None,
) -> HeldOut | None:
    """Examples to check and measure on; ``None`` when there are none.

    In order: ``data`` (a CSV/TSV/JSONL file); the run's own ``split`` when ``run_dir`` is a
    kdistill run folder (its config's files, cut, missing-text rule and label ids); a
    ``data/<split>.*`` or ``<split>.*`` file beside the model. String labels of a file take the ids of ``label_names``
    (default: the run's student's ``id2label``), so predictions and labels mean the same classes.
    """
    from kdistill.run_folder import model_label_names

    found: HeldOut | None = None
    if data is not None:
        path = Path(data)
        if not path.exists():
            raise DataError(f"--data: '{path}' does not exist.")
        found = _table(path, text_column, label_column, f"file {path}", max_length or 128, label_names)
    elif run_dir is not None:
        run_dir = Path(run_dir)
        names = label_names if label_names is not None else model_label_names(run_dir / "student")
        found = _from_run(run_dir, split)
        for folder in (run_dir / "data", run_dir):
            for ext in DATA_EXTENSIONS:
                if found is None and (folder / f"{split}{ext}").is_file():
                    found = _table(folder / f"{split}{ext}", text_column, label_column,
                                   f"{split} file {folder / (split + ext)}", max_length or 128, names)
    if found is not None and max_length is not None:
        found.max_length = max_length
    return found


def text_batches(tokenizer: Any, texts: Sequence[Any], input_names: Sequence[str], *, batch_size: int,
                 max_length: int) -> list[Batch]:
    """Tokenised, padded batches of ``texts`` in order (``token_type_ids`` zeros if the tokenizer has none)."""
    batches = []
    for start in range(0, len(texts), batch_size):
        part = list(texts[start : start + batch_size])
        pairs = not isinstance(part[0], str)
        first = [t[0] if pairs else t for t in part]
        second = [t[1] for t in part] if pairs else None
        encoded = tokenizer(first, second, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        batch = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
        if "token_type_ids" in input_names:
            batch["token_type_ids"] = encoded.get("token_type_ids", torch.zeros_like(encoded["input_ids"]))
        batches.append({name: batch[name].long() for name in input_names})
    return batches


def random_batches(model: nn.Module, input_names: Sequence[str], *, count: int = 8, batch_size: int = 8,
                   max_length: int = 32, seed: int = 0) -> list[Batch]:
    """Seeded random token ids of varied lengths, the last rows padded (when no real data is at hand)."""
    config = model.config
    generator = torch.Generator().manual_seed(seed)
    vocab = int(getattr(config, "vocab_size", 100))
    longest = min(max_length, int(getattr(config, "max_position_embeddings", max_length) or max_length))
    batches = []
    for index in range(count):
        length = int(torch.randint(2, longest + 1, (), generator=generator)) if index else longest
        ids = torch.randint(0, vocab, (batch_size, length), generator=generator)
        mask = torch.ones_like(ids)
        for row in range(batch_size // 2, batch_size):
            cut = int(torch.randint(1, length + 1, (), generator=generator))
            mask[row, cut:] = 0
        batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
        batches.append({name: batch[name] for name in input_names})
    return batches


def check_batches_for(model: nn.Module, tokenizer: Any, data: HeldOut | None, input_names: Sequence[str], *,
                      limit: int = 2048, batch_size: int = 32) -> tuple[list[Batch], str]:
    """Held-out batches (at most ``limit`` examples) and their description; random tokens without data."""
    if data is not None and tokenizer is not None and data.texts:
        texts = data.texts[:limit]
        max_length = min(data.max_length, int(getattr(model.config, "max_position_embeddings", data.max_length)))
        return text_batches(tokenizer, texts, input_names, batch_size=batch_size, max_length=max_length), data.source
    return random_batches(model, input_names), "random token ids (no held-out data found)"
