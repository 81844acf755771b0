"""The run folder under --overwrite and --resume: an overwrite removes kdistill's files and only
those, and only once the new run is built and checked; an overwrite cut short never reports the
old run as done; --resume never trains from scratch or does nothing without saying so, and never
logs a step twice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ._helpers import BASE, merge, saved_student


def _config(folder: Path, out: Path, name: str = "run.yaml", student=None, **changes):
    """A tiny run (64 reviews, batch 4) as a file and a loaded config; ``student`` replaces the student spec."""
    from kdistill.config import load_config

    raw = merge(BASE, {"output_dir": str(out), **changes})
    raw["training"] = {**raw["training"], "max_steps": raw["training"].get("max_steps", 2), "eval_every": 1}
    if student is not None:
        raw["student"] = student
    path = folder / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path, load_config(path)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _train_steps(folder: Path) -> list[int]:
    from kdistill.train import read_metrics

    return [r["step"] for r in read_metrics(folder / "metrics.jsonl") if r["kind"] == "train"]


# ---------------------------------------------------------------------------------------------
# --overwrite


@pytest.mark.parametrize("bad", ["layer out of range", "width mismatch"])
def test_an_overwrite_that_does_not_fit_the_models_leaves_the_finished_run_as_it_was(tmp_path, capsys, bad):
    """Refused by build() (a student layer the teacher lacks) or on the first batch (hidden widths
    32 vs 16 without a projection): the old student, summary, checkpoints and config stay."""
    from kdistill.cli import main

    out = tmp_path / "run"
    path, config = _config(tmp_path, out)
    assert main(["run", str(path)]) == 0
    capsys.readouterr()
    before = _files(out)
    assert {"student/model.safetensors", "summary.json", "config.resolved.yaml", "stage_done.json",
            "checkpoints/step-0000002/state.json"} <= set(before)

    if bad == "layer out of range":
        changed, _ = _config(tmp_path, out, "changed.yaml", student={"from_teacher": {"layers": [7]}})
    else:
        changed, _ = _config(tmp_path, out, "changed.yaml", matches=[
            {"teacher": "hidden.-1", "student": "hidden.-1", "loss": "hidden_mse", "projection": "none"}])
    assert main(["run", str(changed), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err, err
    assert _files(out) == before


def test_an_overwrite_removes_only_kdistills_files_and_one_cut_short_never_reports_the_old_run(
        tmp_path, monkeypatch, capsys):
    from kdistill.run import run
    from kdistill.train import Trainer

    out = tmp_path / "run"
    _, first = _config(tmp_path, out, training={"tensorboard": True, "save_every": 1})
    run(first)
    old_student = saved_student(out)
    # The user's own files, and the leftovers of saves killed half-way.
    (out / "my_notes.txt").write_text("mine")
    (out / "student" / "NOTES.md").write_text("model card")
    (out / ".student.tmp-99999").mkdir()
    (out / ".student.tmp-99999" / "model.safetensors").write_text("half")
    (out / ".summary.json.tmp99999").write_text("half")
    (out / "teacher-cache").mkdir()
    (out / "teacher-cache" / "keep.bin").write_text("features")
    assert {"best/student.safetensors", "student_after.safetensors"} <= set(_files(out))
    assert any(name.startswith("tensorboard/events.out.tfevents") for name in _files(out))

    # The overwrite dies right after it cleared the old results (a kill before the new run ends).
    def killed(self, **kwargs):
        raise KeyboardInterrupt

    _, second = _config(tmp_path, out, "second.yaml", training={"lr": 0.02, "max_steps": 3})
    monkeypatch.setattr(Trainer, "train", killed)
    with pytest.raises(KeyboardInterrupt):
        run(second, overwrite=True)
    assert sorted(_files(out)) == ["config.resolved.yaml", "my_notes.txt", "run.log", "student/.kdistill-files.json",
                                   "student/NOTES.md", "teacher-cache/keep.bin"]  # run.log: the runs' history, kept
    assert json.loads((out / "student" / ".kdistill-files.json").read_text()) == []  # NOTES.md is not kdistill's
    assert yaml.safe_load((out / "config.resolved.yaml").read_text())["training"]["lr"] == 0.02

    # The same command again trains the new run; it does not report the old one as done.
    monkeypatch.undo()
    summary = run(second)
    assert summary["stages"][0]["steps"] == 3 and _train_steps(out) == [1, 2, 3]
    assert any(not (saved_student(out)[n] == old_student[n]).all() for n in old_student)
    # A re-save of student/ keeps the files kdistill did not write there.
    assert (out / "student" / "NOTES.md").read_text() == "model card"
    assert (out / "my_notes.txt").read_text() == "mine"


def test_the_same_config_again_says_the_run_is_complete_and_keeps_the_users_files(tmp_path, capsys):
    from kdistill.run import run

    out = tmp_path / "run"
    _, config = _config(tmp_path, out)
    summary = run(config)
    (out / "student" / "NOTES.md").write_text("model card")
    log = (out / "metrics.jsonl").read_text()
    capsys.readouterr()

    again = run(config)
    assert (f"kdistill: the run in '{out}' is already complete (steps: 'distil' 2): nothing to train; the student "
            "is saved again and evaluated (summary.json rewritten).") in capsys.readouterr().err
    assert again["metrics"] == summary["metrics"] and again["stages"] == summary["stages"]
    assert (out / "metrics.jsonl").read_text() == log
    assert (out / "student" / "NOTES.md").read_text() == "model card"
    assert json.loads((out / "student" / ".kdistill-files.json").read_text()) == sorted(
        p.name for p in (out / "student").iterdir() if p.name not in ("NOTES.md", ".kdistill-files.json"))


# ---------------------------------------------------------------------------------------------
# --resume


def _interrupted(out: Path) -> None:
    """A finished run turned into one killed after its last checkpoint (the run's end not recorded)."""
    import shutil

    for name in ("stage_done.json", "student_after.safetensors", "summary.json"):
        (out / name).unlink()
    shutil.rmtree(out / "student")


def test_resume_when_every_checkpoint_is_corrupt_stops_and_overwrite_starts_over(tmp_path):
    from kdistill.errors import CheckpointError
    from kdistill.run import run

    out = tmp_path / "run"
    _, config = _config(tmp_path, out, training={"max_steps": 4, "save_every": 2})
    run(config)
    _interrupted(out)
    for step in (2, 4):
        target = out / "checkpoints" / f"step-{step:07d}" / "model.safetensors"
        target.write_bytes(target.read_bytes()[:-8] + b"\0" * 8)
    before = _files(out)

    _, changed = _config(tmp_path, out, "changed.yaml", training={"max_steps": 4, "save_every": 2, "lr": 0.02})
    with pytest.raises(CheckpointError) as info:
        run(changed, resume=True)
    lines = str(info.value).splitlines()
    assert lines[:3] == [
        f"resume: none of the 2 checkpoints in '{out / 'checkpoints'}' is usable:",
        f"  - checkpoint {out / 'checkpoints' / 'step-0000004'}: model.safetensors is corrupted (checksum mismatch).",
        f"  - checkpoint {out / 'checkpoints' / 'step-0000002'}: model.safetensors is corrupted (checksum mismatch).",
    ]
    assert "--overwrite" in lines[3]
    assert _files(out) == before  # nothing trained, nothing appended to metrics.jsonl, the config kept

    summary = run(config, overwrite=True)
    assert summary["stages"][0]["steps"] == 4 and _train_steps(out) == [1, 2, 3, 4]


def test_resume_without_a_checkpoint_says_so_and_starts_a_fresh_log(tmp_path, capsys):
    import shutil

    from kdistill.run import run

    out = tmp_path / "run"
    _, config = _config(tmp_path, out)
    run(config)
    _interrupted(out)
    shutil.rmtree(out / "checkpoints")  # killed before its first checkpoint; metrics.jsonl has steps 1, 2
    capsys.readouterr()

    run(config, resume=True)
    assert (f"kdistill: resume: no checkpoint in '{out / 'checkpoints'}'; training from step 0 (metrics.jsonl "
            "starts afresh).") in capsys.readouterr().err
    assert _train_steps(out) == [1, 2]


def test_resume_of_a_finished_run_with_a_larger_max_steps_continues_to_the_new_end(tmp_path, capsys):
    from kdistill.errors import ConfigError
    from kdistill.run import run

    out = tmp_path / "run"
    _, config = _config(tmp_path, out)
    run(config)
    capsys.readouterr()

    _, longer = _config(tmp_path, out, "longer.yaml", training={"max_steps": 4})
    summary = run(longer, resume=True)
    assert (f"kdistill: the run in '{out}' finished at step 2; this config plans 4 steps (training.max_steps): "
            "continuing from step 2 to 4, the learning-rate schedule spread over the 4 steps.") in capsys.readouterr().err
    assert summary["stages"][0]["steps"] == 4 and summary["stages"][0]["total_steps"] == 4
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert _train_steps(out) == [1, 2, 3, 4]
    assert [r["lr"] for r in records if r["kind"] == "train"][2] > 0  # the schedule did not end at step 2

    _, shorter = _config(tmp_path, out, "shorter.yaml", training={"max_steps": 3})
    with pytest.raises(ConfigError) as info:
        run(shorter, resume=True)
    assert str(info.value) == (
        f"training.max_steps: this config plans 3 steps for the run in '{out}', fewer than the 4 it was trained "
        "for; kdistill does not shorten a finished run. Pass --overwrite to train again with 3 steps, or choose "
        "another output_dir.")

    run(longer, resume=True)
    assert "is already complete (steps: 'distil' 4)" in capsys.readouterr().err
    assert _train_steps(out) == [1, 2, 3, 4]
