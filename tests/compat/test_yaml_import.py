"""kdistill.compat.yaml_import: old config shapes -> native matches, and the native form computes the same loss."""

from __future__ import annotations

import pytest
import torch
import yaml
from torch.utils.data import DataLoader, TensorDataset

from kdistill import Distiller, Match
from kdistill.compat.knowledge_distillation import KnowledgeDistiller, MultiLayerBasedDistillationLoss
from kdistill.compat.textbrewer import DistillationConfig, GeneralDistiller, TrainingConfig
from kdistill.compat.yaml_import import (
    detect_and_convert,
    from_knowledge_distillation_list,
    from_textbrewer_dict,
)
from kdistill.errors import ConfigError

from ._models import bert, padded_batch

NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}

TEXTBREWER_YAML = """
teacher: {path: models/teacher}
student: {path: models/student}
distill_config:
  intermediate_matches:
    - {layer_T: 0, layer_S: 0, feature: hidden, loss: hidden_mse, weight: 1}
    - {layer_T: 2, layer_S: 1, feature: hidden, loss: hidden_mse, weight: 1}
    - {layer_T: 4, layer_S: 2, feature: hidden, loss: hidden_mse, weight: 2}
    - {layer_T: 1, layer_S: 0, feature: attention, loss: attention_mse, weight: 1}
    - {layer_T: 3, layer_S: 1, feature: attention, loss: attention_mse, weight: 1}
    - {layer_T: 4, layer_S: 2, feature: hidden, loss: cos, weight: 0.5}
train_config: {gradient_accumulation_steps: 2, ckpt_frequency: 10, output_dir: saved_models, device: cuda}
"""

KD_YAML = """
distill_config:
  - {teacher_layer_name: embedding_layer, teacher_layer_output_name: embedding,
     student_layer_name: embedding_layer, student_layer_output_name: embedding,
     loss: {loss_function: mse_with_mask, args: {}}, weight: 1.0}
  - {teacher_layer_name: bert_layer4, teacher_layer_output_name: hidden_states,
     student_layer_name: bert_layer2, student_layer_output_name: hidden_states,
     loss: {loss_function: mse_with_mask, args: {}}, weight: 1.0}
  - {teacher_layer_name: bert_layer4, teacher_layer_output_name: attention,
     student_layer_name: bert_layer2, student_layer_output_name: attention,
     loss: {loss_function: attention_mse_with_mask, args: {}}, weight: 1.0}
  - {teacher_layer_name: pred_layer, teacher_layer_output_name: pooler_output,
     student_layer_name: pred_layer, student_layer_output_name: pooler_output,
     loss: {loss_function: cos, args: {}}, weight: 1.0}
"""


def native_yaml_of(note: str) -> dict:
    return yaml.safe_load(note.split("Equivalent native YAML (paste it in place of the old keys):", 1)[1])


def test_native_configs_are_left_alone():
    assert detect_and_convert({"teacher": {"path": "x"}, "matches": [{"teacher": "hidden.1"}]}) is None
    assert detect_and_convert(["not", "a", "mapping"]) is None


def test_textbrewer_file_converts_with_a_note_and_round_trips():
    native, note = detect_and_convert(yaml.safe_load(TEXTBREWER_YAML))
    assert native["teacher"] == {"path": "models/teacher"} and native["student"] == {"path": "models/student"}
    assert native["training"] == {"grad_accum": 2}
    assert native["output_dir"] == "saved_models"
    assert "distill_config" not in native and "train_config" not in native
    assert [(m["teacher"], m["student"], m["loss"], m["weight"]) for m in native["matches"]] == [
        ("hidden.0", "hidden.0", "hidden_mse", 1.0), ("hidden.2", "hidden.1", "hidden_mse", 1.0),
        ("hidden.4", "hidden.2", "hidden_mse", 2.0), ("attn.1", "attn.0", "attention_mse", 1.0),
        ("attn.3", "attn.1", "attention_mse", 1.0), ("hidden.4", "hidden.2", "cosine", 0.5)]
    assert all(set(m) == {"teacher", "student", "loss", "weight", "args", "projection"} for m in native["matches"])
    assert note.startswith("Converted a TextBrewer DistillationConfig to kdistill's native form.")
    assert "ckpt_frequency, device have no direct native form" in note
    shown = native_yaml_of(note)
    assert shown == {"matches": native["matches"], "training": {"grad_accum": 2}, "output_dir": "saved_models"}
    # the native YAML, loaded again, is a native config: detection leaves it alone
    assert detect_and_convert(shown) is None


