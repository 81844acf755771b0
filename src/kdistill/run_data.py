"""A run's data from its config: the splits, their texts and labels, datasets and loaders.

    tables = read_tables(config)                 # no tokenizer, no weights: what `validate` checks
    data = build_data(config, tokenizer, None)   # the same tables, tokenised
    loaders = make_loaders(config, data)

Which files make which split:

- ``train`` / ``validation`` / ``test`` files: one split each;
- ``path`` + ``split``: the file is shuffled with ``data.seed`` and cut into train/validation
  (two fractions, default [0.9, 0.1] when a ``test`` file is given) or train/validation/test
  (three fractions, default [0.8, 0.1, 0.1]); a ``test`` file beside it is the test split;
- ``builtin``: a packaged data set cut the same way.

Labels are encoded once for all splits by :mod:`kdistill.labels` (the teacher's own mapping first)
and every id is checked against the models' classes; texts follow the one missing-text rule of
:func:`kdistill.data.is_missing_text` (``data.missing_text``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from kdistill.config import IMAGE_DATA, RunConfig
from kdistill.errors import DataError
from kdistill.hf_datasets import dataset_dict_splits, is_dataset_dict_folder

SPLITS = ("train", "validation", "test")
TOKEN_KINDS = ("text", "lm", "tags", "qa")  # DataParts.kind of tokenised data (batched by length)


@dataclass
class DataParts:
    datasets: dict[str, Dataset]
    label_names: list[str] | None
    num_classes: int | None
    sources: dict[str, str]
    kind: str  # "text", "lm", "tags" (token classification), "qa" (question answering) or "image"
    labels_how: str = ""
    skipped: dict[str, int] = field(default_factory=dict)
    tables: dict[str, Any] = field(default_factory=dict)  # split -> TextTable (text data)


@dataclass
class Tables:
    """The text splits of a run before tokenisation (see :func:`read_tables`)."""

    tables: dict[str, Any]  # split -> kdistill.data.TextTable
    sources: dict[str, str]
    label_names: list[str] | None
    num_classes: int | None
    labels_how: str

    @property
    def skipped(self) -> dict[str, int]:
        return {split: len(table.skipped) for split, table in self.tables.items() if table.skipped}


class ImageDataset(Dataset):
    """Images (N, C, H, W) float32 and labels; items are ``{"inputs", "labels", "index"}``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"inputs": self.images[index], "labels": int(self.labels[index]), "index": index}


def split_ratios(spec) -> list[float]:
    """The fractions ``path``/``builtin`` data is cut into (see the module docstring)."""
    if spec.split is not None:
        return list(spec.split)
    return [0.9, 0.1] if spec.test is not None else [0.8, 0.1, 0.1]


def _builtin_records(name: str) -> list[tuple[Any, int]]:
    from kdistill import packaged

    if name == "movie_reviews":
        return packaged.movie_reviews()
    if name == "sms_spam":
        return packaged.sms_spam()
    if name == "digits":
        images, labels = packaged.digits()
        images = images / 16.0
    else:
        train_images, train_labels = packaged.fashion_mnist("train")
        test_images, test_labels = packaged.fashion_mnist("test")
        images = np.concatenate([train_images, test_images]).astype("float32") / 255.0
        labels = np.concatenate([train_labels, test_labels])
    return list(zip(images, labels.tolist()))


def _image_data(config: RunConfig) -> DataParts:
    from kdistill import data as kdata

    spec = config.data
    ratios = split_ratios(spec)
    pairs = kdata.split_records(_builtin_records(spec.builtin), ratios=ratios, seed=config.split_seed())
    pairs = {k: v[: config.limit_of(k)] for k, v in pairs.items()}
    pairs = {k: v for k, v in pairs.items() if v}
    sources = {k: f"builtin '{spec.builtin}' ({ratios} split, seed {config.split_seed()})" for k in pairs}
    datasets: dict[str, Dataset] = {}
    for split, items in pairs.items():
        images = torch.as_tensor(np.stack([x for x, _ in items]))[:, None]
        datasets[split] = ImageDataset(images.float(), torch.tensor([y for _, y in items]))
    return DataParts(datasets, None, 10, sources, "image", "class ids of the packaged images (10 classes)")


