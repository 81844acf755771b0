"""The runner: build, plan, run, the output folder, and the errors a user meets before training."""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
import re
import shutil
from pathlib import Path

import pytest

from kdistill.config import config_from_dict, parse_yaml
from kdistill.errors import ConfigError, DataError, RefError, ShapeError
from kdistill.run import build, evaluate_run, plan, run

runner = importlib.import_module("kdistill.run")  # the module: kdistill.run is the function

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
DATA = EXAMPLES / "data"
TOKENIZER = DATA / "tiny_tokenizer"


def _example_module(name: str):
    spec = importlib.util.spec_from_file_location(f"_kdistill_test_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def teacher_folder(tmp_path_factory) -> Path:
    """A saved 2-layer, 32-wide random BERT classifier with its tokenizer: a teacher 'path'."""
    folder = tmp_path_factory.mktemp("teacher")
    _example_module("tiny_models").tiny_bert(num_layers=2, hidden_size=32, num_heads=2).save_pretrained(folder)
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(TOKENIZER / name, folder / name)
    return folder


def hf_config(teacher_folder: Path, out: Path, *, overrides=(), **changes):
    raw = {
        "teacher": {"path": str(teacher_folder)},
        "student": {"from_teacher": {"layers": [1]}},
        "data": {"train": str(DATA / "reviews_train.csv"), "validation": str(DATA / "reviews_validation.csv"),
                 "test": str(DATA / "reviews_test.csv"), "max_length": 16, "batch_size": 16},
        "method": "hinton",
        "method_args": {"temperature": 2.0, "alpha": 0.5},
        "training": {"lr": 1e-3, "max_steps": 3, "log_every": 1, "progress": False, "tensorboard": False},
        "output_dir": str(out),
    }
    raw.update(changes)
    return config_from_dict(raw, overrides, base_dir=EXAMPLES)


def narrow_student_config(teacher_folder: Path, out: Path, *, projection="auto", overrides=()):
    """Explicit TinyBERT-style matches from a 32-wide teacher to a 16-wide, 1-layer student."""
    return hf_config(
        teacher_folder, out, overrides=overrides, method=None, method_args={},
        student={"from_teacher": {"num_layers": 1, "hidden_size": 16, "num_attention_heads": 2,
                                  "intermediate_size": 32}},
        layer_map="uniform",
        matches=[
            {"teacher": "hidden.*", "loss": "hidden_mse", "projection": projection},
            {"teacher": "attn.*", "loss": "attention_mse"},
            {"teacher": "logits", "loss": "kl", "args": {"temperature": 2.0}, "start": 0.5},
        ],
    )


# ---------------------------------------------------------------------------------------------
# run and the output folder


def test_run_writes_the_output_folder(teacher_folder, tmp_path):
    out = tmp_path / "run"
    config = hf_config(teacher_folder, out)
    summary = run(config)

    assert parse_yaml((out / "config.resolved.yaml").read_text()) == config.resolved()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3]
    for record in train:
        assert set(record) >= {"loss", "soft", "hard_label", "lr"}
        assert math.isfinite(record["loss"])
        assert record["loss"] == pytest.approx(record["soft"] + record["hard_label"], rel=1e-5)

    student_dir = out / "student"
    saved = json.loads((student_dir / "config.json").read_text())
    assert saved["num_hidden_layers"] == 1 and saved["hidden_size"] == 32
    assert (student_dir / "model.safetensors").is_file() and (student_dir / "tokenizer_config.json").is_file()
    assert not list(out.glob(".student*")) and not list(out.glob(".*tmp*"))

    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == summary
    assert summary["method"] == "hinton" and summary["stages"][0]["steps"] == 3
    assert summary["parameters"]["student"] < summary["parameters"]["teacher"]
    for split, size in (("validation", 16), ("test", 16)):
        result = summary["metrics"][split]
        assert result["examples"] == size
        for role in ("teacher", "student"):
            assert 0.0 <= result[role]["accuracy"] <= 1.0 and 0.0 <= result[role]["macro_f1"] <= 1.0
    # Reloading the saved student from the folder reproduces the metrics measured in memory.
    reloaded = evaluate_run(out, "test")
    assert reloaded == {"split": "test", **summary["metrics"]["test"]}