def test_textbrewer_kd_and_hard_label_terms():
    matches, note = from_textbrewer_dict({"temperature": 8, "hard_label_weight": 0.5,
                                          "kd_loss_weight_scheduler": "linear_decay"})
    assert matches == [
        {"teacher": "logits", "student": "logits", "loss": "soft_ce",
         "weight": {"schedule": "linear", "start_value": 1.0, "end_value": 0.0, "start": 0, "end": None},
         "args": {"temperature": 8.0, "t2_scale": False}, "projection": "none"},
        {"teacher": "logits", "student": "logits", "loss": "hard_ce", "weight": 0.5, "args": {}, "projection": "none"},
    ]
    assert "TextBrewer's kd_ce_loss has no T²; kdistill's soft_ce multiplies by T² = 64 unless told not to" in note
    only_layers, note = from_textbrewer_dict({"intermediate_matches": [
        {"layer_T": 2, "layer_S": 1, "feature": "hidden", "loss": "hidden_mse", "weight": 1,
         "proj": ["relu", 16, 32]}]})
    assert [m["loss"] for m in only_layers] == ["hidden_mse"]
    assert only_layers[0]["projection"] == "kdistill.compat.textbrewer:relu_projection"
    assert "no logits KD term" in note
    assert "proj 'relu' -> the factory kdistill.compat.textbrewer:relu_projection" in note
    from kdistill.projection import make_projection
    from kdistill.registry import import_object

    module = make_projection(import_object(only_layers[0]["projection"]), 16, 32)
    assert [type(m).__name__ for m in module] == ["Linear", "ReLU"]


def test_top_level_intermediate_matches_and_conflicts():
    native, _ = detect_and_convert({"intermediate_matches": [
        {"layer_T": 2, "layer_S": 1, "feature": "hidden", "loss": "pkd", "weight": 1}], "data": {"train": "a.csv"}})
    assert native == {"data": {"train": "a.csv"}, "matches": [
        {"teacher": "hidden.2", "student": "hidden.1", "loss": "pkd", "weight": 1.0, "args": {}, "projection": "auto"}]}
    with pytest.raises(ConfigError, match="has native 'matches' and a TextBrewer configuration; keep one"):
        detect_and_convert({"intermediate_matches": [], "matches": []})
    with pytest.raises(ConfigError, match=r"intermediate_matches\[0\].loss: unknown loss 'hiden_mse'"):
        detect_and_convert({"intermediate_matches": [
            {"layer_T": 2, "layer_S": 1, "feature": "hidden", "loss": "hiden_mse", "weight": 1}]})


def test_knowledge_distillation_list_converts_by_the_article_adaptor_names():
    native, note = detect_and_convert(yaml.safe_load(KD_YAML))
    assert [(m["teacher"], m["student"], m["loss"], m["weight"]) for m in native["matches"]] == [
        ("hidden.0", "hidden.0", "hidden_mse", 1.0), ("hidden.4", "hidden.2", "hidden_mse", 1.0),
        ("attn.3", "attn.1", "attention_mse", 1.0), ("pooled", "pooled", "cosine", 0.5)]
    assert "cos (0.5 − 0.5·cos) -> cosine (1 − cos) at half the weight" in note
    assert native_yaml_of(note) == {"matches": native["matches"]}
    with pytest.raises(ConfigError) as error:
        from_knowledge_distillation_list([{
            "teacher_layer_name": "encoder_block_3", "teacher_layer_output_name": "out",
            "student_layer_name": "bert_layer1", "student_layer_output_name": "hidden_states",
            "loss": {"loss_function": "mse", "args": {}}, "weight": 1}])
    assert str(error.value).startswith("distill_config[0].teacher: cannot map 'encoder_block_3'/'out' to a model "
                                       "feature without the Python output adaptor.")


def _batch():
    ids, mask, types = padded_batch(4, 8, seed=3)
    return ids, mask, types


def _native_loss(native: dict, teacher, student) -> float:
    matches = [Match(**m) for m in native["matches"]]
    ids, mask, types = _batch()
    distiller = Distiller(teacher, student, matches)
    out = distiller({"input_ids": ids, "attention_mask": mask, "token_type_ids": types})
    return float(out.loss.detach())


def test_native_form_of_a_textbrewer_config_computes_the_same_loss_as_the_compat_distiller(tmp_path):
    teacher, student = bert(4, 32, seed=0, **NO_DROPOUT), bert(2, 32, seed=1, **NO_DROPOUT)
    raw = yaml.safe_load(TEXTBREWER_YAML)
    native, _ = detect_and_convert(raw)

    def adaptor(batch, model_outputs):
        last_hidden_state, pooler_output, hidden_states, attentions = model_outputs
        return {"inputs_mask": batch[1], "attention": attentions, "hidden": hidden_states}

    compat = GeneralDistiller(TrainingConfig(ckpt_frequency=0, device="cpu", output_dir=str(tmp_path)),
                              DistillationConfig.from_dict(raw["distill_config"]), teacher, student, adaptor, adaptor)
    with compat:
        history = compat.train(torch.optim.SGD(student.parameters(), lr=0.0),
                               DataLoader(TensorDataset(*_batch()), batch_size=4), num_epochs=1)
    assert _native_loss(native, teacher, student) == pytest.approx(history[0]["total_loss"], rel=1e-5)


