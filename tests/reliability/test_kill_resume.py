"""A run killed with SIGKILL at a random step and resumed ends bit-identical to an uninterrupted run.

The run (``kdistill run``, dropout 0.1, a checkpoint after every step) trains in a subprocess that
pauses 0.15 s per step (KDISTILL_TEST_SLEEP, read by the test loss) so the kill lands mid-run; the
parent waits for the checkpoint of a random step, kills the process, and resumes the run here with
``resume=True``. The uninterrupted reference trains here while the subprocess runs. Same code, one
thread each, so the CPU arithmetic is the same: every tensor must be ``torch.equal``.

Set KDISTILL_TEST_SEED to replay a failing kill step.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import time

import torch

from ._helpers import saved_student, start_kdistill, write_config

STEPS = 16  # 64 reviews / batch 8 = 8 steps per epoch, 2 epochs


def _config(tmp_path, out):
    return write_config(
        tmp_path, out,
        teacher={"args": {"dropout": 0.1}},  # the student copies the teacher's config: dropout 0.1 too
        data={"batch_size": 8},
        training={"epochs": 2, "save_every": 1, "keep_last": 2},
    )


def _wait_for(path, process, timeout: float = 150.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"the run ended (status {process.returncode}) before {path.name} appeared:\n"
                                 + process.stderr.read()[-3000:])
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.01)


def _optimizer_state(run_dir):
    blob = torch.load(run_dir / "checkpoints" / f"step-{STEPS:07d}" / "optimizer.pt", weights_only=True)
    return blob["optimizer"]["state"]


def test_sigkill_at_a_random_step_then_resume_is_bit_identical(tmp_path, monkeypatch):
    from kdistill.config import load_config
    from kdistill.run import run

    seed = int(os.environ.get("KDISTILL_TEST_SEED", random.randrange(1 << 30)))
    kill_after = random.Random(seed).randint(2, STEPS - 3)
    where = f"(KDISTILL_TEST_SEED={seed}: killed after the checkpoint of step {kill_after})"
    out = tmp_path / "killed"
    config_path = _config(tmp_path, out)

    process = start_kdistill("run", str(config_path), KDISTILL_TEST_SLEEP="0.15")
    try:
        reference = run(load_config(config_path, [f"output_dir={tmp_path / 'reference'}"]))
        _wait_for(out / "checkpoints" / f"step-{kill_after:07d}", process)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()
    assert process.returncode == -signal.SIGKILL, where
    assert not (out / "summary.json").exists(), f"the run finished before the kill {where}"
    left = sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.startswith("step-"))
    newest = int(left[-1].split("-")[1])
    assert kill_after <= newest < STEPS, (left, where)
    shutil.copytree(out, tmp_path / "killed-copy")

    resumed = run(load_config(config_path), resume=True)

    ours, theirs = saved_student(out), saved_student(tmp_path / "reference")
    assert ours.keys() == theirs.keys()
    different = [name for name in ours if not torch.equal(ours[name], theirs[name])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]} {where}"
    for index, state in _optimizer_state(tmp_path / "reference").items():
        for key, value in state.items():
            assert torch.equal(_optimizer_state(out)[index][key], value), (index, key, where)
    assert resumed["stages"][0]["steps"] == reference["stages"][0]["steps"] == STEPS
    assert resumed["metrics"] == reference["metrics"]

    # The log holds every step; where a step ran twice (after the checkpoint, before the kill),
    # the resumed run's record (the last one) has the reference's loss, to the last bit.
    logged: dict[int, dict] = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # the line being written when the process died
            continue
        if record["kind"] == "train":
            logged[record["step"]] = record
    expected = {r["step"]: r for r in map(json.loads, (tmp_path / "reference" / "metrics.jsonl").read_text().splitlines())
                if r["kind"] == "train"}
    assert sorted(logged) == list(range(1, STEPS + 1))
    assert all(logged[s]["loss"] == expected[s]["loss"] for s in expected), where

    # The comparison has teeth: resuming the same checkpoint without restoring the RNG states
    # (dropout masks then differ) does not reproduce the run.
    import kdistill.train.checkpoint as checkpoint

    monkeypatch.setattr(checkpoint, "set_rng_state", lambda tensors, plain: None)
    copy = tmp_path / "killed-copy"
    run(load_config(config_path, [f"output_dir={copy}"]), resume=True)
    assert any(not torch.equal(saved_student(copy)[n], theirs[n]) for n in theirs), where
