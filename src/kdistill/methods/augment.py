"""TinyBERT's data augmentation: new sentences by replacing words with similar words.

For each word of a sentence (stop words, punctuation and numbers left alone) a list of up to
``k_candidates`` replacement words is built:

- with a masked language model (``mlm_model``), for a word that is one word-piece: the word is
  masked and the model's top predictions at that position are the candidates (the input is the
  pair ``masked sentence [SEP] original sentence``, as in the reference code);
- otherwise, its nearest neighbours by cosine similarity in a word-embedding matrix
  (``embedding_matrix``, e.g. the teacher's input embeddings; rows indexed by token id). A word of
  several pieces is represented by the mean of its pieces' rows.

Candidates are whole-word tokens of the tokenizer's vocabulary only: no special tokens, no subword
pieces (``##ing``, or BPE pieces without a word-start marker), nothing without a letter.
Then ``n_per_text`` times: every word that has candidates is replaced, with probability
``p_replace``, by one of them drawn uniformly. New sentences (not the original, no duplicates)
are returned; the caller has the teacher label them (soft targets, as TinyBERT does) — e.g. as a
stage with ``data: unlabelled``. Deterministic given ``seed``. Usable with any method.

Differences from the reference code (TinyBERT ``data_augmentation.py``): it uses GloVe vectors for
words of several pieces (we use the teacher's embeddings, mean over pieces, unless an MLM is given
and no matrix: then the MLM's input embeddings); it keeps the MLM's top-K predictions and then drops
subword pieces (so often fewer than K), while we take the top-K among whole-word tokens; it also
tries punctuation, which we leave alone; it returns the sentences re-joined with spaces after basic
tokenisation (lower-cased), while we splice replacements into the original text.
"""

from __future__ import annotations

import random
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from kdistill.errors import ConfigError

# English function words (as in the reference's list): replacing them changes syntax, not content.
DEFAULT_STOP_WORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being below between
both but by can could did do does doing down during each few for from further had has have having he her
here hers herself him himself his how i if in into is it its itself just me more most my myself no nor not
now of off on once only or other our ours ourselves out over own same she should so some such than that the
their theirs them themselves then there these they this those through to too under until up very was we
were what when where which while who whom why will with would you your yours yourself yourselves 's 're 've
'd 'll 'm n't
""".split())

_WORD_RE = re.compile(r"\w+|[^\w\s]")
_WORD_START_MARKERS = ("\u0120", "\u2581")  # BPE "Ġ" (GPT-2, RoBERTa) and SentencePiece "▁"


@dataclass(frozen=True)
class _Word:
    start: int
    end: int
    text: str


def _split_words(text: str, tokenizer: Any) -> list[_Word]:
    """Words with character offsets in ``text``: the tokenizer's own pre-tokenizer when it has one."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    pre = getattr(backend, "pre_tokenizer", None) if backend is not None else None
    if pre is not None:
        pieces = pre.pre_tokenize_str(text)
        words = []
        for _piece, (start, end) in pieces:
            raw = text[start:end]
            if raw.strip():
                # Byte-level pre-tokenizers keep the leading space inside the span; drop it.
                offset = len(raw) - len(raw.lstrip())
                words.append(_Word(start + offset, end, raw.strip()))
        return words
    return [_Word(m.start(), m.end(), m.group()) for m in _WORD_RE.finditer(text)]


class _Vocabulary:
    """The tokenizer's whole-word tokens: ids, their display words, and how to test a token."""

    def __init__(self, tokenizer: Any):
        vocab: dict[str, int] = tokenizer.get_vocab()
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        special |= {i for t, i in vocab.items() if t in set(getattr(tokenizer, "all_special_tokens", []) or [])}
        wordpiece = any(token.startswith("##") for token in vocab)
        marked = not wordpiece and any(token.startswith(_WORD_START_MARKERS) for token in vocab)
        self.ids: list[int] = []
        self.words: dict[int, str] = {}
        for token, index in sorted(vocab.items(), key=lambda item: item[1]):
            if index in special or (token.startswith("[") and token.endswith("]")) or \
                    (token.startswith("<") and token.endswith(">")):
                continue
            if wordpiece and token.startswith("##"):
                continue
            if marked:
                if not token.startswith(_WORD_START_MARKERS):
                    continue
                word = token[1:]
            else:
                word = token
            if not any(ch.isalpha() for ch in word) or not word.strip():
                continue
            self.ids.append(index)
            self.words[index] = word
        if not self.ids:
            raise ConfigError("augment: the tokenizer's vocabulary has no whole-word tokens to use as replacements.")
        self.id_tensor = torch.tensor(self.ids, dtype=torch.long)
        self.size = max(vocab.values()) + 1


