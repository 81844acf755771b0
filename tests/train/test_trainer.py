"""The Trainer: accumulation, freezing, LR schedule, metrics, TensorBoard, evaluation, early stopping,
non-finite losses, configuration errors. (Whole runs and resume: tests/e2e; checkpoints: test_checkpoint.)"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from kdistill import Callback, Match, TrainConfig, Trainer
from kdistill.errors import ConfigError, NonFiniteLossError
from kdistill.train import read_metrics
from kdistill.train.optim import WarmupDecay, make_adamw, parameter_groups
from tiny_engine import (
    TokenDataset,
    bert_distiller,
    quiet_config,
    student_params,
    token_loader,
)


LOGIT_MATCHES = [Match("logits", loss="kl", args={"temperature": 2.0})]


class Recorder(Callback):
    def __init__(self):
        self.steps, self.evaluations, self.epochs, self.ended = [], [], [], None

    def on_step(self, state):
        self.steps.append(state)

    def on_evaluate(self, state):
        self.evaluations.append(state)

    def on_epoch_end(self, state):
        self.epochs.append(state.epoch)

    def on_train_end(self, state):
        self.ended = state


# ------------------------------------------------------------------ accumulation


def test_gradient_accumulation_matches_the_larger_batch(tmp_path):
    """accum 2 × batch 4 ≈ batch 8: same data order, per-example losses, no dropout."""
    results = {}
    for name, batch_size, accum in [("big", 8, 1), ("accumulated", 4, 2)]:
        distiller = bert_distiller(dropout=0.0, matches=LOGIT_MATCHES, hard_label_weight=0.5)
        config = quiet_config(epochs=1, grad_accum=accum, save_every=3, max_grad_norm=None, warmup=1)
        result = Trainer(distiller, token_loader(batch_size, size=24, shuffle=False), config=config,
                         output_dir=tmp_path / name).train()
        assert result.steps == 3
        optimizer = torch.load(tmp_path / name / "checkpoints" / "step-0000003" / "optimizer.pt", weights_only=True)
        results[name] = (student_params(distiller), optimizer["optimizer"]["state"], result)
    big, accumulated = results["big"], results["accumulated"]
    for name, value in big[0].items():
        torch.testing.assert_close(accumulated[0][name], value, atol=2e-6, rtol=1e-4, msg=name)
    # Adam's moments hold the gradients' scale, which the parameters alone would not show.
    for index, state in big[1].items():
        torch.testing.assert_close(accumulated[1][index]["exp_avg"], state["exp_avg"], atol=1e-7, rtol=1e-3)
        torch.testing.assert_close(accumulated[1][index]["exp_avg_sq"], state["exp_avg_sq"], atol=1e-10, rtol=1e-3)
    # The logged loss of an accumulated step is the mean over its micro-batches.
    big_losses = [r["loss"] for r in big[2].history if r["kind"] == "train"]
    accumulated_losses = [r["loss"] for r in accumulated[2].history if r["kind"] == "train"]
    assert accumulated_losses == pytest.approx(big_losses, rel=1e-4)


def test_every_epoch_ends_with_evaluation_and_a_checkpoint_the_last_one_too(tmp_path):
    distiller = bert_distiller(matches=LOGIT_MATCHES)
    recorder = Recorder()
    # 20 examples / 4 = 5 batches, accum 2: steps after batches 2, 4 and 5 (the epoch's end); twice.
    result = Trainer(distiller, token_loader(4, size=20), config=quiet_config(epochs=2, grad_accum=2),
                     eval_data=[], metric_fn=lambda *_: {"accuracy": 0.5}, callbacks=[recorder],
                     output_dir=tmp_path).train()
    assert result.steps == 6 and [s.step for s in recorder.steps] == [1, 2, 3, 4, 5, 6]
    assert [s.epoch for s in recorder.steps] == [0, 0, 0, 1, 1, 1]
    assert recorder.epochs == [1, 2]
    assert [s.step for s in recorder.evaluations] == [3, 6]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-0000003", "step-0000006"]


def test_a_plain_shuffling_loader_gets_a_new_order_every_epoch_even_without_dropout():
    fetched = []

    class Recording(TokenDataset):
        def __getitem__(self, index):
            fetched.append(index)
            return super().__getitem__(index)

    distiller = bert_distiller(dropout=0.0, matches=LOGIT_MATCHES)  # the model draws no random numbers
    loader = DataLoader(Recording(24), batch_size=4, shuffle=True)
    Trainer(distiller, loader, config=quiet_config(epochs=3)).train()
    epochs = [fetched[-72:][i * 24:(i + 1) * 24] for i in range(3)]
    assert all(sorted(order) == list(range(24)) for order in epochs)
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2] and epochs[0] != epochs[2]


# ------------------------------------------------------------------ freezing


def test_frozen_parameters_do_not_change():
    distiller = bert_distiller()
    distiller.prepare(next(iter(token_loader(4))))  # the projection exists from here on
    before = student_params(distiller)
    config = quiet_config(max_steps=3, freeze=["*word_embeddings*", "bert.encoder.layer.0.*"], lr=1e-2)
    Trainer(distiller, token_loader(4), config=config).train()
    after = student_params(distiller)
    frozen = [n for n in before if "word_embeddings" in n or n.startswith("student.bert.encoder.layer.0.")]
    assert "student.bert.embeddings.word_embeddings.weight" in frozen and len(frozen) > 5
    for name in frozen:
        assert torch.equal(before[name], after[name]), name
        assert not dict(distiller.named_parameters())[name].requires_grad
    changed = [n for n in before if n not in frozen and not torch.equal(before[n], after[n])]
    assert "student.bert.encoder.layer.1.output.dense.weight" in changed
    assert "projections.m1.weight" in changed


def test_unpad_trains_the_same_student_and_leaves_plain_models():
    """training.unpad: the linears of student and teacher skip padding rows, the steps stay the same."""
    runs = []
    for unpad in (False, True):
        distiller = bert_distiller(dropout=0.0)
        Trainer(distiller, token_loader(4), config=quiet_config(max_steps=4, unpad=unpad)).train()
        runs.append(student_params(distiller))
        models = [distiller.student, *distiller.teachers.values()]
        assert all("forward" not in m.__dict__ for model in models for m in model.modules())
    plain, unpadded = runs
    for name in plain:
        torch.testing.assert_close(unpadded[name], plain[name], rtol=1e-4, atol=1e-6, msg=name)


def test_unpad_needs_transformer_blocks():
    from tiny_engine import SmallCNN

    from kdistill import Distiller

    distiller = Distiller(SmallCNN(seed=0), SmallCNN((8, 16, 16), seed=1), [Match("logits", loss="kl")])
    images = [{"pixel_values": torch.randn(3, 8, 8), "labels": torch.tensor(1)} for _ in range(4)]
    with pytest.raises(ConfigError, match="training.unpad: true needs transformer blocks"):
        Trainer(distiller, DataLoader(images, batch_size=2), config=quiet_config(max_steps=1, unpad=True)).train()


def test_a_freeze_pattern_matching_nothing_is_a_config_error():
    distiller = bert_distiller()
    config = quiet_config(max_steps=1, freeze=["*word_embeddings*", "*wrod_embeddings*"])
    with pytest.raises(ConfigError, match=r"training.freeze\[1\]: '\*wrod_embeddings\*' matches no parameter"):
        Trainer(distiller, token_loader(4), config=config).train()


def test_no_decay_groups_and_projection_learning_rate():
    distiller = bert_distiller()
    distiller.prepare(next(iter(token_loader(4))))
    groups = parameter_groups(distiller, lr=1e-3, weight_decay=0.1, projection_lr=5e-3)
    names = {id(p): n for n, p in distiller.named_parameters()}
    by_name = {names[id(p)]: (g["weight_decay"], g["lr"]) for g in groups for p in g["params"]}
    assert by_name["student.bert.encoder.layer.0.attention.self.query.weight"] == (0.1, 1e-3)
    assert by_name["student.bert.encoder.layer.0.attention.self.query.bias"] == (0.0, 1e-3)
    assert by_name["student.bert.embeddings.LayerNorm.weight"] == (0.0, 1e-3)
    assert by_name["projections.m1.weight"] == (0.1, 5e-3)
    assert by_name["projections.m1.bias"] == (0.0, 5e-3)
    assert len(by_name) == len(list(distiller.parameters()))


def test_adamw_is_fused_on_the_cpu_and_agrees_with_the_default_update():
    torch.manual_seed(0)
    weights = [torch.randn(50, 8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)]
    grads = [[torch.randn_like(w) for w in weights] for _ in range(5)]
    results = []
    for fused in (True, False):
        params = [torch.nn.Parameter(w.clone()) for w in weights]
        groups = [{"params": params[:1], "weight_decay": 0.1, "lr": 1e-2}, {"params": params[1:], "weight_decay": 0.0, "lr": 1e-2}]
        optimizer = make_adamw(groups) if fused else torch.optim.AdamW(groups, foreach=False)
        assert optimizer.defaults["fused"] is (True if fused else None)
        for step in grads:
            for p, g in zip(params, step):
                p.grad = g.clone()
            optimizer.step()
        results.append([p.detach() for p in params])
    for start, fused, plain in zip(weights, *results):
        assert not torch.equal(fused, start)
        assert torch.allclose(fused, plain, rtol=0, atol=1e-12)


def test_adamw_falls_back_to_the_default_update_where_fused_is_unsupported():
    params = [torch.nn.Parameter(torch.zeros(3, device="meta"))]
    assert make_adamw([{"params": params, "lr": 1e-3, "weight_decay": 0.0}]).defaults["fused"] is None


def test_the_trainer_steps_a_fused_adamw(monkeypatch):
    seen = []
    original = torch.optim.AdamW.__init__

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("fused"))
        original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "__init__", spy)
    Trainer(bert_distiller(), token_loader(4), config=quiet_config(max_steps=1)).train()
    assert seen == [True]


# ------------------------------------------------------------------ learning rate


def expected_lr(step: int, *, lr: float, warmup: int, total: int, kind: str = "linear") -> float:
    """The LR used for 0-based optimiser step ``step``: linear warm-up, then linear/cosine decay to 0."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / (total - warmup)
    return lr * (1 - progress if kind == "linear" else 0.5 * (1 + math.cos(math.pi * progress)))


