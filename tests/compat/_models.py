"""Tiny random BERTs (2–4 layers, width 16–32) built from configs: nothing is downloaded."""

from __future__ import annotations

import torch
from transformers import BertConfig, BertForSequenceClassification, BertModel


def bert_config(layers: int = 2, hidden: int = 32, *, attentions: bool = True, hidden_states: bool = True,
                **overrides) -> BertConfig:
    options = dict(vocab_size=100, num_hidden_layers=layers, hidden_size=hidden, intermediate_size=37,
                   num_attention_heads=4, max_position_embeddings=32, output_hidden_states=hidden_states,
                   output_attentions=attentions, num_labels=3)
    options.update(overrides)
    return BertConfig(**options)


def bert(layers: int = 2, hidden: int = 32, *, seed: int = 0, head: bool = False, **options):
    torch.manual_seed(seed)
    cls = BertForSequenceClassification if head else BertModel
    return cls(bert_config(layers, hidden, **options))


def padded_batch(batch: int = 4, length: int = 8, *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, token_type_ids); every other example padded after 5 tokens."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 100, (batch, length), generator=generator)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[::2, 5:] = 0
    return ids, mask, torch.zeros(batch, length, dtype=torch.long)

