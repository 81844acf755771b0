"""Hugging Face ``datasets`` in: Dataset/DatasetDict objects in a Python config and folders saved with
``save_to_disk`` in YAML, for classification and causal-LM runs; what they cannot be is refused
before any weights load."""

from __future__ import annotations

import json

import pytest

from kdistill.config import config_from_dict
from kdistill.data import load_records
from kdistill.errors import ConfigError, DataError
from kdistill.run import run

from tests.test_run import DATA, EXAMPLES, teacher_folder  # noqa: F401  (a fixture)

datasets = pytest.importorskip("datasets")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KDISTILL_CACHE", str(tmp_path / "cache"))


def _split(name: str):
    return datasets.Dataset.from_list(load_records(DATA / f"reviews_{name}.csv"))


def _reviews():
    return datasets.DatasetDict({name: _split(name) for name in ("train", "validation", "test")})


def _raw(teacher, out, data):
    return {"teacher": {"path": str(teacher)}, "student": {"from_teacher": {"layers": [1]}},
            "data": {**data, "max_length": 16, "batch_size": 16}, "method": "hinton",
            "method_args": {"temperature": 2.0, "alpha": 0.5},
            "training": {"lr": 1e-3, "max_steps": 3, "log_every": 1, "progress": False, "tensorboard": False},
            "seed": 0, "output_dir": str(out)}


def test_a_dataset_dict_object_trains_as_its_csv_files_do(teacher_folder, tmp_path):  # noqa: F811
    """The same rows given as CSV files, as a DatasetDict object and as its saved folder: one student."""
    from_csv = run(config_from_dict(_raw(teacher_folder, tmp_path / "csv", {
        "train": str(DATA / "reviews_train.csv"), "validation": str(DATA / "reviews_validation.csv"),
        "test": str(DATA / "reviews_test.csv")})))
    config = config_from_dict(_raw(teacher_folder, tmp_path / "object", {"path": _reviews()}))
    saved = config.data.path
    assert saved.startswith(str(tmp_path / "cache" / "datasets" / "datasetdict-"))
    from_object = run(config)
    resolved = (tmp_path / "object" / "config.resolved.yaml").read_text()
    assert f"path: {saved}" in resolved  # the resolved config names the folder the rows were saved in
    from_folder = run(config_from_dict(_raw(teacher_folder, tmp_path / "folder", {"path": saved})))
    for other in (from_object, from_folder):
        assert other["metrics"] == from_csv["metrics"]
        assert {k: v["examples"] for k, v in other["data"].items()} == {k: v["examples"] for k, v in
                                                                         from_csv["data"].items()}
    assert from_object["data"]["train"]["source"] == f"{saved} [train]"


def test_the_same_rows_are_saved_once_and_other_rows_elsewhere(tmp_path):
    from kdistill.hf_datasets import save_once

    first, again = save_once(_reviews()), save_once(_reviews())
    assert first == again and (first / "dataset_dict.json").is_file()
    changed = _reviews()
    changed["test"] = changed["test"].select(range(len(changed["test"]) - 1))
    assert save_once(changed) != first
    shuffled = _split("train").shuffle(seed=1)
    assert save_once(shuffled) != save_once(_split("train"))  # row order is part of the data
    assert not [p for p in first.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_one_dataset_per_split_and_a_saved_dataset_folder_per_split(teacher_folder, tmp_path):  # noqa: F811
    train_folder = tmp_path / "train"
    _split("train").save_to_disk(str(train_folder))
    config = config_from_dict(_raw(teacher_folder, tmp_path / "run", {
        "train": str(train_folder), "validation": _split("validation"), "test": _split("test")}))
    summary = run(config)
    assert set(summary["metrics"]) == {"validation", "test"}


def test_a_causal_lm_reads_a_dataset_dict_of_prompts_and_completions(tmp_path):
    from tests.test_causal_lm import PAIRS, _tiny
    from tests.test_lm_data import build_tokenizer

    tokenizer = build_tokenizer()
    teacher = tmp_path / "teacher"
    _tiny("llama", tokenizer).save_pretrained(teacher)
    tokenizer.save_pretrained(teacher)
    pairs = datasets.DatasetDict({"train": datasets.Dataset.from_list(PAIRS[:16]),
                                  "test": datasets.Dataset.from_list(PAIRS[16:])})
    raw = {"teacher": {"path": str(teacher), "task": "causal-lm"}, "student": {"from_teacher": {"layers": [1, 3]}},
           "data": {"path": pairs, "kind": "prompt_completion", "max_length": 96, "batch_size": 4},
           "matches": [{"teacher": "logits", "student": "logits", "loss": "token_kl"}],
           "training": {"lr": 1e-3, "max_steps": 2, "progress": False, "tensorboard": False},
           "output_dir": str(tmp_path / "run")}
    summary = run(config_from_dict(raw))
    assert summary["data"]["train"]["examples"] == 16 and summary["metrics"]["test"]["tokens"] > 0


def test_what_a_dataset_cannot_be_is_refused_before_weights_load(teacher_folder, tmp_path, monkeypatch):  # noqa: F811
    from kdistill import models

    monkeypatch.setattr(models, "load_hf_model", lambda *a, **k: pytest.fail("weights loaded"))
    with pytest.raises(ConfigError, match=r"data.train: a DatasetDict \(splits train, validation, test\) holds "
                                          "several splits; give it as data.path"):
        config_from_dict(_raw(teacher_folder, tmp_path / "a", {"train": _reviews()}))
    with pytest.raises(ConfigError, match=r"data.split: '.*' is a saved DatasetDict, whose own train/validation/test "
                                          "splits are used as they are; remove split"):
        config_from_dict(_raw(teacher_folder, tmp_path / "b", {"path": _reviews(), "split": [0.5, 0.5]}))
    renamed = datasets.Dataset.from_list([{"sentence": "fine", "label": 1}] * 4)
    with pytest.raises(ConfigError, match=r"data.text: no column 'text' in .* Columns: sentence, label"):
        config_from_dict(_raw(teacher_folder, tmp_path / "c", {"train": renamed}))
    dev = datasets.DatasetDict({"train": _split("train"), "dev": _split("validation")})
    with pytest.raises(DataError, match=r"holds the split\(s\) dev; kdistill reads train, validation and test"):
        config_from_dict(_raw(teacher_folder, tmp_path / "d", {"path": dev}))


def test_a_saved_dataset_dict_in_yaml(teacher_folder, tmp_path, capsys):  # noqa: F811
    import yaml

    from kdistill.cli import main

    folder = tmp_path / "reviews"
    _reviews().save_to_disk(str(folder))
    config = tmp_path / "cfg.yaml"
    raw = _raw(teacher_folder, tmp_path / "run", {"path": str(folder)})
    config.write_text(yaml.safe_dump(raw))
    assert main(["plan", str(config)]) == 0
    assert f"from {folder} [validation]" in capsys.readouterr().out
    assert main(["run", str(config)]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["data"]["test"]["source"] == f"{folder} [test]"
    assert EXAMPLES.is_dir()
