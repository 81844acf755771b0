"""Extractive question answering data (SQuAD's shape): read and checked before any weight loads.

    records = read_squad("train.jsonl")          # [QARecord(id, question, context, answers, starts, where), …]
    tables = read_qa_tables(config)              # every split of a run

The format (``data.kind: squad``, the default data of ``teacher.task: question-answering``): one record
per line of a JSONL file, or a JSON file holding a list of records (Hugging Face's ``squad`` rows) or
SQuAD v1.1's own nesting (``{"data": [{"paragraphs": [{"context", "qas": [...]}]}]}``)::

    {"id": "q1", "question": "Where was Ada born?", "context": "Ada was born in Leeds.",
     "answers": {"text": ["Leeds"], "answer_start": [16]}}

Checks, each a :class:`~kdistill.errors.DataError` naming the file and the line (JSONL) or record
(JSON) and the record's id: a missing or non-string ``id``/``question``/``context``; ``answers``
missing or not ``{text: [...], answer_start: [...]}`` of equal lengths; no answer at all (every
record of extractive QA has one; SQuAD 2.0's unanswerable questions are refused); an empty answer
text; and an answer whose text is not ``context[answer_start : answer_start + len(text)]``. Ids must
be unique within a file (the evaluation groups a record's windows by id).

No extractive QA set ships inside a package here, so kdistill has no ``builtin`` one: runs and
tests use data made in the repository (``examples/data/qa_*.jsonl``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdistill.errors import DataError

KEYS = ("id", "question", "context", "answers")


@dataclass(frozen=True)
class QARecord:
    """One question on one context. ``answers``/``starts``: the gold answers and their character
    offsets in ``context`` (checked equal); ``where``: ``file:line`` or ``file record N`` for errors."""

    id: str
    question: str
    context: str
    answers: tuple[str, ...]
    starts: tuple[int, ...]
    where: str


def _raw_records(path: Path) -> list[tuple[str, Any]]:
    """(where, raw record) of a JSONL or JSON file."""
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"{source}: cannot be read ({exc.strerror or exc}).") from None
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append((f"{source}:{number}", json.loads(line)))
            except ValueError as exc:
                raise DataError(f"{source}:{number}: not a JSON record ({exc}).") from None
        return rows
    try:
        whole = json.loads(text)
    except ValueError as exc:
        raise DataError(f"{source}: not JSON ({exc}); give a JSONL file (one record a line) or a JSON list.") from None
    if isinstance(whole, dict) and isinstance(whole.get("data"), list):  # SQuAD v1.1's nesting
        return _flatten_squad(whole["data"], source)
    if not isinstance(whole, list):
        raise DataError(f"{source}: a JSON file of QA data holds a list of records or SQuAD's "
                        "{\"data\": [{\"paragraphs\": …}]}, not a " + type(whole).__name__ + ".")
    return [(f"{source} record {number}", row) for number, row in enumerate(whole, start=1)]


def _flatten_squad(articles: list, source: str) -> list[tuple[str, Any]]:
    """SQuAD v1.1's articles → paragraphs → questions as flat records ({id, question, context, answers})."""
    rows = []
    for a, article in enumerate(articles, start=1):
        for p, paragraph in enumerate(article.get("paragraphs", []) if isinstance(article, dict) else [], start=1):
            for q, qa in enumerate(paragraph.get("qas", []) if isinstance(paragraph, dict) else [], start=1):
                answers = qa.get("answers") if isinstance(qa, dict) else None
                flat = dict(qa) if isinstance(qa, dict) else {}
                flat["context"] = paragraph.get("context")
                if isinstance(answers, list):
                    flat["answers"] = {"text": [x.get("text") for x in answers if isinstance(x, dict)],
                                       "answer_start": [x.get("answer_start") for x in answers if isinstance(x, dict)]}
                rows.append((f"{source} article {a}, paragraph {p}, question {q}", flat))
    return rows


