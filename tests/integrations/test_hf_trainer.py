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


# ---------------------------------------------------------------------------------------------
# the same student as kdistill run


def test_distillation_trainer_and_kdistill_run_train_the_same_student(folders, tmp_path):
    """Hinton KD, 3 epochs of one 64-example batch (so shuffling cannot differ), settings aligned:
    AdamW (0.9, 0.999, 1e-8), weight decay 0.01 off biases and LayerNorms in both, linear decay
    without warm-up (kdistill's warm-up is (step+1)/warmup, HF's step/warmup), clipping at 1.0,
    dropout 0 in the tiny models."""
    teacher_folder, student_folder = folders
    settings = {"lr": 1e-3, "epochs": 3, "warmup": 0, "weight_decay": 0.01, "max_grad_norm": 1.0}
    config = config_from_dict({
        "teacher": {"path": str(teacher_folder)}, "student": {"path": str(student_folder)},
        "data": {"train": str(DATA / "reviews_train.csv"), "max_length": 16, "batch_size": 64},
        "method": "hinton", "method_args": {"temperature": 2.0, "alpha": 0.5},
        "training": {**settings, "lr_schedule": "linear", "log_every": 1, "progress": False, "tensorboard": False},
        "output_dir": str(tmp_path / "run"),
    }, (), base_dir=EXAMPLES)
    run(config)
    by_run = _weights(AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "student"))

    tokenizer = AutoTokenizer.from_pretrained(teacher_folder)
    student = AutoModelForSequenceClassification.from_pretrained(student_folder)
    args = TrainingArguments(str(tmp_path / "hf"), num_train_epochs=3, per_device_train_batch_size=64,
                             learning_rate=1e-3, weight_decay=0.01, warmup_steps=0, lr_scheduler_type="linear",
                             max_grad_norm=1.0, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8,
                             save_strategy="no", report_to=[], use_cpu=True, seed=0)
    trainer = DistillationTrainer(model=student, teacher=AutoModelForSequenceClassification.from_pretrained(
        teacher_folder), method="hinton", method_args={"temperature": 2.0, "alpha": 0.5}, args=args,
        train_dataset=_reviews(tokenizer), data_collator=DataCollatorWithPadding(tokenizer))
    trainer.train()
    assert trainer.state.global_step == 3
    by_trainer = _weights(student)

    assert by_trainer.keys() == by_run.keys()
    start = _weights(AutoModelForSequenceClassification.from_pretrained(student_folder))
    assert max((by_run[k] - start[k]).abs().max() for k in start) > 1e-3  # both trained
    worst = max((by_trainer[k] - by_run[k]).abs().max().item() for k in by_run)
    assert worst <= 1e-5


# ---------------------------------------------------------------------------------------------
# resume, logged parts, projections


def _narrow_trainer(teacher_folder: Path, out: Path, **changes) -> DistillationTrainer:
    """Hinton KD plus a hidden-state match from the 32-wide teacher to a 16-wide student (a projection),
    4 optimiser steps of 2 accumulated batches of 8, shuffled, a checkpoint every 2 steps."""
    tokenizer = AutoTokenizer.from_pretrained(teacher_folder)
    student = tiny_bert(num_layers=1, hidden_size=16, num_heads=2, seed=2)
    args = TrainingArguments(str(out), max_steps=4, per_device_train_batch_size=8, gradient_accumulation_steps=2,
                             learning_rate=1e-2, logging_steps=2, save_steps=2, report_to=[], use_cpu=True, seed=0)
    options = dict(model=student, teacher=AutoModelForSequenceClassification.from_pretrained(teacher_folder),
                   method="hinton", method_args={"temperature": 2.0, "alpha": 0.5},
                   matches=[Match("hidden.-1", "hidden.-1", "hidden_mse", name="hidden")], args=args,
                   train_dataset=_reviews(tokenizer), data_collator=DataCollatorWithPadding(tokenizer))
    return DistillationTrainer(**{**options, **changes})


def test_resume_from_a_checkpoint_gives_the_uninterrupted_student(folders, tmp_path):
    teacher_folder, _ = folders
    whole = _narrow_trainer(teacher_folder, tmp_path / "whole")
    whole.train()
    logs = [r for r in whole.state.log_history if "loss" in r]
    assert [r["step"] for r in logs] == [2, 4]
    for record in logs:  # the parts, averaged over the same steps and micro-batches as the Trainer's loss
        assert record["loss"] == pytest.approx(record["loss/soft"] + record["loss/hard_label"] + record["loss/hidden"],
                                               rel=1e-4)

    checkpoint = tmp_path / "whole" / "checkpoint-2"
    saved = load_file(checkpoint / "model.safetensors")
    assert not any("projections" in key for key in saved)
    assert set(load_file(checkpoint / PROJECTIONS_NAME)) == {"m1.weight", "m1.bias"}
    resumed = _narrow_trainer(teacher_folder, tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 4
    expected, got = _weights(whole.model), _weights(resumed.model)
    assert max((expected[k] - got[k]).abs().max().item() for k in expected) <= 1e-6

    whole.save_model(str(tmp_path / "final"))
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "final")
    assert not any("projections" in key for key in reloaded.state_dict())
    projections = load_file(tmp_path / "final" / PROJECTIONS_NAME)
    assert torch.equal(projections["m1.weight"], whole.distiller.projections["m1"].weight.detach())
    assert not torch.equal(projections["m1.weight"], load_file(checkpoint / PROJECTIONS_NAME)["m1.weight"])  # trained


def test_a_checkpoint_without_projections_is_refused_on_resume(folders, tmp_path):
    teacher_folder, _ = folders
    first = _narrow_trainer(teacher_folder, tmp_path / "first")
    first.train()
    (tmp_path / "first" / "checkpoint-2" / PROJECTIONS_NAME).unlink()
    with pytest.raises(CheckpointError, match=f"checkpoint-2' has no {PROJECTIONS_NAME}, but the matches train"):
        _narrow_trainer(teacher_folder, tmp_path / "again").train(resume_from_checkpoint=str(
            tmp_path / "first" / "checkpoint-2"))


# ---------------------------------------------------------------------------------------------
# what it refuses


def test_refuses_what_one_trainer_cannot_do(folders, tmp_path):
    teacher_folder, _ = folders
    with pytest.raises(ConfigError, match="needs a kdistill method .* or matches"):
        _narrow_trainer(teacher_folder, tmp_path, method=None, method_args=None, matches=[])
    with pytest.raises(ConfigError, match="method: 'theseus' trains"):
        _narrow_trainer(teacher_folder, tmp_path, method="theseus", method_args={}, matches=[])
    with pytest.raises(ConfigError, match="method_args: method .hinton. rejected its arguments"):
        _narrow_trainer(teacher_folder, tmp_path, method_args={"temprature": 2.0})
    student = tiny_bert(num_layers=1, hidden_size=16, num_heads=2)
    optimizer = torch.optim.AdamW(student.parameters())
    with pytest.raises(ConfigError, match="optimizers: the matches need projections"):
        _narrow_trainer(teacher_folder, tmp_path, model=student, optimizers=(optimizer, None))
    with pytest.raises(ConfigError, match="exactly one of teacher"):
        _narrow_trainer(teacher_folder, tmp_path, teachers={"a": student})
