"""`kdistill demo --quick` end to end on the real packaged data and teacher (the CI smoke run)."""

import json

from kdistill.cli import main


def test_demo_quick_runs_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KDISTILL_CACHE", str(tmp_path / "cache"))
    output = tmp_path / "demo"
    assert main(["demo", "--quick", "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    assert "test accuracy: teacher" in printed and "speed-up" in printed

    summary = json.loads((output / "summary.json").read_text())
    assert set(summary["accuracy"]) == {"teacher", "student", "baseline"}
    assert all(0.0 <= value <= 1.0 for value in summary["accuracy"].values())
    assert summary["parameters"]["student"] < summary["parameters"]["teacher"]
    assert summary["split"]["ratios"] == [0.8, 0.1, 0.1] and summary["teacher_reused"] is False
    report = (output / "report.md").read_text()
    assert "## Test accuracy" in report and "![test accuracy](accuracy.png)" in report
    assert (output / "accuracy.png").stat().st_size > 1000 and (output / "loss.png").exists()
    assert (output / "student" / "config.json").exists()
    metrics = (output / "student-run" / "metrics.jsonl").read_text().splitlines()
    assert any('"soft"' in line for line in metrics)

    # The fine-tuned teacher is cached: a second run reuses it.
    assert main(["demo", "--quick", "--output", str(tmp_path / "again"), "--no-baseline"]) == 0
    assert json.loads((tmp_path / "again" / "summary.json").read_text())["teacher_reused"] is True


def test_the_teacher_cache_key_ignores_the_student_seed_and_follows_the_teacher_seed(tmp_path, monkeypatch):
    from dataclasses import replace

    from kdistill import demo, packaged

    monkeypatch.setenv("KDISTILL_CACHE", str(tmp_path))
    path = packaged.minilm_teacher_path()
    base = demo.DemoSettings()
    assert "seed" not in base.teacher_settings()  # teachers cached before teacher_seed existed keep their key
    folder = demo.teacher_cache_dir(base, path)
    assert demo.teacher_cache_dir(replace(base, seed=3), path) == folder
    other = demo.teacher_cache_dir(replace(base, teacher_seed=1), path)
    assert other != folder and other.parent == folder.parent == tmp_path / "demo-teacher"


def test_demo_minilm_runs_its_relation_stage_then_hinton_kd(tmp_path, monkeypatch):
    """--method minilm: the q/k/v relations on text (its own run folder), then KD on the logits."""
    from kdistill import demo

    monkeypatch.setenv("KDISTILL_CACHE", str(tmp_path / "cache"))
    output = tmp_path / "minilm"
    assert main(["demo", "--quick", "--method", "minilm", "--output", str(output), "--no-baseline"]) == 0
    summary = json.loads((output / "summary.json").read_text())
    assert summary["settings"]["method_args"] == demo.DEMO_METHOD_ARGS["minilm"]
    relation = (output / "student-run-distil" / "metrics.jsonl").read_text()
    assert "query_relation" in relation and "value_relation" in relation
    prediction = (output / "student-run" / "metrics.jsonl").read_text()
    assert '"soft"' in prediction and "relation" not in prediction


def test_demo_methods_are_checked_before_anything_loads():
    import pytest

    from kdistill import demo
    from kdistill.errors import ConfigError

    assert demo.DemoSettings(method="tinybert").method_args == {}
    assert demo.DemoSettings(method="hinton", method_args={"temperature": 4.0}).method_args == {"temperature": 4.0}
    with pytest.raises(ConfigError, match="'theseus' is not one the demo runs; choose one of hinton, minilm"):
        demo.DemoSettings(method="theseus")
