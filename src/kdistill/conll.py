"""Word-level BIO tags from two-column (CoNLL) files: read, checked and encoded before any weight loads.

    sentences = read_conll("train.conll")        # [TaggedSentence(words, tags, line), …]
    tables = read_tag_tables(config)             # every split, the tag names in id order

The format (``data.kind: conll``, the default data of ``teacher.task: token-classification``):

- one word a line: ``token<TAB>tag``; a line without a tab is split on spaces. The first field is
  the word and the last the tag, so a CoNLL-2003 line (``EU NNP B-NP B-ORG``) reads as ``EU`` /
  ``B-ORG``. A line with one field, or an empty word or tag, is a :class:`DataError` naming the
  file and line;
- sentences are separated by lines that are empty or hold only white space (a lone tab, as the
  WNUT-16 file has); ``-DOCSTART-`` lines (CoNLL-2003) are skipped;
- tags are BIO: ``O``, ``B-TYPE`` or ``I-TYPE`` with a non-empty TYPE. Anything else (a bare
  ``B-``, ``PER``, IOBES's ``S-PER``/``E-PER``) is a DataError naming the tag, the file and the line.
  An ``I-TYPE`` that opens an entity (IOB1 files) is accepted: it starts an entity, as seqeval's
  default mode counts it (:mod:`kdistill.token_tags`).

Tag ids: the teacher's own ``id2label`` when it is a token classifier whose head is kept and names
its tags (a data tag it does not know is a DataError); otherwise ``O`` first, then the other tags
of every split in sorted order, read before ``data.limit`` (a type seen only in validation or test,
or only past the limit, still gets an output).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdistill.errors import DataError, suggest

_TAG = re.compile(r"^(O|[BI]-\S+)$")
DOCSTART = "-DOCSTART-"


@dataclass(frozen=True)
class TaggedSentence:
    """One sentence: its words, their BIO tags, and the file line of its first word (for errors)."""

    words: tuple[str, ...]
    tags: tuple[str, ...]
    line: int


def read_conll(path: str | Path, *, name: str | None = None) -> list[TaggedSentence]:
    """The sentences of a two-column file (see the module docstring); ``name`` replaces the path in errors."""
    path = Path(path)
    where = name or str(path)
    if not path.is_file():
        raise DataError(f"{where}: the data file does not exist." if not path.exists()
                        else f"{where}: is a folder; give a two-column (CoNLL) file.")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{where}: not UTF-8 (byte {exc.start}); save it as UTF-8.") from None
    sentences: list[TaggedSentence] = []
    words: list[str] = []
    tags: list[str] = []
    first = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            if words:
                sentences.append(TaggedSentence(tuple(words), tuple(tags), first))
                words, tags = [], []
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        word, tag = fields[0].strip(), fields[-1].strip()
        if word == DOCSTART:
            continue
        if len(fields) < 2 or not word or not tag:
            raise DataError(f"{where}:{number}: {line[:60]!r} is not 'word<TAB>tag' (one word and its BIO tag a "
                            "line, a blank line between sentences).")
        if not _TAG.match(tag):
            raise DataError(f"{where}:{number}: the tag {tag!r} (word {word!r}) is not a BIO tag: expected 'O', "
                            "'B-TYPE' or 'I-TYPE' with a type name after the dash (e.g. B-person, I-person).")
        if not words:
            first = number
        words.append(word)
        tags.append(tag)
    if words:
        sentences.append(TaggedSentence(tuple(words), tuple(tags), first))
    if not sentences:
        raise DataError(f"{where}: holds no tagged words (an empty file, or blank lines only).")
    return sentences


def entity_type(tag: str) -> str | None:
    """``'person'`` for ``B-person``/``I-person``; None for ``O``."""
    return None if tag == "O" else tag[2:]


# ---------------------------------------------------------------------------------------------
# Tag ids


@dataclass(frozen=True)
class TeacherTags:
    """What the teacher's ``config.json`` says about its tags: names in id order (None when it names
    none, or its head is replaced), and where that came from (for the plan)."""

    names: tuple[str, ...] | None
    source: str


def teacher_tags(spec: Any) -> TeacherTags:
    """The tag names of a token-classification teacher's kept head (reads ``config.json`` only)."""
    from kdistill.labels import class_names

    if spec.path is None:
        return TeacherTags(None, "the teacher is built by a factory")
    if spec.finetune is not None:
        return TeacherTags(None, "teacher.finetune trains a new head on these tags")
    config_file = Path(spec.path) / "config.json"
    try:
        raw = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return TeacherTags(None, f"{config_file} could not be read")
    if not any(str(a).endswith("ForTokenClassification") for a in raw.get("architectures") or ()):
        return TeacherTags(None, f"{config_file} has no token-classification head (a new one is made)")
    names = class_names(raw.get("id2label") or {})
    if names is None:
        return TeacherTags(None, f"{config_file} does not name its tags")
    if spec.num_labels is not None and spec.num_labels != len(names):
        return TeacherTags(None, f"teacher.num_labels {spec.num_labels} replaces the checkpoint's {len(names)}-tag head")
    return TeacherTags(names, f"id2label in {config_file}")


