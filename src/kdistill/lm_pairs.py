"""A language-model dataset tokenised twice: a student with another tokenizer than its teacher's.

Each record is tokenised by the teacher's tokenizer (the batch's top level, as for one tokenizer)
and by the student's (under ``student_inputs``: ``input_ids``, ``attention_mask``, ``labels``, and
after collation ``loss_mask``). The two token sequences of one example have different lengths and
ids, so nothing compares them position by position: the only token loss that applies is ``uld``
(Universal Logit Distillation), which pairs each example's k-th loss-bearing student token with its
k-th loss-bearing teacher token and compares sorted probability vectors. The config check
(:func:`cross_tokenizer_problems`) refuses every other match before any weights load.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from kdistill.data import Collator
from kdistill.errors import DataError
from kdistill.lm_data import LMDataset

CROSS_TOKENIZER_LOSSES = ("uld",)


class PairedLMDataset(Dataset):
    """The records both tokenisations kept, in order: the teacher's item with the student's under
    ``student_inputs``. A record one tokenizer left out (e.g. its prompt fills ``max_length`` with
    one tokenizer and not the other) is left out of both, and counted in ``skipped``."""

    def __init__(self, teacher: LMDataset, student: LMDataset, records: int):
        for role, dataset in (("teacher", teacher), ("student", student)):
            if len(dataset) + len(dataset.skipped) != records:
                raise DataError(f"the {role}'s tokenisation made {len(dataset)} examples of {records} records "
                                "(packed blocks?); a student with its own tokenizer needs one example per record.")
        t_rows = [row for row in range(records) if row not in set(teacher.skipped)]
        s_rows = {row: i for i, row in enumerate(r for r in range(records) if r not in set(student.skipped))}
        self.pairs = [(i, s_rows[row]) for i, row in enumerate(t_rows) if row in s_rows]
        self.teacher, self.student = teacher, student
        self.kind = teacher.kind
        self.lengths = np.asarray([teacher.lengths[t] for t, _ in self.pairs], dtype=np.int64)
        self.skipped = tuple(sorted(set(teacher.skipped) | set(student.skipped)))
        self.pads_with_eos = teacher.pads_with_eos

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        t, s = self.pairs[index]
        student = self.student[s]
        del student["index"]
        return {**self.teacher[t], "index": int(index), "student_inputs": student}

    def collator(self) -> Collator:
        """Pads each tokenisation with its own pad id (labels with -100)."""
        return Collator(self.teacher.pad_token_id, self.student.pad_token_id)

    def describe(self) -> str:
        """One paragraph for ``kdistill plan``: examples and loss tokens under each tokenizer."""
        teacher = _subset_counts(self.teacher, [t for t, _ in self.pairs])
        student = _subset_counts(self.student, [s for _, s in self.pairs])
        lines = [f"{len(self)} {self.kind} examples, each tokenised twice: teacher {teacher}; student {student}."]
        if self.skipped:
            count = len(self.skipped)
            lines.append(f"{count} record{'s' if count != 1 else ''} left out (no loss token left under one "
                         "of the tokenizers within max_length).")
        return " ".join(lines)


def _subset_counts(dataset: LMDataset, rows: Sequence[int]) -> str:
    from kdistill.lm_data import _loss_count

    counts = [_loss_count(dataset.labels[dataset.offsets[i]:dataset.offsets[i + 1]]) for i in rows]
    if not counts:
        return "no tokens"
    return f"{np.mean(counts):.1f} loss tokens per example ({sum(counts)} in all)"


def cross_tokenizer_problems(data: Any, matches: Sequence[Mapping | Any], method: str | None,
                             hard_label_weight: Any) -> list[str]:
    """What a causal-LM run with ``data.student_tokenizer`` cannot do, in sentences (before weights load)."""
    problems = []
    if getattr(data, "pack", False):
        problems.append("data.pack: packed blocks cut the token stream at different places under each tokenizer; "
                        "with data.student_tokenizer every record is one example (pack: false).")
    if method is not None:
        problems.append(f"method: '{method}' compares the two models token by token; with data.student_tokenizer "
                        "(another vocabulary) give matches instead: "
                        "[{teacher: logits, student: logits, loss: uld}].")
    for i, match in enumerate(matches):
        loss, teacher, student = (_get(match, key) for key in ("loss", "teacher", "student"))
        if loss not in CROSS_TOKENIZER_LOSSES or teacher != "logits" or student not in (None, "logits"):
            problems.append(
                f"matches[{i}]: loss '{loss}' on {teacher} -> {student or teacher} needs both models to read the "
                "same tokens, but data.student_tokenizer gives the student its own; with two tokenizers the "
                f"only match is logits -> logits with loss {' or '.join(CROSS_TOKENIZER_LOSSES)} (sorted "
                "probabilities, no token alignment).")
    if not matches and method is None and not hard_label_weight:
        problems.append("matches: a student with its own tokenizer learns from the teacher through "
                        "{teacher: logits, student: logits, loss: uld}; the run has no match.")
    return problems


def _get(match: Any, key: str) -> Any:
    return match.get(key) if isinstance(match, Mapping) else getattr(match, key, None)


__all__ = ["CROSS_TOKENIZER_LOSSES", "PairedLMDataset", "cross_tokenizer_problems"]
