"""Tiny random models whose blocks are not one plain list: T5 and BART (an encoder and a decoder
stack) and ALBERT (one shared layer run N times). 2 layers, 32 wide, vocabulary 40 (the ids of
``examples/data/tiny_tokenizer`` fit); ``eos_token_id`` 3 is that tokenizer's [SEP]."""

from __future__ import annotations

import torch
import transformers
from torch import nn

VOCAB = 40


def tiny_t5(*, eos_token_id: int = 3, num_labels: int = 2, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    config = transformers.T5Config(
        d_model=32, d_kv=16, d_ff=48, num_layers=2, num_heads=2, vocab_size=VOCAB, num_labels=num_labels,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=eos_token_id, dropout_rate=0.0,
    )
    return transformers.T5ForSequenceClassification(config).eval()


def tiny_bart(*, num_labels: int = 2, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    config = transformers.BartConfig(
        d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=48, decoder_ffn_dim=48, vocab_size=VOCAB, max_position_embeddings=32, num_labels=num_labels,
        pad_token_id=0, bos_token_id=2, eos_token_id=3, decoder_start_token_id=3, dropout=0.0,
    )
    return transformers.BartForSequenceClassification(config).eval()


def tiny_albert(*, num_labels: int = 2, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    config = transformers.AlbertConfig(
        hidden_size=32, embedding_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
        vocab_size=VOCAB, max_position_embeddings=32, num_labels=num_labels,
    )
    return transformers.AlbertForSequenceClassification(config).eval()


def ids_ending_in(eos: int, rows: int = 2, length: int = 6, seed: int = 0) -> torch.Tensor:
    """(rows, length) token ids in 4..VOCAB−1, each row ending in ``eos``."""
    ids = torch.randint(4, VOCAB, (rows, length), generator=torch.Generator().manual_seed(seed))
    ids[:, -1] = eos
    return ids