def tag_names(splits: dict[str, list[TaggedSentence]], sources: dict[str, str], teacher: TeacherTags
              ) -> tuple[list[str], str]:
    """The tag names in id order and a sentence saying why (see the module docstring)."""
    if teacher.names is not None:
        known = set(teacher.names)
        for split, sentences in splits.items():
            for sentence in sentences:
                for offset, tag in enumerate(sentence.tags):
                    if tag not in known:
                        raise DataError(
                            f"{sources[split]}:{sentence.line + offset}: the tag '{tag}' is not one of the teacher's "
                            f"tags{suggest(tag, teacher.names) or '.'} The teacher's tags ({teacher.source}): "
                            f"{', '.join(teacher.names)}. Check the data, or fine-tune a new head (teacher.finetune).")
        return list(teacher.names), f"the teacher's tag ids, from {teacher.source}"
    seen = {tag for sentences in splits.values() for sentence in sentences for tag in sentence.tags}
    names = ["O", *sorted(seen - {"O"})]
    return names, f"'O' first, then the data's tags in sorted order ({teacher.source})"


# ---------------------------------------------------------------------------------------------
# A run's splits


@dataclass
class TagTables:
    """The tagged splits of a run before tokenisation (see :func:`read_tag_tables`)."""

    sentences: dict[str, list[TaggedSentence]]
    sources: dict[str, str]
    tag_names: list[str]
    how: str

    def tag_ids(self, split: str) -> list[list[int]]:
        ids = {name: i for i, name in enumerate(self.tag_names)}
        return [[ids[tag] for tag in sentence.tags] for sentence in self.sentences[split]]


def read_tag_tables(config: Any) -> TagTables:
    """Every split of a token-classification run, read, checked and given tag ids (no tokenizer, no
    weights: ``validate`` runs it). Read once per config."""
    if config._tables is None:
        config._tables = _read_tag_tables(config)
    return config._tables


def _read_tag_tables(config: Any) -> TagTables:
    from kdistill.data import split_records
    from kdistill.run_data import SPLITS, split_ratios

    spec = config.data
    splits: dict[str, list[TaggedSentence]] = {}
    sources: dict[str, str] = {}
    files: dict[str, str] = {}  # the file each split's lines are in (errors name file:line)
    if spec.builtin is not None or spec.path is not None:
        if spec.builtin is not None:
            from kdistill.packaged import wnut16_ner_path

            file, origin = str(wnut16_ner_path()), f"builtin '{spec.builtin}'"
        else:
            file, origin = spec.path, spec.path
        whole = read_conll(file)
        ratios = split_ratios(spec)
        for (split, part), ratio in zip(split_records(whole, ratios=ratios, seed=config.split_seed()).items(), ratios):
            if not part and ratio > 0:
                raise DataError(f"data.split: {ratios} of the {len(whole)} sentences of {origin} leaves the '{split}' "
                                f"split empty; give more sentences, a larger fraction, or 0 for no '{split}' split.")
            if part:
                splits[split], files[split] = part, file
                sources[split] = f"{origin} ({ratios} split, seed {config.split_seed()})"
        if spec.test is not None:
            splits["test"], sources["test"], files["test"] = read_conll(spec.test), spec.test, spec.test
    else:
        for split in SPLITS:
            file = getattr(spec, split)
            if file is not None:
                splits[split], sources[split], files[split] = read_conll(file), file, file
    # The tags of every sentence, before data.limit: the head's size does not depend on the limit.
    names, how = tag_names(splits, files, teacher_tags(config.teacher))
    splits = {split: sentences[: config.limit_of(split)] for split, sentences in splits.items()}
    return TagTables(splits, sources, names, how)


__all__ = ["DOCSTART", "TagTables", "TaggedSentence", "TeacherTags", "entity_type", "read_conll", "read_tag_tables",
           "tag_names", "teacher_tags"]
