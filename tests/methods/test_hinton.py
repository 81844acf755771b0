"""Hinton KD: α·T²·KL + (1−α)·CE, checked against a manual computation; a few Trainer steps learn."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdistill.methods import expand
from kdistill.schedules import Linear

from ._helpers import loader_of, make_batch, stage_distiller, tiny_bert, train_history


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_t2_is_applied_once(temperature):
    teacher, student = tiny_bert(4, 64, 2, seed=1), tiny_bert(2, 32, 2, seed=2)
    with torch.no_grad():
        teacher.classifier.weight.mul_(30)
    stage = expand("hinton", teacher, student, temperature=temperature, alpha=0.7).stages[0]
    batch = make_batch()
    with torch.no_grad():
        parts = stage_distiller(stage, teacher, student)(batch, step=0).parts
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
        t_logits, s_logits = teacher(**inputs).logits.double(), student(**inputs).logits.double()
    log_p_t = torch.log_softmax(t_logits / temperature, -1)
    kl = (log_p_t.exp() * (log_p_t - torch.log_softmax(s_logits / temperature, -1))).sum(-1).mean()
    assert float(parts["soft"]) == pytest.approx(0.7 * temperature**2 * float(kl), rel=1e-4)
    assert float(parts["hard_label"]) == pytest.approx(0.3 * float(F.cross_entropy(s_logits, batch["labels"])), rel=1e-5)


def test_trainer_steps_lower_the_loss():
    teacher, student = tiny_bert(4, 64, 2, seed=1), tiny_bert(2, 32, 2, seed=2)
    with torch.no_grad():
        teacher.classifier.weight.mul_(30)
    stage = expand("hinton", teacher, student).stages[0]
    history = train_history(stage_distiller(stage, teacher, student), loader_of(make_batch(), copies=4), steps=12)
    assert len(history) == 12 and history[-1]["loss"] < 0.7 * history[0]["loss"]


def test_scheduled_alpha_prints_as_the_complementary_schedule():
    stage = expand("hinton", teacher_layers=4, student_layers=2, alpha=Linear(0.2, 0.8)).to_dict()["stages"][0]
    assert stage["hard_label_weight"]["schedule"] == "linear"
    assert stage["hard_label_weight"]["start_value"] == pytest.approx(0.8)
    assert stage["hard_label_weight"]["end_value"] == pytest.approx(0.2)
