"""Token classification (NER): words tokenised with their tags, and entity-level scores.

Alignment: each sentence's words are tokenised together (``is_split_into_words=True``); the first
sub-token of each word carries the word's tag id and every other position (later sub-tokens,
special tokens, padding) carries -100, so the hard-label loss and every score see one prediction
per word. Words cut off by ``data.max_length`` carry no label at all; the plan counts them.

KD over tokens: a token-level match (``kl``/``soft_ce`` on ``logits``, hidden states, attentions)
averages over every real token — the attention mask, as TextBrewer's NER example does — so the
student also learns the teacher's distribution on later sub-tokens; only the hard labels and the
scores are restricted to first sub-tokens.

Scores (:func:`entity_scores`) follow seqeval's default mode (conlleval): an entity is a maximal
run ``B-X I-X …`` of one type; an ``I-X`` after ``O`` or after a tag of another type starts a new
entity of type X; an entity counts as found only when its type, start and end all match.
Precision, recall and F1 are micro-averaged over all entities of the split (0 where undefined);
``accuracy`` is the share of words whose tag is right.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from kdistill.errors import ConfigError


def is_token_classifier(model: nn.Module) -> bool:
    """A Hugging Face ``…ForTokenClassification`` model (one tag per token)."""
    return type(model).__name__.endswith("ForTokenClassification")


class _WordEncoded:
    """Token ids, token type ids and per-token labels of many sentences in flat arrays plus offsets."""

    def __init__(self, tokenizer: Any, sentences: Sequence[Sequence[str]], tag_ids: Sequence[Sequence[int]],
                 max_length: int):
        if not getattr(tokenizer, "is_fast", False):
            raise ConfigError(f"data.tokenizer: token classification aligns tags to sub-words with a fast "
                              f"tokenizer's word ids; {type(tokenizer).__name__} is not one (give a folder with "
                              "tokenizer.json).")
        ids, types, labels, lengths = [], [], [], []
        self.cut_words = 0
        encoded = tokenizer([list(words) for words in sentences], is_split_into_words=True, truncation=True,
                            max_length=max_length, padding=False)
        self.has_token_type_ids = "token_type_ids" in encoded
        for index, tags in enumerate(tag_ids):
            word_ids = encoded.word_ids(index)
            row = [-100] * len(word_ids)
            previous = None
            for position, word in enumerate(word_ids):
                if word is not None and word != previous:  # the first sub-token of a word
                    row[position] = tags[word]
                previous = word
            self.cut_words += len(tags) - sum(1 for label in row if label != -100)
            ids.extend(encoded["input_ids"][index])
            labels.extend(row)
            lengths.append(len(row))
            if self.has_token_type_ids:
                types.extend(encoded["token_type_ids"][index])
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)])
        self.input_ids = np.asarray(ids, dtype=np.int32)
        self.token_labels = np.asarray(labels, dtype=np.int64)
        self.token_type_ids = np.asarray(types, dtype=np.int8) if self.has_token_type_ids else None


class TaggedDataset(Dataset):
    """Tagged sentences tokenised once (see the module docstring for the alignment).

    An item: ``input_ids``, ``attention_mask``, ``token_type_ids`` (when the tokenizer makes them),
    ``labels`` (a list, -100 off first sub-tokens; padded with -100 by the collator) and ``index``.
    ``tag_names[i]`` is the tag of id ``i``; ``cut_words`` counts the words max_length cut off.
    """

    def __init__(self, sentences: Sequence[Sequence[str]], tag_ids: Sequence[Sequence[int]], tokenizer: Any, *,
                 tag_names: Sequence[str], max_length: int = 64):
        from kdistill.data import _pad_id

        self.tag_names = list(tag_names)
        self.teacher = _WordEncoded(tokenizer, sentences, tag_ids, max_length)
        self.labels = self.teacher.token_labels  # flat, one per token (a fine-tune's cache key reads it)
        self.lengths = self.teacher.lengths
        self.cut_words = self.teacher.cut_words
        self.words = sum(len(tags) for tags in tag_ids)
        self.pad_token_id = _pad_id(tokenizer)

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        encoded = self.teacher
        start, end = encoded.offsets[index], encoded.offsets[index + 1]
        item: dict[str, Any] = {"input_ids": encoded.input_ids[start:end].tolist(),
                                "attention_mask": [1] * int(end - start)}
        if encoded.token_type_ids is not None:
            item["token_type_ids"] = encoded.token_type_ids[start:end].tolist()
        item["labels"] = encoded.token_labels[start:end].tolist()
        item["index"] = int(index)
        return item

    def collator(self) -> Any:
        from kdistill.data import Collator

        return Collator(self.pad_token_id)


# ---------------------------------------------------------------------------------------------
# Entities and scores


def entity_spans(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    """The entities of one sentence's BIO tags as ``(type, first word, last word)`` (seqeval's default)."""
    spans = set()
    start, kind = None, None
    for position, tag in enumerate([*tags, "O"]):
        tag_kind = None if tag == "O" else tag[2:]
        continues = tag.startswith("I-") and tag_kind == kind
        if kind is not None and not continues:
            spans.add((kind, start, position - 1))
            kind = None
        if tag_kind is not None and not continues:
            start, kind = position, tag_kind
    return spans


def entity_scores(gold: Iterable[Sequence[str]], predicted: Iterable[Sequence[str]]) -> dict[str, float]:
    """Micro precision, recall and F1 of entities (:func:`entity_spans`) and word accuracy over sentences.

    ``gold``/``predicted``: one tag sequence per sentence, of equal lengths. Returns ``precision``,
    ``recall``, ``f1``, ``accuracy``, ``entities`` (gold) and ``words``; a ratio with a zero
    denominator is 0.
    """
    found = true = correct = words = right = 0
    for gold_tags, predicted_tags in zip(gold, predicted, strict=True):
        gold_spans, predicted_spans = entity_spans(gold_tags), entity_spans(predicted_tags)
        true += len(gold_spans)
        found += len(predicted_spans)
        correct += len(gold_spans & predicted_spans)
        words += len(gold_tags)
        right += sum(g == p for g, p in zip(gold_tags, predicted_tags, strict=True))
    precision = correct / found if found else 0.0
    recall = correct / true if true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "accuracy": right / words if words else 0.0,
            "entities": true, "words": words}


@torch.no_grad()
def predict_tags(model: nn.Module, batches: Iterable, *, device: Any = None) -> tuple[list[Tensor], list[Tensor]]:
    """Per sentence: the predicted tag ids and the true ones at its labelled positions (first sub-tokens)."""
    from kdistill.adapters.base import model_inputs, output_logits, to_device

    was_training = model.training
    model.eval()
    predicted, gold = [], []
    try:
        for batch in batches:
            args, kwargs = model_inputs(to_device(batch, device))
            best = output_logits(model(*args, **kwargs)).argmax(-1).cpu()
            labels = batch["labels"].cpu()
            for row in range(labels.shape[0]):
                keep = labels[row] != -100
                predicted.append(best[row][keep])
                gold.append(labels[row][keep])
    finally:
        model.train(was_training)
    return predicted, gold


def _names(ids: Sequence[Tensor], tag_names: Sequence[str]) -> list[list[str]]:
    return [[tag_names[i] for i in sentence.tolist()] for sentence in ids]


def tag_metrics(model: nn.Module, loader: DataLoader, device: Any = None) -> dict[str, float]:
    """The trainer's evaluation of a token classifier (``training.metric: f1`` picks the best by entity F1)."""
    tag_names = loader.dataset.tag_names
    predicted, gold = predict_tags(model, loader, device=device)
    return entity_scores(_names(gold, tag_names), _names(predicted, tag_names))


def compare_tags(teacher: nn.Module, student: nn.Module, loader: DataLoader) -> dict[str, Any]:
    """Entity precision/recall/F1 and word accuracy of teacher and student, and the share of words they tag alike."""
    tag_names = loader.dataset.tag_names
    device = next(student.parameters()).device
    teacher_ids, gold = predict_tags(teacher, loader, device=device)
    student_ids, _ = predict_tags(student, loader, device=device)
    words = sum(len(sentence) for sentence in gold)
    alike = sum(int((t == s).sum()) for t, s in zip(teacher_ids, student_ids))
    gold_names = _names(gold, tag_names)
    return {"examples": len(gold), "words": words, "agreement": alike / words if words else 0.0,
            "teacher": entity_scores(gold_names, _names(teacher_ids, tag_names)),
            "student": entity_scores(gold_names, _names(student_ids, tag_names))}


__all__ = ["TaggedDataset", "compare_tags", "entity_scores", "entity_spans", "is_token_classifier", "predict_tags",
           "tag_metrics"]
