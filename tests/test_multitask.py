"""Several tasks into one student (``tasks:``; kdistill.multitask): validation, the task draw, routing, the
loss per task, a whole run from YAML, resume and the plan."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from kdistill.config import config_from_dict, load_config, parse_yaml
from kdistill.errors import ConfigError
from kdistill.multitask import TaskBatchSampler, build_tasks, draw_tasks, task_probabilities

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
DATA = EXAMPLES / "data"
TOKENIZER = DATA / "tiny_tokenizer"
EXAMPLE = EXAMPLES / "multitask.yaml"


def example_raw(out: Path, **changes) -> dict:
    """examples/multitask.yaml as a dict, made small for a test (no progress bar, no TensorBoard)."""
    raw = parse_yaml(EXAMPLE.read_text(encoding="utf-8"))
    raw["output_dir"] = str(out)
    raw["training"].update({"progress": False, "tensorboard": False, "log_every": 1})
    raw.update(changes)
    return raw


def problems_of(raw: dict) -> str:
    with pytest.raises(ConfigError) as caught:
        config_from_dict(raw, base_dir=EXAMPLES)
    return str(caught.value)


# ---------------------------------------------------------------------------------------------
# validate


def test_the_example_validates_with_the_first_task_as_teacher_and_data(tmp_path):
    config = load_config(EXAMPLE, [f"output_dir={tmp_path}"])
    assert list(config.tasks) == ["reviews", "messages"]
    assert config.teacher == config.tasks["reviews"].teacher and config.data == config.tasks["reviews"].data
    assert config.task_config("messages").data.train.endswith("messages_train.csv")
    resolved = config.resolved()
    assert list(resolved)[:2] == ["tasks", "task_sampling"] and "teacher" not in resolved and "data" not in resolved
    again = config_from_dict(resolved, base_dir=EXAMPLES)  # the run folder's config reads back the same
    assert again.resolved() == resolved
    assert [i.where for i in config.imports] == ["tasks.reviews.teacher.factory", "tasks.messages.teacher.factory"]


def test_an_unknown_task_in_task_sampling_lists_the_tasks(tmp_path):
    text = problems_of(example_raw(tmp_path, task_sampling={"reviews": 1, "mesages": 1}))
    assert ("task_sampling.mesages: no task named 'mesages'; did you mean 'messages'? Tasks: reviews, messages."
            in text)
    assert "task_sampling: no weight for 'messages'; give one for every task (reviews, messages)" in text


def test_task_weights_must_be_non_negative_and_not_all_zero(tmp_path):
    assert "task_sampling.messages: expected a weight ≥ 0, got -1." in problems_of(
        example_raw(tmp_path, task_sampling={"reviews": 1, "messages": -1}))
    assert "task_sampling: the weights sum to 0; give at least one task a positive weight." in problems_of(
        example_raw(tmp_path, task_sampling={"reviews": 0, "messages": 0}))
    assert "task_sampling: 'balanced' is not a valid choice; give 'proportional'" in problems_of(
        example_raw(tmp_path, task_sampling="balanced"))


def test_a_task_without_data_or_teacher_and_teacher_with_tasks_are_refused(tmp_path):
    raw = example_raw(tmp_path)
    del raw["tasks"]["messages"]["data"]
    raw["tasks"]["reviews"].pop("teacher")
    raw["teacher"] = {"factory": "tiny_models:tiny_bert"}
    text = problems_of(raw)
    assert "tasks.messages.data: required, but missing (each task has its own data)." in text
    assert "tasks.reviews.teacher: required, but missing (each task has its own teacher)." in text
    assert "teacher: with 'tasks' each task gives its own teacher and data" in text


def test_a_task_problem_is_named_by_its_task_and_shared_keys_once(tmp_path):
    raw = example_raw(tmp_path)
    raw["tasks"]["messages"]["data"]["train"] = "data/no_such_file.csv"
    raw["training"]["lr"] = -1
    text = problems_of(raw)
    assert "tasks.messages.data.train:" in text and "no_such_file.csv" in text
    assert text.count("training.lr: must be greater than 0") == 1


def test_tasks_whose_tokenizers_differ_are_refused_before_weights_load(tmp_path, monkeypatch):
    other = tmp_path / "tok"
    shutil.copytree(TOKENIZER, other)
    vocab = (other / "vocab.txt").read_text(encoding="utf-8").splitlines()
    vocab[-1], vocab[-2] = vocab[-2], vocab[-1]  # two ids swapped: same size, other ids
    (other / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    raw = example_raw(tmp_path)
    raw["tasks"]["messages"]["data"]["tokenizer"] = str(other)
    import kdistill.models

    def no_weights(*args, **kwargs):
        raise AssertionError("validate loaded weights")

    monkeypatch.setattr(kdistill.models, "load_hf_model", no_weights)
    text = problems_of(raw)
    assert "tasks.messages.data.tokenizer: its tokenizer (35 tokens) differs from task 'reviews''s" in text
    assert "the student has one tokenizer" in text


def test_what_a_multi_task_run_does_not_do_is_refused(tmp_path):
    raw = example_raw(tmp_path, cache="teacher", student={"path": "somewhere"})
    raw["tasks"]["messages"]["data"]["unlabelled"] = "data/reviews_unlabelled.txt"
    raw["tasks"]["reviews"]["data"] = {"builtin": "wnut16"}
    text = problems_of(raw)
    assert "cache: not with 'tasks' (several tasks into one student) for now; remove 'cache'." in text
    assert "student: with 'tasks' the student is the first task's teacher's blocks, {from_teacher:" in text
    assert "tasks.messages.data.unlabelled: not with 'tasks' for now; remove it." in text
    assert "tasks.reviews.data.builtin: 'wnut16' is not sentence classification" in text
    assert "tasks.reviews.data.builtin: 'wnut16' holds word-level tags" in text  # a single-task check, by its task
    assert "task_sampling: weighs the tasks of 'tasks:" in problems_of(
        {"teacher": {"factory": "tiny_models:tiny_bert"}, "data": {"builtin": "sms_spam"}, "method": "hinton",
         "task_sampling": "proportional"})


# ---------------------------------------------------------------------------------------------
# the draw


@pytest.mark.parametrize("sampling", ["proportional", {"a": 1.0, "b": 1.0, "c": 2.0}])
def test_the_draw_follows_the_rule_within_binomial_tolerance(sampling):
    sizes = {"a": 700, "b": 200, "c": 100}
    probabilities = task_probabilities(sampling, sizes)
    expected = [0.7, 0.2, 0.1] if sampling == "proportional" else [0.25, 0.25, 0.5]
    assert list(probabilities.values()) == pytest.approx(expected)
    count = 20_000
    drawn = np.concatenate([draw_tasks(list(probabilities.values()), seed=3, epoch=e, count=count // 4)
                            for e in range(4)])
    counts = np.bincount(drawn, minlength=3)
    for observed, p in zip(counts, expected):
        assert abs(observed - count * p) <= 4 * math.sqrt(count * p * (1 - p))  # 4 standard deviations


def test_the_draw_depends_on_seed_epoch_and_position_only():
    first = draw_tasks([0.5, 0.5], seed=1, epoch=2, count=50)
    assert np.array_equal(first, draw_tasks([0.5, 0.5], seed=1, epoch=2, count=50))
    assert np.array_equal(first[:20], draw_tasks([0.5, 0.5], seed=1, epoch=2, count=20))
    assert not np.array_equal(first, draw_tasks([0.5, 0.5], seed=2, epoch=2, count=50))
    assert not np.array_equal(first, draw_tasks([0.5, 0.5], seed=1, epoch=3, count=50))


def test_each_batch_is_one_tasks_and_a_task_walks_its_own_epochs():
    from kdistill.data import LengthBucketSampler

    small = LengthBucketSampler(np.ones(6, dtype=np.int64), 2, seed=0, bucket_size_multiplier=1)  # 3 batches
    large = LengthBucketSampler(np.ones(30, dtype=np.int64), 2, seed=0, bucket_size_multiplier=1)  # 15 batches
    sampler = TaskBatchSampler([small, large], [0, 6], [0.5, 0.5], seed=0)
    assert len(sampler) == 18
    seen_small: list[int] = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        tasks = sampler.tasks()
        assert len(batches) == 18
        for batch, task in zip(batches, tasks):
            assert all((index < 6) == (task == 0) for index in batch)
        seen_small += [index for batch in batches if batch[0] < 6 for index in batch]
    # The small task is drawn ~18 times in two epochs: each run through its 6 examples holds each once.
    for start in range(0, len(seen_small) - len(seen_small) % 6, 6):
        assert sorted(seen_small[start:start + 6]) == list(range(6))


# ---------------------------------------------------------------------------------------------
# build: routing and the loss


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("mt") / "run"
    return build_tasks(config_from_dict(example_raw(out), base_dir=EXAMPLES))


def test_the_tasks_share_one_encoder_and_each_has_its_head(built):
    reviews, messages = built.student.heads["reviews"], built.student.heads["messages"]
    assert reviews.bert is messages.bert and reviews.classifier is not messages.classifier
    teacher = built.tasks["messages"].teacher
    assert torch.equal(messages.classifier.weight, teacher.classifier.weight)  # widths match: its teacher's head
    assert built.heads == {"reviews": "its teacher's head", "messages": "its teacher's head"}
    shared = sum(p.numel() for p in reviews.bert.parameters())
    heads = sum(p.numel() for p in reviews.classifier.parameters()) * 2
    assert sum(p.numel() for p in built.student.parameters()) == shared + heads


def test_a_tasks_batch_reaches_only_its_teacher_and_head(built):
    for parts in built.tasks.values():  # prepared first (a Distiller's first batch runs the models once more)
        parts.distiller.prepare(next(iter(parts.stages[0].loader)))
    calls: list[str] = []
    handles = []
    for name, parts in built.tasks.items():
        handles.append(parts.teacher.register_forward_hook(lambda *_, name=name: calls.append(f"teacher:{name}")))
        head = built.student.heads[name].classifier
        handles.append(head.register_forward_hook(lambda *_, name=name: calls.append(f"head:{name}")))
    try:
        for batch in built.loader:
            calls.clear()
            built.distiller(batch)
            assert sorted(calls) == [f"head:{batch['task']}", f"teacher:{batch['task']}"]
    finally:
        for handle in handles:
            handle.remove()


def test_the_loss_of_a_tasks_batch_is_a_single_task_runs_loss(built):
    from kdistill.run import build

    for name, parts in built.tasks.items():
        batch = next(b for b in built.loader if b["task"] == name)
        multi = built.distiller(batch)
        single = build(built.config.task_config(name))  # the task alone, as a single-task run
        single.student.load_state_dict(built.student.heads[name].state_dict())  # at the same weights
        plain = {key: value for key, value in batch.items() if key != "task"}
        alone = single.distiller(plain)
        assert float(multi.loss.detach()) == pytest.approx(float(alone.loss.detach()), rel=1e-6)
        assert set(multi.parts) == {f"{name}/loss", *(f"{name}/{part}" for part in alone.parts)}
        assert float(multi.parts[f"{name}/soft"]) == pytest.approx(float(alone.parts["soft"]), rel=1e-6)


# ---------------------------------------------------------------------------------------------
# run, resume, plan


def _evaluate_folder(folder: Path, loader) -> dict:
    from transformers import AutoModelForSequenceClassification

    from kdistill.train.evaluate import evaluate_classifier

    model = AutoModelForSequenceClassification.from_pretrained(folder)
    return evaluate_classifier(model.eval(), loader, inputs_key="student_inputs")


def test_a_two_task_run_from_yaml_saves_a_folder_per_task_that_reproduces_the_summary(tmp_path):
    from safetensors.torch import load_file

    from kdistill.run import run

    out = tmp_path / "run"
    config = config_from_dict(example_raw(out), base_dir=EXAMPLES)
    summary = run(config)
    assert list(summary["tasks"]) == ["reviews", "messages"]
    assert summary["stages"][0]["steps"] == 14  # 2 epochs of (4 + 3) batches
    assert json.loads((out / "summary.json").read_text())["tasks"] == summary["tasks"]
    mt = build_tasks(config)  # the data as the run read it
    for name, entry in summary["tasks"].items():
        folder = out / "student" / name
        assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors",
                                                            "tokenizer.json", "tokenizer_config.json"]
        card = (folder / "README.md").read_text()
        assert f"This is task `{name}` of a multi-task run (reviews, messages)" in card
        again = _evaluate_folder(folder, mt.tasks[name].loaders["test"])
        assert again == pytest.approx(entry["metrics"]["test"]["student"])
        assert set(entry["metrics"]) == {"validation", "test"}
    assert json.loads((out / "student" / "messages" / "config.json").read_text())["id2label"] == {"0": "ham",
                                                                                                  "1": "spam"}
    reviews = load_file(out / "student" / "reviews" / "model.safetensors")
    messages = load_file(out / "student" / "messages" / "model.safetensors")
    encoder = [key for key in reviews if key.startswith("bert.")]
    assert encoder and all(torch.equal(reviews[key], messages[key]) for key in encoder)  # one shared encoder
    assert not torch.equal(reviews["classifier.weight"], messages["classifier.weight"])
    report = (out / "report.md").read_text()
    assert "| reviews | test |" in report and "| messages | test |" in report
    listed = json.loads((out / "student" / ".kdistill-files.json").read_text())
    assert {"reviews/model.safetensors", "messages/config.json", "messages/README.md"} <= set(listed)
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("messages/accuracy" in r and "reviews/accuracy" in r for r in logged if r["kind"] == "eval")


def test_resume_after_an_interruption_continues_the_same_draw(tmp_path, monkeypatch):
    from kdistill import multitask
    from kdistill.run import run

    seen: list[tuple[str, int]] = []
    forward = multitask.MultiTaskDistiller.forward
    crash_at: list[int] = []

    def recording(self, batch, **options):
        if crash_at and len(seen) == crash_at[0]:
            raise RuntimeError("interrupted")
        seen.append((batch["task"], int(batch["input_ids"].sum())))
        return forward(self, batch, **options)

    monkeypatch.setattr(multitask.MultiTaskDistiller, "forward", recording)
    changes = {"training": {"lr": 1e-3, "epochs": 2, "save_every": 3, "log_every": 1, "progress": False,
                            "tensorboard": False}}
    run(config_from_dict(example_raw(tmp_path / "straight", **changes), base_dir=EXAMPLES))
    straight = list(seen)
    assert len(straight) == 14 and {task for task, _ in straight} == {"reviews", "messages"}

    seen.clear()
    crash_at.append(8)  # steps 1-8 trained, the checkpoint at step 6
    config = config_from_dict(example_raw(tmp_path / "resumed", **changes), base_dir=EXAMPLES)
    with pytest.raises(RuntimeError, match="interrupted"):
        run(config)
    assert seen == straight[:8]
    seen.clear()
    crash_at.clear()
    run(config)  # the same config again: continues from step 6
    assert seen == straight[6:]
    losses = [[r["loss"] for r in map(json.loads, (tmp_path / name / "metrics.jsonl").read_text().splitlines())
               if r["kind"] == "train"] for name in ("straight", "resumed")]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)


def test_the_plan_shows_each_task_its_share_and_head(tmp_path):
    from kdistill.planning import make_plan

    raw = example_raw(tmp_path / "run", task_sampling={"reviews": 1, "messages": 3})
    text = make_plan(config_from_dict(raw, base_dir=EXAMPLES)).render()
    assert "tasks: 2 into one student (a shared encoder, one classification head per task)" in text
    assert "given weights reviews 1, messages 3, normalised" in text
    assert "an epoch = the sum of the tasks' training batches = 7 batches; 2 epoch(s): 14 optimiser steps" in text
    assert "task 'reviews': 25.0% of batches" in text and "task 'messages': 75.0% of batches" in text
    assert "head      2 classes (ham, spam); starts as its teacher's head" in text
    assert "train            48 examples" in text
    assert "saved as student/<task>/ per task: each a Hugging Face folder (AutoModelForSequenceClassification)" in text
    assert text.count("soft        logits") == 2  # the method's matches, per task


def test_training_freeze_takes_single_task_names_for_every_tasks_model(tmp_path):
    from kdistill.planning import make_plan

    raw = example_raw(tmp_path / "run")
    raw["training"]["freeze"] = ["bert.embeddings.*"]  # as in a single-task run: not 'heads.<task>.bert…'
    made = make_plan(config_from_dict(raw, base_dir=EXAMPLES))
    embeddings = made.parameters["student"] - made.parameters["trainable"]
    assert embeddings > 0
    mt = build_tasks(config_from_dict(raw, base_dir=EXAMPLES))
    from kdistill.multitask import train_config

    assert train_config(mt).freeze == []  # applied to the models, not left to the Trainer's names
    frozen = [name for name, p in mt.student.named_parameters() if not p.requires_grad]
    assert frozen and all(".bert.embeddings." in name for name in frozen)
    assert embeddings == sum(p.numel() for p in mt.student.parameters() if not p.requires_grad)


def test_each_tasks_projections_train_with_projection_lr(tmp_path):
    from kdistill.train.optim import parameter_groups

    raw = example_raw(tmp_path / "run", matches=[{"teacher": "hidden.2", "student": "hidden.1", "loss": "hidden_mse",
                                                   "projection": "linear", "name": "mid"}])
    mt = build_tasks(config_from_dict(raw, base_dir=EXAMPLES))
    for parts in mt.tasks.values():
        parts.distiller.prepare(next(iter(parts.stages[0].loader)))
    projections = {id(p) for parts in mt.tasks.values() for p in parts.distiller.projections.parameters()}
    assert len(projections) == 4  # a weight and a bias per task
    groups = parameter_groups(mt.distiller, lr=1e-3, weight_decay=0.01, projection_lr=0.5)
    fast = {id(p) for group in groups if group["lr"] == 0.5 for p in group["params"]}
    assert fast == projections


def test_baseline_is_the_same_multi_task_student_on_labels_alone(tmp_path):
    from kdistill.run import run

    out = tmp_path / "run"
    raw = example_raw(out, baseline=True)
    raw["training"]["max_steps"] = 4
    config = config_from_dict(raw, base_dir=EXAMPLES)
    built = build_tasks(config)
    copy = built.baseline
    assert copy.heads["reviews"].bert is copy.heads["messages"].bert  # shared in the copy too
    assert copy.heads["reviews"].bert is not built.student.heads["reviews"].bert
    summary = run(config)
    assert summary["baseline"]["steps"] == 4
    for name, entry in summary["tasks"].items():
        figures = entry["baseline"]["metrics"]["test"]
        assert set(figures) == {"accuracy", "macro_f1", "agreement"}
        again = _evaluate_folder(out / "baseline" / "student" / name, built.tasks[name].loaders["test"])
        assert again == pytest.approx({k: figures[k] for k in ("accuracy", "macro_f1")})
    logged = [json.loads(line) for line in (out / "baseline" / "metrics.jsonl").read_text().splitlines()]
    parts = {key for r in logged if r["kind"] == "train" for key in r if "/" in key}
    assert parts and all(key.endswith(("/loss", "/hard_label")) for key in parts)  # labels only, no teacher
    assert "baseline accuracy" in (out / "report.md").read_text()

    from kdistill.run import evaluate_run

    again = evaluate_run(out, split="test")  # kdistill eval: each task measured again from the folders
    assert list(again["tasks"]) == ["reviews", "messages"]
    for name, entry in summary["tasks"].items():
        assert again["tasks"][name]["student"] == pytest.approx(entry["metrics"]["test"]["student"])
        assert again["tasks"][name]["teacher"] == pytest.approx(entry["metrics"]["test"]["teacher"])
        assert again["tasks"][name]["baseline"] == pytest.approx(entry["baseline"]["metrics"]["test"])
