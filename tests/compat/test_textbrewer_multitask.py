"""kdistill.compat.textbrewer.MultiTaskDistiller: TextBrewer's task sampling, routing, KD loss and checkpoints."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from kdistill.compat.textbrewer import (
    DistillationConfig,
    MultiTaskDistiller,
    TrainingConfig,
    task_probabilities,
)
from kdistill.errors import ConfigError

from ._models import bert
from .test_textbrewer import _loader, textbrewer_kd_ce, tuple_adaptor

CLASSES = {"a": 3, "b": 2, "c": 4}  # labels per task


class Head(nn.Module):
    """A teacher for one task: (x, tag) -> logits; ``tags`` records which task's batches it saw."""

    def __init__(self, classes: int, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.linear = nn.Linear(4, classes)
        self.tags: list[int] = []

    def forward(self, x, tag, labels=None):
        self.tags.extend(tag.tolist())
        return self.linear(x)


class MultiHead(nn.Module):
    """The student: a shared body and one head per task; returns every head's logits."""

    def __init__(self, seed: int = 9):
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Linear(4, 8)
        self.heads = nn.ModuleDict({task: nn.Linear(8, classes) for task, classes in CLASSES.items()})

    def forward(self, x, tag, labels=None):
        hidden = torch.tanh(self.body(x))
        return {task: head(hidden) for task, head in self.heads.items()}


def task_loader(task: str, batches: int, batch_size: int = 2) -> DataLoader:
    """``batches`` batches of (x, tag, labels); tag = the task's index in CLASSES, on every example."""
    generator = torch.Generator().manual_seed(len(task) * 10 + batches)
    count = batches * batch_size
    x = torch.randn(count, 4, generator=generator)
    tags = torch.full((count,), list(CLASSES).index(task))
    labels = torch.arange(count) % CLASSES[task]
    return DataLoader(TensorDataset(x, tags, labels), batch_size=batch_size)


def recording_adaptors(calls: list, role: str, *, losses: bool = False) -> dict:
    def make(task):
        def adaptor(batch, outputs):
            calls.append((role, task, set(batch[1].tolist())))
            logits = outputs[task] if isinstance(outputs, dict) else outputs
            results = {"logits": logits}
            if losses:
                results["losses"] = nn.functional.cross_entropy(logits, batch[2])
            return results

        return adaptor

    return {task: make(task) for task in CLASSES}


def make_distiller(tmp_path, calls, *, accumulation=1, ckpt_steps=1000, **distill):
    teachers = {task: Head(classes, seed=i) for i, (task, classes) in enumerate(CLASSES.items())}
    config = TrainingConfig(device="cpu", output_dir=str(tmp_path), ckpt_steps=ckpt_steps,
                            gradient_accumulation_steps=accumulation)
    return MultiTaskDistiller(config, DistillationConfig(**distill), teachers, MultiHead(),
                              recording_adaptors(calls, "T"), recording_adaptors(calls, "S", losses=True))


# ---------------------------------------------------------------------------------------------
# The sampling rule


def test_task_probabilities_are_sizes_to_the_power_tau():
    loaders = {"a": task_loader("a", 1), "b": task_loader("b", 3), "c": task_loader("c", 6)}
    assert task_probabilities(loaders, 1) == pytest.approx({"a": 0.1, "b": 0.3, "c": 0.6})
    root = 1 + math.sqrt(3) + math.sqrt(6)
    assert task_probabilities(loaders, 0.5) == pytest.approx({"a": 1 / root, "b": math.sqrt(3) / root,
                                                              "c": math.sqrt(6) / root})
    assert task_probabilities(loaders, 0) == pytest.approx({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3})
    # a dataloader without a length: uniform draws (TextBrewer's p=None)
    assert task_probabilities({"a": loaders["a"], "b": (batch for batch in loaders["b"])}, 1) is None


@pytest.mark.parametrize(("tau", "expected"), [(1, {"a": 0.1, "b": 0.3, "c": 0.6}),
                                                (0, {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3})])
def test_training_draws_tasks_with_textbrewers_probabilities(tmp_path, tau, expected):
    calls: list = []
    distiller = make_distiller(tmp_path, calls, accumulation=4)
    loaders = {"a": task_loader("a", 1), "b": task_loader("b", 3), "c": task_loader("c", 6)}
    np.random.seed(0)
    with distiller:
        history = distiller.train(torch.optim.SGD(distiller.model_S.parameters(), lr=0.01), loaders, num_steps=500,
                                  tau=tau)
    draws = len(distiller.sampled_tasks)
    assert len(history) == 500 and draws == 500 * 4  # one draw per micro-batch, as TextBrewer
    for task, p in expected.items():
        count = distiller.sampled_tasks.count(task)
        spread = math.sqrt(draws * p * (1 - p))  # binomial standard deviation
        assert abs(count - draws * p) <= 4 * spread, (task, count, draws * p, spread)
    # exactly TextBrewer's draw: np.random.choice over the tasks with these probabilities, from numpy's state
    np.random.seed(0)
    weights = [expected[task] for task in loaders]
    assert distiller.sampled_tasks == [str(np.random.choice(list(loaders), p=weights)) for _ in range(draws)]


# ---------------------------------------------------------------------------------------------
# Routing and the loss


def test_each_batch_reaches_only_its_own_teacher_and_adaptors(tmp_path):
    calls: list = []
    distiller = make_distiller(tmp_path, calls)
    loaders = {task: task_loader(task, 2) for task in CLASSES}
    np.random.seed(1)
    with distiller:
        distiller.train(torch.optim.SGD(distiller.model_S.parameters(), lr=0.01), loaders, num_steps=30)
    tags = {task: {list(CLASSES).index(task)} for task in CLASSES}
    for task, teacher in distiller.teachers.items():
        assert set(teacher.tags) == tags[task]
    for role, task, seen in calls:
        assert seen == tags[task], (role, task, seen)
    sampled = {task: distiller.sampled_tasks.count(task) for task in CLASSES}
    assert all(sampled.values()), sampled
    # one student adaptor call per sampled batch, plus two when the task's engine is built (probe + shape check)
    for task in CLASSES:
        assert sum(1 for role, t, _ in calls if role == "S" and t == task) == sampled[task] + 2


def test_each_step_is_the_kd_loss_of_its_tasks_batch(tmp_path):
    calls: list = []
    distiller = make_distiller(tmp_path, calls, temperature=2, hard_label_weight=0.5)
    loaders = {task: task_loader(task, 2) for task in CLASSES}
    np.random.seed(3)
    with distiller:
        history = distiller.train(torch.optim.SGD(distiller.model_S.parameters(), lr=0.0), loaders, num_steps=8)
    assert sorted(distiller.engines) == sorted(CLASSES)
    assert len(set(distiller.sampled_tasks)) > 1
    position = {task: 0 for task in CLASSES}
    for record, task in zip(history, distiller.sampled_tasks):
        x, tag, labels = list(loaders[task])[position[task] % 2]
        position[task] += 1
        with torch.no_grad():
            teacher_logits = distiller.teachers[task](x, tag).double()
            student_logits = distiller.model_S(x, tag)[task].double()
        kd = textbrewer_kd_ce(student_logits, teacher_logits, 2.0)  # naive float64 loop, no T²
        hard = 0.5 * float(nn.functional.cross_entropy(student_logits, labels))
        assert record["kd_loss"] == pytest.approx(kd, rel=1e-5)
        assert record["hard_label"] == pytest.approx(hard, rel=1e-5)
        assert record["total_loss"] == pytest.approx(kd + hard, rel=1e-5)


# ---------------------------------------------------------------------------------------------
# Checkpoints, callbacks, intermediate matches


def test_checkpoints_and_callbacks_every_ckpt_steps_and_at_the_end(tmp_path):
    """Two tiny BERT teachers, a hidden-state match with a projection per task, saved with the student."""
    teachers = {"a": bert(2, 32, seed=0), "b": bert(2, 32, seed=2)}
    student = bert(2, 16, seed=1)
    distill_config = DistillationConfig(intermediate_matches=[
        {"layer_T": 2, "layer_S": 2, "feature": "hidden", "loss": "hidden_mse", "weight": 1,
         "proj": ["linear", 16, 32]}])
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-3)
    seen = []
    distiller = MultiTaskDistiller(TrainingConfig(ckpt_steps=3, output_dir=str(tmp_path), device="cpu"),
                                   distill_config, teachers, student, {"a": tuple_adaptor, "b": tuple_adaptor},
                                   {"a": tuple_adaptor, "b": tuple_adaptor})
    np.random.seed(0)
    with distiller:
        history = distiller.train(optimizer, {"a": _loader(count=8), "b": _loader(count=8, seed=1)}, num_steps=7,
                                  callback=lambda model, step: seen.append((model is student, step)))
    assert len(history) == 7 and [p.name for p in distiller.engines["a"].plan] == ["hidden_hidden_mse_2_2"]
    assert seen == [(True, 3), (True, 6), (True, 7)]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "gs3.projections.safetensors", "gs3.safetensors", "gs6.projections.safetensors", "gs6.safetensors",
        "gs7.projections.safetensors", "gs7.safetensors"]
    # one projection per task, each in the optimizer from the first step, saved under its task's name
    assert len(optimizer.param_groups) == 3
    projections = load_file(str(tmp_path / "gs7.projections.safetensors"))
    assert sorted(projections) == ["a.m0.bias", "a.m0.weight", "b.m0.bias", "b.m0.weight"]
    assert torch.equal(projections["b.m0.weight"], distiller.engines["b"].projections["m0"].weight)