def augment_texts(
    texts: Sequence[str],
    tokenizer: Any,
    *,
    mlm_model: nn.Module | None = None,
    embedding_matrix: Tensor | Any | None = None,
    n_per_text: int = 20,
    p_replace: float = 0.4,
    k_candidates: int = 15,
    seed: int = 0,
    stop_words: Collection[str] = DEFAULT_STOP_WORDS,
    max_length: int = 128,
) -> list[str]:
    """New sentences from ``texts`` by word replacement (TinyBERT's augmentation). See the module doc.

    texts: sentences. tokenizer: the teacher's (Hugging Face) tokenizer. mlm_model: a masked LM
    sharing that tokenizer (optional). embedding_matrix: (vocab, D) word embeddings indexed by token id
    (e.g. ``teacher.get_input_embeddings().weight``); needed without an MLM. n_per_text: attempts per
    sentence (reference N = 20). p_replace: chance to replace each word (reference 0.4). k_candidates:
    candidates per word (reference K = 15). Returns the new sentences, in input order, without
    duplicates or unchanged copies.
    """
    if mlm_model is None and embedding_matrix is None:
        raise ConfigError("augment: give a masked language model (mlm_model) or a word-embedding matrix "
                          "(embedding_matrix, e.g. teacher.get_input_embeddings().weight).")
    if not 0.0 <= p_replace <= 1.0:
        raise ConfigError(f"augment_texts: p_replace must be a probability in [0, 1], got {p_replace!r}.")
    for name, value in (("n_per_text", n_per_text), ("k_candidates", k_candidates)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"augment_texts: {name} must be a positive integer, got {value!r}.")
    vocabulary = _Vocabulary(tokenizer)
    if embedding_matrix is None and mlm_model is not None:
        embedding_matrix = mlm_model.get_input_embeddings().weight
    neighbours = None
    if embedding_matrix is not None:
        neighbours = _EmbeddingNeighbours(torch.as_tensor(embedding_matrix), vocabulary, k_candidates)
    stop = {w.lower() for w in stop_words}
    rng = random.Random(seed)
    results: list[str] = []
    seen = set(texts)
    for text in texts:
        words = _split_words(text, tokenizer)
        targets = [i for i, w in enumerate(words)
                   if w.text.lower() not in stop and any(ch.isalpha() for ch in w.text)]
        candidates = _candidates(text, words, targets, tokenizer, vocabulary, mlm_model, neighbours,
                                 k_candidates, max_length)
        for _ in range(n_per_text):
            replaced = {}
            for index in targets:
                options = candidates.get(index)
                if not options:
                    continue
                choice = rng.choice(options)
                if rng.random() < p_replace:
                    replaced[index] = choice
            new_text = _splice(text, words, replaced)
            if new_text not in seen:
                seen.add(new_text)
                results.append(new_text)
    return results


def _splice(text: str, words: list[_Word], replacements: dict[int, str]) -> str:
    out, position = [], 0
    for index in sorted(replacements):
        word = words[index]
        out.append(text[position:word.start])
        out.append(replacements[index])
        position = word.end
    out.append(text[position:])
    return "".join(out)


def _pieces(tokenizer: Any, word: str) -> list[int]:
    return tokenizer.convert_tokens_to_ids(tokenizer.tokenize(word))


