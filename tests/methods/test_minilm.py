"""MiniLM: v1 attention + value relation of the last layer, v2 q/k/v relations across head counts, assistant chains."""

from __future__ import annotations

import math

import pytest
import torch

from kdistill.errors import ConfigError
from kdistill.methods import expand
from kdistill.models import student_from_config

from ._helpers import forward_backward, make_batch, stage_distiller, tiny_bert


def summary(stage):
    return [(m.teacher, m.student, m.loss_name, m.args) for m in stage.matches]


def test_v1_last_layer_attention_and_value_relation():
    teacher, student = tiny_bert(4, 64, 2, seed=1), tiny_bert(2, 32, 2, seed=2)
    recipe = expand("minilm", teacher, student)
    assert [s.name for s in recipe.stages] == ["distil", "finetune"]
    distil, finetune = recipe.stages
    assert distil.data == "unlabelled" and distil.hard_label_weight == 0.0
    assert summary(distil) == [("attn.-1", "attn.-1", "attention_kl", {}),
                               ("value.-1", "value.-1", "value_relation_kl", {"num_heads": 2})]
    assert finetune.matches == [] and finetune.hard_label_weight == 1.0 and finetune.data == "train"
    distiller = stage_distiller(distil, teacher, student)
    out = forward_backward(distiller, make_batch())
    assert set(out.parts) == {"attention", "value_relation"}
    shapes = {p.name: (p.teacher, p.student, p.teacher_shape, p.student_shape, p.projection) for p in distiller.plan}
    assert shapes["attention"] == ("attn.3", "attn.1", (4, 2, 8, 8), (4, 2, 8, 8), None)
    assert shapes["value_relation"] == ("value.3", "value.1", (4, 8, 64), (4, 8, 32), None)


def test_v1_needs_equal_head_counts():
    with pytest.raises(ConfigError, match=r"version 1 compares attention maps head by head, but the teacher has 4 "
                                          r"heads and the student 2; use version: 2"):
        expand("minilm", tiny_bert(4, 64, 4), tiny_bert(2, 32, 2))
    with pytest.raises(ConfigError, match="cannot tell the student's attention head count"):
        expand("minilm")
    assert summary(expand("minilm", student_heads=12).stages[0])[1][3] == {"num_heads": 12}


def manual_relation_kl(student, teacher, heads, mask):
    """KL(R_t ‖ R_s) per relation head, summed over keys, mean over batch · heads · real queries, by loops."""
    total, count = 0.0, 0
    for b in range(student.shape[0]):
        real = [i for i in range(student.shape[1]) if mask[b, i]]
        for h in range(heads):
            def relation(x):
                d = x.shape[-1] // heads
                part = x[b, real, h * d:(h + 1) * d].double()
                return torch.softmax(part @ part.T / math.sqrt(d), dim=-1)

            r_s, r_t = relation(student), relation(teacher)
            total += float((r_t * (r_t.log() - r_s.log())).sum())
            count += len(real)
    return total / count


def test_v2_relations_with_different_heads_and_widths():
    teacher, student = tiny_bert(4, 64, 4, seed=1), tiny_bert(2, 32, 2, seed=2)
    recipe = expand("minilm", teacher, student, version=2, num_relation_heads=8, teacher_layer=2, finetune=False)
    (stage,) = recipe.stages
    assert summary(stage) == [(f"{k}.2", f"{k}.-1", "relation_kl", {"num_heads": 8}) for k in ("query", "key", "value")]
    distiller = stage_distiller(stage, teacher, student)
    batch = make_batch()
    out = forward_backward(distiller, batch)
    shapes = {p.name: (p.teacher, p.student, p.teacher_shape, p.student_shape) for p in distiller.plan}
    for kind in ("query", "key", "value"):
        assert shapes[f"{kind}_relation"] == (f"{kind}.2", f"{kind}.1", (4, 8, 64), (4, 8, 32))
    with torch.no_grad():
        teacher_features = distiller.teacher_features(batch)["teacher"]
    student_features = out.student_features
    for kind, table in (("query", "queries"), ("key", "keys"), ("value", "values")):
        s, t = getattr(student_features, table)[1], getattr(teacher_features, table)[2]
        # 8 relation heads of widths 32/8 = 4 (student) and 64/8 = 8 (teacher): both give (B, 8, T, T) relations.
        expected = manual_relation_kl(s.detach(), t, 8, batch["attention_mask"])
        assert float(out.parts[f"{kind}_relation"]) == pytest.approx(expected, rel=1e-3)  # float32 loss


def test_v2_relation_head_defaults_and_errors():
    teacher, student = tiny_bert(4, 64, 4), tiny_bert(2, 32, 2)
    default = expand("minilm", teacher, student, version=2).stages[0]
    assert {m.args["num_heads"] for m in default.matches} == {2}  # the student's head count
    with pytest.raises(ConfigError, match=r"num_relation_heads: 3 does not divide the teacher's width 64"):
        expand("minilm", teacher, student, version=2, num_relation_heads=3)
    with pytest.raises(ConfigError, match=r"method_args.version: 3 is not valid. It must be one of 1, 2 "
                                          r"\(MiniLM v1 or v2\)"):
        expand("minilm", teacher, student, version=3)


def test_teacher_assistant_chain_runs_both_links():
    teacher, student = tiny_bert(4, 64, 2, seed=1), tiny_bert(2, 32, 2, seed=2)
    recipe = expand("minilm", teacher, student, assistant={"num_layers": 4, "hidden_size": 32})
    assert recipe.assistant == {"config": {"num_layers": 4, "hidden_size": 32}}
    assert [(s.name, s.teacher) for s in recipe.stages] == [
        ("distil_assistant", "teacher"), ("distil_student", "assistant"), ("finetune", "assistant")]
    assistant = student_from_config(teacher, **recipe.assistant["config"])
    batch = make_batch()
    forward_backward(stage_distiller(recipe.stages[0], teacher, assistant), batch)
    forward_backward(stage_distiller(recipe.stages[1], assistant, student), batch)
    copied = expand("minilm", teacher, student, version=2, assistant={"layers": [0, 2]})
    assert copied.assistant == {"from_teacher": {"layers": [0, 2]}}
    with pytest.raises(ConfigError, match=r"method_args.assistant: unknown key\(s\) 'depth'"):
        expand("minilm", teacher, student, assistant={"depth": 2})
    with pytest.raises(ConfigError, match="the teacher has 2 heads and the assistant 4; use version: 2"):
        expand("minilm", teacher, student, assistant={"num_layers": 4, "num_attention_heads": 4, "hidden_size": 64})