@pytest.mark.parametrize("kind, warmup, warmup_steps", [("linear", 4, 4), ("cosine", 0.2, 2)])
def test_warmup_then_decay_learning_rates(kind, warmup, warmup_steps):
    distiller = bert_distiller(matches=LOGIT_MATCHES)
    recorder = Recorder()
    config = quiet_config(max_steps=10, lr=1e-2, warmup=warmup, lr_schedule=kind)
    Trainer(distiller, token_loader(4), config=config, callbacks=[recorder]).train()
    # TrainState.lr after step s is the LR the next step (index s) will use.
    observed = [state.lr for state in recorder.steps]
    expected = [expected_lr(s, lr=1e-2, warmup=warmup_steps, total=10, kind=kind) for s in range(1, 11)]
    assert observed == pytest.approx(expected, abs=1e-12)
    assert observed[-1] == pytest.approx(0.0, abs=1e-12)
    assert max(observed) == pytest.approx(1e-2)


def test_warmup_decay_multiplier_values():
    schedule = WarmupDecay(warmup_steps=2, total_steps=6)
    assert [schedule(s) for s in range(7)] == pytest.approx([0.5, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0])
    assert WarmupDecay(0, 4, "constant")(3) == 1.0
    with pytest.raises(ConfigError, match="training.lr_schedule: 'step' is not one of linear, cosine, constant"):
        Trainer(bert_distiller(), token_loader(4), config=quiet_config(max_steps=1, lr_schedule="step")).train()


