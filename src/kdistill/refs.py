"""Refs: strings that name one feature of a model's forward pass.

Grammar (layer indices are 0-based, negative counts from the end, checked against the real model):

=================  ===========================================================  ================
ref                meaning                                                      shape
=================  ===========================================================  ================
``logits``         the model's logits (classifier, MLM or LM head); of a QA     (B, C) / (B,T,V)
                   model, its start and end logits stacked (kdistill.qa_spans)  (B, 2, T)
``pooled``         pooled output (BERT pooler)                                  (B, D)
``embedding``      the sentence embedding: the last hidden state pooled over     (B, D)
                   the real tokens (``task: embedding``; kdistill.embedding)
``hidden.N``       hidden states; ``hidden.0`` = embeddings, ``hidden.N`` =      (B, T, D)
                   output of block N (1-based like Hugging Face), ``hidden.-1``
                   = last block
``attn.N``         attention probabilities of block N (0-based)                  (B, H, T, T)
``attn_scores.N``  pre-softmax attention scores of block N; masked = -inf        (B, H, T, T)
``query.N``        query / key / value projections of block N                    (B, T, D)
``key.N``
``value.N``
``module:PATH``    the output of any sub-module (forward hook), e.g.             any
                   ``module:encoder.layer.3.output`` or ``module:layer2``
=================  ===========================================================  ================

Several refs joined by commas (``hidden.1,hidden.3``) hand the loss a tuple (used by ``fsp``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kdistill.errors import RefError, suggest

SIMPLE_KINDS = ("logits", "pooled", "embedding")
LAYER_KINDS = ("hidden", "attn", "attn_scores", "query", "key", "value")
ATTENTION_KINDS = ("attn", "attn_scores")
QKV_KINDS = ("query", "key", "value")
ALL_FORMS = [*SIMPLE_KINDS, *(f"{k}.N" for k in LAYER_KINDS), "module:PATH"]
_LAYER_RE = re.compile(r"^([a-z_]+)\.(-?\d+)$")


@dataclass(frozen=True)
class Ref:
    """One parsed feature reference. ``index`` is set for layer kinds, ``path`` for ``module:``."""

    kind: str
    index: int | None = None
    path: str | None = None

    def __str__(self) -> str:
        if self.kind == "module":
            return f"module:{self.path}"
        if self.index is None:
            return self.kind
        return f"{self.kind}.{self.index}"

    def resolved(self, num_layers: int | None, *, where: str = "ref") -> Ref:
        """Turn a negative index into a positive one and check it against ``num_layers`` blocks."""
        if self.index is None or num_layers is None:
            return self
        if self.kind == "hidden":
            count, low, high = num_layers + 1, 0, num_layers
            what = f"hidden states 0–{num_layers} (0 = embeddings; the model has {num_layers} layers)"
        else:
            count, low, high = num_layers, 0, num_layers - 1
            what = f"layers 0–{num_layers - 1} (the model has {num_layers} layers)"
        index = self.index + count if self.index < 0 else self.index
        if not low <= index <= high:
            raise RefError(f"{where}: '{self}' is out of range: valid are {what}.")
        return Ref(self.kind, index, self.path)


def parse_ref(text: str, *, where: str = "ref") -> tuple[Ref, ...]:
    """Parse ``"hidden.4"`` or ``"hidden.1,hidden.3"`` into Refs. Errors name ``where`` and the forms."""
    if not isinstance(text, str) or not text.strip():
        raise RefError(f"{where}: expected a feature ref such as 'hidden.4', got {text!r}.")
    refs = tuple(_parse_one(part.strip(), where) for part in text.split(","))
    return refs


def _parse_one(text: str, where: str) -> Ref:
    if text.startswith("module:"):
        path = text[len("module:"):]
        if not path:
            raise RefError(f"{where}: 'module:' needs a module path, e.g. 'module:encoder.layer.3.output'.")
        return Ref("module", path=path)
    if text in SIMPLE_KINDS:
        return Ref(text)
    match = _LAYER_RE.match(text)
    if match and match.group(1) in LAYER_KINDS:
        return Ref(match.group(1), int(match.group(2)))
    if text in LAYER_KINDS:
        raise RefError(f"{where}: '{text}' needs a layer index, e.g. '{text}.2' or '{text}.-1'.")
    head = match.group(1) if match else text
    hint = suggest(head, [*SIMPLE_KINDS, *LAYER_KINDS])
    raise RefError(f"{where}: unknown feature ref '{text}'{hint} Valid forms: {', '.join(ALL_FORMS)}.")


def format_refs(refs: tuple[Ref, ...]) -> str:
    return ",".join(str(r) for r in refs)
