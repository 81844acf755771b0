"""Multi-teacher: weighted average of the teachers' distributions at T (T² in the loss), matches to named teachers."""

from __future__ import annotations

import pytest
import torch

from kdistill import Distiller
from kdistill.errors import ConfigError
from kdistill.losses import get_loss
from kdistill.methods import expand

from ._helpers import forward_backward, make_batch, tiny_bert


@pytest.fixture(scope="module")
def models():
    teachers = {"big": tiny_bert(4, 64, 2, seed=1), "small": tiny_bert(4, 32, 2, seed=3)}
    with torch.no_grad():  # confident, distinct teachers: a KL well above float32 rounding
        for teacher in teachers.values():
            teacher.classifier.weight.mul_(30)
    return teachers, tiny_bert(2, 32, 2, seed=2)


def distiller_for(recipe, teachers, student):
    stage = recipe.stages[0]
    return Distiller(teachers, student, stage.matches, hard_label_weight=stage.hard_label_weight,
                     teacher_weights=recipe.teacher_weights)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_soft_targets_average_probabilities_with_weights_and_t2(models, temperature):
    teachers, student = models
    recipe = expand("multiteacher", teachers, student, temperature=temperature, alpha=0.6,
                    teacher_weights={"big": 3.0, "small": 1.0})
    assert recipe.to_dict()["teacher_weights"] == {"big": 3.0, "small": 1.0}
    distiller = distiller_for(recipe, teachers, student)
    batch = make_batch()
    with torch.no_grad():
        parts = distiller(batch, step=0).parts
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
        p_big = torch.softmax(teachers["big"](**inputs).logits.double() / temperature, -1)
        p_small = torch.softmax(teachers["small"](**inputs).logits.double() / temperature, -1)
        log_p_s = torch.log_softmax(student(**inputs).logits.double() / temperature, -1)
    mixed = 0.75 * p_big + 0.25 * p_small
    kl = (mixed * (mixed.log() - log_p_s)).sum(-1).mean()
    assert float(parts["soft"]) == pytest.approx(0.6 * temperature**2 * float(kl), rel=1e-4)
    assert "hard_label" in parts and recipe.stages[0].hard_label_weight == pytest.approx(0.4)


def test_intermediate_match_reads_the_named_teacher(models):
    teachers, student = models
    recipe = expand("multiteacher", teachers, student, intermediate=[
        {"teacher_name": "small", "teacher": "hidden.4", "student": "hidden.2", "loss": "hidden_mse", "weight": 2.0,
         "name": "small_top"},
        {"teacher_name": "big", "teacher": "attn.3", "student": "attn.1", "loss": "attention_kl"},
    ])
    distiller = distiller_for(recipe, teachers, student)
    batch = make_batch()
    out = forward_backward(distiller, batch)
    assert set(out.parts) == {"soft", "small_top", "attention_kl[attn.1<-attn.3]", "hard_label"}
    with torch.no_grad():
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
        t = teachers["small"](**inputs, output_hidden_states=True).hidden_states[4]
        s = student(**inputs, output_hidden_states=True).hidden_states[2]
    real = batch["attention_mask"].bool()
    assert float(out.parts["small_top"]) == pytest.approx(2.0 * float((s[real] - t[real]).square().mean()), rel=1e-5)


def test_errors_name_the_teacher_and_the_key(models):
    teachers, student = models
    with pytest.raises(ConfigError, match=r"intermediate\[0\].teacher_name: no teacher named 'smal'; did you mean 'small'"):
        expand("multiteacher", teachers, student, intermediate=[{"teacher_name": "smal", "teacher": "hidden.1"}])
    with pytest.raises(ConfigError, match=r"intermediate\[0\]: unknown key 'studnet'; did you mean 'student'"):
        expand("multiteacher", teachers, student, intermediate=[{"teacher": "hidden.1", "studnet": "hidden.1"}])
    with pytest.raises(ConfigError, match="teacher_weights: no teacher named 'huge'"):
        expand("multiteacher", teachers, student, teacher_weights={"huge": 1.0})
    with pytest.raises(ConfigError, match="the weights sum to 0"):
        expand("multiteacher", teachers, student, teacher_weights={"big": 0.0})


def test_float64_teachers_give_a_float64_ensemble_target():
    teachers = {"big": tiny_bert(2, 32, 2, seed=1).double(), "small": tiny_bert(2, 32, 2, seed=3).double()}
    student = tiny_bert(2, 32, 2, seed=2).double()
    recipe = expand("multiteacher", teachers, student, temperature=3.0, alpha=1.0,
                    teacher_weights={"big": 1.0, "small": 3.0})
    seen = []

    def kl_seen(student_logits, teacher_logits, *, temperature, t2_scale):
        seen.append(teacher_logits.dtype)
        return get_loss("kl")(student_logits, teacher_logits, temperature=temperature, t2_scale=t2_scale)

    soft = recipe.stages[0].matches[0]
    distiller = Distiller(teachers, student, [soft.with_(loss=kl_seen)], hard_label_weight=0.0,
                          teacher_weights=recipe.teacher_weights)
    batch = make_batch()
    with torch.no_grad():
        loss = distiller(batch, step=0).parts["soft"]
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
        p = [torch.softmax(teachers[n](**inputs).logits / 3.0, -1) for n in ("big", "small")]
        log_p_s = torch.log_softmax(student(**inputs).logits / 3.0, -1)
    mixed = 0.25 * p[0] + 0.75 * p[1]
    oracle = 9.0 * (mixed * (mixed.log() - log_p_s)).sum(-1).mean()
    assert seen and set(seen) == {torch.float64} and loss.dtype == torch.float64
    assert float(loss) == pytest.approx(float(oracle), rel=1e-12)


def test_one_teacher_model_is_refused_not_hinton_under_another_name(models):
    teachers, student = models
    with pytest.raises(ConfigError, match=r"teacher: method 'multiteacher' averages several teachers, but it was "
                                          r"given one model"):
        expand("multiteacher", teachers["big"], student)
