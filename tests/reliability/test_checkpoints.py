"""Checkpoints through the command line: a run that dies, a truncated newest checkpoint, and a
resume that warns with the path, falls back to the previous checkpoint and still ends bit-identical
to an uninterrupted run. Safe loading: a pickled payload in optimizer.pt, YAML tags that would
run code, and the code a config does name (factories, losses) printed in the plan."""

from __future__ import annotations

import json

import pytest
import torch

from kdistill.errors import CheckpointError

from ._helpers import saved_student, write_config
from ._models import CONTROL, SimulatedCrash


def _config(tmp_path, out, **training):
    return write_config(tmp_path, out, teacher={"args": {"dropout": 0.1}}, data={"batch_size": 8},
                        training={"save_every": 1, "keep_last": 3, **training})


def _train_steps(run_dir) -> list[int]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["step"] for r in map(json.loads, lines) if r["kind"] == "train"]


def test_truncated_newest_checkpoint_warns_with_its_path_and_resume_uses_the_previous(tmp_path, capsys):
    from kdistill.cli import main
    from kdistill.train.checkpoint import verify_checkpoint

    out = tmp_path / "run"
    config = _config(tmp_path, out)
    checkpoints = out / "checkpoints"
    CONTROL["crash_once_exists"] = checkpoints / "step-0000005"  # step 6 dies in its forward pass
    with pytest.raises(SimulatedCrash):
        main(["run", str(config)])
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-0000003", "step-0000004", "step-0000005"]
    newest = checkpoints / "step-0000005" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a disk that filled up mid-write

    CONTROL.update(calls=0, crash_once_exists=None)
    with pytest.warns(UserWarning) as caught:
        assert main(["run", str(config), "--resume"]) == 0
    messages = [str(w.message) for w in caught]
    expected = (f"checkpoint {checkpoints / 'step-0000005'}: model.safetensors is corrupted (checksum mismatch). "
                "Falling back to the previous checkpoint.")
    assert expected in messages, messages
    assert "done: student in" in capsys.readouterr().out
    # Resumed from step 4: step 5 ran again (logged once: the crashed run's record of it was dropped);
    # the broken checkpoint was replaced, then pruned.
    assert _train_steps(out) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-0000006", "step-0000007", "step-0000008"]
    for folder in checkpoints.iterdir():
        verify_checkpoint(folder)

    # ... and the result is the uninterrupted run's, bit for bit (dropout 0.1: the RNG was restored).
    CONTROL.update(calls=0)
    assert main(["run", str(config), f"output_dir={tmp_path / 'reference'}"]) == 0
    ours, reference = saved_student(out), saved_student(tmp_path / "reference")
    assert [n for n in reference if not torch.equal(ours[n], reference[n])] == []


class _Payload:
    """Unpickling this calls ``pathlib.Path.touch(marker)``: code run by merely loading a file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_a_pickled_payload_in_optimizer_pt_is_refused_even_with_a_matching_checksum(tmp_path):
    from tiny_engine import bert_distiller, quiet_config, token_loader

    from kdistill.train import Trainer
    from kdistill.train.checkpoint import sha256

    out = tmp_path / "run"
    Trainer(bert_distiller(), token_loader(8, size=16), config=quiet_config(max_steps=2, save_every=1),
            output_dir=out).train()
    step = out / "checkpoints" / "step-0000002"
    marker = tmp_path / "code-ran"
    blob = torch.load(step / "optimizer.pt", weights_only=True)
    blob["optimizer"]["payload"] = _Payload(marker)
    torch.save(blob, step / "optimizer.pt")
    # An attacker who rewrites the file can rewrite its checksum too: the checksum is no defence here.
    state = json.loads((step / "state.json").read_text())
    state["sha256"]["optimizer.pt"] = sha256(step / "optimizer.pt")
    (step / "state.json").write_text(json.dumps(state))

    with pytest.raises(CheckpointError, match=r"optimizer.pt was refused .*UnpicklingError: Weights only load failed"):
        Trainer(bert_distiller(), token_loader(8, size=16), config=quiet_config(max_steps=3, save_every=1),
                output_dir=out).train(resume=True)
    assert not marker.exists()
    # The payload is live: an unsafe load would have run it.
    torch.load(step / "optimizer.pt", weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("tag", [
    "!!python/object/apply:pathlib.Path.touch [{marker}]",
    "!!python/object/new:pathlib.Path [{marker}]",
    "!!python/name:os.system",
])
def test_yaml_tags_that_would_run_code_are_config_errors(tmp_path, tag):
    from kdistill.config import load_config
    from kdistill.errors import ConfigError

    marker = tmp_path / "code-ran"
    path = write_config(tmp_path, tmp_path / "out")
    text = path.read_text().replace("seed: 0", "seed: " + tag.format(marker=marker))
    assert "!!python" in text
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    line = next(i for i, row in enumerate(text.splitlines(), 1) if "!!python" in row)
    assert message.startswith(f"{path}:{line}:"), message
    assert "could not determine a constructor for the tag 'tag:yaml.org,2002:python/" in message
    assert not marker.exists()


def test_the_code_a_config_names_is_reported_in_the_plan(tmp_path):
    from kdistill.config import load_config
    from kdistill.run import plan

    text = plan(load_config(write_config(tmp_path, tmp_path / "out")))
    assert "source: factory reliability._models:bert" in text
    row = next(line for line in text.splitlines() if line.strip().startswith("soft "))
    assert "reliability._models:probe_kl" in row.split()


def test_a_save_killed_half_way_leaves_nothing_after_the_next_save(tmp_path):
    from tiny_engine import bert_distiller, quiet_config, token_loader

    from kdistill.train import Trainer

    out = tmp_path / "run"
    stale = out / "checkpoints" / ".tmp-step-0000005-99999"  # what a SIGKILL during a save leaves
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"half")
    Trainer(bert_distiller(), token_loader(8, size=16), config=quiet_config(max_steps=2, save_every=1),
            output_dir=out).train()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000001", "step-0000002"]
