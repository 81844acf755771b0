"""Features: what one forward pass of a model produced, in one canonical record."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from kdistill.errors import FeatureError
from kdistill.refs import Ref


@dataclass
class Features:
    """The canonical record every adapter returns and every match reads.

    logits: (B, C) or (B, T, V); a question-answering model's start and end logits as (B, 2, T)
    (:func:`kdistill.qa_spans.span_logits`). hidden: tuple of (B, T, D), index 0 = embeddings.
    attentions / attention_scores / queries / keys / values: dicts block index -> tensor
    (only the blocks a match reads are kept). modules: module path -> hooked output.
    attention_mask: (B, T) of 0/1 where the model has one. causal: the model is decoder-only (a
    token attends to itself and earlier tokens only); relation and attention losses mask the future then.
    """

    logits: Tensor | None = None
    hidden: tuple[Tensor, ...] | None = None
    attentions: dict[int, Tensor] = field(default_factory=dict)
    attention_scores: dict[int, Tensor] = field(default_factory=dict)
    queries: dict[int, Tensor] = field(default_factory=dict)
    keys: dict[int, Tensor] = field(default_factory=dict)
    values: dict[int, Tensor] = field(default_factory=dict)
    pooled: Tensor | None = None
    embedding: Tensor | None = None  # (B, D): the pooled sentence embedding (kdistill.embedding)
    modules: dict[str, Tensor] = field(default_factory=dict)
    attention_mask: Tensor | None = None
    extra: dict[str, Tensor] = field(default_factory=dict)
    causal: bool = False

    def get(self, ref: Ref) -> Tensor:
        """The tensor ``ref`` names; a FeatureError (never an empty tuple or a KeyError) if absent."""
        value = self._lookup(ref)
        if value is None:
            raise FeatureError(f"the model produced no '{ref}'. {self._why_missing(ref)}")
        return value

    def _lookup(self, ref: Ref) -> Tensor | None:
        if ref.kind == "logits":
            return self.logits
        if ref.kind == "pooled":
            return self.pooled
        if ref.kind == "embedding":
            return self.embedding
        if ref.kind == "hidden":
            if not self.hidden:
                return None
            return self.hidden[ref.index] if -len(self.hidden) <= ref.index < len(self.hidden) else None
        if ref.kind == "module":
            return self.modules.get(ref.path)
        table = {
            "attn": self.attentions,
            "attn_scores": self.attention_scores,
            "query": self.queries,
            "key": self.keys,
            "value": self.values,
        }.get(ref.kind)
        if table is None:
            return self.extra.get(str(ref))
        return table.get(ref.index)

    def _why_missing(self, ref: Ref) -> str:
        if ref.kind == "logits":
            return "The model has no head producing logits (e.g. a bare BertModel): match 'pooled' or 'hidden.-1', or load a model with a head."
        if ref.kind == "pooled":
            return "The model has no pooler output."
        if ref.kind == "embedding":
            return ("The sentence embedding is made for teacher.task: embedding (an encoder whose last hidden "
                    "state is pooled); a custom adapter must fill Features.embedding.")
        if ref.kind in ("attn", "attn_scores"):
            return ("Attention weights were not returned; with transformers' SDPA attention they silently "
                    "come back empty. kdistill asks for eager attention or hooks q/k itself for known "
                    "architectures; a custom adapter must fill Features.attentions.")
        return "Check that the adapter for this model fills this feature."

    def detach_to(self, dtype: torch.dtype | None = None) -> Features:
        """A copy with every tensor detached (and cast to ``dtype`` if given); used for caches."""

        def conv(t: Tensor | None) -> Tensor | None:
            if t is None:
                return None
            t = t.detach()
            return t.to(dtype) if dtype is not None and t.is_floating_point() else t

        return Features(
            logits=conv(self.logits),
            hidden=tuple(conv(h) for h in self.hidden) if self.hidden is not None else None,
            attentions={k: conv(v) for k, v in self.attentions.items()},
            attention_scores={k: conv(v) for k, v in self.attention_scores.items()},
            queries={k: conv(v) for k, v in self.queries.items()},
            keys={k: conv(v) for k, v in self.keys.items()},
            values={k: conv(v) for k, v in self.values.items()},
            pooled=conv(self.pooled),
            embedding=conv(self.embedding),
            modules={k: conv(v) for k, v in self.modules.items()},
            attention_mask=self.attention_mask,
            extra={k: conv(v) for k, v in self.extra.items()},
            causal=self.causal,
        )


def features_from_dict(data: dict) -> Features:
    """Build Features from a plain dict (what a user adapter function may return).

    Accepted keys: logits, hidden (list, index 0 = embeddings), attentions (list or dict),
    pooled, attention_mask, modules (dict), causal (bool), and any ref string (``"attn.3"``) as a key.
    """
    known = {f for f in Features.__dataclass_fields__}
    feats = Features()
    for key, value in data.items():
        if key == "hidden" and value is not None:
            feats.hidden = tuple(value)
        elif key in ("attentions", "attention_scores", "queries", "keys", "values") and value is not None:
            table = dict(enumerate(value)) if isinstance(value, (list, tuple)) else dict(value)
            setattr(feats, key, table)
        elif key in known:
            setattr(feats, key, value)
        else:
            feats.extra[key] = value
    return feats
