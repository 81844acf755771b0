"""Guards: a non-finite loss stops the run naming the match, or is skipped and counted (also when
only one of two processes sees it); an output folder that cannot be written fails before any
weight loads, with the path and the reason."""

from __future__ import annotations

import errno
import importlib
import json
import math
import os
from pathlib import Path

import pytest

from ._helpers import run_kdistill, write_config
from ._models import CONTROL


# Call 1 of the probe loss is Distiller.prepare's check on the first batch; call 3 is step index 1.
NAN_CALL = 3


# ---------------------------------------------------------------------------------------------
# Non-finite losses


def test_stop_names_the_match_and_the_setting(tmp_path, capsys):
    from kdistill.cli import main

    out = tmp_path / "run"
    config = write_config(tmp_path, out, training={"on_nonfinite": "stop"})
    CONTROL["nan_at"] = NAN_CALL
    assert main(["run", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: step 1: the loss is not finite; the part(s) responsible: soft."), err
    assert "Stopping (training.on_nonfinite: stop)." in err
    assert "Traceback" not in err
    assert not (out / "student").exists()


def test_skip_drops_the_step_counts_it_and_finishes(tmp_path):
    from kdistill.config import load_config
    from kdistill.run import run

    out = tmp_path / "run"
    config = load_config(write_config(tmp_path, out, data={"batch_size": 8}, training={"on_nonfinite": "skip"}))
    CONTROL["nan_at"] = NAN_CALL
    with pytest.warns(UserWarning, match=r"part\(s\) responsible: soft\. Skipping this step "
                                         r"\(training.on_nonfinite: skip\)"):
        summary = run(config)
    stage = summary["stages"][0]
    assert stage["skipped_steps"] == 1
    assert stage["steps"] == 7  # 8 batches, one of them skipped
    assert json.loads((out / "summary.json").read_text())["stages"][0]["skipped_steps"] == 1
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == list(range(1, 8))
    assert all(math.isfinite(r["loss"]) for r in records if r["kind"] == "train")


def test_two_processes_skip_together_when_one_loss_is_nan(tmp_path):
    """Process 1 alone gets a NaN: both skip that step (neither waits forever for the other)."""
    out = tmp_path / "run"
    config = write_config(tmp_path, out, training={"on_nonfinite": "skip"})
    done = run_kdistill("run", str(config), "--processes", "2", timeout=300, KDISTILL_TEST_NAN_AT=f"{NAN_CALL}@1")
    assert done.returncode == 0, done.stderr[-5000:]
    assert "the part(s) responsible: soft. Skipping this step" in done.stderr  # process 1's own message
    assert "the loss of process 1 is not finite" in done.stderr  # what process 0 says
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processes"] == 2
    # 16 batches of 4 -> 8 per process; one skipped by both.
    assert summary["stages"][0]["skipped_steps"] == 1 and summary["stages"][0]["steps"] == 7
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == list(range(1, 8))


# ---------------------------------------------------------------------------------------------
# Output folders that cannot be written


@pytest.fixture
def no_weights(monkeypatch):
    """Fail the test if the run gets as far as loading models."""
    runner = importlib.import_module("kdistill.run")  # the module: kdistill.run is the function

    def build(config):
        raise AssertionError("models were loaded although the output folder is unusable")

    monkeypatch.setattr(runner, "build", build)


def _cli_error(args, capsys) -> str:
    from kdistill.cli import main

    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip()


def test_output_under_a_file_fails_before_training(tmp_path, capsys, no_weights):
    (tmp_path / "a_file").write_text("x")
    target = tmp_path / "a_file" / "run"
    config = write_config(tmp_path, target)
    assert _cli_error(["run", str(config)], capsys) == (
        f"error: output_dir: cannot write to '{target}' (Not a directory); choose a folder you can write to "
        "(output_dir=… on the command line).")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full to simulate a full disk")
def test_full_disk_fails_before_training(tmp_path, capsys, no_weights):
    """Simulated: the folder's write probe is a link to /dev/full, where every write fails with ENOSPC
    (the kernel's real "No space left on device"); the rest of the disk is not full."""
    out = tmp_path / "run"
    out.mkdir()
    (out / f".kdistill-write-test-{os.getpid()}").symlink_to("/dev/full")
    config = write_config(tmp_path, out)
    assert _cli_error(["run", str(config), "--overwrite"], capsys) == (
        f"error: output_dir: cannot write to '{out}' (No space left on device); choose a folder you can write to "
        "(output_dir=… on the command line).")
    assert not (out / "config.resolved.yaml").exists()


def test_read_only_folder_fails_before_training(tmp_path, capsys, no_weights, monkeypatch):
    """A read-only mount: simulated by making the probe's write fail with EROFS, as the kernel would
    (root ignores permission bits, so chmod cannot make a folder read-only for these tests)."""
    out = tmp_path / "run"
    config = write_config(tmp_path, out)
    real_write_text = Path.write_text

    def write_text(self, *args, **kwargs):
        if self.name.startswith(".kdistill-write-test-"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)
    assert _cli_error(["run", str(config)], capsys) == (
        f"error: output_dir: cannot write to '{out}' (Read-only file system); choose a folder you can write to "
        "(output_dir=… on the command line).")


def test_unwritable_folder_for_a_regular_user(tmp_path, capsys, no_weights):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as root, whom permission bits do not stop (see the EROFS test)")
        config = write_config(tmp_path, locked / "run")
        assert "(Permission denied)" in _cli_error(["run", str(config)], capsys)
    finally:
        locked.chmod(0o755)
