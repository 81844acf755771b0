"""Language-model data: texts, prompt/completion pairs or chats to causal-LM examples with loss masks.

The pipeline (``task: causal-lm``)::

    records = read_lm_records("train.jsonl", "chat")          # checked without a tokenizer
    dataset = chat(records, tokenizer, max_length=512, source="train.jsonl")
    loader = make_loader(dataset, batch_size=8, shuffle=True)  # kdistill.data.make_loader

Every item holds ``input_ids``, ``attention_mask`` and ``labels`` of one length. ``labels`` is the
token id itself where the token carries loss and -100 where it does not (prompt, padding, every
non-assistant turn of a chat). Labels are **not shifted**: a Hugging Face causal LM shifts them
inside its forward (position ``t`` predicts ``labels[t + 1]``), so ``labels[0]`` never counts.
Hence a token "carries loss" when it is labelled and not first (:attr:`LMDataset.loss_tokens`), and an
example with no such token is left out and counted (``skipped``), never kept as a zero-loss row.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from kdistill.config import LM_KINDS
from kdistill.data import Collator, Record, is_missing_text, load_records, text_table
from kdistill.errors import ConfigError, DataError, unknown_choice

KINDS = LM_KINDS  # data.kind of a causal-LM run
ROLES = ("system", "user", "assistant", "tool")
IGNORE = -100
_GENERATION_TAG = re.compile(r"{%-?\s*generation\s*-?%}")


# ---------------------------------------------------------------------------------------------
# The dataset


@dataclass(frozen=True)
class LossTokens:
    """Tokens per example that carry loss (labelled and not the first token): mean, min, max, total."""

    mean: float
    min: int
    max: int
    total: int

    def __str__(self) -> str:
        return f"{self.mean:.1f} loss tokens per example (min {self.min}, max {self.max}; {self.total} in all)"


class LMDataset(Dataset):
    """Causal-LM examples: token ids and per-token labels, stored flat (int32 plus offsets).

    ``input_ids[i]`` and ``labels[i]`` have the same length; ``labels`` holds the token id where
    the token carries loss and -100 elsewhere, **unshifted** (Hugging Face causal LMs shift inside
    ``forward``). An item is ``{input_ids, attention_mask, labels, index}`` (lists, and the position:
    the key of the teacher cache). :meth:`collator` pads right: ``input_ids`` with the pad id (the
    tokenizer's pad token, else its eos token: :attr:`pads_with_eos`), ``attention_mask`` with 0 and
    ``labels`` with -100. ``skipped`` holds the positions of the records left out (``skip_reason``
    says why); ``notes`` are sentences for the plan (packing's dropped tail).
    """

    def __init__(
        self,
        input_ids: Sequence[Sequence[int]],
        labels: Sequence[Sequence[int]],
        tokenizer: Any,
        *,
        kind: str,
        skipped: Sequence[int] = (),
        skip_reason: str = "",
        notes: Sequence[str] = (),
    ):
        if len(input_ids) != len(labels):
            raise DataError(f"{len(input_ids)} examples but {len(labels)} label rows; they must match one to one.")
        for row, (ids, row_labels) in enumerate(zip(input_ids, labels)):
            if len(ids) != len(row_labels):
                raise DataError(f"example {row} has {len(ids)} tokens but {len(row_labels)} labels.")
        self.kind = kind
        self.lengths = np.asarray([len(ids) for ids in input_ids], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)])
        self.input_ids = np.asarray([token for ids in input_ids for token in ids], dtype=np.int32)
        self.labels = np.asarray([label for row in labels for label in row], dtype=np.int32)
        self.pad_token_id, self.pads_with_eos = pad_choice(tokenizer)
        self.skipped = tuple(skipped)
        self.skip_reason = skip_reason
        self.notes = tuple(notes)

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        start, end = self.offsets[index], self.offsets[index + 1]
        return {
            "input_ids": self.input_ids[start:end].tolist(),
            "attention_mask": [1] * int(end - start),
            "labels": self.labels[start:end].tolist(),
            "index": int(index),
        }

    def collator(self) -> Collator:
        """:class:`kdistill.data.Collator` with this dataset's pad id (labels pad with -100)."""
        return Collator(self.pad_token_id)

    @property
    def loss_tokens(self) -> LossTokens:
        """Tokens per example that carry loss (labelled, not at position 0, which the shift drops)."""
        bounds = zip(self.offsets, self.offsets[1:])
        counts = np.asarray([_loss_count(self.labels[start:end]) for start, end in bounds])
        if not len(counts):
            return LossTokens(0.0, 0, 0, 0)
        return LossTokens(float(counts.mean()), int(counts.min()), int(counts.max()), int(counts.sum()))

    def describe(self) -> str:
        """One paragraph for ``kdistill plan``: examples, loss tokens, skipped records, padding."""
        lines = [f"{len(self)} {self.kind} examples, {self.loss_tokens}."]
        if self.skipped:
            count = len(self.skipped)
            lines.append(f"{count} record{'s' if count != 1 else ''} left out: {self.skip_reason}.")
        lines.extend(self.notes)
        if self.pads_with_eos:
            lines.append(f"The tokenizer has no pad token; batches pad with the eos token (id {self.pad_token_id}), "
                         "masked out of attention and loss.")
        return " ".join(lines)


def pad_choice(tokenizer: Any) -> tuple[int, bool]:
    """``(pad id, whether it is the eos token)``: the pad token, else the eos token, else a DataError."""
    if getattr(tokenizer, "pad_token_id", None) is not None:
        return int(tokenizer.pad_token_id), False
    if getattr(tokenizer, "eos_token_id", None) is not None:
        return int(tokenizer.eos_token_id), True
    raise DataError(f"The tokenizer at '{tokenizer_folder(tokenizer)}' has neither a pad nor an eos token, so "
                    "examples of unequal length cannot be padded; give it a pad_token.")


def tokenizer_folder(tokenizer: Any) -> str:
    return str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)


def _loss_count(labels: Sequence[int] | np.ndarray) -> int:
    return int((np.asarray(labels[1:]) != IGNORE).sum())


def _check_max_length(max_length: int) -> None:
    if max_length < 2:
        raise ConfigError(f"data.max_length: {max_length} must be at least 2 for a language model "
                          "(a token and the next one it predicts).")


def _encode(tokenizer: Any, texts: Sequence[str], *, special: bool, chunk: int = 4096) -> list[list[int]]:
    ids: list[list[int]] = []
    for start in range(0, len(texts), chunk):
        ids.extend(tokenizer(list(texts[start : start + chunk]), add_special_tokens=special)["input_ids"])
    return ids


def _keep_with_loss(rows: Sequence[tuple[list[int], list[int]]], tokenizer: Any, kind: str, reason: str,
                    source: str) -> LMDataset:
    """An LMDataset of the rows with at least one loss token; the others are skipped, counted.
    A DataError when no row is left (an empty dataset would fail later, far from its cause)."""
    kept = [(row, ids, labels) for row, (ids, labels) in enumerate(rows) if _loss_count(labels)]
    if rows and not kept:
        raise DataError(f"{source}: all {len(rows)} records are left out ({reason}), so no token carries loss; "
                        "raise data.max_length or shorten the records.")
    skipped = sorted(set(range(len(rows))) - {row for row, _, _ in kept})
    return LMDataset([ids for _, ids, _ in kept], [labels for _, _, labels in kept], tokenizer, kind=kind,
                     skipped=skipped, skip_reason=reason)


# ---------------------------------------------------------------------------------------------
# Plain text


def plain_text(
    texts: Sequence[str], tokenizer: Any, max_length: int, pack: bool = False, *, source: str = "data"
) -> LMDataset:
    """Loss on every real token. Each text is tokenised as the tokenizer does by default (a bos where
    it adds one).

    ``pack=False``: one example per text, cut to its first ``max_length`` tokens; a text of fewer
    than two tokens has nothing to predict and is skipped (counted). ``pack=True``: every text
    followed by the eos token, all in one stream, cut into blocks of exactly ``max_length`` tokens;
    the last, shorter block is dropped (a note says how many tokens). Blocks attend across text
    boundaries, as in GPT-2 pretraining.
    """
    _check_max_length(max_length)
    for row, text in enumerate(texts):
        if is_missing_text(text):
            raise DataError(f"{source}: record {row} has no text (got {text!r}); "
                            "a missing, empty or blank text is refused.")
    ids = _encode(tokenizer, texts, special=True)
    if not pack:
        rows = [(row[:max_length], row[:max_length]) for row in ids]
        return _keep_with_loss(rows, tokenizer, "text", "fewer than two tokens, nothing to predict", source)
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise DataError(f"{source}: packing joins texts with the eos token, but the tokenizer at "
                        f"'{tokenizer_folder(tokenizer)}' has none; set pack to false or give it an eos_token.")
    stream = [token for row in ids for token in (*row, eos)]
    blocks = len(stream) // max_length
    if blocks == 0:
        raise DataError(f"{source}: all texts make {len(stream)} tokens, fewer than one block of max_length "
                        f"{max_length}; lower max_length or set pack to false.")
    examples = [stream[block * max_length : (block + 1) * max_length] for block in range(blocks)]
    dropped = len(stream) - blocks * max_length
    tail = f"; the last {dropped} tokens (a short block) are dropped." if dropped else "."
    note = f"Packed {len(stream)} tokens of {len(ids)} texts into {blocks} blocks of {max_length}{tail}"
    return LMDataset(examples, examples, tokenizer, kind="text", notes=(note,))


# ---------------------------------------------------------------------------------------------
# Prompt and completion


def prompt_completion(
    records: Sequence[Mapping[str, Any]],
    tokenizer: Any,
    max_length: int,
    prompt: str = "prompt",
    completion: str = "completion",
    *,
    source: str = "data",
) -> LMDataset:
    """Prompt tokens then completion tokens then eos (when the tokenizer has one); loss on the
    completion and its eos only.

    The prompt is tokenised as the tokenizer does by default (a bos where it adds one), the
    completion without special tokens, each on its own, so the boundary is exact (put a space at the
    start of the completion when the model expects one). Truncation to ``max_length`` keeps the start
    of the prompt and cuts the end of the completion (its eos first); a record whose completion is cut
    to nothing is left out and counted in ``skipped``.
    """
    _check_max_length(max_length)
    table = text_table(records, text=[prompt, completion], label=None, source=source)
    prompts = _encode(tokenizer, [pair[0] for pair in table.texts], special=True)
    completions = _encode(tokenizer, [pair[1] for pair in table.texts], special=False)
    eos = getattr(tokenizer, "eos_token_id", None)
    rows = []
    for prompt_ids, completion_ids in zip(prompts, completions):
        prompt_ids = prompt_ids[:max_length]
        completion_ids = ([*completion_ids, eos] if eos is not None else completion_ids)[: max_length - len(prompt_ids)]
        rows.append((prompt_ids + completion_ids, [IGNORE] * len(prompt_ids) + completion_ids))
    return _keep_with_loss(rows, tokenizer, "prompt_completion",
                           f"the prompt fills max_length {max_length}, leaving no completion token", source)


# ---------------------------------------------------------------------------------------------
# Chat


def chat(
    records: Sequence[Mapping[str, Any]], tokenizer: Any, max_length: int, messages: str = "messages", *,
    source: str = "data",
) -> LMDataset:
    """Each record's ``messages`` rendered with ``tokenizer.apply_chat_template``; loss only on the
    assistant turns' tokens.

    With ``{% generation %}`` markers in the template, the assistant tokens are the template's own
    (``return_assistant_tokens_mask``, as TRL's ``assistant_only_loss``). Without them, the
    conversation is rendered prefix by prefix: an assistant turn is the text between the render of the
    turns before it with the generation prompt and the render up to and including it, so the role
    header is not learnt and the end-of-turn marker is. A template that rewrites earlier turns as the
    conversation grows (so a prefix is not a prefix) is refused with a DataError. Truncation keeps
    the first ``max_length`` tokens; a record left without an assistant token is skipped (counted).
    Only ``role`` and ``content`` of each message reach the template (not ``tool_calls`` or ``name``).
    """
    _check_max_length(max_length)
    check_chat_records(records, messages, source)
    template = getattr(tokenizer, "chat_template", None)
    folder = tokenizer_folder(tokenizer)
    if not template:
        raise DataError(f"{source}: chat data needs a chat template, but the tokenizer at '{folder}' has none; "
                        "use a chat (instruct) model's tokenizer, or prompt_completion data.")
    if not isinstance(template, str):
        raise DataError(f"The tokenizer at '{folder}' has several named chat templates ({', '.join(template)}); "
                        "keep the default one.")
    if not getattr(tokenizer, "is_fast", False):
        raise DataError(f"Chat data needs a fast tokenizer (a tokenizer.json) to map the chat text to tokens; "
                        f"the tokenizer at '{folder}' is not one.")
    for row, record in enumerate(records):
        if "tool" not in template and any(m["role"] == "tool" for m in record[messages]):
            raise DataError(f"{source}: record {row} has a 'tool' message, but the chat template of '{folder}' "
                            "has no tool role; use roles system, user and assistant.")
    marked = bool(_GENERATION_TAG.search(template))
    rows = []
    for row, record in enumerate(records):
        where = f"{source}: record {row}"
        conversation = [{"role": m["role"], "content": m["content"]} for m in record[messages]]
        ids, mask = (_generation_mask if marked else _prefix_mask)(tokenizer, conversation, where, folder)
        ids, mask = ids[:max_length], mask[:max_length]
        rows.append((ids, [token if keep else IGNORE for token, keep in zip(ids, mask)]))
    return _keep_with_loss(rows, tokenizer, "chat", f"no assistant token is left within max_length {max_length}",
                           source)


def _render(tokenizer: Any, conversation: list[dict], where: str, folder: str, **kwargs: Any) -> Any:
    from jinja2.exceptions import TemplateError

    try:
        return tokenizer.apply_chat_template(conversation, **kwargs)
    except TemplateError as exc:
        raise DataError(f"{where}: the chat template of '{folder}' refuses this conversation: {exc}.") from None


def _generation_mask(tokenizer: Any, conversation: list[dict], where: str, folder: str) -> tuple[list[int], list[int]]:
    out = _render(tokenizer, conversation, where, folder, tokenize=True, return_dict=True,
                  return_assistant_tokens_mask=True)
    return list(out["input_ids"]), list(out["assistant_masks"])


def _prefix_mask(tokenizer: Any, conversation: list[dict], where: str, folder: str) -> tuple[list[int], list[int]]:
    """Token ids of the whole conversation and 1 on each token that starts inside an assistant turn."""
    text = _render(tokenizer, conversation, where, folder, tokenize=False)
    spans = []
    for turn, message in enumerate(conversation):
        if message["role"] != "assistant":
            continue
        # An opening assistant turn has no prefix to render (templates refuse an empty conversation):
        # its span starts at 0, role header included.
        before = _render(tokenizer, conversation[:turn], where, folder, tokenize=False,
                         add_generation_prompt=True) if turn else ""
        through = _render(tokenizer, conversation[: turn + 1], where, folder, tokenize=False)
        if not (text.startswith(before) and text.startswith(through) and len(before) < len(through)):
            raise DataError(
                f"{where}: the chat template of '{folder}' does not render the conversation prefix by prefix "
                f"(turn {turn} changes the text before it), so its assistant tokens cannot be found; "
                "use a template with {% generation %} markers around assistant turns."
            )
        spans.append((len(before), len(through)))
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = [int(any(lo <= start < hi for lo, hi in spans)) for start, _ in encoded["offset_mapping"]]
    return list(encoded["input_ids"]), mask


def check_chat_records(records: Sequence[Mapping[str, Any]], messages: str = "messages", source: str = "data") -> None:
    """Every record has a list of ``{role, content}`` messages with known roles and an assistant turn."""
    for row, record in enumerate(records):
        where = f"{source}: record {row}"
        if messages not in record:
            raise DataError(f"{where} has no '{messages}' (keys: {', '.join(map(str, sorted(record))) or 'none'}); "
                            f"a chat record holds a list of {{role, content}} messages under '{messages}'.")
        conversation = record[messages]
        if not isinstance(conversation, list) or not conversation:
            raise DataError(f"{where}: '{messages}' is {type(conversation).__name__} {conversation!r:.60}, not a "
                            "non-empty list of {role, content} messages (CSV cannot hold one; use JSONL).")
        for turn, message in enumerate(conversation):
            _check_message(message, f"{where}, message {turn}")
        if not any(message["role"] == "assistant" for message in conversation):
            raise DataError(f"{where} has no assistant message, so nothing in it carries loss; "
                            "every conversation needs at least one assistant turn.")


def _check_message(message: Any, where: str) -> None:
    if not isinstance(message, Mapping):
        raise DataError(f"{where} is a {type(message).__name__}, not a {{role, content}} object.")
    for key in ("role", "content"):
        if key not in message:
            raise DataError(f"{where} has no '{key}' (keys: {', '.join(map(str, sorted(message))) or 'none'}); "
                            "each message needs a role and a content.")
    if message["role"] not in ROLES:
        raise DataError(f"{where} has the role {message['role']!r}; roles are {', '.join(ROLES)}.")
    if not isinstance(message["content"], str):
        raise DataError(f"{where} has a {type(message['content']).__name__} content; a content is one string.")


# ---------------------------------------------------------------------------------------------
# Reading files


def read_lm_records(
    path: str | Path,
    kind: str,
    *,
    text: str = "text",
    prompt: str = "prompt",
    completion: str = "completion",
    messages: str = "messages",
    format: str | None = None,
) -> list[Record]:
    """Read and check language-model data without a tokenizer (for ``kdistill validate``).

    ``kind``: ``text`` (a ``.txt`` file, one text per line, blank lines ignored, read as records
    ``{text: line}``; or a ``text`` column), ``prompt_completion`` (``prompt`` and ``completion``
    columns) or ``chat`` (a list of ``{role, content}`` under ``messages``, JSONL or JSON). Other
    files are read by :func:`kdistill.data.load_records`. Returns the records; raises a
    :class:`DataError` naming the file and record for a missing column or key, an empty text, a
    bad message or role, a conversation without an assistant turn, or a file with no text.
    """
    if kind not in KINDS:
        raise unknown_choice("data.kind", "language-model data kind", kind, KINDS)
    path = Path(path)
    source = str(path)
    if format == "txt" or (format is None and path.suffix.lower() == ".txt"):
        if kind != "text":
            raise DataError(f"'{path}' is a .txt file (plain texts, one per line); {kind} data needs a "
                            "CSV, TSV, JSONL or JSON file.")
        records: list[Record] = [{text: line} for line in _read_lines(path)]
    else:
        records = load_records(path, format=format)
    check_lm_records(records, kind, source, text=text, prompt=prompt, completion=completion, messages=messages)
    return records


def lm_records(path: str | Path, kind: str, spec: Any) -> dict[str, list[Record]]:
    """The records of a data key read as ``spec`` (the config's data section) says, checked: one split
    (``""``) of a file or Dataset folder, or each split of a saved DatasetDict by name."""
    from kdistill.hf_datasets import dataset_dict_splits, is_dataset_dict_folder

    text = spec.text if isinstance(spec.text, str) else "text"
    if not is_dataset_dict_folder(path):
        return {"": read_lm_records(path, kind, text=text, prompt=spec.prompt, completion=spec.completion,
                                    messages=spec.messages, format=spec.format)}
    splits = dataset_dict_splits(path)
    for split, records in splits.items():
        check_lm_records(records, kind, f"{path} [{split}]", text=text, prompt=spec.prompt,
                         completion=spec.completion, messages=spec.messages)
    return splits


def check_lm_records(records: Sequence[Mapping[str, Any]], kind: str, source: str, *, text: str = "text",
                     prompt: str = "prompt", completion: str = "completion", messages: str = "messages") -> None:
    """The columns (keys) data ``kind`` needs are in every record: a DataError naming the record if not."""
    if kind == "text":
        text_table(records, text=text, label=None, source=source)
    elif kind == "prompt_completion":
        text_table(records, text=[prompt, completion], label=None, source=source)
    else:
        check_chat_records(records, messages, source)


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"Data file '{path}' does not exist." if not path.exists() else f"'{path}' is not a file.")
    try:
        content = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"'{path}' is not UTF-8 (byte {exc.start}); save it as UTF-8.") from None
    lines = [line for line in content.splitlines() if line.strip()]
    if not lines:
        raise DataError(f"Text file '{path}' is empty: it has no line with text.")
    return lines


