"""kdistill.compat.textbrewer: config translation, loss semantics, and GeneralDistiller on tiny BERTs."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from kdistill.compat.textbrewer import (
    BasicDistiller,
    DistillationConfig,
    GeneralDistiller,
    IntermediateMatch,
    MultiTeacherDistiller,
    TrainingConfig,
    attention_ce,
    attention_mse_sum,
    checkpoint_steps,
    kd_match,
    textbrewer_kd,
    token_gram_mse,
    translate_match,
)
from kdistill.errors import ConfigError, FeatureError
from kdistill.losses import get_loss
from kdistill.schedules import Linear

from ._models import bert, padded_batch

MODULE = "kdistill.compat.textbrewer"


# ---------------------------------------------------------------------------------------------
# Translation of intermediate_matches entries


@pytest.mark.parametrize(
    ("entry", "teacher", "student", "loss", "args"),
    [
        ({"layer_T": 4, "layer_S": 1, "feature": "hidden", "loss": "hidden_mse", "weight": 2},
         "hidden.4", "hidden.1", "hidden_mse", {}),
        ({"layer_T": 3, "layer_S": 0, "feature": "attention", "loss": "attention_mse", "weight": 1},
         "attn.3", "attn.0", "attention_mse", {"kind": "scores"}),
        ({"layer_T": 12, "layer_S": 3, "feature": "hidden", "loss": "cos", "weight": 1},
         "hidden.12", "hidden.3", "cosine", {}),
        ({"layer_T": 5, "layer_S": 2, "feature": "hidden", "loss": "pkd", "weight": 1},
         "hidden.5", "hidden.2", "pkd", {}),
        ({"layer_T": 2, "layer_S": 1, "feature": "attention", "loss": "attention_ce", "weight": 1},
         "attn.2", "attn.1", f"{MODULE}:attention_ce", {}),
        ({"layer_T": 2, "layer_S": 1, "feature": "attention", "loss": "attention_mse_sum", "weight": 1},
         "attn.2", "attn.1", f"{MODULE}:attention_mse_sum", {}),
        ({"layer_T": 2, "layer_S": 1, "feature": "attention", "loss": "attention_ce_mean", "weight": 1},
         "attn.2", "attn.1", f"{MODULE}:attention_ce_mean", {}),
        ({"layer_T": [0, 4], "layer_S": [0, 2], "feature": "hidden", "loss": "fsp", "weight": 1},
         "hidden.0,hidden.4", "hidden.0,hidden.2", "fsp", {}),
        ({"layer_T": [1, 2], "layer_S": [0, 1], "feature": "hidden", "loss": "gram", "weight": 1},
         "hidden.1,hidden.2", "hidden.0,hidden.1", "fsp", {}),
        ({"layer_T": [4, 4], "layer_S": [2, 2], "feature": "hidden", "loss": "nst", "weight": 1},
         "hidden.4", "hidden.2", "mmd", {}),
        ({"layer_T": [0, 4], "layer_S": [0, 2], "feature": "hidden", "loss": "mmd", "weight": 1},
         "hidden.0,hidden.4", "hidden.0,hidden.2", f"{MODULE}:token_gram_mse", {}),
    ],
)
def test_each_intermediate_match_becomes_the_right_match(entry, teacher, student, loss, args):
    match = translate_match(entry, 3)
    assert (match.teacher, match.student, match.loss, match.args) == (teacher, student, loss, args)
    assert match.weight == float(entry["weight"])
    assert match.projection == "auto"
    assert callable(get_loss(match.loss))


def test_yaml_translation_uses_native_attention_and_linear_projection():
    entry = {"layer_T": 2, "layer_S": 1, "feature": "attention", "loss": "attention_ce", "weight": 1}
    assert translate_match(entry, python=False).loss == "attention_kl"
    entry = {"layer_T": 3, "layer_S": 0, "feature": "attention", "loss": "attention_mse", "weight": 1}
    assert translate_match(entry, python=False).args == {}
    entry = {"layer_T": 4, "layer_S": 1, "feature": "hidden", "loss": "hidden_mse", "weight": 1,
             "proj": ["tanh", 16, 32]}
    assert translate_match(entry, python=False).projection == f"{MODULE}:tanh_projection"
    entry["proj"] = ["linear", 16, 32]
    assert translate_match(entry, python=False).projection == "linear"


@pytest.mark.parametrize(("kind", "layers"), [("linear", (nn.Linear,)), ("relu", (nn.Linear, nn.ReLU)),
                                              ("tanh", (nn.Linear, nn.Tanh))])
def test_proj_becomes_a_projection_of_the_declared_kind(kind, layers):
    entry = {"layer_T": 4, "layer_S": 1, "feature": "hidden", "loss": "hidden_mse", "weight": 1,
             "proj": [kind, 16, 32]}
    match = translate_match(entry)
    torch.manual_seed(0)
    module = match.projection(16, 32)
    found = tuple(type(m) for m in (module if isinstance(module, nn.Sequential) else [module]))
    assert found == layers
    linear = module if isinstance(module, nn.Linear) else module[0]
    assert (linear.in_features, linear.out_features) == (16, 32)
    assert torch.count_nonzero(linear.bias) == 0
    assert 0.015 < float(linear.weight.detach().std()) < 0.025  # TextBrewer's N(0, 0.02) initialisation


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"layer_t": 4, "layer_S": 1, "feature": "hidden", "loss": "hidden_mse", "weight": 1},
         "intermediate_matches[0]: unknown field 'layer_t'; did you mean 'layer_T'?"),
        ({"layer_T": 4, "layer_S": 1, "feature": "hidden", "loss": "hiden_mse", "weight": 1},
         "intermediate_matches[0].loss: unknown loss 'hiden_mse'; did you mean 'hidden_mse'?"),
        ({"layer_T": 4, "layer_S": 1, "feature": "hiddens", "loss": "hidden_mse", "weight": 1},
         "intermediate_matches[0].feature: unknown feature 'hiddens'; did you mean 'hidden'?"),
        ({"layer_T": 4, "layer_S": 1, "feature": "hidden", "loss": "hidden_mse"},
         "intermediate_matches[0]: missing weight"),
        ({"layer_T": 4, "layer_S": 1, "feature": "hidden", "loss": "hidden_mse", "weight": 1, "proj": ["linear", 16]},
         "intermediate_matches[0].proj: expected [kind, dim_S, dim_T]"),
        ({"layer_T": 4, "layer_S": 1, "feature": "hidden", "loss": "fsp", "weight": 1},
         "loss 'fsp' compares two layers per model"),
    ],
)
def test_bad_entries_are_reported_with_their_path(entry, message):
    with pytest.raises(ConfigError) as error:
        DistillationConfig(intermediate_matches=[entry])
    assert message in str(error.value)


def test_config_fields_are_textbrewers():
    with pytest.raises(ConfigError, match="kd_loss_type: 'kl' is not one of ce, mse"):
        DistillationConfig(kd_loss_type="kl")
    with pytest.raises(ConfigError, match="unknown field 'ckpt_frequncy'; did you mean 'ckpt_frequency'"):
        TrainingConfig.from_dict({"ckpt_frequncy": 2})
    with pytest.raises(ConfigError, match="'flsw' needs its parameters"):
        DistillationConfig(temperature_scheduler="flsw")
    with pytest.raises(ConfigError, match="data_parallel: not supported"):
        TrainingConfig(data_parallel=True)
    config = DistillationConfig.from_dict({"temperature": 8, "intermediate_matches": [
        {"layer_T": 4, "layer_S": 1, "feature": "hidden", "loss": "hidden_mse", "weight": 1}]})
    assert isinstance(config.intermediate_matches[0], IntermediateMatch)
    assert config.to_dict()["intermediate_matches"] == [
        {"layer_T": 4, "layer_S": 1, "feature": "hidden", "loss": "hidden_mse", "weight": 1}]


def test_cuda_without_a_gpu_falls_back_to_the_cpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.warns(UserWarning, match="no CUDA device is available; training on the CPU"):
        assert TrainingConfig(device="cuda").resolved_device() == torch.device("cpu")


# ---------------------------------------------------------------------------------------------
# Loss semantics, against TextBrewer's formulas written out naively in float64


def textbrewer_kd_ce(student, teacher, temperature):
    total = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        t_exp = [math.exp(v / temperature) for v in t_row]
        s_log_norm = math.log(sum(math.exp(v / temperature) for v in s_row))
        total -= sum(te / sum(t_exp) * (s / temperature - s_log_norm) for te, s in zip(t_exp, s_row))
    return total / len(student)


def test_kd_ce_has_no_t_squared_like_textbrewer():
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(6, 5, generator=generator, dtype=torch.float64), torch.randn(
        6, 5, generator=generator, dtype=torch.float64)
    match = kd_match(DistillationConfig(temperature=4, kd_loss_type="ce"))
    assert match.loss == "soft_ce" and match.args == {"temperature": 4.0, "t2_scale": False}
    ours = float(get_loss(match.loss)(student, teacher, **match.args))
    expected = textbrewer_kd_ce(student, teacher, 4.0)
    assert ours == pytest.approx(expected, rel=1e-12)
    native = float(get_loss("soft_ce")(student, teacher, temperature=4.0))
    assert native == pytest.approx(16.0 * expected, rel=1e-12)  # kdistill's own soft_ce carries T²


def test_kd_mse_and_weight_schedulers():
    match = kd_match(DistillationConfig(temperature=2, kd_loss_type="mse", kd_loss_weight_scheduler="linear_decay"))
    assert match.loss == "logits_mse" and match.args == {"temperature": 2.0}
    assert match.weight == Linear(1.0, 0.0)
    student, teacher = torch.tensor([[1.0, 3.0]]), torch.tensor([[0.0, 0.0]])
    assert float(get_loss("logits_mse")(student, teacher, temperature=2.0)) == pytest.approx((0.25 + 2.25) / 2)


def test_dynamic_kd_options_use_the_compat_loss():
    match = kd_match(DistillationConfig(temperature=2, temperature_scheduler=["cwsm", 1.0], probability_shift=True))
    assert match.loss == f"{MODULE}:textbrewer_kd"
    assert match.args["temperature_scheduler"] == ["cwsm", 1.0] and match.args["probability_shift"] is True
    teacher = torch.tensor([[3.0, 1.0, 0.0]])
    student = torch.tensor([[0.0, 0.0, 0.0]])
    from kdistill.features import Features

    # probability_shift moves the teacher's top logit onto the label (class 2), so the target puts
    # e^{3/T}/(e^{3/T}+e^{1/T}+1) on class 2; against a uniform student the CE is log 3 either way.
    features = Features(extra={"labels": torch.tensor([2])})
    value = textbrewer_kd(student, teacher, temperature=2.0, probability_shift=True, student_features=features)
    assert float(value) == pytest.approx(math.log(3.0))
    shifted = textbrewer_kd(torch.tensor([[0.0, 0.0, 5.0]]), teacher, temperature=1.0, probability_shift=True,
                            student_features=features)
    plain = textbrewer_kd(torch.tensor([[0.0, 0.0, 5.0]]), teacher, temperature=1.0)
    assert float(shifted) < float(plain)
    with pytest.raises(FeatureError, match="needs the student adaptor to return 'labels'"):
        textbrewer_kd(student, teacher, temperature=1.0, probability_shift=True)


def _mask():
    return torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.float64)


def _probs(seed):
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(2, 3, 4, 4, generator=generator, dtype=torch.float64)
    return scores.masked_fill(_mask()[:, None, None, :] == 0, -1e4).softmax(-1)


def test_attention_mse_matches_textbrewer_with_a_mask():
    student, teacher, mask = _probs(1), _probs(2), _mask()
    match = translate_match({"layer_T": 1, "layer_S": 1, "feature": "attention", "loss": "attention_mse", "weight": 1})
    ours = float(get_loss(match.loss)(student, teacher, mask=mask, **match.args))
    total, count = 0.0, 0
    for b in range(2):
        n = int(mask[b].sum())
        for h in range(3):
            for q in range(n):
                for k in range(n):
                    total += float(student[b, h, q, k] - teacher[b, h, q, k]) ** 2
        count += 3 * n * n
    assert ours == pytest.approx(total / count, rel=1e-12)
    # on probabilities without a mask TextBrewer's "≤ −1e-3 is masked" rule changes nothing: a plain mean
    unmasked = float(get_loss(match.loss)(student, teacher, **match.args))
    assert unmasked == pytest.approx(float((student - teacher).square().mean()), rel=1e-12)


def test_attention_mse_sum_and_attention_ce():
    student, teacher, mask = _probs(3), _probs(4), _mask()
    summed = float(attention_mse_sum(student, teacher, mask=mask))
    difference = (student.sum(1) - teacher.sum(1)).square()
    valid = mask[:, :, None] * mask[:, None, :]
    assert summed == pytest.approx(float((difference * valid).sum() / valid.sum()), rel=1e-12)
    ce = float(attention_ce(student, teacher, mask=mask))
    kl = 0.0
    for b in range(2):
        n = int(mask[b].sum())
        for h in range(3):
            for q in range(n):
                kl += sum(float(teacher[b, h, q, k] * (teacher[b, h, q, k].log() - student[b, h, q, k].log()))
                          for k in range(n))
    assert ce == pytest.approx(kl / (3 * 7), rel=1e-9)
    with pytest.raises(FeatureError, match="pre-softmax scores"):
        attention_ce(student.log(), teacher.log(), mask=mask)


def test_token_gram_mse_normalises_by_width_with_and_without_mask():
    generator = torch.Generator().manual_seed(5)
    s1, s2 = (torch.randn(2, 4, 6, generator=generator, dtype=torch.float64) for _ in range(2))
    t1, t2 = (torch.randn(2, 4, 10, generator=generator, dtype=torch.float64) for _ in range(2))
    mask = _mask()
    value = float(token_gram_mse((s1, s2), (t1, t2), mask=mask))
    total, count = 0.0, 0
    for b in range(2):
        n = int(mask[b].sum())
        for i in range(n):
            for j in range(n):
                gs = float(s1[b, i] @ s2[b, j]) / 6
                gt = float(t1[b, i] @ t2[b, j]) / 10
                total += (gs - gt) ** 2
                count += 1
    assert value == pytest.approx(total / count, rel=1e-12)
    full = float(token_gram_mse((s1, s2), (t1, t2)))
    assert full == pytest.approx(float(token_gram_mse((s1, s2), (t1, t2), mask=torch.ones(2, 4))), rel=1e-12)


def test_checkpoints_at_most_ckpt_frequency_per_epoch():
    assert checkpoint_steps(100, 10) == set(range(10, 101, 10))
    assert checkpoint_steps(7, 2) == {4, 7}
    assert checkpoint_steps(5, 10) == {1, 2, 3, 4, 5}
    assert checkpoint_steps(20, 1) == {20}
    assert checkpoint_steps(20, 0) == set()


# ---------------------------------------------------------------------------------------------
# The distillers on tiny models


def _loader(batch_size=4, count=16, seed=0):
    ids, mask, types = padded_batch(count, 8, seed=seed)
    return DataLoader(TensorDataset(ids, mask, types), batch_size=batch_size)


def tuple_adaptor(batch, model_outputs):
    last_hidden_state, pooler_output, hidden_states, attentions = model_outputs
    return {"inputs_mask": batch[1], "attention": attentions, "hidden": list(hidden_states) + [pooler_output]}


def test_general_distiller_trains_with_projections_checkpoints_and_logs(tmp_path):
    teacher, student = bert(4, 32, seed=0), bert(2, 16, seed=1)
    train_config = TrainingConfig(ckpt_frequency=2, output_dir=str(tmp_path / "out"), log_dir=str(tmp_path / "logs"),
                                  device="cpu")
    distill_config = DistillationConfig(intermediate_matches=[
        {"layer_T": 0, "layer_S": 0, "feature": "hidden", "loss": "hidden_mse", "weight": 1,
         "proj": ["linear", 16, 32]},
        {"layer_T": 4, "layer_S": 2, "feature": "hidden", "loss": "hidden_mse", "weight": 2,
         "proj": ["linear", 16, 32, {"lr": 0.05}]},
        {"layer_T": 3, "layer_S": 1, "feature": "attention", "loss": "attention_mse", "weight": 1},
        {"layer_T": [0, 4], "layer_S": [0, 2], "feature": "hidden", "loss": "fsp", "weight": 1,
         "proj": ["linear", 16, 32]},
    ])
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-3)
    distiller = GeneralDistiller(train_config, distill_config, teacher, student, tuple_adaptor, tuple_adaptor)
    with distiller:
        history = distiller.train(optimizer, _loader(), num_epochs=3)
    assert len(history) == 12 and [h["step"] for h in history] == list(range(1, 13))
    losses = [h["total_loss"] for h in history]
    assert sum(losses[-3:]) < sum(losses[:3])
    names = ["hidden_hidden_mse_0_0", "hidden_hidden_mse_2_4", "attention_attention_mse_1_3", "hidden_fsp_0-2_0-4"]
    assert [p.name for p in distiller.engine.plan] == names
    assert history[0]["total_loss"] == pytest.approx(sum(history[0][n] for n in names), rel=1e-6)
    # projections: three (one per declared proj, the fsp one projects both layers), in the user's optimizer
    assert sorted(distiller.engine.projections) == ["m0", "m1", "pair3"]
    assert len(optimizer.param_groups) == 4
    assert sorted(g["lr"] for g in optimizer.param_groups) == [1e-3, 1e-3, 1e-3, 0.05]
    # at most ckpt_frequency (2) checkpoints per epoch: steps 2 and 4 of each 4-step epoch
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    saved = sorted(int(f[2:].split(".")[0]) for f in files if f.endswith(".safetensors") and "projections" not in f)
    assert saved == [2, 4, 6, 8, 10, 12]
    assert len([f for f in files if f.endswith(".projections.safetensors")]) == 6
    from safetensors.torch import load_file

    state = load_file(str(tmp_path / "out" / "gs12.safetensors"))
    assert torch.equal(state["embeddings.word_embeddings.weight"], student.embeddings.word_embeddings.weight)
    records = [json.loads(line) for line in (tmp_path / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 13))
    assert records[-1]["total_loss"] == pytest.approx(losses[-1])


def test_declared_projection_widths_are_checked(tmp_path):
    config = DistillationConfig(intermediate_matches=[
        {"layer_T": 2, "layer_S": 2, "feature": "hidden", "loss": "hidden_mse", "weight": 1,
         "proj": ["linear", 16, 64]}])
    distiller = GeneralDistiller(TrainingConfig(output_dir=str(tmp_path), device="cpu"), config, bert(2, 32),
                                 bert(2, 16, seed=1), tuple_adaptor, tuple_adaptor)
    with pytest.raises(ConfigError) as error, distiller:
        distiller.train(torch.optim.SGD(distiller.model_S.parameters(), lr=0.1), _loader(), num_epochs=1)
    assert str(error.value) == ("intermediate_matches[0].proj: declares 16 -> 64 (student width -> teacher width), "
                                "but the features are 16 -> 32 wide ('hidden.2' -> 'hidden.2').")


def test_layer_indices_are_checked_against_the_adaptor_lists(tmp_path):
    config = DistillationConfig(intermediate_matches=[
        {"layer_T": 6, "layer_S": 1, "feature": "hidden", "loss": "hidden_mse", "weight": 1}])
    distiller = GeneralDistiller(TrainingConfig(output_dir=str(tmp_path), device="cpu"), config, bert(4, 32),
                                 bert(2, 32, seed=1), tuple_adaptor, tuple_adaptor)
    with pytest.raises(ConfigError) as error, distiller:
        distiller.train(torch.optim.SGD(distiller.model_S.parameters(), lr=0.1), _loader(), num_epochs=1)
    assert str(error.value).startswith("intermediate_matches[0].layer_T: 6 is out of range: adaptor_T returned 6 "
                                       "'hidden' tensors (indices 0–5).")


def _head_batches(count=12, seed=0):
    ids, mask, _ = padded_batch(count, 8, seed=seed)
    labels = torch.arange(count) % 3
    return DataLoader(TensorDataset(ids, mask, labels), batch_size=4)


def to_dict_batch(batch):
    return {"input_ids": batch[0], "attention_mask": batch[1], "labels": batch[2]}


def logits_adaptor(batch, model_outputs):
    return {"logits": model_outputs.logits, "losses": model_outputs.loss, "inputs_mask": batch["attention_mask"]}


def test_kd_term_through_the_distiller_has_no_t_squared(tmp_path):
    no_dropout = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    teacher = bert(2, 32, head=True, seed=0, **no_dropout)
    student = bert(2, 16, head=True, seed=1, **no_dropout)
    config = DistillationConfig(temperature=3, hard_label_weight=0.5)
    distiller = GeneralDistiller(TrainingConfig(ckpt_frequency=0, device="cpu", output_dir=str(tmp_path)), config,
                                 teacher, student, logits_adaptor, logits_adaptor)
    loader = _head_batches()
    first = to_dict_batch(next(iter(loader)))
    with torch.no_grad():
        teacher_logits = teacher(**first).logits.double()
        student_out = student(**first)
    expected_kd = textbrewer_kd_ce(student_out.logits.double(), teacher_logits, 3.0)
    with distiller:
        history = distiller.train(torch.optim.SGD(student.parameters(), lr=0.0), loader, num_epochs=1,
                                  batch_postprocessor=to_dict_batch)
    assert history[0]["kd_loss"] == pytest.approx(expected_kd, rel=1e-5)
    assert history[0]["hard_label"] == pytest.approx(0.5 * float(student_out.loss), rel=1e-5)
    assert history[0]["total_loss"] == pytest.approx(expected_kd + 0.5 * float(student_out.loss), rel=1e-5)


def test_basic_distiller_caches_teacher_logits(tmp_path):
    teacher, student = bert(2, 32, head=True, seed=0), bert(2, 16, head=True, seed=1)
    calls = []
    handle = teacher.register_forward_hook(lambda *_: calls.append(1))
    config = DistillationConfig(temperature=2, is_caching_logits=True)
    distiller = BasicDistiller(TrainingConfig(ckpt_frequency=0, device="cpu", output_dir=str(tmp_path)), config,
                               teacher, student, logits_adaptor, logits_adaptor)
    with distiller:
        history = distiller.train(torch.optim.SGD(student.parameters(), lr=0.05), _head_batches(), num_epochs=3,
                                  batch_postprocessor=to_dict_batch)
    handle.remove()
    assert len(history) == 9
    assert len(calls) == 3 + 2  # three batches once, plus the first-batch probe and shape check
    with pytest.raises(ConfigError, match="cannot be combined with train"):
        distiller.train(torch.optim.SGD(student.parameters(), lr=0.05), _head_batches(), num_steps=3)


def test_multi_teacher_distiller_uses_the_ensemble(tmp_path):
    no_dropout = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    teachers = [bert(2, 32, head=True, seed=0, **no_dropout), bert(2, 32, head=True, seed=2, **no_dropout)]
    student = bert(2, 16, head=True, seed=1, **no_dropout)
    distiller = MultiTeacherDistiller(TrainingConfig(ckpt_frequency=0, device="cpu", output_dir=str(tmp_path)),
                                      DistillationConfig(temperature=0.05), teachers, student, logits_adaptor,
                                      logits_adaptor)
    loader = _head_batches()
    first = to_dict_batch(next(iter(loader)))
    with torch.no_grad():
        probs = [(t(**first).logits.double() / 0.05).softmax(-1) for t in teachers]
        log_student = (student(**first).logits.double() / 0.05).log_softmax(-1)
    # kdistill's ensemble averages the softened distributions (TextBrewer averaged logits); CE without T²
    expected = float(-(0.5 * (probs[0] + probs[1]) * log_student).sum(-1).mean())
    with distiller:
        history = distiller.train(torch.optim.SGD(student.parameters(), lr=0.0), loader, num_epochs=1,
                                  batch_postprocessor=to_dict_batch)
    assert distiller.engine.bound[0].match.teacher_name == "ensemble"
    assert sorted(distiller.engine.teachers) == ["teacher_0", "teacher_1"]
    assert history[0]["kd_loss"] == pytest.approx(expected, rel=1e-4)


def test_num_steps_mode_saves_every_ckpt_steps_and_calls_back(tmp_path):
    teacher, student = bert(2, 32, seed=0), bert(2, 32, seed=1)
    config = DistillationConfig(intermediate_matches=[
        {"layer_T": 2, "layer_S": 2, "feature": "hidden", "loss": "cos", "weight": 1}])
    seen = []
    distiller = GeneralDistiller(TrainingConfig(ckpt_steps=3, output_dir=str(tmp_path), device="cpu",
                                                gradient_accumulation_steps=2),
                                 config, teacher, student, tuple_adaptor, tuple_adaptor)
    with distiller:
        history = distiller.train(torch.optim.Adam(student.parameters(), lr=1e-3), _loader(count=8), num_steps=7,
                                  callback=lambda model, step: seen.append((model is student, step)))
    assert len(history) == 7
    assert seen == [(True, 3), (True, 6), (True, 7)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gs3.safetensors", "gs6.safetensors", "gs7.safetensors"]