# ------------------------------------------------------------------ metrics and TensorBoard


def test_metrics_jsonl_is_written_and_readable(tmp_path):
    distiller = bert_distiller()
    config = quiet_config(max_steps=6, log_every=2, eval_every=3)
    metric_calls = []

    def metric_fn(student, data, device):
        metric_calls.append(student)
        return {"accuracy": 0.5, "agreement": 0.25}

    Trainer(distiller, token_loader(4), config=config, eval_data=[], metric_fn=metric_fn, output_dir=tmp_path).train()
    path = tmp_path / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert records == read_metrics(path)
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in train] == [2, 4, 6]
    assert [r["step"] for r in evals] == [3, 6]
    for record in train:
        assert set(record) == {"kind", "step", "time", "loss", "lr", "epoch", *distiller.part_names()}
        assert record["loss"] == pytest.approx(sum(record[p] for p in distiller.part_names()), rel=1e-5)
    assert evals[0]["accuracy"] == 0.5 and evals[0]["agreement"] == 0.25
    assert all(student is distiller.student for student in metric_calls)
    # A torn last line (a crash mid-write) is skipped, not fatal.
    with open(path, "a") as handle:
        handle.write('{"kind": "train", "st')
    assert read_metrics(path) == records


def test_tensorboard_events_are_written(tmp_path):
    pytest.importorskip("tensorboard")
    config = quiet_config(max_steps=2, tensorboard=True)
    Trainer(bert_distiller(), token_loader(4), config=config, output_dir=tmp_path).train()
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0
    assert b"train/loss" in events[0].read_bytes()
    Trainer(bert_distiller(), token_loader(4), config=quiet_config(max_steps=1), output_dir=tmp_path / "off").train()
    assert not (tmp_path / "off" / "tensorboard").exists()