# ---------------------------------------------------------------------------------------------
# Errors


def test_tasks_must_agree_and_num_steps_needs_ckpt_steps(tmp_path):
    calls: list = []
    teachers = {task: Head(classes, seed=0) for task, classes in CLASSES.items()}
    adaptors = recording_adaptors(calls, "T")
    with pytest.raises(ConfigError) as error:
        MultiTaskDistiller(TrainingConfig(device="cpu"), DistillationConfig(), teachers, MultiHead(), adaptors,
                           {"a": adaptors["a"], "b": adaptors["b"], "d": adaptors["c"]})
    assert str(error.value) == ("MultiTaskDistiller: adaptor_S has the tasks a, b, d; model_T has a, b, c "
                                "(missing: c) (unknown: d).")
    with pytest.raises(ConfigError, match="model_T must be a non-empty dict"):
        MultiTaskDistiller(TrainingConfig(device="cpu"), DistillationConfig(), [teachers["a"]], MultiHead(),
                           adaptors, adaptors)
    distiller = MultiTaskDistiller(TrainingConfig(device="cpu", output_dir=str(tmp_path)), DistillationConfig(),
                                   teachers, MultiHead(), adaptors, adaptors)
    optimizer = torch.optim.SGD(distiller.model_S.parameters(), lr=0.1)
    loaders = {task: task_loader(task, 1) for task in CLASSES}
    with pytest.raises(ConfigError, match=r"needs TrainingConfig.ckpt_steps"):
        distiller.train(optimizer, loaders, num_steps=3)
    with pytest.raises(ConfigError, match="tau must be a finite number"):
        distiller.train(optimizer, loaders, num_steps=3, tau="size")
    with pytest.raises(ConfigError, match=r"dataloaders has the tasks a, b; model_T has a, b, c \(missing: c\)"):
        distiller.train(optimizer, {"a": loaders["a"], "b": loaders["b"]}, num_steps=3)
    empty = DataLoader(TensorDataset(torch.zeros(0, 4)), batch_size=2)
    with pytest.raises(ConfigError, match=r"dataloaders\[c\] has no batches"):
        distiller.train(optimizer, {**loaders, "c": empty}, num_steps=3)
