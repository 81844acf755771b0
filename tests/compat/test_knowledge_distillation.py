"""kdistill.compat.knowledge_distillation: distill_config translation, loss values, the distiller loop."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from kdistill.compat.knowledge_distillation import (
    KnowledgeDistiller,
    MultiLayerBasedDistillationEvaluator,
    MultiLayerBasedDistillationLoss,
    translate_entry,
)
from kdistill.errors import ConfigError

from ._models import bert, padded_batch

NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


def entry(teacher, student, loss, weight=1.0, args=None):
    return {"teacher_layer_name": teacher[0], "teacher_layer_output_name": teacher[1],
            "student_layer_name": student[0], "student_layer_output_name": student[1],
            "loss": {"loss_function": loss, "args": args or {}}, "weight": weight}


ARTICLE_CONFIG = [
    entry(("embedding_layer", "embedding"), ("embedding_layer", "embedding"), "mse_with_mask"),
    entry(("bert_layer4", "hidden_states"), ("bert_layer2", "hidden_states"), "mse_with_mask"),
    entry(("bert_layer4", "attention"), ("bert_layer2", "attention"), "attention_mse_with_mask"),
    entry(("pred_layer", "pooler_output"), ("pred_layer", "pooler_output"), "mse"),
]


def output_adaptor(model_output):
    last_hidden_state, pooler_output, hidden_states, attentions = model_output
    output = {"embedding_layer": {"embedding": hidden_states[0]}}
    for idx in range(len(attentions)):
        output["bert_layer" + str(idx + 1)] = {"hidden_states": hidden_states[idx + 1], "attention": attentions[idx]}
    output["pred_layer"] = {"pooler_output": pooler_output}
    return output


def data_adaptor(device, batch_data):
    batch_data = tuple(t.to(device) for t in batch_data)
    inputs = {"input_ids": batch_data[0], "attention_mask": batch_data[1], "token_type_ids": batch_data[2]}
    return inputs, inputs


@pytest.mark.parametrize(
    ("loss_function", "args", "loss", "expected_args", "weight"),
    [
        ("mse", {}, "hidden_mse", {}, 2.0),
        ("mse_with_mask", {}, "hidden_mse", {}, 2.0),
        ("attention_mse_with_mask", {}, "attention_mse", {}, 2.0),
        ("cos", {}, "cosine", {}, 1.0),
        ("cross_entropy", {}, "soft_ce", {"temperature": 1.0, "t2_scale": False}, 2.0),
        ("kl", {"temperature": 2.0}, "kl", {"temperature": 2.0}, 2.0),
    ],
)
def test_each_entry_becomes_the_right_match(loss_function, args, loss, expected_args, weight):
    match = translate_entry(entry(("bert_layer4", "hidden_states"), ("bert_layer2", "hidden_states"),
                                  loss_function, weight=2.0, args=args))
    assert match.teacher == "module:bert_layer4/hidden_states"
    assert match.student == "module:bert_layer2/hidden_states"
    assert (match.loss, match.args, match.weight) == (loss, expected_args, weight)
    assert match.name == f"{loss_function}[bert_layer2.hidden_states<-bert_layer4.hidden_states]"


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({**entry(("a", "b"), ("a", "b"), "mse_with_mak")},
         "distill_config[0].loss.loss_function: unknown loss 'mse_with_mak'; did you mean 'mse_with_mask'?"),
        ({k: v for k, v in entry(("a", "b"), ("a", "b"), "mse").items() if k != "weight"},
         "distill_config[0]: missing weight."),
        ({**entry(("a", "b"), ("a", "b"), "mse"), "teacher_layer": "x"},
         "distill_config[0]: unknown key 'teacher_layer'"),
        ({**entry(("a", "b"), ("a", "b"), "mse"), "loss": "mse"},
         "distill_config[0].loss: expected {loss_function: name, args: {...}}"),
    ],
)
def test_bad_entries_name_their_path(bad, message):
    with pytest.raises(ConfigError) as error:
        MultiLayerBasedDistillationLoss([bad], output_adaptor, output_adaptor)
    assert message in str(error.value)


def original_formulas(teacher, student, mask):
    """The library's loss_functions.py formulas, written out: mse_with_mask, attention_mse_with_mask, mse."""
    def mse_with_mask(t, s):
        return float(((t - s) ** 2 * mask[..., None]).sum() / (mask.sum() * s.shape[-1]))

    def attention_mse_with_mask(t, s):
        heads_mask = mask[:, None, :].expand(-1, s.shape[1], -1)
        count = (heads_mask.sum(2) ** 2).sum()
        return float(((s - t) ** 2 * heads_mask[..., None] * heads_mask[:, :, None, :]).sum() / count)

    return (mse_with_mask(teacher["embedding_layer"]["embedding"], student["embedding_layer"]["embedding"])
            + mse_with_mask(teacher["bert_layer4"]["hidden_states"], student["bert_layer2"]["hidden_states"])
            + attention_mse_with_mask(teacher["bert_layer4"]["attention"], student["bert_layer2"]["attention"])
            + float(((teacher["pred_layer"]["pooler_output"] - student["pred_layer"]["pooler_output"]) ** 2).mean()))


