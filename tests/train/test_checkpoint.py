"""Checkpoints: layout, pruning, checksums, corrupted files (warning + fallback), RNG state, fit checks."""

from __future__ import annotations

import json
import random
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from kdistill import Trainer
from kdistill.errors import CheckpointError, ConfigError
from kdistill.train import latest_good_checkpoint, list_checkpoints, read_metrics
from kdistill.train.checkpoint import load_checkpoint, rng_state, set_rng_state, verify_checkpoint
from tiny_engine import (
    Crash,
    bert_distiller,
    crash_at,
    quiet_config,
    token_loader,
)

FILES = {"model.safetensors", "optimizer.pt", "rng.safetensors", "state.json"}


def flip_bytes(path, offset: int = -64, count: int = 8) -> None:
    data = bytearray(path.read_bytes())
    for i in range(count):
        data[offset + i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    """6 steps, a checkpoint every 2, the last 2 kept."""
    output = tmp_path_factory.mktemp("run")
    distiller = bert_distiller()
    Trainer(distiller, token_loader(4), config=quiet_config(max_steps=6, save_every=2, keep_last=2),
            output_dir=output).train()
    return output, distiller


def test_layout_pruning_and_contents(saved_run):
    output, distiller = saved_run
    directory = output / "checkpoints"
    assert [p.name for p in list_checkpoints(directory)] == ["step-0000004", "step-0000006"]
    assert sorted(p.name for p in directory.iterdir()) == ["step-0000004", "step-0000006"]  # no temporaries
    latest = directory / "step-0000006"
    assert {p.name for p in latest.iterdir()} == FILES
    state = json.loads((latest / "state.json").read_text())
    assert state["position"]["step"] == 6 and state["position"]["epoch"] == 0
    assert state["position"]["batch_in_epoch"] == 6
    assert set(state["sha256"]) == FILES - {"state.json"}
    weights = load_file(str(latest / "model.safetensors"))
    assert weights.keys() == distiller.state_dict().keys()  # student + projections, never the teacher
    assert all(torch.equal(weights[k], v) for k, v in distiller.state_dict().items())
    blob = torch.load(latest / "optimizer.pt", weights_only=True)
    assert blob["scheduler"]["last_epoch"] == 6 and blob["optimizer"]["state"]
    assert verify_checkpoint(latest) == state


def test_corrupted_latest_checkpoint_warns_and_falls_back(tmp_path, saved_run):
    import shutil

    directory = tmp_path / "checkpoints"
    shutil.copytree(saved_run[0] / "checkpoints", directory)
    flip_bytes(directory / "step-0000006" / "model.safetensors")
    with pytest.warns(UserWarning) as caught:
        path, state = latest_good_checkpoint(directory)
    message = str(caught[0].message)
    assert str(directory / "step-0000006") in message
    assert "model.safetensors is corrupted (checksum mismatch)" in message
    assert "Falling back to the previous checkpoint" in message
    assert path == directory / "step-0000004" and state["position"]["step"] == 4

    # None verifies: an error listing each checkpoint and why, never a silent start from step 0.
    flip_bytes(directory / "step-0000004" / "optimizer.pt", offset=-200)
    with pytest.raises(CheckpointError) as info:
        latest_good_checkpoint(directory)
    assert str(info.value).splitlines()[:3] == [
        f"resume: none of the 2 checkpoints in '{directory}' is usable:",
        f"  - checkpoint {directory / 'step-0000006'}: model.safetensors is corrupted (checksum mismatch).",
        f"  - checkpoint {directory / 'step-0000004'}: optimizer.pt is corrupted (checksum mismatch).",
    ]
    assert latest_good_checkpoint(tmp_path / "no-checkpoints") is None


def test_verify_reports_missing_and_unreadable_files(tmp_path, saved_run):
    import shutil

    checkpoint = tmp_path / "step-0000006"
    shutil.copytree(saved_run[0] / "checkpoints" / "step-0000006", checkpoint)
    (checkpoint / "rng.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"step-0000006: rng.safetensors is missing"):
        verify_checkpoint(checkpoint)
    (checkpoint / "state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"state.json is unreadable"):
        verify_checkpoint(checkpoint)


def test_a_checkpoint_of_another_model_does_not_load(saved_run):
    checkpoint = saved_run[0] / "checkpoints" / "step-0000006"
    other = bert_distiller(student_hidden=32)  # same width as the teacher: no projection
    other.prepare(next(iter(token_loader(4))))
    optimizer = torch.optim.AdamW(other.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    with pytest.raises(CheckpointError, match=r"step-0000006 does not fit this model: size mismatch for "
                                              r"student\..*Was it written by another config\?"):
        load_checkpoint(checkpoint, verify_checkpoint(checkpoint), other, optimizer, scheduler)


def test_rng_state_round_trip():
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    tensors, plain = rng_state()
    json.dumps(plain)  # stored in state.json
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(2), random.seed(2), np.random.seed(2)
    set_rng_state(tensors, plain)
    actual = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(actual[0], expected[0]) and actual[1:] == expected[1:]


def test_resume_from_a_corrupted_latest_falls_back_and_still_matches(tmp_path):
    """Checkpoints at 2, 4, 6; crash at 7; the step-6 weights are damaged: resume from 4 to 8."""
    straight = bert_distiller()
    Trainer(straight, token_loader(4), config=quiet_config(max_steps=8)).train()

    config = quiet_config(max_steps=8, save_every=2, keep_last=2)
    with pytest.raises(Crash):
        Trainer(bert_distiller(), token_loader(4), config=config, output_dir=tmp_path,
                callbacks=[crash_at(7)]).train()
    damaged = tmp_path / "checkpoints" / "step-0000006"
    flip_bytes(damaged / "model.safetensors")
    resumed = bert_distiller()
    with pytest.warns(UserWarning, match=f"checkpoint {damaged}: model.safetensors is corrupted"):
        result = Trainer(resumed, token_loader(4), config=config, output_dir=tmp_path).train(resume=True)
    assert result.steps == 8
    assert [r["step"] for r in result.history if r["kind"] == "train"] == [5, 6, 7, 8]
    # The log holds each step once: steps 5-7 of the crashed run are replaced by the resumed run's.
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "train"] == list(range(1, 9))
    expected = straight.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in resumed.state_dict().items())


def test_resume_from_an_explicit_corrupted_path_is_an_error(tmp_path, saved_run):
    import shutil

    shutil.copytree(saved_run[0] / "checkpoints", tmp_path / "checkpoints")
    flip_bytes(tmp_path / "checkpoints" / "step-0000004" / "optimizer.pt", offset=-100)
    trainer = Trainer(bert_distiller(), token_loader(4), config=quiet_config(max_steps=6), output_dir=tmp_path)
    with pytest.raises(CheckpointError, match=r"step-0000004: optimizer.pt is corrupted"):
        trainer.train(resume=tmp_path / "checkpoints" / "step-0000004")


def test_resume_without_checkpoints_starts_fresh_and_needs_an_output_dir(tmp_path, capsys):
    (tmp_path / "metrics.jsonl").write_text('{"kind": "train", "step": 1, "loss": 9.0}\n')  # no checkpoint
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to fall back from: no warning either
        result = Trainer(bert_distiller(), token_loader(4), config=quiet_config(max_steps=2),
                         output_dir=tmp_path).train(resume=True)
    assert [r["step"] for r in result.history if r["kind"] == "train"] == [1, 2]
    assert f"kdistill: resume: no checkpoint in '{tmp_path / 'checkpoints'}'; training from step 0 (metrics.jsonl " \
           "starts afresh)." in capsys.readouterr().err
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "train"] == [1, 2]
    with pytest.raises(ConfigError, match="resume: needs an output_dir holding checkpoints"):
        Trainer(bert_distiller(), token_loader(4), config=quiet_config(max_steps=2)).train(resume=True)


def test_resuming_a_finished_run_does_nothing_more(tmp_path):
    config = quiet_config(max_steps=4, save_every=2, eval_every=3)
    metric = lambda *_: {"accuracy": 1.0}  # noqa: E731
    Trainer(bert_distiller(), token_loader(4), config=config, output_dir=tmp_path, eval_data=[],
            metric_fn=metric).train()
    again = Trainer(bert_distiller(), token_loader(4), config=config, output_dir=tmp_path, eval_data=[],
                    metric_fn=metric).train(resume=True)
    assert again.steps == 4
    assert [r for r in again.history if r["kind"] == "train"] == []


def test_resume_when_every_checkpoint_is_corrupt_is_an_error_and_changes_nothing(tmp_path):
    config = quiet_config(max_steps=4, save_every=2)
    Trainer(bert_distiller(), token_loader(4), config=config, output_dir=tmp_path).train()
    for step in (2, 4):
        flip_bytes(tmp_path / "checkpoints" / f"step-{step:07d}" / "model.safetensors")
    log = (tmp_path / "metrics.jsonl").read_text()
    with pytest.raises(CheckpointError) as info:
        Trainer(bert_distiller(), token_loader(4), config=quiet_config(max_steps=6, save_every=2),
                output_dir=tmp_path).train(resume=True)
    message = str(info.value)
    assert message.startswith(f"resume: none of the 2 checkpoints in '{tmp_path / 'checkpoints'}' is usable:\n")
    assert message.count("model.safetensors is corrupted (checksum mismatch)") == 2
    assert "--overwrite" in message
    assert (tmp_path / "metrics.jsonl").read_text() == log
