"""Progress of `kdistill run`: a line per stage start and end and an estimate of the whole run's
remaining time, on the screen and appended to output_dir/run.log. No test looks at wall-clock time:
the estimate's arithmetic is checked on a fake clock."""

from __future__ import annotations

import re

from kdistill.progress import RunProgress
from kdistill.run import run

from tests.test_run import hf_config, teacher_folder  # noqa: F401 - the fixture


def _lines(path) -> list[str]:
    return [line.split(" ", 2)[2] for line in path.read_text().splitlines()]  # without the time stamp


def test_run_log_has_each_stage_start_and_end_and_an_estimate(teacher_folder, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "run"
    config = hf_config(teacher_folder, out, baseline=True)
    run(config)
    lines = _lines(out / "run.log")
    for stage, unit in (("distil", "3 steps"), ("baseline", "3 steps"), ("evaluation", "8 batches")):
        assert f"{stage}: start ({unit})" in lines and f"{stage}: end ({unit})" in lines
    assert lines[0] == "run: start" and lines[-1] == "run: end"
    assert "plan: distil 3 steps, baseline 3 steps, evaluation 8 batches" in lines
    assert any(re.match(r"estimate: about .* left of the run \(distil at .* s/step, 0 steps left; then baseline 3 "
                        r"steps, evaluation 8 batches", line) for line in lines)
    assert "kdistill: distil: start" not in capsys.readouterr().err  # training.progress: false shows nothing
    # The same config again: the log is appended to; the finished stages are not trained again.
    run(config)
    again = _lines(out / "run.log")
    assert again[: len(lines)] == lines and again[len(lines)] == "run: start"
    assert "distil: start (3 steps)" not in again[len(lines):]


def test_a_refused_run_writes_no_log_line(teacher_folder, tmp_path, monkeypatch):  # noqa: F811
    """Lines are held until the run writes its folder: a run refused before leaves the folder as it was."""
    import importlib

    import pytest

    from kdistill.errors import ShapeError

    def refused(config, **kwargs):
        raise ShapeError("matches[0]: widths differ")  # as a check of the built models would

    monkeypatch.setattr(importlib.import_module("kdistill.run"), "build", refused)
    out = tmp_path / "run"
    with pytest.raises(ShapeError):
        run(hf_config(teacher_folder, out))
    assert not (out / "run.log").exists()


def test_the_estimate_counts_the_stages_to_come_and_the_evaluation():
    now = [0.0]
    progress = RunProgress(None, show=False, clock=lambda: now[0])
    progress.plan({"distil": 10, "baseline": 20}, evaluation_batches=30)
    progress.start("distil", 10)
    for step in range(1, 4):  # 2 s per step, the first step's own time not counted
        now[0] += 2.0
        progress.step(step)
    # 7 steps left here + 20 of the baseline, at 2 s each, + 30 evaluation batches at a third of that
    assert progress.remaining(now[0]) == (7 + 20) * 2.0 + 30 * 2.0 / 3
    progress.end("distil", 10)
    progress.start("baseline", 20)
    assert "distil" not in progress.to_come and progress.remaining(now[0]) is None  # not timed yet


def test_an_evaluation_not_counted_ahead_never_reports_negative_batches_left():
    """An embedding run's evaluation (the nearest-neighbour index and the splits, per model) is not
    counted when the run is planned: its estimate says what was read, never 'N batches left' below 0."""
    now = [0.0]
    lines = []
    progress = RunProgress(None, show=False, clock=lambda: now[0])
    progress.say = lines.append
    progress.plan({"distil": 3}, evaluation_batches=0)
    assert lines[-1] == "plan: distil 3 steps, evaluation (its batches not counted ahead)"
    with progress.evaluation(0) as counted:
        assert lines[-1] == "evaluation: start"
        for batch in counted({"test": list(range(12))})["test"]:
            now[0] += 1.0
        assert progress.remaining(now[0]) is None
        line = progress.estimate_line(now[0])
    assert line.startswith("estimate: evaluation at 1 s/batch, 12 batches read") and "-" not in line
    assert lines[-1] == "evaluation: end (12 batches)"