def test_a_changed_config_is_refused_unless_resume_or_overwrite(teacher_folder, tmp_path):
    out = tmp_path / "run"
    run(hf_config(teacher_folder, out, overrides=["training.max_steps=1"]))
    changed = hf_config(teacher_folder, out, overrides=["training.max_steps=1", "training.lr=0.002"])
    with pytest.raises(ConfigError) as info:
        run(changed)
    assert str(info.value) == (
        f"output_dir: '{out}' holds a run with a different config (training.lr: 0.001 -> 0.002). Pass --resume "
        "to continue that run with this config, --overwrite to replace its results, or choose another output_dir."
    )
    assert parse_yaml((out / "config.resolved.yaml").read_text())["training"]["lr"] == 0.001  # untouched

    run(changed, overwrite=True)
    assert parse_yaml((out / "config.resolved.yaml").read_text())["training"]["lr"] == 0.002
    with pytest.raises(ConfigError, match="^--resume and --overwrite exclude each other"):
        run(changed, resume=True, overwrite=True)


def test_output_folder_checks_come_before_any_weight_loads(teacher_folder, tmp_path, monkeypatch):
    def no_build(config):
        raise AssertionError("build() must not run when the output folder is unusable")

    monkeypatch.setattr(runner, "build", no_build)
    (tmp_path / "a_file").write_text("x")
    target = tmp_path / "a_file" / "run"
    with pytest.raises(ConfigError) as info:
        run(hf_config(teacher_folder, target))
    assert str(info.value) == (f"output_dir: cannot write to '{target}' (Not a directory); choose a folder you can "
                               "write to (output_dir=… on the command line).")

    stranger = tmp_path / "notes"
    stranger.mkdir()
    (stranger / "mine.txt").write_text("keep me")
    with pytest.raises(ConfigError, match=r"is not empty and holds no kdistill run \(no config\.resolved\.yaml\)"):
        run(hf_config(teacher_folder, stranger))
    assert (stranger / "mine.txt").read_text() == "keep me"


def test_unwritable_output_folder(teacher_folder, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user (root) whom permissions do not stop")
        with pytest.raises(ConfigError) as info:
            run(hf_config(teacher_folder, locked / "run"))
        assert str(info.value) == (f"output_dir: cannot write to '{locked / 'run'}' (Permission denied); choose a "
                                   "folder you can write to (output_dir=… on the command line).")
    finally:
        locked.chmod(0o755)


def test_multi_stage_method_runs_each_stage_and_the_same_config_continues(teacher_folder, tmp_path):
    out = tmp_path / "staged"
    config = hf_config(teacher_folder, out, method="tinybert", method_args={"split_task_stage": True},
                       overrides=["training.max_steps=1"])
    summary = run(config)
    assert sorted(p.name for p in (out / "stages").iterdir()) == ["1-task_intermediate", "2-task_prediction"]
    assert [s["stage"] for s in summary["stages"]] == ["task_intermediate", "task_prediction"]
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["stage"] for line in lines if json.loads(line)["kind"] == "train"] == [
        "task_intermediate", "task_prediction"]
    # The same config again continues the run: both stages are done, nothing trains again.
    again = run(config)
    assert (out / "metrics.jsonl").read_text().splitlines() == lines
    assert again["metrics"] == summary["metrics"]


# ---------------------------------------------------------------------------------------------
# plan


def _train_losses(folder: Path) -> list[dict]:
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [row for row in rows if row.get("kind") == "train"]


