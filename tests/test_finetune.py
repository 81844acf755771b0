"""One run from a pretrained base and a labelled CSV: the teacher fine-tuned first (and cached by
content), the student distilled, the baseline on labels alone, all side by side (issue 16, items 2–3)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from kdistill.config import config_from_dict
from kdistill.errors import ConfigError
from kdistill.run import plan, run

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "examples" / "data" / "tiny_tokenizer"
POSITIVE, NEGATIVE, FILLER = ["good", "great", "sharp"], ["bad", "dull", "not"], ["film", "plot", "story", "cast"]


def _base(folder: Path) -> Path:
    """A pretrained base as users have one: a BertModel (no classifier head) with its tokenizer."""
    from transformers import BertConfig, BertModel

    vocab = len((TOKENIZER / "vocab.txt").read_text(encoding="utf-8").split())
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(folder)
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(TOKENIZER / name, folder / name)
    return folder


def _csv(path: Path, count: int, seed: int) -> Path:
    generator = torch.Generator().manual_seed(seed)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["review", "verdict"])
        for _ in range(count):
            positive = bool(torch.randint(0, 2, (1,), generator=generator))
            words = [FILLER[int(i)] for i in torch.randint(0, len(FILLER), (3,), generator=generator)]
            cue = (POSITIVE if positive else NEGATIVE)[int(torch.randint(0, 3, (1,), generator=generator))]
            writer.writerow([" ".join(words + [cue]), "yes" if positive else "no"])
    return path


def _independent_accuracy(folder: Path, test_csv: Path) -> float:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rows = list(csv.DictReader(open(test_csv, encoding="utf-8")))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    encoded = tokenizer([r["review"] for r in rows], truncation=True, max_length=12, padding=True, return_tensors="pt")
    with torch.no_grad():
        predicted = model(**encoded).logits.argmax(-1).tolist()
    return sum(model.config.id2label[p] == r["verdict"] for p, r in zip(predicted, rows)) / len(rows)


@pytest.fixture()
def setup(tmp_path, monkeypatch):
    monkeypatch.setenv("KDISTILL_CACHE", str(tmp_path / "cache"))
    base = _base(tmp_path / "base")
    data = {"train": str(_csv(tmp_path / "train.csv", 64, 0)), "validation": str(_csv(tmp_path / "dev.csv", 16, 1)),
            "test": str(_csv(tmp_path / "test.csv", 16, 2)), "text": "review", "label": "verdict",
            "max_length": 12, "batch_size": 8}
    return tmp_path, base, data


def _config(tmp_path, base, data, name, layers):
    return config_from_dict({
        "teacher": {"path": str(base), "finetune": {"epochs": 2, "lr": 1e-3}},
        "student": {"from_teacher": {"layers": layers}},
        "data": data, "method": "hinton", "baseline": True,
        "training": {"lr": 1e-3, "max_steps": 4, "log_every": 1, "progress": False, "tensorboard": False},
        "output_dir": str(tmp_path / name),
    }, base_dir=tmp_path)


def test_a_base_and_a_labelled_csv_give_teacher_student_and_baseline_in_one_run(setup):
    from transformers import AutoModelForSequenceClassification

    tmp_path, base, data = setup
    first = _config(tmp_path, base, data, "run1", [1])
    text = plan(first)
    assert "to be fine-tuned first: 2.0 epoch(s) on 64 labelled examples (not cached yet" in text
    assert "baseline  the student as built, trained on the labels alone" in text
    assert ("estimated steps: 4 optimiser steps in all, plus 16 for the teacher's fine-tune, plus 4 for the "
            "baseline") in text
    summary = run(first)
    out = tmp_path / "run1"
    finetune = summary["teacher_finetune"]
    assert finetune["cached"] is False and Path(finetune["cache"], "config.json").is_file()
    teacher = AutoModelForSequenceClassification.from_pretrained(out / "teacher")
    assert teacher.config.id2label == {0: "no", 1: "yes"}  # the run's label ids, saved with the teacher
    assert set(summary["baseline"]["metrics"]) == {"validation", "test"}
    assert summary["baseline"]["parameters"] == summary["parameters"]["student"]
    report = (out / "report.md").read_text()
    assert "| test | baseline |" in report and "| test | teacher |" in report
    assert "The teacher is a pretrained base fine-tuned on this run's training split (fine-tuned in this run" in report
    from kdistill.run import evaluate_run

    evaluated = evaluate_run(out, "test")  # kdistill eval reproduces all three figures
    assert evaluated["baseline"]["accuracy"] == pytest.approx(summary["baseline"]["metrics"]["test"]["accuracy"])
    assert evaluated["student"] == pytest.approx(summary["metrics"]["test"]["student"])
    assert evaluated["teacher"] == pytest.approx(summary["metrics"]["test"]["teacher"])
    # Every saved model re-evaluates to its summary figure with plain transformers (its own tokenizer).
    for role, folder in (("teacher", out / "teacher"), ("student", out / "student"),
                         ("baseline", out / "baseline" / "student")):
        figure = (summary["baseline"]["metrics"]["test"] if role == "baseline"
                  else summary["metrics"]["test"][role])["accuracy"]
        assert _independent_accuracy(folder, tmp_path / "test.csv") == pytest.approx(figure, abs=1e-6), role

    # Another student from the same base and data: the fine-tuned teacher comes from the cache.
    second = _config(tmp_path, base, data, "run2", [0])
    assert f"fine-tuned from {base} (cached in {finetune['cache']})" in plan(second)
    again = run(second)
    assert again["teacher_finetune"]["cached"] is True and again["teacher_finetune"]["cache"] == finetune["cache"]
    assert again["metrics"]["test"]["teacher"] == summary["metrics"]["test"]["teacher"]
    # A changed fine-tune setting is another teacher.
    third = config_from_dict({**json.loads(json.dumps(second.resolved())),
                              "teacher": {"path": str(base), "finetune": {"epochs": 1, "lr": 1e-3}},
                              "output_dir": str(tmp_path / "run3")}, base_dir=tmp_path)
    assert "not cached yet" in plan(third)


def test_the_baseline_continues_and_is_not_trained_twice(setup):
    tmp_path, base, data = setup
    config = _config(tmp_path, base, data, "run", [1])
    summary = run(config)
    again = run(config)  # the same config: complete; the baseline is read back, not retrained
    assert again["baseline"]["metrics"] == summary["baseline"]["metrics"]


def test_finetune_applies_to_a_teacher_folder_with_labels(tmp_path, setup):
    _, base, data = setup
    with pytest.raises(ConfigError, match="student.finetune: fine-tunes a teacher given by 'path'"):
        config_from_dict({"teacher": {"path": str(base)}, "student": {"path": str(base), "finetune": {}},
                          "data": data, "method": "hinton"}, base_dir=tmp_path)
    with pytest.raises(ConfigError, match="baseline: trains the student on the labels alone, but data.label is null"):
        config_from_dict({"teacher": {"path": str(base)}, "student": {"from_teacher": {"layers": [0]}},
                          "data": {**data, "label": None}, "method": "hinton", "baseline": True}, base_dir=tmp_path)


def test_eval_and_bench_read_the_runs_fine_tuned_teacher_not_the_base(setup):
    from safetensors.torch import load_file

    from kdistill.bench import find_teacher
    from kdistill.run import evaluate_run, load_run

    tmp_path, base, data = setup
    summary = run(_config(tmp_path, base, data, "run", [1]))
    out = tmp_path / "run"
    assert find_teacher(out)[0] == out / "teacher"
    _, teacher, _, _, _ = load_run(out)
    saved = load_file(out / "teacher" / "model.safetensors")
    assert torch.equal(teacher.state_dict()["classifier.weight"], saved["classifier.weight"])
    assert evaluate_run(out)["teacher"] == summary["metrics"]["test"]["teacher"]


def test_a_resumed_longer_run_continues_the_baseline_too(setup):
    tmp_path, base, data = setup
    config = _config(tmp_path, base, data, "run", [1])
    run(config)
    longer = config_from_dict({**json.loads(json.dumps(config.resolved())),
                               "training": {**config.resolved()["training"], "max_steps": 6}}, base_dir=tmp_path)
    summary = run(longer, resume=True)
    assert summary["stages"][0]["steps"] == 6
    assert summary["baseline"]["steps"] == 6  # not the 4-step baseline of the shorter run beside a 6-step student


def test_the_run_training_settings_a_fine_tune_inherits_are_in_its_cache_key(setup):
    from kdistill.finetune import finetune_settings

    tmp_path, base, data = setup
    config = _config(tmp_path, base, data, "run", [1])
    raw = json.loads(json.dumps(config.resolved()))
    for name, value in (("grad_accum", 4), ("lr_schedule", "cosine"), ("max_grad_norm", 0.1)):
        changed = config_from_dict({**raw, "training": {**raw["training"], name: value}}, base_dir=tmp_path)
        assert finetune_settings(changed) != finetune_settings(config), name  # another teacher, not the cached one
    quieter = config_from_dict({**raw, "training": {**raw["training"], "log_every": 5}}, base_dir=tmp_path)
    assert finetune_settings(quieter) == finetune_settings(config)


def test_a_report_without_a_test_split_names_a_split_kdistill_eval_can_read(tmp_path):
    from kdistill.report import run_report

    figures = {"accuracy": 1.0, "macro_f1": 1.0}
    summary = {"method": "hinton", "metrics": {"validation": {"examples": 4, "agreement": 1.0, "teacher": figures,
                                                              "student": figures}}}
    report = run_report(tmp_path, summary, "method: hinton\n").read_text()
    assert "`kdistill eval RUN --split validation` reproduces them" in report  # the run has no test split


def test_a_fine_tune_head_smaller_than_the_classes_names_num_labels(setup):
    tmp_path, base, data = setup
    from kdistill.errors import DataError

    with pytest.raises(DataError, match=r"teacher.num_labels: 1, but the data has 2 classes; the fine-tune gives "
                                        r"the teacher one output per class: set it to 2 or leave it out."):
        config_from_dict({"teacher": {"path": str(base), "num_labels": 1, "finetune": {"epochs": 1}},
                          "student": {"from_teacher": {"layers": [0]}}, "data": data, "method": "hinton",
                          "output_dir": str(tmp_path / "x")}, base_dir=tmp_path)


def test_with_early_stopping_the_validation_split_is_part_of_the_teachers_key(setup):
    from kdistill.finetune import finetuned_teacher
    from kdistill.run import build

    tmp_path, base, data = setup
    other = {**data, "validation": str(_csv(tmp_path / "dev2.csv", 16, 9))}

    def key(data_spec, patience):
        config = _config(tmp_path, base, data_spec, "k", [1])
        config = config_from_dict({**config.resolved(), "training": {**config.resolved()["training"],
                                   "early_stop_patience": patience, "eval_every": 2 if patience else None}},
                                  base_dir=tmp_path)
        parts = build(config)
        return finetuned_teacher(config, parts.datasets["train"], parts.data.label_names, parts.data.num_classes,
                                 parts.datasets["validation"]).key

    assert key(data, None) == key(other, None)  # the final teacher does not depend on validation data
    assert key(data, 2) != key(other, 2)  # with early stopping it stops where validation says


def test_one_fine_tune_per_teacher_at_a_time_and_a_dead_runs_lock_is_taken_over(setup):
    import os
    import subprocess

    from kdistill.finetune import finetuned_teacher
    from kdistill.run import build

    tmp_path, base, data = setup
    config = _config(tmp_path, base, data, "locked", [1])
    parts = build(config)
    entry = finetuned_teacher(config, parts.datasets["train"], parts.data.label_names, parts.data.num_classes,
                              parts.datasets["validation"])
    work = entry.folder.with_name(f"{entry.key}.work")
    work.mkdir(parents=True)
    (work / "lock").write_text(str(os.getppid()))  # a live process holds it
    with pytest.raises(ConfigError, match=r"another run \(process \d+\) is fine-tuning this teacher now"):
        run(config)
    gone = subprocess.Popen(["true"])  # a process that has ended: a run killed mid-fine-tune
    gone.wait()
    (work / "lock").write_text(str(gone.pid))
    summary = run(config)
    assert summary["teacher_finetune"]["cached"] is False and not work.exists()