def _text_records(config: RunConfig) -> tuple[dict[str, list], dict[str, str], Any, str | None]:
    """Records per split, where each split came from, the text column(s) and the label column."""
    from kdistill import data as kdata

    spec = config.data
    seed = config.split_seed()
    records: dict[str, list] = {}
    sources: dict[str, str] = {}
    if is_dataset_dict_folder(spec.path):  # a saved DatasetDict: its own splits
        records = dataset_dict_splits(spec.path)
        sources = {split: f"{spec.path} [{split}]" for split in records}
        text, label = spec.text, spec.label
    elif spec.builtin is not None or spec.path is not None:
        ratios = split_ratios(spec)
        if spec.builtin is not None:
            loaded = [{"text": t, "label": y} for t, y in _builtin_records(spec.builtin)]
            origin, text, label = f"builtin '{spec.builtin}'", "text", "label"
        else:
            loaded = kdata.load_records(spec.path, format=spec.format)
            origin, text, label = spec.path, spec.text, spec.label
        cut = kdata.split_records(loaded, ratios=ratios, seed=seed)
        for (split, part), ratio in zip(cut.items(), ratios):
            if not part and ratio > 0:
                raise DataError(f"data.split: {ratios} of the {len(loaded)} records of {origin} leaves the "
                                f"'{split}' split empty; give more records, a larger fraction, or 0 for no "
                                f"'{split}' split.")
            if part:
                records[split] = part
                sources[split] = f"{origin} ({ratios} split, seed {seed})"
        if spec.test is not None:  # a test file beside a path cut into train/validation
            records["test"] = kdata.load_records(spec.test, format=spec.format)
            sources["test"] = spec.test
    else:
        text, label = spec.text, spec.label
        for split in SPLITS:
            file = getattr(spec, split)
            if file is not None:
                records[split] = kdata.load_records(file, format=spec.format)
                sources[split] = file
    records = {k: v[: config.limit_of(k)] for k, v in records.items()}
    return records, sources, text, label


def read_tables(config: RunConfig) -> Tables:
    """Read every text split of ``config`` and encode its labels; needs no tokenizer and no weights.

    Raises :class:`DataError` for a missing text (unless ``data.missing_text: skip``), a label the
    teacher does not know, or a label outside the models' classes — naming the file and record.
    """
    if config._tables is None:  # validation read them already for a config it returned
        config._tables = _read_tables(config)
    return config._tables


def _read_tables(config: RunConfig) -> Tables:
    from kdistill import data as kdata
    from kdistill import labels as klabels

    records, sources, text, label = _text_records(config)
    missing = config.data.missing_text
    if label is None:
        tables = {split: kdata.text_table(rows, text=text, label=None, source=sources[split], missing_text=missing)
                  for split, rows in records.items()}
        return Tables(tables, sources, None, None, "unlabelled data")
    # Texts first (which records stay), then the labels of the kept records, encoded once for all splits.
    plain = {split: kdata.text_table(rows, text=text, label=None, source=sources[split], missing_text=missing)
             for split, rows in records.items()}
    values = {}
    for split, rows in records.items():
        kdata.require_column(rows, label, sources[split])
        # " positive" (a CSV written "text, label") is the class "positive", as " 1" is the class 1.
        values[split] = [_strip(rows[row][label]) for row in plain[split].records]
    encoding = klabels.choose_encoding(values, klabels.teacher_labels(config.teacher), column=label, sources=sources)
    tables = {}
    for split, table in plain.items():
        ids, names = kdata.encode_labels(values[split], label, encoding.names, sources[split], table.records)
        tables[split] = kdata.TextTable(table.texts, ids, names, table.text_columns, label, table.records,
                                        table.skipped)
    # The bound is the teacher's classifier size or the names; otherwise (integer labels, a teacher
    # whose size config.json does not tell) build() checks against the loaded models' outputs.
    classes = encoding.classes if encoding.classes is not None else (len(encoding.names) if encoding.names else None)
    meaning = encoding.names or (list(encoding.teacher_names) if encoding.teacher_names else None)
    train_classes = max(tables["train"].labels, default=-1) + 1 if "train" in tables else 0
    if encoding.classes is not None and train_classes > encoding.classes:
        if config.teacher.finetune is not None:  # the fine-tune makes the head: its size is the user's setting
            raise DataError(f"teacher.num_labels: {encoding.classes}, but the data has {train_classes} classes; the "
                            "fine-tune gives the teacher one output per class: set it to "
                            f"{train_classes} or leave it out.")
        raise DataError(klabels.too_many_classes("teacher", encoding.classes, train_classes))
    for split, table in tables.items():
        klabels.check_label_range(table.labels, classes, source=sources[split], column=label,
                                  records=table.records, names=meaning)
    if classes is None and "train" in tables:
        classes = max(tables["train"].labels, default=-1) + 1
    return Tables(tables, sources, encoding.names, classes, encoding.how)


