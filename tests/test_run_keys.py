"""The run keys the packaged demo needs, on tiny models: data.distil_on, cache: logits, data.limit per
split, data.split_seed, data.bucket as a number, fractional training.epochs, labels-only runs and
``builtin:`` names."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kdistill.config import config_from_dict
from kdistill.errors import ConfigError
from kdistill.run import build, run

from tests.test_run import DATA, EXAMPLES, hf_config, teacher_folder  # noqa: F401 - the fixture

UNLABELLED = DATA / "unlabelled.txt"


def _steps(out):
    return [{k: v for k, v in json.loads(line).items() if k != "time"}
            for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture()
def unlabelled(tmp_path):
    path = tmp_path / "more.txt"
    path.write_text("\n".join(f"an unlabelled sentence number {i}" for i in range(24)) + "\n")
    return path


def test_distil_on_adds_the_unlabelled_texts_to_the_stages_that_learn_from_the_teacher(teacher_folder, tmp_path,
                                                                                     unlabelled):
    config = hf_config(teacher_folder, tmp_path / "run", overrides=[f"data.unlabelled={unlabelled}",
                                                                   "data.distil_on=train+unlabelled"])
    parts = build(config)
    (stage,) = parts.stages
    assert stage.data_name == "train+unlabelled"
    assert len(stage.loader.dataset) == len(parts.datasets["train"]) + 24
    labels = np.concatenate([batch["labels"].numpy() for batch in stage.loader])
    assert (labels == -100).sum() == 24  # the teacher is the unlabelled texts' only target
    assert parts.loaders["train"] is not stage.loader and len(parts.loaders["train"].dataset) == len(parts.datasets["train"])


def test_cache_logits_trains_the_same_student_as_the_live_teacher(teacher_folder, tmp_path, monkeypatch, unlabelled):
    """The stored logits are the teacher's own (computed once, float32): the losses match the live run's."""
    monkeypatch.setenv("KDISTILL_CACHE", str(tmp_path / "cache"))
    common = [f"data.unlabelled={unlabelled}", "data.distil_on=train+unlabelled", "training.max_steps=4"]
    run(hf_config(teacher_folder, tmp_path / "live", overrides=common))
    run(hf_config(teacher_folder, tmp_path / "stored", overrides=[*common, "cache=logits"]))
    stored = sorted((tmp_path / "cache" / "teacher-logits").iterdir())
    assert len(stored) == 2  # the training split and the unlabelled texts
    live, cached = _steps(tmp_path / "live"), _steps(tmp_path / "stored")
    assert [r["step"] for r in live] == [r["step"] for r in cached]
    for a, b in zip(live, cached):
        for key in ("loss", "soft", "hard_label"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6)
    run(hf_config(teacher_folder, tmp_path / "again", overrides=[*common, "cache=logits"]))
    assert sorted((tmp_path / "cache" / "teacher-logits").iterdir()) == stored  # reused, not recomputed


def test_cache_logits_leaves_a_stage_reading_hidden_states_live(teacher_folder, tmp_path, monkeypatch):
    from kdistill.planning import make_plan

    monkeypatch.setenv("KDISTILL_CACHE", str(tmp_path / "cache"))
    config = hf_config(teacher_folder, tmp_path / "run", overrides=["cache=logits"], method=None, method_args={},
                       matches=[{"teacher": "hidden.1", "student": "hidden.1", "loss": "hidden_mse"},
                                {"teacher": "logits", "loss": "kl"}])
    (stage,) = make_plan(config).stages
    assert "the teacher runs live" in stage.cache


def test_limit_per_split_split_seed_and_fractional_epochs(teacher_folder, tmp_path):
    config = hf_config(teacher_folder, tmp_path / "run", overrides=["data.limit={train: 20, validation: 5}",
                                                                   "training.max_steps=null", "training.epochs=0.5"])
    parts = build(config)
    assert len(parts.datasets["train"]) == 20 and len(parts.datasets["validation"]) == 5
    assert len(parts.datasets["test"]) > 5  # a split the mapping does not name keeps all its records
    from kdistill.run import stage_train_config

    train_config = stage_train_config(config, parts.stages[0])
    assert (train_config.epochs, train_config.max_steps) == (1, round(0.5 * len(parts.stages[0].loader)))


def test_labels_only_run_trains_on_the_labels_alone(teacher_folder, tmp_path):
    summary = run(hf_config(teacher_folder, tmp_path / "run", method=None, method_args={}, matches=[],
                            hard_label_weight=1.0))
    steps = _steps(tmp_path / "run")
    assert summary["stages"][0]["steps"] == 3
    assert all(set(r) >= {"hard_label"} and "soft" not in r for r in steps if r["kind"] == "train")


@pytest.mark.parametrize("changes, expected", [
    ({"data": {"unlabelled": "builtin:nothing"}}, "data.unlabelled: 'builtin:nothing' is not a packaged name"),
    ({"teacher": {"path": "builtin:all-MiniLM"}}, "teacher.path: 'builtin:all-MiniLM' is not a packaged name; did "
                                                   "you mean 'all-MiniLM-L6-v2'?"),
    ({"data": {"distil_on": "train+unlabelled"}}, "data.distil_on: 'train+unlabelled' needs data.unlabelled"),
    ({"data": {"limit": {"tests": 3}}}, "data.limit.tests: 'tests' is not a split"),
    ({"data": {"limit": {"train": 0}}}, "data.limit.train: must be at least 1"),
    ({"data": {"split_seed": 3}}, "data.split_seed: applies to 'path' or 'builtin' data"),
    ({"data": {"bucket": 0}}, "data.bucket: 0 batches per length-sorted chunk"),
    ({"cache": "logit"}, "cache: 'logit' is not a valid choice"),
])
def test_new_keys_are_checked_before_weights_load(teacher_folder, changes, expected):
    raw = {"teacher": {"path": str(teacher_folder)}, "student": {"from_teacher": {"layers": [1]}}, "method": "hinton",
           "data": {"train": str(DATA / "reviews_train.csv"), "max_length": 16}}
    for key, value in changes.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) and key in raw else value
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw, base_dir=EXAMPLES)
    assert expected in str(info.value)
