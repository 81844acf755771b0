"""TinyBERT data augmentation: candidates from a masked LM or embedding neighbours, whole words only."""

from __future__ import annotations

import pytest
import torch
import transformers

from kdistill.errors import ConfigError
from kdistill.methods.augment import augment_texts


# Token -> 2-D direction (angle in degrees); neighbours by cosine are then known by hand.
ANGLES = {
    "[PAD]": 200, "[UNK]": 200, "[CLS]": 0, "[SEP]": 0, "[MASK]": 0, "[unused0]": 0,
    "the": 300, "a": 300,
    "good": 0, "great": 5, "fine": 12, "nice": 40,
    "bad": 180, "awful": 175, "sad": 150, "glum": 160,
    "film": 90, "movie": 93, "picture": 99,
    "##s": 1, "un": 130, "##happy": 170, ".": 2, "!": 3, "1999": 4,
}
TOKENS = list(ANGLES)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(TOKENS) + "\n", encoding="utf-8")
    return transformers.BertTokenizer(str(path))


@pytest.fixture(scope="module")
def embeddings():
    angles = torch.tensor([ANGLES[t] for t in TOKENS], dtype=torch.float64) * torch.pi / 180
    return torch.stack([angles.cos(), angles.sin()], dim=1)


def test_nearest_whole_words_replace_every_word_at_p1(tokenizer, embeddings):
    out = augment_texts(["The good film!"], tokenizer, embedding_matrix=embeddings, n_per_text=60,
                        p_replace=1.0, k_candidates=2, seed=0)
    # "the" is a stop word; '##s', '[MASK]', '[unused0]', '.', '!' and '1999' point the same way as "good"
    # but are not whole words. Casing and punctuation of the original are kept.
    assert set(out) == {"The great movie!", "The great picture!", "The fine movie!", "The fine picture!"}
    nearest = augment_texts(["The good film!"], tokenizer, embedding_matrix=embeddings, n_per_text=10,
                            p_replace=1.0, k_candidates=1, seed=0)
    assert nearest == ["The great movie!"]


def test_word_of_several_pieces_uses_the_mean_of_its_pieces(tokenizer, embeddings):
    assert tokenizer.tokenize("unhappy") == ["un", "##happy"]
    out = augment_texts(["unhappy"], tokenizer, embedding_matrix=embeddings, n_per_text=20, p_replace=1.0,
                        k_candidates=1, seed=0)
    assert out == ["sad"]  # mean direction of 130° and 170° is 150°


def test_deterministic_given_seed_and_no_copies_of_the_input(tokenizer, embeddings):
    texts = ["the good film", "a bad movie.", "good nice picture"]
    first = augment_texts(texts, tokenizer, embedding_matrix=embeddings, n_per_text=8, p_replace=0.5, seed=3)
    again = augment_texts(texts, tokenizer, embedding_matrix=embeddings, n_per_text=8, p_replace=0.5, seed=3)
    other = augment_texts(texts, tokenizer, embedding_matrix=embeddings, n_per_text=8, p_replace=0.5, seed=4)
    assert first == again and first != other
    assert len(first) == len(set(first)) and not set(first) & set(texts)
    assert augment_texts(texts, tokenizer, embedding_matrix=embeddings, p_replace=0.0) == []


def test_each_word_is_replaced_independently(tokenizer, embeddings):
    out = augment_texts(["good film"], tokenizer, embedding_matrix=embeddings, n_per_text=400, p_replace=0.5,
                        k_candidates=1, seed=0)
    # Four outcomes, one is the original: three distinct new texts at most.
    assert set(out) == {"great film", "good movie", "great movie"}


def test_masked_lm_candidates_are_its_top_whole_words(tokenizer):
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(TOKENS), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=64)
    mlm = transformers.BertForMaskedLM(config).eval()
    with torch.no_grad():
        # Logits = the output bias alone: the ranking is known. Non-words get the highest scores.
        layer_norm = mlm.cls.predictions.transform.LayerNorm
        layer_norm.weight.zero_()
        layer_norm.bias.zero_()
        bias = torch.zeros(len(TOKENS))
        for token, value in {"##s": 9, "[MASK]": 8, "!": 7, "awful": 5, "bad": 4, "nice": 3}.items():
            bias[TOKENS.index(token)] = value
        mlm.cls.predictions.bias.copy_(bias)
        mlm.cls.predictions.decoder.bias.copy_(bias)
    out = augment_texts(["good film"], tokenizer, mlm_model=mlm, n_per_text=60, p_replace=1.0, k_candidates=2, seed=0)
    assert set(out) == {"awful awful", "awful bad", "bad awful", "bad bad"}
    # A word of several pieces falls back to the MLM's input embeddings: still whole words only.
    words = {w for text in augment_texts(["unhappy"], tokenizer, mlm_model=mlm, n_per_text=30, p_replace=1.0, seed=0)
             for w in text.split()}
    assert words and not words & {"##s", "##happy", "[MASK]", "[unused0]", "!", ".", "1999", "unhappy"}


def test_errors(tokenizer, embeddings):
    with pytest.raises(ConfigError, match="give a masked language model"):
        augment_texts(["good"], tokenizer)
    with pytest.raises(ConfigError, match=r"augment_texts: embedding_matrix must be \(vocabulary size ≥ 25, width\) rows"):
        augment_texts(["good"], tokenizer, embedding_matrix=embeddings[:5])
    with pytest.raises(ConfigError, match="p_replace"):
        augment_texts(["good"], tokenizer, embedding_matrix=embeddings, p_replace=2.0)