class NextTokenTargets:
    """Collates like ``collate`` and aligns the labels with the logits: ``labels[t]`` becomes the token
    position ``t`` predicts (``labels[t + 1]``, -100 at the end), and ``loss_mask`` marks where it is a
    token that carries loss.

    kdistill computes its own losses on the models' logits (it never passes ``labels`` to a Hugging
    Face model), so its causal-LM batches carry targets already shifted: the hard-label loss is the
    next-token cross-entropy, and the token losses over the vocabulary compare the two models'
    next-token distributions at exactly the ``loss_mask`` positions.
    """

    def __init__(self, collate: Any):
        self.collate = collate

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        batch = self.collate(examples)
        _shift(batch)
        if "student_inputs" in batch:  # a student with its own tokenizer: its own targets and mask
            _shift(batch["student_inputs"])
        return batch


def _shift(batch: dict[str, Any]) -> None:
    import torch

    labels = batch["labels"]
    shifted = torch.full_like(labels, IGNORE)
    shifted[:, :-1] = labels[:, 1:]
    batch["labels"] = shifted
    batch["loss_mask"] = (shifted != IGNORE).long()


def lm_dataset(kind: str, records: Sequence[Mapping[str, Any]], tokenizer: Any, max_length: int, *, text: str,
               prompt: str, completion: str, messages: str, pack: bool, source: str) -> LMDataset:
    """The LMDataset of ``records`` (as :func:`read_lm_records` returns them) for data ``kind``."""
    if kind == "text":
        return plain_text([r[text] for r in records], tokenizer, max_length, pack=pack, source=source)
    if kind == "prompt_completion":
        return prompt_completion(records, tokenizer, max_length, prompt=prompt, completion=completion, source=source)
    return chat(records, tokenizer, max_length, messages=messages, source=source)


__all__ = ["IGNORE", "KINDS", "LMDataset", "LossTokens", "NextTokenTargets", "lm_dataset", "ROLES", "chat", "check_chat_records", "check_lm_records",
           "lm_records", "pad_choice",
           "plain_text", "prompt_completion", "read_lm_records"]