def test_cache_teacher_fills_once_and_gives_the_live_teachers_losses(teacher_folder, tmp_path, monkeypatch):
    """`cache: teacher`: the teacher runs in epoch 1 only, the folder is complete afterwards, and
    the losses equal the live teacher's to float16 precision."""
    from kdistill.distiller import Distiller

    epochs = ["training.max_steps=null", "training.epochs=3", "data.bucket=false"]
    live = hf_config(teacher_folder, tmp_path / "live", overrides=epochs,
                     matches=[{"teacher": "hidden.-1", "loss": "hidden_mse"}])
    cached = hf_config(teacher_folder, tmp_path / "cached", cache="teacher", overrides=epochs,
                       matches=[{"teacher": "hidden.-1", "loss": "hidden_mse"}])
    assert "0.0 MiB on disk" in plan(cached) or "MiB on disk" in plan(cached)

    calls = []
    original = Distiller.teacher_features

    def counting(self, batch, names=None):
        if not (isinstance(batch, dict) and "teacher_features" in batch):
            calls.append(1)
        return original(self, batch, names)

    monkeypatch.setattr(Distiller, "teacher_features", counting)
    run(live)
    live_calls = len(calls)
    calls.clear()
    run(cached)
    # live: the shape check on the first batch, then 4 batches x 3 epochs; cached: the shape check only
    assert (live_calls, len(calls)) == (13, 1)

    folders = list((tmp_path / "cached" / "teacher-cache").iterdir())
    assert len(folders) == 1 and (folders[0] / "meta.json").is_file()
    a, b = _train_losses(tmp_path / "live"), _train_losses(tmp_path / "cached")
    assert len(a) == len(b) == 12
    for left, right in zip(a, b):
        assert right["loss"] == pytest.approx(left["loss"], rel=2e-3, abs=1e-5)


def test_cache_teacher_is_skipped_for_a_stage_that_reads_no_teacher(teacher_folder, tmp_path):
    from kdistill.distiller import Distiller

    parts = build(hf_config(teacher_folder, tmp_path / "run", cache="teacher"))
    labels_only = Distiller(None, parts.student, hard_label_weight=1.0)
    cache, why = runner.stage_cache(parts.stages[0], labels_only, tmp_path / "run")
    assert cache is None and why == "no match of this stage reads a teacher feature"


def test_plan_shows_shapes_projections_and_parameter_counts(teacher_folder, tmp_path):
    from kdistill.models import load_hf_model

    out = tmp_path / "never"
    text = plan(narrow_student_config(teacher_folder, out, overrides=["data.batch_size=4"]))
    assert not out.exists()  # plan writes nothing
    assert re.search(r"\n  train +64 examples  from .*reviews_train.csv\n", text)
    assert "max_length: 16 tokens, longer texts truncated" in text
    assert "  student tokenizer: the teacher's (the student is built from the teacher)\n" in text
    assert "layer map (uniform; teacher hidden -> student hidden, 0 = embeddings)\n  0->0, 2->1" in text
    row = re.search(r"hidden_mse\[hidden\.1<-hidden\.2\]\s+hidden\.2\s+\(4, (\d+), 32\)\s+hidden\.1\s+"
                    r"\(4, (\d+), 16\)\s+hidden_mse\s+1\s+linear 16->32\s+always", text)
    assert row and row.group(1) == row.group(2)
    assert re.search(r"attention_mse\[attn\.0<-attn\.1\]\s+attn\.1\s+\(4, 2, \d+, \d+\)\s+attn\.0\s+"
                     r"\(4, 2, \d+, \d+\)\s+attention_mse\s+1\s+-", text)
    assert re.search(r"kl\[logits\]\s+logits\s+\(4, 2\)\s+logits\s+\(4, 2\)\s+kl\s+1\s+-\s+steps 2–2", text)
    projection = 16 * 32 + 32
    assert (f"projections inserted: 2 ({2 * projection:,} parameters: hidden_mse[hidden.0] linear 16->32; "
            "hidden_mse[hidden.1<-hidden.2] linear 16->32)") in text
    assert "teacher asks for: hidden states, attention of blocks [1] via hooks" in text
    assert "student asks for: hidden states, attention of blocks [0] via hooks" in text
    teacher_params = sum(p.numel() for p in load_hf_model(teacher_folder).parameters())
    assert f"  teacher      {teacher_params:>12,}" in text
    student_params = int(re.search(r"  student\s+([\d,]+)  \(", text).group(1).replace(",", ""))
    assert f"  projections  {2 * projection:>12,}" in text
    assert f"  trainable    {student_params + 2 * projection:>12,}" in text
    assert "estimated steps: 3 optimiser steps in all" in text
    assert "method expansion (copy under `matches:` to edit):" in text
    assert "teacher: hidden.2, student: hidden.1, loss: hidden_mse" in text


