"""Extractive question answering: question/context windows, answer positions, span logits and SQuAD scores.

Windows (:class:`QADataset`). Each record's question and context are tokenised as a pair, question
first, with ``truncation="only_second"``, ``max_length`` and ``stride`` (``data.stride`` tokens of
context shared by consecutive windows) and overflowing tokens kept: a long context gives several
*features*, each remembering its record and the character offsets of its context tokens. Labels
follow Hugging Face's ``run_qa.py``: the first gold answer's start and end token inside the window,
or the CLS index (0) for both when the answer is not wholly inside that window.

Span logits. A question-answering model returns ``start_logits`` and ``end_logits`` (B, T); kdistill's
``logits`` feature of such a model is the pair stacked, ``(B, 2, T)`` (row 0 start, row 1 end), with
padding positions set to the dtype's lowest value so that no softmax gives padding any mass (the
result does not depend on how a batch is padded). So ``hard_ce`` with labels ``(B, 2)`` is the mean of
the start and end cross-entropies, as Hugging Face's QA models compute it (over every real token of
the window), and ``span_kl`` (:mod:`kdistill.losses.spans`) compares the two distributions over the
``loss_mask`` positions only: the window's context tokens and CLS (the "no answer in this window"
choice a window without the answer is labelled with); question, special and padding tokens are
masked out before the softmax.

Scores (:func:`squad_scores`). Per record, the best span over all its windows: start and end among
the window's context tokens, end ≥ start, at most ``max_answer_length`` tokens, the highest start +
end logit (every pair is scored, which equals Hugging Face's n-best search with n = every token);
its text is cut from the context by the offsets. Exact match and F1 use the official SQuAD
normalisation (lower case, punctuation and the articles a/an/the removed, white space collapsed);
F1 is over normalised words, and each is the best over the gold answers, then averaged over records.
They are fractions (0–1); SQuAD's script prints them ×100. An empty prediction (no valid span)
scores 0 against a non-empty gold answer; two empty normalised strings score 1 (SQuAD 2.0's rule).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from kdistill.errors import ConfigError, DataError
from kdistill.squad import QARecord


def is_qa_model(model: nn.Module) -> bool:
    """A Hugging Face ``…ForQuestionAnswering`` model (start and end logits over the tokens)."""
    return type(model).__name__.endswith("ForQuestionAnswering")


def span_logits(output: Any, attention_mask: Tensor | None) -> Tensor | None:
    """``(B, 2, T)``: a QA model's start and end logits stacked, padding at the dtype's lowest value;
    None when ``output`` has no ``start_logits``."""
    start = output.get("start_logits") if hasattr(output, "get") else None
    if start is None:
        return None
    pair = torch.stack([start, output.get("end_logits")], dim=1)
    if attention_mask is not None:
        pad = (attention_mask == 0)[:, None, :].to(pair.device)
        pair = pair.masked_fill(pad, torch.finfo(pair.dtype).min)
    return pair


# ---------------------------------------------------------------------------------------------
# Windows


class QADataset(Dataset):
    """QA records tokenised into windows (see the module docstring for the alignment).

    An item: ``input_ids``, ``attention_mask``, ``token_type_ids`` (when the tokenizer makes them),
    ``labels`` ``[start, end]``, ``loss_mask`` (1 on the window's context tokens and CLS) and ``index``.
    Per feature: ``feature_record[i]`` (its record's position in ``records``) and ``offsets[i]`` (the
    character span of each token in the context; None off the context).
    """

    def __init__(self, records: Sequence[QARecord], tokenizer: Any, *, max_length: int = 384, stride: int = 128,
                 max_answer_length: int = 30):
        from kdistill.data import _pad_id

        if not getattr(tokenizer, "is_fast", False):
            raise ConfigError(f"data.tokenizer: question answering maps answers to tokens with a fast tokenizer's "
                              f"offsets; {type(tokenizer).__name__} is not one (give a folder with tokenizer.json).")
        if getattr(tokenizer, "padding_side", "right") != "right":
            raise ConfigError("data.tokenizer: question answering puts the question first and pads on the right; "
                              f"this tokenizer pads on the {tokenizer.padding_side}.")
        self.records = list(records)
        self.max_answer_length = max_answer_length
        self.pad_token_id = _pad_id(tokenizer)
        questions = [r.question.lstrip() for r in self.records]
        _check_question_room(self.records, questions, tokenizer, max_length, stride)
        encoded = tokenizer(questions, [r.context for r in self.records], truncation="only_second",
                            max_length=max_length, stride=stride, return_overflowing_tokens=True,
                            return_offsets_mapping=True, padding=False)
        cls_id = getattr(tokenizer, "cls_token_id", None)
        self.items: list[dict[str, Any]] = []
        self.feature_record: list[int] = []
        self.offsets: list[list[tuple[int, int] | None]] = []
        self.answer_windows = 0  # windows whose labels point at the answer (the others at CLS)
        for feature, record_index in enumerate(encoded["overflow_to_sample_mapping"]):
            ids = encoded["input_ids"][feature]
            sequence = encoded.sequence_ids(feature)
            offsets = [tuple(o) if sequence[i] == 1 else None for i, o in enumerate(encoded["offset_mapping"][feature])]
            cls_index = ids.index(cls_id) if cls_id is not None and cls_id in ids else 0
            record = self.records[record_index]
            start, end = answer_positions(offsets, record.starts[0], record.starts[0] + len(record.answers[0]),
                                          cls_index)
            self.answer_windows += start != cls_index
            loss_mask = [int(o is not None or i == cls_index) for i, o in enumerate(offsets)]
            item = {"input_ids": ids, "attention_mask": [1] * len(ids)}
            if "token_type_ids" in encoded:
                item["token_type_ids"] = encoded["token_type_ids"][feature]
            item.update(labels=[start, end], loss_mask=loss_mask)
            self.items.append(item)
            self.feature_record.append(int(record_index))
            self.offsets.append(offsets)
        self.lengths = np.asarray([len(item["input_ids"]) for item in self.items], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**self.items[index], "index": int(index)}

    def data_key(self) -> str:
        """A digest of the windows and their labels (a fine-tuned teacher's cache key reads it)."""
        import hashlib
        import json

        return hashlib.sha256(json.dumps([[i["input_ids"], i.get("token_type_ids"), i["labels"]] for i in self.items]
                                         ).encode()).hexdigest()

    def collator(self) -> Any:
        from kdistill.data import Collator

        return Collator(self.pad_token_id)

    def describe(self) -> str:
        windows = len(self.items)
        return (f"{len(self.records):,} questions in {windows:,} windows ({windows - len(self.records):,} extra from "
                f"long contexts); the answer inside {self.answer_windows:,} windows, CLS in the others")


def _check_question_room(records: Sequence[QARecord], questions: Sequence[str], tokenizer: Any, max_length: int,
                         stride: int) -> None:
    """Every window must hold its question, the pair's special tokens and more context than the stride."""
    lengths = tokenizer(list(questions), add_special_tokens=False)["input_ids"]
    special = tokenizer.num_special_tokens_to_add(pair=True)
    for record, ids in zip(records, lengths):
        if len(ids) + special + stride >= max_length:
            raise DataError(f"{record.where} (id {record.id!r}): the question is {len(ids)} tokens; with data.stride "
                            f"{stride} and {special} special tokens it leaves no room for new context in a window of "
                            f"data.max_length {max_length}. Raise data.max_length or lower data.stride.")


def answer_positions(offsets: Sequence[tuple[int, int] | None], start_char: int, end_char: int, cls_index: int = 0
                     ) -> tuple[int, int]:
    """Token positions of the answer ``[start_char, end_char)`` in one window: the first context token whose
    span reaches past ``start_char`` … the last whose span starts before ``end_char``; ``(cls_index,
    cls_index)`` when the answer is not wholly inside the window's context (as ``run_qa.py``)."""
    context = [i for i, o in enumerate(offsets) if o is not None]
    if not context:
        return cls_index, cls_index
    first, last = context[0], context[-1]
    if not (offsets[first][0] <= start_char and offsets[last][1] >= end_char):
        return cls_index, cls_index
    start = next(i for i in context if offsets[i][1] > start_char)
    end = next(i for i in reversed(context) if offsets[i][0] < end_char)
    return start, end


# ---------------------------------------------------------------------------------------------
# Best spans and answers


def best_span(start: Tensor, end: Tensor, offsets: Sequence[tuple[int, int] | None], max_answer_length: int
              ) -> tuple[float, int, int] | None:
    """(score, start token, end token) of the highest start + end logit among context tokens with
    start ≤ end < start + ``max_answer_length``; None when the window has no context token."""
    valid = torch.tensor([o is not None for o in offsets[: start.shape[0]]], dtype=torch.bool)
    if not bool(valid.any()):
        return None
    start, end = start[: len(valid)].double(), end[: len(valid)].double()
    scores = start[:, None] + end[None, :]
    length = len(valid)
    rows = torch.arange(length)[:, None]
    cols = torch.arange(length)[None, :]
    allowed = valid[:, None] & valid[None, :] & (cols >= rows) & (cols - rows < max_answer_length)
    scores = scores.masked_fill(~allowed, float("-inf"))
    best = int(scores.argmax())
    return float(scores.reshape(-1)[best]), best // length, best % length


@torch.no_grad()
def predict_answers(model: nn.Module, loader: DataLoader, *, device: Any = None) -> list[str]:
    """The predicted answer text of every record of ``loader.dataset`` (a :class:`QADataset`), in order."""
    from kdistill.adapters.base import model_inputs, to_device

    dataset = loader.dataset
    best: dict[int, tuple[float, str]] = {}
    was_training = model.training
    model.eval()
    try:
        for batch in loader:
            args, kwargs = model_inputs(to_device(batch, device))
            pair = span_logits(model(*args, **kwargs), kwargs.get("attention_mask")).cpu()
            for row, feature in enumerate(batch["index"].tolist()):
                offsets = dataset.offsets[feature]
                found = best_span(pair[row, 0], pair[row, 1], offsets, dataset.max_answer_length)
                record = dataset.feature_record[feature]
                if found is not None and (record not in best or found[0] > best[record][0]):
                    score, first, last = found
                    context = dataset.records[record].context
                    best[record] = (score, context[offsets[first][0]: offsets[last][1]])
    finally:
        model.train(was_training)
    return [best[i][1] if i in best else "" for i in range(len(dataset.records))]


# ---------------------------------------------------------------------------------------------
# SQuAD scores


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, punctuation removed, articles a/an/the removed, white space collapsed."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str) -> float:
    """Word-overlap F1 of the normalised strings (1 when both are empty, 0 when only one is)."""
    predicted, true = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not predicted or not true:
        return float(predicted == true)
    same = sum((Counter(predicted) & Counter(true)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(true)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: Sequence[str], golds: Iterable[Sequence[str]]) -> dict[str, float]:
    """Mean over records of the best exact match and F1 against each record's gold answers."""
    em = f1 = 0.0
    count = 0
    for prediction, answers in zip(predictions, golds, strict=True):
        em += max(exact_match(prediction, gold) for gold in answers)
        f1 += max(f1_score(prediction, gold) for gold in answers)
        count += 1
    return {"exact_match": em / count if count else 0.0, "f1": f1 / count if count else 0.0}


def qa_metrics(model: nn.Module, loader: DataLoader, device: Any = None) -> dict[str, float]:
    """The trainer's evaluation of a QA model (``training.metric: f1`` or ``exact_match`` picks the best)."""
    predictions = predict_answers(model, loader, device=device)
    return squad_scores(predictions, [r.answers for r in loader.dataset.records])


def compare_qa(teacher: nn.Module, student: nn.Module, loader: DataLoader) -> dict[str, Any]:
    """Exact match and F1 of teacher and student, and the share of questions they answer with the same text."""
    device = next(student.parameters()).device
    golds = [r.answers for r in loader.dataset.records]
    teacher_answers = predict_answers(teacher, loader, device=device)
    student_answers = predict_answers(student, loader, device=device)
    alike = sum(t == s for t, s in zip(teacher_answers, student_answers))
    return {"examples": len(golds), "windows": len(loader.dataset), "agreement": alike / len(golds) if golds else 0.0,
            "teacher": squad_scores(teacher_answers, golds), "student": squad_scores(student_answers, golds)}


__all__ = ["QADataset", "answer_positions", "best_span", "compare_qa", "exact_match", "f1_score", "is_qa_model",
           "normalize_answer", "predict_answers", "qa_metrics", "span_logits", "squad_scores"]