def _strip(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


def build_data(config: RunConfig, tokenizer: Any, student_tokenizer: Any) -> DataParts:
    """Datasets per split (train, validation, test where given; unlabelled when configured)."""
    from kdistill import data as kdata

    spec = config.data
    if spec.builtin in IMAGE_DATA:
        return _image_data(config)
    if config.lm_kind() is not None:
        return _lm_data(config, tokenizer, student_tokenizer)
    if config.tagged():
        return _tagged_data(config, tokenizer)
    if config.answers_questions():
        return _qa_data(config, tokenizer)
    read = read_tables(config)
    datasets: dict[str, Dataset] = {
        split: kdata.TokenizedDataset(table.texts, table.labels, tokenizer, max_length=spec.max_length,
                                      student_tokenizer=student_tokenizer)
        for split, table in read.tables.items()
    }
    sources = dict(read.sources)
    if spec.unlabelled is not None:
        texts = _unlabelled_texts(spec)[: config.limit_of("unlabelled")]
        datasets["unlabelled"] = kdata.TokenizedDataset(texts, None, tokenizer, max_length=spec.max_length,
                                                        student_tokenizer=student_tokenizer)
        sources["unlabelled"] = spec.unlabelled
    return DataParts(datasets, read.label_names, read.num_classes, sources, "text", read.labels_how, read.skipped,
                     read.tables)


def _tagged_data(config: RunConfig, tokenizer: Any) -> DataParts:
    """A token-classification run's splits (:mod:`kdistill.conll`), tokenised with the first sub-token of
    each word labelled (:class:`kdistill.token_tags.TaggedDataset`)."""
    from kdistill.conll import read_tag_tables
    from kdistill.token_tags import TaggedDataset

    read = read_tag_tables(config)
    datasets: dict[str, Dataset] = {
        split: TaggedDataset([s.words for s in sentences], read.tag_ids(split), tokenizer,
                             tag_names=read.tag_names, max_length=config.data.max_length)
        for split, sentences in read.sentences.items()}
    return DataParts(datasets, read.tag_names, len(read.tag_names), dict(read.sources), "tags", read.how)


def _qa_data(config: RunConfig, tokenizer: Any) -> DataParts:
    """A question-answering run's splits (:mod:`kdistill.squad`), cut into windows with the answer's token
    positions (:class:`kdistill.qa_spans.QADataset`)."""
    from kdistill.qa_spans import QADataset
    from kdistill.squad import read_qa_tables

    read = read_qa_tables(config)
    spec = config.data
    datasets: dict[str, Dataset] = {
        split: QADataset(records, tokenizer, max_length=spec.max_length, stride=spec.stride,
                         max_answer_length=spec.max_answer_length)
        for split, records in read.records.items()}
    how = (f"answer spans: start and end token of the first gold answer in each window of {spec.max_length} tokens "
           f"(stride {spec.stride}), CLS where the window does not hold it")
    return DataParts(datasets, None, None, dict(read.sources), "qa", how)


def _lm_data(config: RunConfig, tokenizer: Any, student_tokenizer: Any = None) -> DataParts:
    """A causal-LM run's splits (:mod:`kdistill.lm_data`): files read and checked, then tokenised with
    the loss on the completion (assistant) tokens only; a ``builtin`` set gives its texts. With a
    ``student_tokenizer`` each split is tokenised by both (:class:`kdistill.lm_pairs.PairedLMDataset`)."""
    from kdistill import lm_data

    spec, kind = config.data, config.lm_kind()
    per_split, sources = lm_split_records(config)
    text = spec.text if spec.builtin is None else "text"

    def tokenise(rows: list, split: str, with_tokenizer: Any) -> Any:
        return lm_data.lm_dataset(kind, rows, with_tokenizer, spec.max_length, text=text, prompt=spec.prompt,
                                  completion=spec.completion, messages=spec.messages, pack=spec.pack,
                                  source=sources[split])

    datasets: dict[str, Dataset] = {}
    for split, rows in per_split.items():
        rows = rows[: config.limit_of(split)]
        datasets[split] = tokenise(rows, split, tokenizer)
        if student_tokenizer is not None:
            from kdistill.lm_pairs import PairedLMDataset

            datasets[split] = PairedLMDataset(datasets[split], tokenise(rows, split, student_tokenizer), len(rows))
    return DataParts(datasets, None, None, sources, "lm", f"{kind}: loss on "
                     + ("every token" if kind == "text" else "the completion tokens only" if kind == "prompt_completion"
                        else "the assistant turns only"))


def lm_split_records(config: RunConfig) -> tuple[dict[str, list], dict[str, str]]:
    """A causal-LM run's records per split (read and checked, before ``data.limit``) and where each
    split came from: a saved DatasetDict's own splits, one file or set cut by ``split``, or a file per split."""
    from kdistill import lm_data

    spec, kind = config.data, config.lm_kind()
    if is_dataset_dict_folder(spec.path):  # a saved DatasetDict: its own splits
        per_split = lm_data.lm_records(spec.path, kind, spec)
        return per_split, {split: f"{spec.path} [{split}]" for split in per_split}
    if spec.builtin is not None or spec.path is not None:
        records = ([{"text": t} for t, _ in _builtin_records(spec.builtin)] if spec.builtin is not None else
                   lm_data.read_lm_records(spec.path, kind, text=spec.text, prompt=spec.prompt,
                                           completion=spec.completion, messages=spec.messages, format=spec.format))
        ratios = split_ratios(spec)
        from kdistill import data as kdata

        per_split = {k: v for k, v in kdata.split_records(records, ratios=ratios, seed=config.split_seed()).items() if v}
        origin = f"builtin '{spec.builtin}'" if spec.builtin is not None else spec.path
        return per_split, {k: f"{origin} ({ratios} split, seed {config.split_seed()})" for k in per_split}
    per_split, sources = {}, {}
    for split in SPLITS:
        file = getattr(spec, split)
        if file is not None:
            per_split[split] = lm_data.read_lm_records(file, kind, text=spec.text, prompt=spec.prompt,
                                                       completion=spec.completion, messages=spec.messages,
                                                       format=spec.format)
            sources[split] = file
    return per_split, sources


def _unlabelled_texts(spec) -> list:
    """The texts of ``data.unlabelled``: a packaged set (``builtin:NAME``), a ``.txt`` file (one text a
    line) or a table's text column."""
    from kdistill import data as kdata
    from kdistill import packaged

    name = packaged.builtin_name(spec.unlabelled)
    if name is not None:
        return packaged.BUILTIN_TEXTS[name]()
    path = Path(spec.unlabelled)
    if path.suffix.lower() == ".txt":
        lines = path.read_text(encoding="utf-8-sig").splitlines()
        texts = [line.strip() for line in lines if not kdata.is_missing_text(line)]
        if not texts:
            raise DataError(f"data.unlabelled: '{path}' holds no text.")
    else:
        texts = kdata.text_table(kdata.load_records(path, format=spec.format), text=spec.text, label=None,
                                 source=str(path), missing_text=spec.missing_text).texts
    return texts


class TextOnly(Dataset):
    """A tokenised dataset whose items have ``labels = -100``: the teacher is their only target."""

    def __init__(self, dataset: Any):
        self.dataset = dataset
        self.lengths = dataset.lengths

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return {**self.dataset[index], "labels": -100}

    def collator(self) -> Any:
        return self.dataset.collator()


class Joined(ConcatDataset):
    """Datasets one after the other, with their ``lengths`` (for length-bucketed batches). An item's
    ``index`` is its position in the joined dataset (each part numbers its own items from 0, so the
    teacher cache, keyed by ``index``, would otherwise read the labelled split's rows for the
    unlabelled texts)."""

    def __init__(self, parts: list[Dataset]):
        super().__init__(parts)
        self.lengths = np.concatenate([part.lengths for part in parts])

    def __getitem__(self, index: int) -> Any:
        item = super().__getitem__(index)
        if isinstance(item, dict) and "index" in item:
            item = {**item, "index": int(index if index >= 0 else len(self) + index)}
        return item


def tokenized(part: Dataset) -> Any:
    """The TokenizedDataset under ``part`` (itself, or what a TextOnly wraps)."""
    return part.dataset if isinstance(part, TextOnly) else part


def stage_data(config: RunConfig, data_name: str, has_matches: bool) -> str:
    """The data a stage trains on: ``data.distil_on: train+unlabelled`` adds the unlabelled texts to
    every stage that learns from a teacher (their labels ignored)."""
    if data_name == "train" and has_matches and config.data.distil_on == "train+unlabelled":
        return "train+unlabelled"
    return data_name


def stage_parts(config: RunConfig, data: DataParts, name: str) -> list[Dataset]:
    """The datasets a stage reading ``name`` (see :func:`stage_data`) trains on, in order. With
    ``distil_on: train+unlabelled`` a stage on raw text reads the training texts too."""
    datasets = data.datasets
    if name == "train+unlabelled":
        return [datasets["train"], TextOnly(datasets["unlabelled"])]
    if name == "unlabelled" and config.data.distil_on == "train+unlabelled":
        return [TextOnly(datasets["train"]), TextOnly(datasets["unlabelled"])]
    return [datasets[name]]


def training_loader(config: RunConfig, data: DataParts, parts: list[Dataset], collate_fn: Any = None) -> DataLoader:
    """Shuffled (length-bucketed) batches over ``parts``, seeded by ``data.seed``."""
    from kdistill.data import make_loader

    dataset = parts[0] if len(parts) == 1 else Joined(parts)
    if collate_fn is None and len(parts) > 1:
        collate_fn = parts[0].collator()
    if collate_fn is None and len(parts) == 1:
        collate_fn = lm_collate(parts[0])
    return make_loader(dataset, config.data.batch_size, shuffle=True, seed=config.data_seed(),
                       bucket=bool(config.data.bucket) and data.kind in TOKEN_KINDS, collate_fn=collate_fn,
                       bucket_size_multiplier=bucket_chunks(config))


def lm_collate(dataset: Dataset) -> Any:
    """A causal-LM dataset's collation with next-token targets (:class:`kdistill.lm_data.NextTokenTargets`);
    None (the default) for any other dataset."""
    from kdistill.lm_data import LMDataset, NextTokenTargets
    from kdistill.lm_pairs import PairedLMDataset

    return NextTokenTargets(dataset.collator()) if isinstance(dataset, (LMDataset, PairedLMDataset)) else None


def bucket_chunks(config: RunConfig) -> int:
    """Batches per length-sorted chunk: ``data.bucket`` when a number, else 50."""
    bucket = config.data.bucket
    return bucket if type(bucket) is int else 50


def make_loaders(config: RunConfig, data: DataParts) -> dict[str, DataLoader]:
    from kdistill.data import make_loader

    spec = config.data
    bucket = bool(spec.bucket) and data.kind in TOKEN_KINDS
    loaders = {}
    for split, dataset in data.datasets.items():
        train = split in ("train", "unlabelled")
        size = spec.batch_size if train else (spec.eval_batch_size or spec.batch_size)
        loaders[split] = make_loader(dataset, size, shuffle=train, seed=config.data_seed(), bucket=bucket,
                                     bucket_size_multiplier=bucket_chunks(config), collate_fn=lm_collate(dataset))
    return loaders


__all__ = ["DataParts", "ImageDataset", "Joined", "Tables", "TextOnly", "build_data", "make_loaders", "read_tables",
           "split_ratios", "stage_data", "stage_parts", "tokenized", "training_loader"]
