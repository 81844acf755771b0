"""Tiny whole runs: the loss falls (BERT, CNN via module hooks), save → load gives the same loss,
and resume continues bit-identically to an uninterrupted run (mid-epoch, across epochs, with dropout)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_model
from torch.utils.data import DataLoader

from kdistill import Distiller, Match, Trainer
from kdistill.data import make_loader
from kdistill.train import read_metrics, save_weights
from tiny_engine import (
    Crash,
    DigitsDataset,
    SmallCNN,
    TokenDataset,
    bert_distiller,
    crash_at,
    fixed_loss,
    quiet_config,
    tiny_bert,
    token_batch,
    token_loader,
)



def train_losses(result) -> list[float]:
    return [record["loss"] for record in result.history if record["kind"] == "train"]


def mean(values) -> float:
    return sum(values) / len(values)


def test_tiny_bert_distillation_loss_falls(tmp_path):
    distiller = bert_distiller()
    batch = token_batch(8, 8, seed=5)
    before = fixed_loss(distiller, batch)
    result = Trainer(distiller, token_loader(8), config=quiet_config(max_steps=40, lr=2e-3),
                     output_dir=tmp_path).train()
    losses = train_losses(result)
    assert result.steps == 40 and len(losses) == 40
    assert mean(losses[-5:]) < 0.75 * mean(losses[:5])
    # Every part is logged, and each of the distillation terms fell.
    first, last = result.history[0], result.history[-1]
    for part in ("kl[logits]", "hidden_mse[hidden.-1]", "attention_mse[attn.1]", "hard_label"):
        assert part in first and part in last
    assert last["hidden_mse[hidden.-1]"] < first["hidden_mse[hidden.-1]"]
    assert fixed_loss(distiller, batch) < 0.8 * before  # on a batch it never saw
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "train"] == list(range(1, 41))


def test_cnn_distillation_on_digits_through_module_hooks():
    train, held_out = DigitsDataset(0, 1200), DigitsDataset(1200)
    teacher, student = SmallCNN((16, 32, 32)), SmallCNN((8, 16, 16), seed=1)
    distiller = Distiller(teacher, student, [
        Match("module:features.2"),  # 16 vs 32 channels: a channel projection is inserted
        Match("logits", loss="kl", args={"temperature": 2.0}),
    ], hard_label_weight=0.5)
    trainer = Trainer(
        distiller,
        make_loader(train, 32, shuffle=True, bucket=False),
        eval_data=make_loader(held_out, 300, shuffle=False, bucket=False),
        config=quiet_config(max_steps=60, lr=5e-3, eval_every=60),
    )
    result = trainer.train()
    assert distiller.plan[0].projection == "linear 16->32"
    losses = train_losses(result)
    assert mean(losses[-5:]) < 0.85 * mean(losses[:5])
    assert result.final_metrics["accuracy"] > 0.3  # 10 classes: chance is 0.1
    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())


def test_save_then_load_gives_the_same_loss(tmp_path):
    distiller = bert_distiller()
    Trainer(distiller, token_loader(4), config=quiet_config(max_steps=5, save_every=5), output_dir=tmp_path).train()
    batch = token_batch(4, 8, seed=7)
    expected = fixed_loss(distiller, batch)

    restored = bert_distiller(student_seed=99)  # other initial weights, same architecture
    restored.prepare(batch)  # creates the projection the checkpoint holds
    assert fixed_loss(restored, batch) != expected
    missing, unexpected = load_model(restored, str(tmp_path / "checkpoints" / "step-0000005" / "model.safetensors"))
    assert not missing and not unexpected
    assert torch.equal(fixed_loss(restored, batch), expected)

    # The student alone, as shipped.
    save_weights(distiller.student, tmp_path / "student.safetensors")
    student = tiny_bert(2, 16, seed=5)
    load_model(student, str(tmp_path / "student.safetensors"))
    distiller.student.eval(), student.eval()
    plain = {k: v for k, v in batch.items() if k != "labels"}
    assert torch.equal(student(**plain).logits, distiller.student(**plain).logits)


def run(output_dir, *, total: int, grad_accum: int = 1, save_every=None, crash=None, resume=False, plain=False):
    distiller = bert_distiller()
    config = quiet_config(max_steps=total, grad_accum=grad_accum, save_every=save_every, keep_last=3)
    # plain: torch's own shuffling DataLoader (RandomSampler, no generator, no set_epoch).
    loader = DataLoader(TokenDataset(48), batch_size=4, shuffle=True) if plain else token_loader(4)
    trainer = Trainer(distiller, loader, config=config, output_dir=output_dir,
                      callbacks=[crash_at(crash)] if crash else [])
    if crash:
        with pytest.raises(Crash):
            trainer.train(resume=resume)
        return distiller, None
    return distiller, trainer.train(resume=resume)


@pytest.mark.parametrize(
    "grad_accum, save_every, crash, total, plain",
    [
        # 12 batches an epoch: the checkpoint at step 7 is mid-epoch 0; the resumed run crosses into epoch 1.
        (1, 7, 9, 20, False),
        # 6 steps an epoch: the checkpoint at step 8 is mid-epoch 1; the run ends in epoch 2.
        (2, 4, 10, 14, False),
        # The same with a plain shuffling DataLoader.
        (1, 5, 7, 15, True),
    ],
)
def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, grad_accum, save_every, crash, total, plain):
    straight, straight_result = run(tmp_path / "straight", total=total, grad_accum=grad_accum, plain=plain)

    run(tmp_path / "resumed", total=total, grad_accum=grad_accum, save_every=save_every, crash=crash, plain=plain)
    checkpoint_step = crash - crash % save_every
    resumed, resumed_result = run(tmp_path / "resumed", total=total, grad_accum=grad_accum,
                                  save_every=save_every, resume=True, plain=plain)

    assert resumed_result.steps == total
    expected, actual = straight.state_dict(), resumed.state_dict()
    assert expected.keys() == actual.keys() and any(k.startswith("projections.") for k in actual)
    different = [name for name in expected if not torch.equal(expected[name], actual[name])]
    assert different == []
    # The losses logged after the resume are those of the uninterrupted run, step for step.
    assert train_losses(resumed_result) == train_losses(straight_result)[checkpoint_step:]
    logged = read_metrics(tmp_path / "resumed" / "metrics.jsonl")
    steps = [r["step"] for r in logged if r["kind"] == "train"]
    # Each step once: the steps the crashed run logged after its checkpoint are replaced by the resumed run's.
    assert steps == list(range(1, total + 1))
    assert [r["loss"] for r in logged if r["kind"] == "train"] == train_losses(straight_result)
