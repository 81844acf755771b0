"""Patient KD: PKD-skip and PKD-last layer pairs, the reference's β scale, soft CE without T² (paper)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdistill.errors import ConfigError
from kdistill.methods import expand
from kdistill.methods.pkd import pkd_layer_map
from kdistill.models import find_layer_list, student_from_teacher
from kdistill.schedules import Linear

from ._helpers import forward_backward, make_batch, stage_distiller, tiny_bert


def pairs(stage):
    return [(m.teacher, m.student) for m in stage.matches if m.loss_name == "pkd"]


def test_skip_and_last_leave_out_the_top_layer():
    assert pkd_layer_map(12, 6, "skip") == [(2, 1), (4, 2), (6, 3), (8, 4), (10, 5)]
    assert pkd_layer_map(12, 6, "last") == [(7, 1), (8, 2), (9, 3), (10, 4), (11, 5)]
    assert pkd_layer_map(12, 3, "last") == [(10, 1), (11, 2)]
    stage = expand("pkd", teacher_layers=12, student_layers=6, strategy="last", teacher_width=768).stages[0]
    assert pairs(stage) == [(f"hidden.{t}", f"hidden.{s}") for t, s in pkd_layer_map(12, 6, "last")]
    with pytest.raises(ConfigError, match=r"method_args.strategy: 'lst' is not valid; did you mean 'last'\? "
                                          r"It must be one of skip, last"):
        expand("pkd", teacher_layers=12, student_layers=6, strategy="lst")
    with pytest.raises(ConfigError, match="needs the teacher's width"):
        expand("pkd", teacher_layers=12, student_layers=6)


def test_student_starts_from_the_first_teacher_layers():
    teacher = tiny_bert(6)
    recipe = expand("pkd", teacher, student_layers=3)
    assert recipe.student_init == {"from_teacher": {"layers": [0, 1, 2]}}
    student = student_from_teacher(teacher, [0, 1, 2])
    for mine, theirs in zip(find_layer_list(student)[1], find_layer_list(teacher)[1][:3]):
        assert all(torch.equal(a, b) for a, b in zip(mine.state_dict().values(), theirs.state_dict().values()))


def test_patience_term_equals_the_reference_mse_times_beta():
    teacher, student = tiny_bert(6, 32, 2, seed=1), tiny_bert(3, 32, 2, seed=2)
    recipe = expand("pkd", teacher, student, beta=100.0)
    stage = recipe.stages[0]
    assert pairs(stage) == [("hidden.2", "hidden.1"), ("hidden.4", "hidden.2")]
    assert {m.weight for m in stage.matches if m.loss_name == "pkd"} == {100.0 / (2 * 32)}
    batch = make_batch()
    distiller = stage_distiller(stage, teacher, student)
    with torch.no_grad():
        parts = distiller(batch, step=0).parts
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
        t_hidden = teacher(**inputs, output_hidden_states=True).hidden_states
        s_hidden = student(**inputs, output_hidden_states=True).hidden_states
    patience = sum(float(v) for k, v in parts.items() if k.startswith("pkd"))
    # The reference: F.mse_loss of the stacked, L2-normalised [CLS] vectors, times β.
    t_cls = F.normalize(torch.stack([t_hidden[2][:, 0], t_hidden[4][:, 0]], 1).double(), dim=-1)
    s_cls = F.normalize(torch.stack([s_hidden[1][:, 0], s_hidden[2][:, 0]], 1).double(), dim=-1)
    assert patience == pytest.approx(100.0 * float(F.mse_loss(s_cls, t_cls)), rel=1e-5)
    summed = expand("pkd", teacher, student, beta=10.0, beta_scale="sum").stages[0]
    assert {m.weight for m in summed.matches if m.loss_name == "pkd"} == {10.0}


@pytest.mark.parametrize("temperature", [1.0, 4.0])
@pytest.mark.parametrize("t2_scale", [False, True])
def test_soft_term_has_t2_only_when_asked(temperature, t2_scale):
    teacher, student = tiny_bert(4, 32, 2, seed=1), tiny_bert(2, 32, 2, seed=2)
    recipe = expand("pkd", teacher, student, temperature=temperature, alpha=0.7, t2_scale=t2_scale)
    distiller = stage_distiller(recipe.stages[0], teacher, student)
    batch = make_batch()
    with torch.no_grad():
        parts = distiller(batch, step=0).parts
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
        t_logits, s_logits = teacher(**inputs).logits.double(), student(**inputs).logits.double()
    soft = -(torch.softmax(t_logits / temperature, -1) * torch.log_softmax(s_logits / temperature, -1)).sum(-1).mean()
    scale = temperature**2 if t2_scale else 1.0
    assert float(parts["soft"]) == pytest.approx(0.7 * scale * float(soft), rel=1e-5)
    hard = F.cross_entropy(s_logits, batch["labels"])
    assert float(parts["hard_label"]) == pytest.approx(0.3 * float(hard), rel=1e-5)


def test_scheduled_alpha_and_forward_backward():
    teacher, student = tiny_bert(4, 64, 2, seed=1), tiny_bert(2, 32, 2, seed=2)
    recipe = expand("pkd", teacher, student, alpha=Linear(0.2, 0.8))
    hard = recipe.stages[0].hard_label_weight
    assert isinstance(hard, Linear) and [hard(step, 10) for step in (0, 5, 10)] == pytest.approx([0.8, 0.5, 0.2])
    assert recipe.to_dict()["stages"][0]["hard_label_weight"]["schedule"] == "linear"
    distiller = stage_distiller(recipe.stages[0], teacher, student)
    out = forward_backward(distiller, make_batch(), step=3, total_steps=10)
    assert set(out.parts) == {"soft", "pkd[hidden.1<-hidden.2]", "hard_label"}
    assert {p.projection for p in distiller.plan if p.loss == "pkd"} == {"linear 32->64"}
