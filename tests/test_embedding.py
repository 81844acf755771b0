"""Sentence-embedding distillation (task: embedding): pooling, the 'embedding' ref, the checks before any
weight loads, the measures (nearest-neighbour accuracy, agreement) and a tiny whole run."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

from kdistill.adapters import make_adapter
from kdistill.config import config_from_dict, load_config
from kdistill.embedding import (
    folder_pooling,
    nearest,
    pool,
    set_pooling,
    similarity_correlation,
    write_sentence_transformers_files,
)
from kdistill.errors import ConfigError
from kdistill.refs import parse_ref

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
DATA = EXAMPLES / "data"
TOKENIZER = DATA / "tiny_tokenizer"


def _tiny_models():
    spec = importlib.util.spec_from_file_location("_kdistill_test_tiny_models_emb", EXAMPLES / "tiny_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------------
# Pooling


def test_mean_pooling_is_the_mean_over_real_tokens_only():
    torch.manual_seed(0)
    hidden = torch.randn(3, 5, 4, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]])
    expected = torch.stack([
        sum(hidden[b, t] for t in range(5) if mask[b, t]) / int(mask[b].sum()) for b in range(3)])  # a naive loop
    torch.testing.assert_close(pool(hidden, mask, "mean"), expected)
    poisoned = hidden.masked_fill(~mask.bool().unsqueeze(-1), 1e6)  # what padding holds never enters the mean
    torch.testing.assert_close(pool(poisoned, mask, "mean"), expected)
    torch.testing.assert_close(pool(hidden, torch.ones(3, 5), "mean"), hidden.mean(dim=1))  # all-ones = no mask
    torch.testing.assert_close(pool(hidden, mask, "cls"), hidden[:, 0])


def test_the_embedding_ref_of_a_padded_text_is_that_of_the_text_alone():
    model = _tiny_models().tiny_bert_encoder(num_layers=2, hidden_size=32).eval()
    set_pooling(model, "mean")
    adapter = make_adapter(model, parse_ref("embedding"))
    ids = torch.tensor([[2, 5, 6, 7, 3], [2, 8, 3, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    with torch.no_grad():
        padded = adapter({"input_ids": ids, "attention_mask": mask}).embedding
        alone = adapter({"input_ids": ids[1:, :3], "attention_mask": mask[1:, :3]}).embedding
    assert padded.shape == (2, 32)
    torch.testing.assert_close(padded[1:], alone, rtol=1e-5, atol=1e-5)


def test_the_pooling_of_a_sentence_transformers_folder(tmp_path):
    assert folder_pooling(tmp_path) is None  # no modules.json
    write_sentence_transformers_files(tmp_path, "cls", 32)
    assert folder_pooling(tmp_path) == "cls"
    settings = json.loads((tmp_path / "1_Pooling" / "config.json").read_text())
    settings.update(pooling_mode_cls_token=False, pooling_mode_max_tokens=True)
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(settings))
    assert folder_pooling(tmp_path) == "max"


# ---------------------------------------------------------------------------------------------
# Measures


def test_nearest_neighbour_by_cosine_and_similarity_correlation():
    index = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    queries = torch.tensor([[10.0, 1.0], [0.1, 3.0], [-2.0, -0.5]])  # scale does not matter, direction does
    assert nearest(index, queries).tolist() == [0, 1, 2]
    torch.manual_seed(0)
    teacher = torch.randn(6, 8)
    assert similarity_correlation(teacher, 3.0 * teacher) == pytest.approx(1.0)  # cosine ignores scale
    rotated = teacher @ torch.linalg.qr(torch.randn(8, 8))[0]  # the same geometry in another basis
    assert similarity_correlation(teacher, rotated) == pytest.approx(1.0)
    assert similarity_correlation(teacher, torch.randn(6, 4)) < 0.99  # widths may differ


# ---------------------------------------------------------------------------------------------
# Checks before any weight loads


def _raw(**changes) -> dict:
    raw = {
        "teacher": {"task": "embedding", "factory": "tiny_models:tiny_bert_encoder",
                    "args": {"num_layers": 2, "hidden_size": 32}},
        "student": {"from_teacher": {"layers": [1]}},
        "data": {"train": str(DATA / "reviews_train.csv"), "test": str(DATA / "reviews_test.csv"),
                 "tokenizer": str(TOKENIZER), "max_length": 16},
        "matches": [{"teacher": "embedding", "student": "embedding", "loss": "cosine"}],
        "training": {"lr": 1e-3, "max_steps": 2, "progress": False, "tensorboard": False},
    }
    raw.update(changes)
    return raw


def _problems(raw: dict) -> str:
    with pytest.raises(ConfigError) as caught:
        config_from_dict(raw, base_dir=EXAMPLES)
    return str(caught.value)


def test_pooling_defaults_to_mean_and_the_student_takes_the_teachers():
    config = config_from_dict(_raw(), base_dir=EXAMPLES)
    assert (config.teacher.pooling, config.student.task, config.student.pooling) == ("mean", "embedding", "mean")
    cls = config_from_dict(_raw(teacher={**_raw()["teacher"], "pooling": "cls"}), base_dir=EXAMPLES)
    assert (cls.teacher.pooling, cls.student.pooling) == ("cls", "cls")  # the student takes the teacher's


def test_pooling_is_read_from_the_teachers_sentence_transformers_folder(tmp_path):
    folder = tmp_path / "teacher"
    _tiny_models().tiny_bert_encoder().save_pretrained(folder)
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(TOKENIZER / name, folder / name)
    write_sentence_transformers_files(folder, "cls", 32)
    raw = _raw(teacher={"task": "embedding", "path": str(folder)}, student={"path": str(folder)})
    raw["data"].pop("tokenizer")
    config = config_from_dict(raw, base_dir=EXAMPLES)
    assert (config.teacher.pooling, config.student.pooling) == ("cls", "cls")
    settings = json.loads((folder / "1_Pooling" / "config.json").read_text())
    settings.update(pooling_mode_cls_token=False, pooling_mode_max_tokens=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(settings))
    text = _problems(raw)
    assert "teacher.pooling: the folder" in text and "pools its sentence embedding with 'max'" in text
    raw["teacher"]["pooling"] = raw["student"]["pooling"] = "mean"  # an explicit choice wins over the folder's
    assert config_from_dict(raw, base_dir=EXAMPLES).teacher.pooling == "mean"


def test_bad_embedding_settings_are_refused_before_weights_load():
    teacher = _raw()["teacher"]
    assert "teacher.pooling: 'max' is not a valid choice" in _problems(_raw(teacher={**teacher, "pooling": "max"}))
    text = _problems(_raw(matches=[{"teacher": "logits", "student": "logits", "loss": "kl"}]))
    assert "matches[0].teacher: 'logits': an embedding model (task: embedding) is an encoder without a head" in text
    assert "data.label: null, but an embedding run is measured by nearest-neighbour label accuracy" in _problems(
        _raw(data={**_raw()["data"], "label": None}))
    assert "data.test: an embedding run is measured on a labelled validation or test split" in _problems(
        _raw(data={k: v for k, v in _raw()["data"].items() if k != "test"}))
    assert "student.task: 'base', but the teacher's task is embedding" in _problems(
        _raw(student={"factory": "tiny_models:tiny_bert_encoder", "task": "base"}))
    assert "hard_label_weight: an embedding model has no classifier" in _problems(_raw(hard_label_weight=0.5))


def test_embedding_refs_and_pooling_need_an_embedding_teacher():
    raw = _raw(teacher={"factory": "tiny_models:tiny_bert", "pooling": "mean"})
    text = _problems(raw)
    assert "teacher.pooling: pools a sentence embedding, which only an embedding run makes" in text
    assert "matches[0].teacher: 'embedding' is the pooled sentence embedding of an embedding model" in text


# ---------------------------------------------------------------------------------------------
# A tiny whole run


def test_the_example_runs_measures_teacher_student_and_baseline_and_saves_a_pooled_student(tmp_path):
    from kdistill.run import evaluate_run, run

    config = load_config(EXAMPLES / "embedding_distil.yaml", [
        "training.max_steps=2", "training.progress=false", "training.tensorboard=false",
        f"output_dir={tmp_path / 'run'}"])
    summary = run(config)
    test = summary["metrics"]["test"]
    assert (test["examples"], test["index_examples"], test["k"]) == (16, 64, 1)
    assert 0 <= test["teacher"]["knn_accuracy"] <= 1 and 0 <= test["agreement"] <= 1
    assert test["student"]["cosine_agreement"] is None  # widths 32 and 64: no vector to compare
    assert -1 <= test["student"]["similarity_correlation"] <= 1
    assert summary["baseline"]["steps"] == 0 and "knn_accuracy" in summary["baseline"]["metrics"]["test"]
    student = Path(summary["student"])
    assert folder_pooling(student) == "mean"
    assert not any("projection" in key for key in json.loads((student / "config.json").read_text()))
    assert "pipeline_tag: sentence-similarity" in (student / "README.md").read_text()
    assert "1-NN accuracy" in (tmp_path / "run" / "report.md").read_text()
    again = evaluate_run(tmp_path / "run", split="test")
    assert again["student"]["knn_accuracy"] == test["student"]["knn_accuracy"]
    assert again["baseline"]["knn_accuracy"] == summary["baseline"]["metrics"]["test"]["knn_accuracy"]
    with pytest.raises(ConfigError, match="the train split is the index"):
        evaluate_run(tmp_path / "run", split="train")