# ------------------------------------------------------------------ evaluation, best, early stopping


def test_eval_keeps_the_best_student_and_stops_early(tmp_path):
    scores = iter([0.5, 0.7, 0.6, 0.65, 0.99, 0.99])
    snapshots = {}
    distiller = bert_distiller()
    recorder = Recorder()

    def metric_fn(student, data, device):
        snapshots[len(snapshots) + 1] = {k: v.detach().clone() for k, v in student.state_dict().items()}
        return {"accuracy": next(scores)}

    config = quiet_config(max_steps=40, eval_every=2, early_stop_patience=2)
    result = Trainer(distiller, token_loader(4), config=config, eval_data=[], metric_fn=metric_fn,
                     callbacks=[recorder], output_dir=tmp_path).train()
    # evals at steps 2, 4, 6, 8: best at 4; 6 and 8 do not improve -> stop after step 8.
    assert result.steps == 8
    assert result.best_metric == 0.7 and result.best_step == 4
    assert result.final_metrics == {"accuracy": 0.65}
    assert [s.metrics["accuracy"] for s in recorder.evaluations] == [0.5, 0.7, 0.6, 0.65]
    assert recorder.ended.step == 8
    best = load_file(str(tmp_path / "best" / "student.safetensors"))
    assert best.keys() == snapshots[2].keys()
    assert all(torch.equal(best[k], snapshots[2][k]) for k in best)
    assert not all(torch.equal(best[k], snapshots[4][k]) for k in best)


def test_lower_is_better_metric_and_callback_stop():
    class StopOnSecond(Callback):
        def __init__(self):
            self.count = 0

        def on_evaluate(self, state):
            self.count += 1
            return self.count == 2

    losses = iter([3.0, 1.0, 2.0])
    config = quiet_config(max_steps=30, eval_every=3, metric="eval_loss", greater_is_better=False)
    result = Trainer(bert_distiller(), token_loader(4), config=config, eval_data=[],
                     metric_fn=lambda *_: {"eval_loss": next(losses)}, callbacks=[StopOnSecond()]).train()
    assert result.steps == 6 and result.best_metric == 1.0 and result.best_step == 6


def test_default_metric_is_student_accuracy(tmp_path):
    distiller = bert_distiller()
    config = quiet_config(max_steps=2, eval_every=2)
    result = Trainer(distiller, token_loader(4), config=config, eval_data=token_loader(8, shuffle=False)).train()
    assert set(result.final_metrics) == {"accuracy", "macro_f1"}
    assert 0.0 <= result.final_metrics["accuracy"] <= 1.0
    assert distiller.student.training  # evaluation hands the student back in training mode


# ------------------------------------------------------------------ non-finite losses


def flaky_matches(bad_calls: set[int]):
    """A loss that is NaN on the given (1-based) training calls; shape checks run without grad."""
    calls = {"n": 0}

    def flaky(student, teacher):
        if torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] in bad_calls:
                return student.sum() * float("nan")
        return (student - teacher).square().mean()

    return [Match("logits", loss=flaky), Match("logits", loss="kl")], calls


def test_nonfinite_skip_drops_the_step_and_goes_on():
    matches, calls = flaky_matches({3, 5})
    distiller = bert_distiller(matches=matches)
    with pytest.warns(UserWarning, match=r"part\(s\) responsible: flaky\[logits\]\. Skipping this step"):
        result = Trainer(distiller, token_loader(4), config=quiet_config(max_steps=6, on_nonfinite="skip")).train()
    assert result.steps == 6 and result.skipped_steps == 2 and calls["n"] == 8
    assert all(torch.isfinite(p).all() for p in distiller.parameters())
    assert all(math.isfinite(r["loss"]) for r in result.history)


