"""Regenerate the tiny review CSVs and the word-level tokenizer used by the examples and CI.

    python examples/data/make_tiny_data.py

Deterministic (seeded). The sentences are made of a small vocabulary so a 32-wide random BERT
can be trained on them in seconds; the label is 1 when the review holds more positive words.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
POSITIVE = ["good", "great", "fun", "moving", "clever", "lovely", "funny", "sharp"]
NEGATIVE = ["bad", "dull", "boring", "awful", "weak", "silly", "slow", "flat"]
FILLER = ["the", "a", "film", "movie", "plot", "cast", "was", "is", "very", "quite", "and", "but", "not", "story"]
SIZES = {"reviews_train.csv": 64, "reviews_validation.csv": 16, "reviews_test.csv": 16}
# A second task for examples/multitask.yaml (same vocabulary, so one tokenizer): "spam" or "ham" messages.
SPAM, HAM = ["great", "fun", "very", "quite"], ["story", "plot", "cast", "film"]
MESSAGE_SIZES = {"messages_train.csv": 48, "messages_validation.csv": 16, "messages_test.csv": 16}


def sentence(rng: random.Random) -> tuple[str, int]:
    label = rng.randint(0, 1)
    strong, weak = (POSITIVE, NEGATIVE) if label else (NEGATIVE, POSITIVE)
    words = rng.choices(FILLER, k=rng.randint(3, 9)) + rng.choices(strong, k=2) + rng.choices(weak, k=rng.randint(0, 1))
    rng.shuffle(words)
    return " ".join(words), label


def message(rng: random.Random) -> tuple[str, str]:
    label = rng.choice(["ham", "spam"])
    words = rng.choices(SPAM if label == "spam" else HAM, k=2) + rng.choices(POSITIVE + NEGATIVE, k=rng.randint(2, 6))
    rng.shuffle(words)
    return " ".join(words), label


def main() -> None:
    rng = random.Random(0)
    for name, size in SIZES.items():
        with open(HERE / name, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            for _ in range(size):
                writer.writerow(sentence(rng))
    with open(HERE / "reviews_unlabelled.txt", "w", encoding="utf-8") as handle:
        for _ in range(32):
            handle.write(sentence(rng)[0] + "\n")
    rng = random.Random(1)  # its own stream: the review files stay as they were
    for name, size in MESSAGE_SIZES.items():
        with open(HERE / name, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            for _ in range(size):
                writer.writerow(message(rng))
    folder = HERE / "tiny_tokenizer"
    folder.mkdir(exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(SPECIALS + sorted(set(POSITIVE + NEGATIVE + FILLER))) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 64}, indent=2) + "\n")


if __name__ == "__main__":
    main()
