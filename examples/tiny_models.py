"""Tiny random Hugging Face models for the examples and CI: nothing is downloaded.

A real run names a model folder instead (``teacher: {path: ./my-finetuned-bert}``); these
factories stand in for it with the same classes, at 2–4 layers and 32–64 wide.
"""

from __future__ import annotations

from pathlib import Path

import torch

TOKENIZER = Path(__file__).resolve().parent / "data" / "tiny_tokenizer"
QA_TOKENIZER = Path(__file__).resolve().parent / "data" / "qa_tokenizer"  # the words of examples/data/qa_*.jsonl


def vocab_size() -> int:
    """Size of the word-level vocabulary in examples/data/tiny_tokenizer."""
    return len((TOKENIZER / "vocab.txt").read_text(encoding="utf-8").split())


def tiny_bert(num_layers: int = 2, hidden_size: int = 32, num_heads: int = 2, num_labels: int = 2,
              seed: int = 0):
    """A randomly initialised ``BertForSequenceClassification`` (seeded, so reruns agree)."""
    from transformers import BertForSequenceClassification

    return _seeded_bert(BertForSequenceClassification, seed, vocab_size(), num_layers, hidden_size, num_heads,
                        num_labels=num_labels)


def _seeded_bert(model_class, seed: int, vocab: int, num_layers: int, hidden_size: int, num_heads: int, *,
                 model_kwargs: dict | None = None, **config_extra):
    """``model_class`` over a tiny BERT config (no dropout, FFN twice the width), initialised under ``seed``."""
    from transformers import BertConfig

    config = BertConfig(
        vocab_size=vocab, hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=num_heads,
        intermediate_size=2 * hidden_size, max_position_embeddings=128, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, **config_extra,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return model_class(config, **(model_kwargs or {}))


def tiny_bert_encoder(num_layers: int = 2, hidden_size: int = 32, num_heads: int = 2, seed: int = 0):
    """A randomly initialised ``BertModel`` (an encoder without a head: an embedding model; seeded)."""
    from transformers import BertModel

    return _seeded_bert(BertModel, seed, vocab_size(), num_layers, hidden_size, num_heads,
                        model_kwargs={"add_pooling_layer": False})


def tiny_llama(num_layers: int = 4, hidden_size: int = 32, num_heads: int = 4, seed: int = 0):
    """A randomly initialised ``LlamaForCausalLM`` over the tiny word-level vocabulary (seeded)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size(), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_heads // 2,
                         max_position_embeddings=128, pad_token_id=0)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


def tiny_bert_tagger(num_layers: int = 2, hidden_size: int = 32, num_heads: int = 2, num_labels: int = 5,
                     seed: int = 0):
    """A randomly initialised ``BertForTokenClassification`` (one tag per token; seeded)."""
    from transformers import BertForTokenClassification

    return _seeded_bert(BertForTokenClassification, seed, vocab_size(), num_layers, hidden_size, num_heads,
                        num_labels=num_labels)


def tiny_bert_qa(num_layers: int = 2, hidden_size: int = 32, num_heads: int = 2, seed: int = 0):
    """A randomly initialised ``BertForQuestionAnswering`` (start and end logits; seeded) over the
    vocabulary of examples/data/qa_tokenizer."""
    from transformers import BertForQuestionAnswering

    vocab = len((QA_TOKENIZER / "vocab.txt").read_text(encoding="utf-8").split())
    return _seeded_bert(BertForQuestionAnswering, seed, vocab, num_layers, hidden_size, num_heads)