def test_width_mismatch_without_projection_names_the_match_and_the_fix(teacher_folder, tmp_path):
    config = narrow_student_config(teacher_folder, tmp_path / "x", projection="none")
    with pytest.raises(ShapeError) as info:
        plan(config)
    assert str(info.value) == (
        "matches[0]: hidden_mse[hidden.0]: widths differ (student 'hidden.0' is 16, teacher 'hidden.0' is 32) and "
        "the match has no projection. Add `projection: linear` to the match (a learned map trained with the student)."
    )


def test_refs_out_of_range_are_all_reported_with_the_layer_count(teacher_folder, tmp_path):
    matches = [{"teacher": "hidden.5", "student": "hidden.1", "loss": "hidden_mse"},
               {"teacher": "attn.0", "student": "attn.-3", "loss": "attention_mse"}]
    out_of_range = [
        "matches[0].teacher: 'hidden.5' is out of range: valid are hidden states 0–2 (0 = embeddings; the model "
        "has 2 layers).",
        "matches[1].student: 'attn.-3' is out of range: valid are layers 0–0 (the model has 1 layers).",
    ]
    # validate reads the layer counts from config.json and from_teacher: no weights load
    with pytest.raises(ConfigError) as info:
        hf_config(teacher_folder, tmp_path / "x", method=None, method_args={}, matches=matches)
    assert str(info.value).splitlines()[1:] == [f"  - {line}" for line in out_of_range]
    # build checks them again against the loaded models (for factories, whose sizes validate cannot see)
    config = hf_config(teacher_folder, tmp_path / "x", method=None, method_args={},
                       matches=[{"teacher": "hidden.2", "student": "hidden.1", "loss": "hidden_mse"}])
    config.matches[0].teacher = "hidden.5"
    config.matches.append(config.matches[0].model_copy(update={"teacher": "attn.0", "student": "attn.-3",
                                                                "loss": "attention_mse"}))
    with pytest.raises(RefError) as info:
        build(config)
    assert str(info.value) == "2 refs do not fit the models:\n" + "\n".join(f"  - {line}" for line in out_of_range)


def test_more_classes_than_the_classifier_has(teacher_folder, tmp_path):
    data = tmp_path / "three.csv"
    data.write_text("text,label\ngood film,0\nbad film,1\ndull film,2\n")
    with pytest.raises(DataError) as info:  # known from the teacher's config.json: before any weight loads
        hf_config(teacher_folder, tmp_path / "x", data={"train": str(data), "max_length": 8})
    assert str(info.value).startswith("teacher: its classifier has 2 outputs but the data has 3 classes: the "
                                      "teacher was not trained for these labels (check data.label and teacher.path).")


def test_a_model_folder_that_does_not_load(tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "no_such_architecture"}))
    config = config_from_dict({
        "teacher": {"path": str(folder)}, "student": {"from_teacher": {"layers": [0]}},
        "data": {"train": str(DATA / "reviews_train.csv"), "tokenizer": str(TOKENIZER)}, "method": "hinton",
    })
    with pytest.raises(ConfigError, match=rf"^teacher\.path: cannot load sequence-classification model from the "
                                          rf"folder '{re.escape(str(folder))}': "):
        build(config)


class _NotATensor:
    """Pickled into a .bin below: torch's weights_only unpickler refuses any such object."""


