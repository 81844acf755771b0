"""kdistill.compat.textbrewer.BasicTrainer: TextBrewer's supervised trainer on a tiny BERT classifier."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from kdistill.compat.textbrewer import BasicTrainer, TrainingConfig
from kdistill.errors import ConfigError, FeatureError

from ._models import bert
from .test_textbrewer import _head_batches, to_dict_batch

NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


def loss_adaptor(batch, model_outputs):
    return {"losses": model_outputs.loss}


def test_loss_falls_and_checkpoints_follow_ckpt_frequency(tmp_path):
    model = bert(2, 32, head=True, seed=0, **NO_DROPOUT)
    config = TrainingConfig(ckpt_frequency=1, ckpt_epoch_frequency=2, output_dir=str(tmp_path / "out"),
                            log_dir=str(tmp_path / "logs"), device="cpu")
    seen = []
    trainer = BasicTrainer(config, model, loss_adaptor)
    model.eval()
    with trainer:
        assert model.training
        history = trainer.train(torch.optim.Adam(model.parameters(), lr=1e-2), _head_batches(), num_epochs=5,
                                batch_postprocessor=to_dict_batch,
                                callback=lambda model, step: seen.append((model is trainer.model, step)))
    assert not model.training  # the mode it had before
    assert [h["step"] for h in history] == list(range(1, 16))  # 3 batches per epoch, 5 epochs
    losses = [h["total_loss"] for h in history]
    assert sum(losses[-3:]) < 0.5 * sum(losses[:3])  # 12 examples, memorised
    # once per epoch (ckpt_frequency=1), every second epoch and the last one
    assert seen == [(True, 6), (True, 12), (True, 15)]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "gs12.safetensors", "gs15.safetensors", "gs6.safetensors"]
    state = load_file(str(tmp_path / "out" / "gs15.safetensors"))
    assert torch.equal(state["classifier.weight"], model.classifier.weight)
    assert (tmp_path / "logs" / "metrics.jsonl").read_text().count("\n") == 15


def test_losses_are_summed_means_and_num_steps_saves_every_ckpt_steps(tmp_path):
    model = bert(2, 32, head=True, seed=0, **NO_DROPOUT)

    def two_losses(batch, model_outputs):
        per_example = torch.nn.functional.cross_entropy(model_outputs.logits, batch["labels"], reduction="none")
        return {"losses": [model_outputs.loss, 2 * per_example]}

    loader = _head_batches()
    first = to_dict_batch(next(iter(loader)))
    with torch.no_grad():
        expected = 3 * float(model(**first).loss)  # loss + mean(2 · per-example loss)
    trainer = BasicTrainer(TrainingConfig(ckpt_steps=2, output_dir=str(tmp_path), device="cpu"), model, two_losses)
    with trainer:
        history = trainer.train(torch.optim.SGD(model.parameters(), lr=0.0), loader, num_steps=5,
                                batch_postprocessor=to_dict_batch)
    assert history[0]["total_loss"] == pytest.approx(expected, rel=1e-5)
    assert len(history) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gs2.safetensors", "gs4.safetensors", "gs5.safetensors"]


def test_an_adaptor_without_losses_is_refused(tmp_path):
    model = bert(2, 32, head=True, seed=0)
    trainer = BasicTrainer(TrainingConfig(output_dir=str(tmp_path), device="cpu"), model,
                           lambda batch, outputs: {"logits": outputs.logits})
    with pytest.raises(FeatureError) as error, trainer:
        trainer.train(torch.optim.SGD(model.parameters(), lr=0.1), _head_batches(), num_epochs=1,
                      batch_postprocessor=to_dict_batch)
    assert str(error.value) == ("adaptor: BasicTrainer optimises the adaptor's 'losses', but it returned ['logits']; "
                                "return e.g. {'losses': model_outputs.loss}.")
    with pytest.raises(ConfigError, match="adaptor: an adaptor is a function"):
        BasicTrainer(TrainingConfig(device="cpu"), model, "loss")
    with pytest.raises(ConfigError, match="give num_epochs or num_steps"):
        trainer.train(torch.optim.SGD(model.parameters(), lr=0.1), _head_batches())
