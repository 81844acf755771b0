"""DistillationTrainer: the five-line example, the same student as ``kdistill run``, resume, logged parts,
saved projections, and what it refuses."""

from __future__ import annotations

import csv
import importlib.util
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, TrainingArguments

from kdistill import Match
from kdistill.config import config_from_dict
from kdistill.errors import CheckpointError, ConfigError
from kdistill.integrations.hf_trainer import PROJECTIONS_NAME, DistillationTrainer
from kdistill.run import run

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DATA = EXAMPLES / "data"
TOKENIZER = DATA / "tiny_tokenizer"


def _module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tiny_bert = _module(EXAMPLES / "tiny_models.py", "_kdistill_test_tiny_models").tiny_bert


def _saved(model, folder: Path) -> Path:
    model.save_pretrained(folder)
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(TOKENIZER / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[Path, Path]:
    """A 2-layer 32-wide teacher and a 1-layer 32-wide student, saved as Hugging Face folders."""
    root = tmp_path_factory.mktemp("models")
    return (_saved(tiny_bert(num_layers=2, hidden_size=32, num_heads=2), root / "teacher"),
            _saved(tiny_bert(num_layers=1, hidden_size=32, num_heads=2, seed=1), root / "student"))


def _reviews(tokenizer, max_length: int = 16) -> list[dict]:
    with open(DATA / "reviews_train.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return [{**tokenizer(r["text"], truncation=True, max_length=max_length), "labels": int(r["label"])} for r in rows]


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------------------------
# the five-line example


def test_the_example_is_a_fine_tuning_script_with_at_most_five_lines_changed(tmp_path):
    source = (EXAMPLES / "hf_trainer_distil.py").read_text()
    hunks, current = [], None  # the docstring's diff: hunks of '-' then '+' lines, '...' between them
    for line in source.split('"""')[1].splitlines():
        if re.match(r"    [-+]", line):
            current = current or ([], [])
            current[line[4] == "+"].append(line[5:] + "\n")
        elif current:
            hunks.append(current)
            current = None
    assert hunks and sum(len(added) for _, added in hunks) <= 5
    _, docstring, plain = source.split('"""', 2)
    for removed, added in hunks:
        assert plain.count("".join(added)) == 1, added
        plain = plain.replace("".join(added), "".join(removed))
    assert "kdistill" not in plain and "    trainer = Trainer(" in plain
    plain = f'"""{docstring}"""{plain}'.replace("Path(__file__).resolve().parent", f"Path({str(EXAMPLES)!r})")

    finetuned = _module(_write(tmp_path / "plain.py", plain), "_plain_finetuning").main(str(tmp_path / "plain"), 2)
    distilled = _module(EXAMPLES / "hf_trainer_distil.py", "_hf_trainer_distil").main(str(tmp_path / "distil"), 2)
    assert "eval_loss" in finetuned and "eval_loss" in distilled
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "distil")
    assert reloaded.config.num_hidden_layers == 2


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