def test_a_bin_checkpoint_holding_a_refused_pickle_names_the_file_and_safetensors(teacher_folder, tmp_path):
    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "pickled"
    folder.mkdir()
    for name in ("config.json", "vocab.txt", "tokenizer_config.json"):
        shutil.copy(teacher_folder / name, folder / name)
    torch.save({**load_file(teacher_folder / "model.safetensors"), "extra": _NotATensor()},
               folder / "pytorch_model.bin")
    with pytest.raises(ConfigError) as info:
        build(hf_config(folder, tmp_path / "x"))
    assert str(info.value) == (
        f"teacher.path: '{folder / 'pytorch_model.bin'}' holds a pickled Python object (it refers to "
        f"{_NotATensor.__module__}._NotATensor) that torch refuses to load: transformers reads .bin weights with "
        "weights_only=True, which unpickles tensors only. Save the model as safetensors "
        "(model.save_pretrained(folder) writes model.safetensors), where you trust the file enough to load it once.")


def test_a_factory_student_with_a_smaller_vocabulary_stops_before_any_batch(teacher_folder, tmp_path):
    (tmp_path / "small_vocab_student.py").write_text(
        "def build():\n"
        "    from transformers import BertConfig, BertForSequenceClassification\n"
        "    return BertForSequenceClassification(BertConfig(vocab_size=10, hidden_size=32, num_hidden_layers=1,\n"
        "                                                    num_attention_heads=2, intermediate_size=64))\n")
    config = hf_config(teacher_folder, tmp_path / "x", student={"factory": "small_vocab_student:build"},
                       python_path=[str(tmp_path)])  # validate cannot see a factory's vocabulary; build can
    with pytest.raises(ConfigError) as info:
        build(config)
    assert str(info.value) == (
        f"student: its vocabulary has 10 tokens (rows of its input embeddings) but the tokenizer that feeds it "
        f"('{teacher_folder}') gives ids up to 34, which its embeddings cannot look up. Point data.student_tokenizer "
        "at the folder of the tokenizer the student was trained with.")


# ---------------------------------------------------------------------------------------------
# Plain nn.Modules through module hooks


def cnn_config(out: Path, **match_changes):
    hint = {"teacher": "module:embed", "student": "module:embed", "loss": "hidden_mse", **match_changes}
    return config_from_dict({
        "teacher": {"factory": "cnn_models:teacher_cnn", "args": {"channels": 8, "width": 32}},
        "student": {"factory": "cnn_models:student_cnn", "args": {"channels": 4, "width": 8}},
        "data": {"builtin": "digits", "limit": 64, "batch_size": 32},
        "matches": [{"teacher": "logits", "loss": "kl", "args": {"temperature": 4.0}}, hint],
        "hard_label_weight": 0.5,
        "training": {"max_steps": 2, "lr": 3e-3, "progress": False, "tensorboard": False},
        "output_dir": str(out),
    }, base_dir=EXAMPLES)


def test_cnn_student_is_saved_as_safetensors_and_reloads(tmp_path):
    out = tmp_path / "cnn"
    summary = run(cnn_config(out))
    # The student, its model card, and the list of the files kdistill wrote there (a re-save keeps any other file).
    assert sorted(p.name for p in (out / "student").iterdir()) == [".kdistill-files.json", "README.md",
                                                                    "student.safetensors"]
    assert json.loads((out / "student" / ".kdistill-files.json").read_text()) == ["README.md", "student.safetensors"]
    card = (out / "student" / "README.md").read_text()
    assert "pipeline_tag: image-classification" in card and "from cnn_models import student_cnn" in card
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [2]
    assert set(records[0]) >= {"kl[logits]", "hidden_mse[module:embed]", "hard_label"}
    assert summary["metrics"]["test"]["examples"] == 64
    assert evaluate_run(out, "test") == {"split": "test", **summary["metrics"]["test"]}


def test_unknown_module_and_non_hf_refs(tmp_path):
    with pytest.raises(RefError) as info:
        build(cnn_config(tmp_path / "x", student="module:embd"))
    assert str(info.value).startswith("matches[1].student: the model has no sub-module 'module:embd'. Close names: embed")
    with pytest.raises(RefError) as info:
        build(cnn_config(tmp_path / "x", student="hidden.1", teacher="hidden.1"))
    assert str(info.value).startswith(
        "2 refs do not fit the models:\n  - matches[1].teacher: 'hidden.1' needs a Hugging Face model; the teacher "
        "is a SmallCNN: use 'logits' or 'module:<path>' refs.")