def _candidates(text: str, words: list[_Word], targets: list[int], tokenizer: Any, vocabulary: _Vocabulary,
                mlm_model: nn.Module | None, neighbours: _EmbeddingNeighbours | None, k: int,
                max_length: int) -> dict[int, list[str]]:
    """Replacement words for each target word of one sentence."""
    unk = getattr(tokenizer, "unk_token_id", None)
    pieces = {i: _pieces(tokenizer, words[i].text) for i in targets}
    result: dict[int, list[str]] = {}
    masked = [i for i in targets if mlm_model is not None and len(pieces[i]) == 1 and pieces[i][0] != unk]
    if masked:
        result.update(_mlm_candidates(text, words, masked, tokenizer, vocabulary, mlm_model, k, max_length))
    for i in targets:
        if i in result or neighbours is None:
            continue
        ids = pieces[i]
        if not ids or unk in ids:
            continue
        result[i] = neighbours.words_near(ids, exclude=words[i].text)
    return result


class _EmbeddingNeighbours:
    """Nearest whole-word tokens by cosine similarity in a word-embedding matrix."""

    def __init__(self, matrix: Tensor, vocabulary: _Vocabulary, k: int):
        matrix = matrix.detach().float().cpu()
        if matrix.dim() != 2 or matrix.shape[0] < vocabulary.size:
            raise ConfigError(f"augment_texts: embedding_matrix must be (vocabulary size ≥ {vocabulary.size}, width) "
                              f"rows indexed by token id, got shape {tuple(matrix.shape)}.")
        self.matrix = matrix
        self.vocabulary = vocabulary
        self.candidates = torch.nn.functional.normalize(matrix[vocabulary.id_tensor], dim=-1)
        self.k = k
        self.cache: dict[tuple[int, ...], list[str]] = {}

    def words_near(self, ids: list[int], *, exclude: str) -> list[str]:
        key = tuple(ids)
        if key not in self.cache:
            vector = torch.nn.functional.normalize(self.matrix[list(ids)].mean(0), dim=-1)
            similarity = self.candidates @ vector
            if len(ids) == 1:
                similarity[self.vocabulary.id_tensor == ids[0]] = float("-inf")
            order = torch.argsort(similarity, descending=True, stable=True).tolist()
            words = []
            for position in order:
                word = self.vocabulary.words[self.vocabulary.ids[position]]
                if similarity[position] == float("-inf") or word.lower() == exclude.lower():
                    continue
                words.append(word)
                if len(words) == self.k:
                    break
            self.cache[key] = words
        return self.cache[key]


@torch.no_grad()
def _mlm_candidates(text: str, words: list[_Word], targets: list[int], tokenizer: Any, vocabulary: _Vocabulary,
                    mlm_model: nn.Module, k: int, max_length: int) -> dict[int, list[str]]:
    """Top-k whole-word predictions of the MLM at each target word, masked one at a time (one batch)."""
    mask_token = getattr(tokenizer, "mask_token", None)
    if mask_token is None:
        raise ConfigError("augment_texts: mlm_model needs a tokenizer with a mask token, and this one has none; "
                          "give embedding_matrix instead.")
    masked_texts = [_splice(text, words, {i: mask_token}) for i in targets]
    encoded = tokenizer(masked_texts, [text] * len(targets), truncation=True, max_length=max_length,
                        padding=True, return_tensors="pt")
    was_training = mlm_model.training
    mlm_model.eval()
    try:
        device = next(mlm_model.parameters()).device
        logits = mlm_model(**{k_: v.to(device) for k_, v in encoded.items()}).logits.float().cpu()
    finally:
        mlm_model.train(was_training)
    allowed = torch.full((logits.shape[-1],), float("-inf"))
    allowed[vocabulary.id_tensor[vocabulary.id_tensor < logits.shape[-1]]] = 0.0
    result = {}
    for row, index in enumerate(targets):
        positions = (encoded["input_ids"][row] == tokenizer.mask_token_id).nonzero()
        if len(positions) == 0:  # truncated away
            continue
        scores = logits[row, positions[0, 0]] + allowed
        top = torch.topk(scores, min(k, len(vocabulary.ids))).indices.tolist()
        result[index] = [vocabulary.words[i] for i in top if i in vocabulary.words]
    return result


__all__ = ["DEFAULT_STOP_WORDS", "augment_texts"]
