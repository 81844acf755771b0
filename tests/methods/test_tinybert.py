"""TinyBERT: layer map, staged switch from intermediate layers to predictions, no T² in the prediction loss."""

from __future__ import annotations

import pytest
import torch

from kdistill.errors import ConfigError
from kdistill.methods import expand
from kdistill.methods.tinybert import SharedLinear

from ._helpers import forward_backward, loader_of, make_batch, stage_distiller, tiny_bert, train_history


@pytest.fixture(scope="module")
def models():
    return tiny_bert(4, 64, 2, seed=1), tiny_bert(2, 32, 2, seed=2)


def refs(stage, loss):
    return [(m.teacher, m.student) for m in stage.matches if m.loss_name == loss]


def test_uniform_layer_map_read_from_the_models(models):
    teacher, student = models
    stage = expand("tinybert", teacher, student).stages[0]
    assert refs(stage, "hidden_mse") == [("hidden.0", "hidden.0"), ("hidden.2", "hidden.1"), ("hidden.4", "hidden.2")]
    # Attention of the block whose output the map pairs: hidden m <-> block m-1.
    assert refs(stage, "attention_mse") == [("attn_scores.1", "attn_scores.0"), ("attn_scores.3", "attn_scores.1")]
    assert all(m.args == {"kind": "scores"} for m in stage.matches if m.loss_name == "attention_mse")
    (prediction,) = [m for m in stage.matches if m.name == "prediction"]
    assert prediction.args == {"temperature": 1.0, "t2_scale": False}


def test_layer_map_from_options_and_explicit():
    stage = expand("tinybert", teacher_layers=12, student_layers=4).stages[0]
    assert refs(stage, "hidden_mse")[1:] == [(f"hidden.{3 * m}", f"hidden.{m}") for m in (1, 2, 3, 4)]
    explicit = expand("tinybert", layer_map=[[0, 0], [1, 1], [4, 2]], attention="probs").stages[0]
    assert refs(explicit, "hidden_mse") == [("hidden.0", "hidden.0"), ("hidden.1", "hidden.1"), ("hidden.4", "hidden.2")]
    assert refs(explicit, "attention_mse") == [("attn.0", "attn.0"), ("attn.3", "attn.1")]


def test_option_errors_name_the_option(models):
    teacher, _ = models
    with pytest.raises(ConfigError, match=r"method_args.attention: 'score' is not valid; did you mean 'scores'\? "
                                          r"It must be one of scores, probs"):
        expand("tinybert", teacher_layers=4, student_layers=2, attention="score")
    with pytest.raises(ConfigError, match=r"method_args.teacher_layers: 6, but the teacher model has 4 layers"):
        expand("tinybert", teacher, teacher_layers=6, student_layers=2)
    with pytest.raises(ConfigError, match=r"give the student model or the option 'student_layers'"):
        expand("tinybert", teacher)
    with pytest.raises(ConfigError, match=r"method_args.intermediate_fraction: 1.5 is out of range; it must be "
                                          r"between 0 and 1"):
        expand("tinybert", teacher_layers=4, student_layers=2, intermediate_fraction=1.5)


@pytest.mark.parametrize("fraction, boundary", [(0.3, 3), (0.5, 5)])
def test_stage_switch_happens_at_the_configured_step(models, fraction, boundary):
    teacher, student = models
    stage = expand("tinybert", teacher, student, intermediate_fraction=fraction).stages[0]
    distiller = stage_distiller(stage, teacher, student)
    batch = make_batch()
    with torch.no_grad():
        before = distiller(batch, step=boundary - 1, total_steps=10).parts
        after = distiller(batch, step=boundary, total_steps=10).parts
    intermediate = {name for name in before if name != "prediction"}
    assert len(intermediate) == 5 and "prediction" not in before  # 3 hidden + 2 attention
    assert set(after) == {"prediction"}


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_prediction_loss_has_no_t2(models, temperature):
    teacher, student = models
    stage = expand("tinybert", teacher, student, temperature=temperature, intermediate_fraction=0.0).stages[0]
    distiller = stage_distiller(stage, teacher, student)
    batch = make_batch()
    with torch.no_grad():
        part = distiller(batch, step=0, total_steps=10).parts["prediction"]
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
        t_logits, s_logits = teacher(**inputs).logits.double(), student(**inputs).logits.double()
    manual = -(torch.softmax(t_logits / temperature, -1) * torch.log_softmax(s_logits / temperature, -1)).sum(-1).mean()
    assert float(part) == pytest.approx(float(manual), rel=1e-5)


def test_general_and_both_stages(models):
    teacher, student = models
    (general,) = expand("tinybert", teacher, student, stage="general", general_teacher="pretrained").stages
    assert (general.name, general.data, general.teacher) == ("general", "unlabelled", "pretrained")
    assert all(m.loss_name in ("hidden_mse", "attention_mse") and m.stop is None for m in general.matches)
    both = expand("tinybert", teacher, student, stage="both").stages
    assert [s.name for s in both] == ["general", "task"]
    assert [s.data for s in both] == ["unlabelled", "train"]
    split = expand("tinybert", teacher, student, split_task_stage=True).stages
    assert [s.name for s in split] == ["task_intermediate", "task_prediction"]
    assert [m.name for m in split[1].matches] == ["prediction"]
    assert all(m.stop is None and not m.start for s in split for m in s.matches)


def test_every_stage_runs_forward_and_backward_with_projections(models):
    teacher, student = models
    batch = make_batch()
    recipe = expand("tinybert", teacher, student, stage="both")
    for stage in recipe.stages:
        student.zero_grad()
        distiller = stage_distiller(stage, teacher, student)
        out = forward_backward(distiller, batch, step=0, total_steps=10)
        assert out.parts
    plan = {p.teacher: p.projection for p in distiller.plan}
    assert plan["hidden.0"] == "linear 32->64" and plan["hidden.4"] == "linear 32->64"
    assert plan["attn_scores.3"] is None
    student.zero_grad()


def test_shared_projection_is_one_module(models):
    teacher, student = models
    stage = expand("tinybert", teacher, student, shared_projection=True).stages[0]
    assert all(isinstance(m.projection, SharedLinear) for m in stage.matches if m.loss_name == "hidden_mse")
    distiller = stage_distiller(stage, teacher, student)
    distiller.prepare(make_batch())
    modules = {id(module) for module in distiller.projections.values()}
    assert len(distiller.projections) == 3 and len(modules) == 1
    assert expand("tinybert", teacher, student).to_dict()["stages"][0]["matches"][0].get("projection") is None


def test_trainer_switches_and_each_phase_learns():
    teacher, student = tiny_bert(4, 64, 2, seed=1), tiny_bert(2, 32, 2, seed=2)
    stage = expand("tinybert", teacher, student, intermediate_fraction=0.5).stages[0]
    distiller = stage_distiller(stage, teacher, student)
    history = train_history(distiller, loader_of(make_batch(), copies=4), steps=24)
    assert len(history) == 24
    first, second = history[:12], history[12:]
    assert all("prediction" not in r for r in first) and all(set(r) & {"prediction"} for r in second)
    assert all(not any(k.startswith(("hidden_mse", "attention_mse")) for k in r) for r in second)
    assert first[-1]["loss"] < 0.7 * first[0]["loss"]
    assert second[-1]["prediction"] < second[0]["prediction"]