def test_nonfinite_stop_raises_naming_the_part():
    matches, _ = flaky_matches({3})
    distiller = bert_distiller(matches=matches)
    with pytest.raises(NonFiniteLossError, match=r"^step 2: .*flaky\[logits\]\. Stopping \(training.on_nonfinite: stop\)"):
        Trainer(distiller, token_loader(4), config=quiet_config(max_steps=6)).train()


# ------------------------------------------------------------------ configuration


def test_bad_training_config_reports_every_problem_at_once():
    config = TrainConfig(on_nonfinite="ignore", mixed_precision="fp8", grad_accum=0, epochs=0)
    with pytest.raises(ConfigError) as info:
        Trainer(bert_distiller(), token_loader(4), config=config)
    message = str(info.value)
    for part in ("training.on_nonfinite: 'ignore' is not one of stop, skip",
                 "training.mixed_precision: 'fp8' is not one of no, bf16, fp16",
                 "training.grad_accum: must be at least 1", "training.epochs: must be at least 1"):
        assert part in message


def test_run_length_from_epochs_and_max_steps():
    assert Trainer(bert_distiller(), token_loader(4), config=quiet_config(epochs=3)).total_steps() == 36
    assert Trainer(bert_distiller(), token_loader(4), config=quiet_config(epochs=3, grad_accum=5)).total_steps() == 9
    assert Trainer(bert_distiller(), token_loader(4), config=quiet_config(max_steps=7)).total_steps() == 7
    with pytest.raises(ConfigError, match="the training data has no length; set training.max_steps"):
        Trainer(bert_distiller(), iter([]), config=quiet_config()).total_steps()


def test_train_state_is_read_only_and_teacher_untouched():
    distiller = bert_distiller()
    teacher = distiller.teachers["teacher"]
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    recorder = Recorder()
    Trainer(distiller, token_loader(4), config=quiet_config(max_steps=2), callbacks=[recorder]).train()
    with pytest.raises(dataclasses.FrozenInstanceError):
        recorder.steps[0].step = 5
    assert set(recorder.steps[0].parts) == {"loss", *distiller.part_names()}
    assert not teacher.training
    assert all(torch.equal(teacher_before[k], v) for k, v in teacher.state_dict().items())


def test_a_run_cut_by_max_steps_mid_epoch_is_evaluated_and_checkpointed(tmp_path):
    from kdistill.train import list_checkpoints, read_metrics

    loader = token_loader(4, size=48)  # 12 batches an epoch; stop after 5
    trainer = Trainer(bert_distiller(), loader, config=quiet_config(max_steps=5, epochs=3),
                      eval_data=token_loader(8, shuffle=False), output_dir=tmp_path)
    result = trainer.train()
    assert result.steps == 5
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")][-1] == "step-0000005"
    evals = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [5] and "accuracy" in result.final_metrics


def test_layerdrop_skips_student_blocks_while_training_and_leaves_no_trace():
    from kdistill.layerdrop import layerdrop_stats

    distiller = bert_distiller(matches=[Match("logits", loss="kl", args={"temperature": 2.0}),
                                        Match("hidden.-1", "hidden.-1")])
    seen = {}

    class Watch(Callback):
        def on_train_end(self, state):
            seen["stats"] = [(s.train_calls, s.skipped) for s in layerdrop_stats(distiller.student)]

    Trainer(distiller, token_loader(), config=quiet_config(max_steps=12, layerdrop=0.5), callbacks=[Watch()]).train()
    calls, skipped = zip(*seen["stats"])
    assert min(calls) >= 12 and 0 < sum(skipped) < sum(calls)  # p = 0.5: some blocks ran, some were skipped
    assert layerdrop_stats(distiller.student) == [None, None]  # removed after training
    assert "forward" not in distiller.student.bert.encoder.layer[0].__dict__


def test_layerdrop_refuses_student_attention_matches():
    distiller = bert_distiller()  # reads the student's attn.1
    with pytest.raises(ConfigError, match=r"training.layerdrop: 0.3 .* student's attn.1"):
        Trainer(distiller, token_loader(), config=quiet_config(max_steps=2, layerdrop=0.3)).train()