def check_record(raw: Any, where: str) -> QARecord:
    """One raw record as a :class:`QARecord`, or a DataError naming ``where`` and what is wrong."""
    if not isinstance(raw, dict):
        raise DataError(f"{where}: a QA record is a JSON object with keys {', '.join(KEYS)}, not a "
                        f"{type(raw).__name__}.")
    missing = [key for key in KEYS if key not in raw]
    if missing:
        raise DataError(f"{where}: the record lacks {', '.join(repr(k) for k in missing)} (a QA record has "
                        f"{', '.join(KEYS)}; answers is {{text: [...], answer_start: [...]}}).")
    name = raw["id"]
    if not isinstance(name, (str, int)) or isinstance(name, bool) or str(name) == "":
        raise DataError(f"{where}: 'id' must be a non-empty string, got {name!r}.")
    name = str(name)
    for key in ("question", "context"):
        if not isinstance(raw[key], str) or not raw[key].strip():
            raise DataError(f"{where} (id {name!r}): '{key}' must be a non-empty string, got {raw[key]!r}.")
    answers = raw["answers"]
    if not isinstance(answers, dict) or not isinstance(answers.get("text"), list) \
            or not isinstance(answers.get("answer_start"), list):
        raise DataError(f"{where} (id {name!r}): 'answers' must be {{text: [...], answer_start: [...]}}, got "
                        f"{answers!r}.")
    texts, starts = answers["text"], answers["answer_start"]
    if len(texts) != len(starts):
        raise DataError(f"{where} (id {name!r}): answers has {len(texts)} texts but {len(starts)} answer_start "
                        "values; give one start per text.")
    if not texts:
        raise DataError(f"{where} (id {name!r}): the record has no answer; extractive QA here needs at least one "
                        "(unanswerable questions, as in SQuAD 2.0, are not supported).")
    context = raw["context"]
    for text, start in zip(texts, starts):
        if not isinstance(text, str) or not text:
            raise DataError(f"{where} (id {name!r}): an answer text must be a non-empty string, got {text!r}.")
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise DataError(f"{where} (id {name!r}): answer_start must be a character offset ≥ 0, got {start!r}.")
        found = context[start: start + len(text)]
        if found != text:
            at = context.find(text)
            hint = f" (it occurs at {at})" if at >= 0 else " (it does not occur in the context at all)"
            raise DataError(f"{where} (id {name!r}): answer {text!r} is not in its context at {start}: the "
                            f"context there reads {found!r}{hint}.")
    return QARecord(name, raw["question"], context, tuple(texts), tuple(int(s) for s in starts), where)


def read_squad(path: str | Path) -> list[QARecord]:
    """Every record of a SQuAD-shaped JSONL or JSON file, checked (see the module docstring)."""
    path = Path(path)
    records = [check_record(raw, where) for where, raw in _raw_records(path)]
    if not records:
        raise DataError(f"{path}: holds no QA records (an empty file).")
    seen: dict[str, str] = {}
    for record in records:
        if record.id in seen:
            raise DataError(f"{record.where}: id {record.id!r} is used again (first at {seen[record.id]}); "
                            "each question needs its own id.")
        seen[record.id] = record.where
    return records


@dataclass
class QATables:
    """The QA splits of a run before tokenisation (see :func:`read_qa_tables`)."""

    records: dict[str, list[QARecord]]
    sources: dict[str, str]


def read_qa_tables(config: Any) -> QATables:
    """Every split of a question-answering run, read and checked (no tokenizer, no weights: ``validate``
    runs it). Read once per config."""
    if config._tables is None:
        config._tables = _read_qa_tables(config)
    return config._tables


def _read_qa_tables(config: Any) -> QATables:
    from kdistill.data import split_records
    from kdistill.run_data import SPLITS, split_ratios

    spec = config.data
    splits: dict[str, list[QARecord]] = {}
    sources: dict[str, str] = {}
    if spec.path is not None:
        whole = read_squad(spec.path)
        ratios = split_ratios(spec)
        for (split, part), ratio in zip(split_records(whole, ratios=ratios, seed=config.split_seed()).items(), ratios):
            if not part and ratio > 0:
                raise DataError(f"data.split: {ratios} of the {len(whole)} records of {spec.path} leaves the "
                                f"'{split}' split empty; give more records, a larger fraction, or 0 for no '{split}' "
                                "split.")
            if part:
                splits[split] = part
                sources[split] = f"{spec.path} ({ratios} split, seed {config.split_seed()})"
        if spec.test is not None:
            splits["test"], sources["test"] = read_squad(spec.test), spec.test
    else:
        for split in SPLITS:
            file = getattr(spec, split)
            if file is not None:
                splits[split], sources[split] = read_squad(file), file
    splits = {split: records[: config.limit_of(split)] for split, records in splits.items()}
    return QATables(splits, sources)


__all__ = ["KEYS", "QARecord", "QATables", "check_record", "read_qa_tables", "read_squad"]