def test_loss_values_equal_the_original_formulas_standalone_and_through_the_distiller(tmp_path):
    teacher = bert(4, 32, seed=0, **NO_DROPOUT).double()
    student = bert(2, 32, seed=1, **NO_DROPOUT).double()
    ids, mask, types = padded_batch(4, 8)
    inputs = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    loss_model = MultiLayerBasedDistillationLoss(ARTICLE_CONFIG, output_adaptor, output_adaptor)
    from kdistill.compat.legacy import LegacyCaller

    with torch.no_grad():
        teacher_out, student_out = LegacyCaller(teacher)(inputs), LegacyCaller(student)(inputs)
    expected = original_formulas(output_adaptor(teacher_out), output_adaptor(student_out), mask.double())
    standalone = float(loss_model(teacher_out, student_out, inputs, inputs))
    assert standalone == pytest.approx(expected, rel=1e-10)

    loader = DataLoader(TensorDataset(ids, mask, types), batch_size=4)
    distiller = KnowledgeDistiller(teacher, student, loader, None, "cpu", loss_model,
                                   torch.optim.SGD(student.parameters(), lr=0.0), None, 1, data_adaptor, None)
    history = distiller.distillate()
    assert history[0]["loss"] == pytest.approx(expected, rel=1e-10)
    assert [p.name for p in distiller.engine.plan] == [m.name for m in loss_model.matches]


def test_distillate_trains_evaluates_and_saves(tmp_path):
    teacher, student = bert(4, 32, seed=0), bert(2, 32, seed=1)
    ids, mask, types = padded_batch(24, 8)
    loader = DataLoader(TensorDataset(ids, mask, types), batch_size=4)
    loss_model = MultiLayerBasedDistillationLoss(ARTICLE_CONFIG, output_adaptor, output_adaptor)
    evaluator = MultiLayerBasedDistillationEvaluator(save_dir=str(tmp_path / "save"), save_step=4, print_loss_step=2)
    distiller = KnowledgeDistiller(teacher_model=teacher, student_model=student, train_dataloader=loader,
                                   dev_dataloader=None, train_data_adaptor=data_adaptor, dev_data_adaptor=None,
                                   device="cpu", loss_model=loss_model,
                                   optimizer=torch.optim.Adam(student.parameters(), lr=1e-3), evaluator=evaluator,
                                   num_epoch=2)
    history = distiller.distillate()
    assert [(h["epoch"], h["step"]) for h in history] == [(e, s) for e in range(2) for s in range(6)]
    assert sum(h["loss"] for h in history[-3:]) < sum(h["loss"] for h in history[:3])
    lines = (tmp_path / "save" / "LossValue.txt").read_text().splitlines()
    assert [line.split(",")[1].strip() for line in lines] == ["step:2", "step:4", "step:2", "step:4"]
    assert float(lines[-1].rsplit(":", 1)[1]) == pytest.approx(history[10]["loss"])
    assert sorted(p.name for p in (tmp_path / "save").iterdir()) == ["0-4", "1-4", "LossValue.txt"]
    assert (tmp_path / "save" / "1-4" / "model.safetensors").exists()


def test_width_mismatch_adds_a_projection_to_the_optimizer():
    teacher, student = bert(4, 32, seed=0), bert(2, 16, seed=1)
    ids, mask, types = padded_batch(8, 8)
    loader = DataLoader(TensorDataset(ids, mask, types), batch_size=4)
    config = [entry(("bert_layer4", "hidden_states"), ("bert_layer2", "hidden_states"), "mse_with_mask")]
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-3)
    distiller = KnowledgeDistiller(teacher, student, loader, None, "cpu",
                                   MultiLayerBasedDistillationLoss(config, output_adaptor, output_adaptor),
                                   optimizer, None, 1, data_adaptor, None)
    distiller.distillate()
    assert distiller.engine.plan[0].projection == "linear 16->32"
    assert len(optimizer.param_groups) == 2
    assert optimizer.param_groups[1]["params"][0] is distiller.engine.projections["m0"].weight


def test_a_loss_model_of_your_own_is_called_with_legacy_outputs():
    seen = []

    class MyLoss(nn.Module):
        def forward(self, teacher_output, student_output, teacher_input, student_input):
            last_hidden_state, pooler_output, hidden_states, attentions = student_output
            seen.append(len(attentions))
            return ((teacher_output[0] - last_hidden_state) ** 2).mean()

    teacher, student = bert(2, 32, seed=0), bert(2, 32, seed=1)
    ids, mask, types = padded_batch(8, 8)
    loader = DataLoader(TensorDataset(ids, mask, types), batch_size=4)
    distiller = KnowledgeDistiller(teacher, student, loader, None, "cpu", MyLoss(),
                                   torch.optim.Adam(student.parameters(), lr=1e-3), None, 1, data_adaptor, None)
    history = distiller.distillate()
    assert seen == [2, 2] and len(history) == 2 and distiller.engine is None