def test_native_form_of_a_knowledge_distillation_config_computes_the_same_loss():
    teacher, student = bert(4, 32, seed=0, **NO_DROPOUT), bert(2, 32, seed=1, **NO_DROPOUT)
    raw = yaml.safe_load(KD_YAML)
    native, _ = detect_and_convert(raw)

    def output_adaptor(model_output):
        last_hidden_state, pooler_output, hidden_states, attentions = model_output
        output = {"embedding_layer": {"embedding": hidden_states[0]}}
        for idx in range(len(attentions)):
            output["bert_layer" + str(idx + 1)] = {"hidden_states": hidden_states[idx + 1],
                                                   "attention": attentions[idx]}
        output["pred_layer"] = {"pooler_output": pooler_output}
        return output

    def data_adaptor(device, batch):
        inputs = {"input_ids": batch[0], "attention_mask": batch[1], "token_type_ids": batch[2]}
        return inputs, inputs

    loss_model = MultiLayerBasedDistillationLoss(raw["distill_config"], output_adaptor, output_adaptor)
    distiller = KnowledgeDistiller(teacher, student, DataLoader(TensorDataset(*_batch()), batch_size=4), None, "cpu",
                                   loss_model, torch.optim.SGD(student.parameters(), lr=0.0), None, 1, data_adaptor,
                                   None)
    history = distiller.distillate()
    assert _native_loss(native, teacher, student) == pytest.approx(history[0]["loss"], rel=1e-5)


def test_converted_matches_fit_the_native_config_schema():
    """Every dict the import emits validates as the config loader's MatchSpec / TrainingSpec."""
    from kdistill.config import MatchSpec, TrainingSpec

    native, _ = detect_and_convert(yaml.safe_load(TEXTBREWER_YAML))
    kd_native, _ = detect_and_convert(yaml.safe_load(KD_YAML))
    extra, _ = from_textbrewer_dict({"temperature": 8, "hard_label_weight": 0.5, "kd_loss_weight_scheduler":
                                     "linear_growth", "intermediate_matches": [
                                         {"layer_T": [0, 2], "layer_S": [0, 1], "feature": "hidden", "loss": "nst",
                                          "weight": 1},
                                         {"layer_T": 2, "layer_S": 1, "feature": "hidden", "loss": "hidden_mse",
                                          "weight": 1, "proj": ["tanh", 16, 32]}]})
    for match in native["matches"] + kd_native["matches"] + extra:
        spec = MatchSpec(**match)
        assert (spec.teacher, spec.loss, spec.projection) == (match["teacher"], match["loss"], match["projection"])
    assert TrainingSpec(**native["training"]).grad_accum == 2


def _old_shape_config(tmp_path, teacher, old: str) -> "Path":  # noqa: F821
    from tests.test_run import DATA

    raw = yaml.safe_load(old)
    raw.update({"teacher": {"path": str(teacher)}, "student": {"from_teacher": {"layers": [0, 1]}},
                "data": {"train": str(DATA / "reviews_train.csv"), "test": str(DATA / "reviews_test.csv"),
                         "max_length": 16, "batch_size": 8},
                "training": {"max_steps": 2, "progress": False, "tensorboard": False, "lr": 1e-3}})
    raw.setdefault("train_config", {})["output_dir"] = str(tmp_path / "run")
    file = tmp_path / "old.yaml"
    file.write_text(yaml.safe_dump(raw))
    return file


@pytest.mark.parametrize("old", ["textbrewer", "knowledge_distillation"])
def test_validate_plan_and_run_accept_the_old_shapes_with_a_note(tmp_path, capsys, old):
    """The README's promise: YAML in TextBrewer's or KnowledgeDistillation's shape runs through the
    CLI, and every verb shows the native form; the resolved config is native."""
    import json

    from kdistill.cli import main

    from tests.test_run import TOKENIZER, _example_module

    teacher = tmp_path / "teacher"
    _example_module("tiny_models").tiny_bert(num_layers=4, hidden_size=32, num_heads=2).save_pretrained(teacher)

    for name in ("vocab.txt", "tokenizer_config.json"):
        (teacher / name).write_bytes((TOKENIZER / name).read_bytes())
    shape = TEXTBREWER_YAML if old == "textbrewer" else KD_YAML
    config = _old_shape_config(tmp_path, teacher, shape.replace("device: cuda", "device: cpu"))
    assert main(["validate", str(config)]) == 0
    note = capsys.readouterr().err
    expected = "TextBrewer DistillationConfig" if old == "textbrewer" else "KnowledgeDistillation"
    assert f"note: {config}: Converted a {expected}" in note and "Equivalent native YAML" in note
    assert main(["plan", str(config)]) == 0
    assert "Equivalent native YAML" in capsys.readouterr().err
    assert main(["run", str(config)]) == 0
    resolved = yaml.safe_load((tmp_path / "run" / "config.resolved.yaml").read_text())
    shown = native_yaml_of(note)["matches"]
    assert "distill_config" not in resolved and [{k: m[k] for k in shown[0]} for m in resolved["matches"]] == shown
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["stages"][0]["steps"] == 2
