"""`kdistill demo --quick` end to end on the real packaged data and teacher (the CI smoke run), and
the demo as what it is: the packaged config through `kdistill run`."""

import argparse
import json

import pytest
import yaml

from kdistill import demo
from kdistill.cli import main


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One kdistill cache for the module: the quick teacher is fine-tuned once, then reused."""
    return tmp_path_factory.mktemp("cache")


def _test_metrics(folder):
    summary = json.loads((folder / "summary.json").read_text())
    return summary, summary["metrics"]["test"]


def test_demo_quick_runs_end_to_end(tmp_path, cache, monkeypatch, capsys):
    monkeypatch.setenv("KDISTILL_CACHE", str(cache))
    output = tmp_path / "demo"
    assert main(["demo", "--quick", "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    assert "test accuracy: teacher" in printed and "speed-up" in printed and "baseline" in printed

    summary, test = _test_metrics(output)
    assert {"teacher", "student"} <= set(test) and "test" in summary["baseline"]["metrics"]
    assert summary["parameters"]["student"] < summary["parameters"]["teacher"]
    assert summary["teacher_finetune"]["cached"] is False
    report = (output / "report.md").read_text()
    assert "## Accuracy" in report and "## Serving benchmark" in report and "distil_on: train+unlabelled" in report
    assert (output / "accuracy.png").stat().st_size > 1000 and (output / "loss.png").exists()
    assert (output / "student" / "config.json").exists() and (output / "teacher" / "config.json").exists()
    assert any('"soft"' in line for line in (output / "metrics.jsonl").read_text().splitlines())

    # A second run reuses the fine-tuned teacher and the teacher's stored logits.
    logits = sorted((cache / "teacher-logits").iterdir())
    assert len(logits) == 2  # the training sentences and the unlabelled ones, computed once each
    assert main(["demo", "--quick", "--output", str(tmp_path / "again"), "--no-baseline", "--no-latency"]) == 0
    again, again_test = _test_metrics(tmp_path / "again")
    assert again["teacher_finetune"]["cached"] is True and sorted((cache / "teacher-logits").iterdir()) == logits
    assert again_test["student"] == test["student"]  # the same student, with or without the baseline beside it


def test_kdistill_run_on_the_printed_config_is_the_demo(tmp_path, cache, monkeypatch, capsys):
    """`kdistill demo --print-config` + `kdistill run` reproduces the demo to the last digit."""
    monkeypatch.setenv("KDISTILL_CACHE", str(cache))
    flags = ["--quick", "--no-baseline", "--no-latency", "--layers", "2,5"]
    assert main(["demo", *flags, "--output", str(tmp_path / "demo")]) == 0
    capsys.readouterr()
    assert main(["demo", *flags, "--print-config"]) == 0
    config_file = tmp_path / "mine.yaml"
    config_file.write_text(capsys.readouterr().out)
    assert main(["run", str(config_file), f"output_dir={tmp_path / 'run'}"]) == 0
    _, demo_test = _test_metrics(tmp_path / "demo")
    _, run_test = _test_metrics(tmp_path / "run")
    assert run_test == demo_test
    demo_steps = (tmp_path / "demo" / "metrics.jsonl").read_text().splitlines()
    run_steps = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    drop_time = [{k: v for k, v in json.loads(line).items() if k != "time"} for line in demo_steps]
    assert drop_time == [{k: v for k, v in json.loads(line).items() if k != "time"} for line in run_steps]


def test_demo_minilm_runs_its_relation_stage_then_hinton_kd(tmp_path, cache, monkeypatch):
    """--method minilm: the q/k/v relations on text (one epoch at most), then KD on the logits."""
    monkeypatch.setenv("KDISTILL_CACHE", str(cache))
    output = tmp_path / "minilm"
    assert main(["demo", "--quick", "--method", "minilm", "--output", str(output), "--no-baseline",
                 "--no-latency"]) == 0
    summary = json.loads((output / "summary.json").read_text())
    assert [stage["stage"] for stage in summary["stages"]] == ["distil", "prediction"]
    relation = (output / "stages" / "1-distil" / "metrics.jsonl").read_text()
    assert "query_relation" in relation and "value_relation" in relation
    prediction = (output / "stages" / "2-prediction" / "metrics.jsonl").read_text()
    assert '"soft"' in prediction and "relation" not in prediction


def _args(*argv):
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_every_demo_flag_is_a_config_override():
    raw = demo.demo_raw(demo.demo_overrides(_args("--method", "tinybert", "--layers", "2,5", "--epochs", "1.5",
                                                  "--lr", "3e-5", "--seed", "4", "--output", "x", "--layerdrop", "0.2",
                                                  "--no-unlabelled", "--no-baseline", "--quick", "data.max_length=32")))
    assert raw["method"] == "tinybert" and raw["method_args"] == {}
    assert raw["student"]["from_teacher"]["layers"] == [2, 5]
    assert raw["training"]["epochs"] == 1.5 and raw["training"]["lr"] == 3e-5 and raw["training"]["layerdrop"] == 0.2
    assert raw["seed"] == 4 and raw["output_dir"] == "x" and raw["baseline"] is False
    assert raw["data"]["unlabelled"] is None and raw["data"]["distil_on"] == "train"
    assert raw["data"]["limit"] == {"train": 384, "validation": 128, "test": 128, "unlabelled": 256}
    assert raw["data"]["max_length"] == 32 and raw["teacher"]["finetune"]["epochs"] == 1  # --quick, --epochs wins
    minilm = demo.demo_raw(demo.demo_overrides(_args("--method", "minilm", "--epochs", "0.5")))
    assert minilm["method_args"]["distil_epochs"] == 0.5 and minilm["method_args"]["kd_temperature"] == 2.0
    assert demo.demo_raw(demo.demo_overrides(_args())) == yaml.safe_load(demo.packaged_config_text())


def test_the_printed_config_validates_and_pins_the_split_and_the_teacher(capsys):
    """The student's seed changes neither the split nor the fine-tuned teacher's settings."""
    from kdistill.config import config_from_dict
    from kdistill.finetune import finetune_settings
    from kdistill.run_data import read_tables

    configs = [config_from_dict(demo.demo_raw(demo.demo_overrides(_args("--seed", str(seed)))))
               for seed in (0, 3)]
    assert finetune_settings(configs[0]) == finetune_settings(configs[1])
    tables = [read_tables(config).tables for config in configs]
    assert [len(tables[0][s].texts) for s in ("train", "validation", "test")] == [8454, 1057, 1057]
    assert all(tables[0][s].texts == tables[1][s].texts for s in ("train", "validation", "test"))
    assert main(["demo", "--print-config", "--method", "pkd"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["method"] == "pkd" and printed["teacher"]["path"] == "builtin:all-MiniLM-L6-v2"


def test_demo_methods_and_overrides_are_checked_before_anything_loads(capsys):
    from kdistill.errors import ConfigError

    with pytest.raises(SystemExit):
        _args("--method", "theseus")
    with pytest.raises(ConfigError, match="trainig"):
        demo.demo_raw(demo.demo_overrides(_args("trainig.lr=1")))
    assert main(["demo", "--print-config", "data.distil_on=everything"]) == 0  # printed as given…
    assert main(["demo", "--quick", "data.distil_on=everything"]) == 2  # …and refused before any weight loads
    assert "data.distil_on" in capsys.readouterr().err
