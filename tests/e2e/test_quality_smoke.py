"""benchmarks/quality.py end to end on tiny settings: a tiny teacher, the baseline and one method,
the Markdown section, the JSON report, and a results file that a rerun resumes from."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ["--tasks", "movie", "--methods", "baseline,hinton", "--layers", "3", "--subset", "64", "--epochs", "0.05",
         "--teacher", "tiny", "--no-progress", "--json"]


@pytest.fixture(scope="module")
def quality():
    spec = importlib.util.spec_from_file_location("quality_benchmark", ROOT / "benchmarks" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def run(quality, capsys, *args: str) -> dict:
    assert quality.main(list(args)) == 0
    return json.loads(capsys.readouterr().out)


def test_smoke_run_writes_the_table_and_a_rerun_skips_finished_cells(quality, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("KDISTILL_CACHE", str(tmp_path / "cache"))
    results, out = tmp_path / "results.jsonl", tmp_path / "results.md"
    out.write_text("# Results\n\nintro kept\n\n<!-- quality:begin -->\nold table\n<!-- quality:end -->\n\ntail kept\n")
    args = [*SMOKE, "--seeds", "0", "--results", str(results), "--out", str(out)]

    first = run(quality, capsys, *args)
    assert (first["ran"], first["skipped"]) == (3, 0)
    rows = {(r["method"], tuple(r["layers"]), r["unlabelled"]): r for r in first["rows"]}
    assert set(rows) == {("teacher", (), None), ("baseline", (1, 3, 5), None), ("hinton", (1, 3, 5), True)}
    teacher = rows[("teacher", (), None)]["accuracy_mean"]
    for row in first["rows"]:
        assert row["test_examples"] == 64 and row["seeds"] == ([] if row["method"] == "teacher" else [0])
        assert row["teacher"].startswith("tiny-bert-movie-")
        assert 0.0 <= row["accuracy_mean"] <= 1.0
        assert row["retention"] == pytest.approx(row["accuracy_mean"] / teacher)
    cells = {c["method"]: c for c in first["cells"]}
    # 64 labelled + 64 unlabelled sentences = 4 batches of 32; 0.05 of an epoch rounds up to one step.
    assert cells["hinton"]["steps"] == 1 and cells["baseline"]["steps"] >= 1
    assert cells["hinton"]["layers"] == [1, 3, 5] and cells["hinton"]["seconds"] > 0
    assert len(results.read_text().splitlines()) == 3

    text = out.read_text()
    assert text.startswith("# Results\n\nintro kept\n\n<!-- quality:begin -->\n## Quality table")
    assert text.endswith("<!-- quality:end -->\n\ntail kept\n") and "old table" not in text
    assert "Command: `python benchmarks/quality.py --tasks movie --methods baseline,hinton" in text
    assert "nproc " in text and f"torch {torch.__version__}" in text
    assert "| movie | teacher | all 6 | – |" in text
    assert "| movie | baseline | [1, 3, 5] | – |" in text and "| movie | hinton | [1, 3, 5] | yes |" in text

    second = run(quality, capsys, *args)
    assert (second["ran"], second["skipped"]) == (0, 3)
    assert second["rows"] == first["rows"]
    assert len(results.read_text().splitlines()) == 3

    # An interrupted write leaves half a line; it is ignored, and the next record starts a new line.
    with open(results, "a") as handle:
        handle.write('{"key": "cut sh')
    third = run(quality, capsys, *[*SMOKE, "--seeds", "0,1", "--results", str(results)])
    assert (third["ran"], third["skipped"]) == (2, 3)
    assert sorted((c["method"], c["seed"]) for c in third["cells"]) == [
        ("baseline", 0), ("baseline", 1), ("hinton", 0), ("hinton", 1), ("teacher", None)]
    assert len(quality.read_results(results)) == 5
    assert {r["method"]: r["seeds"] for r in third["rows"]}["hinton"] == [0, 1]

    # --table-only runs nothing and names the cells of the command that are not in the file yet.
    fourth = run(quality, capsys, *[*SMOKE, "--seeds", "0,1,2", "--results", str(results), "--table-only",
                                    "--out", str(out)])
    assert (fourth["ran"], fourth["skipped"]) == (0, 5)
    assert fourth["missing"] == ["movie baseline 3 layers seed 2", "movie hinton 3 layers +unlabelled seed 2"]
    assert "Not run yet (2 cells of this command): movie baseline 3 layers seed 2;" in out.read_text()


def test_cells_layers_and_the_marked_section(quality, tmp_path):
    options = quality.Options(tasks=("movie", "sms", "vision"), methods=quality.METHODS, layers=(3, 2), seeds=(0, 1),
                              unlabelled=(True, False))
    cells = quality.plan_cells(options)
    # movie: per seed and size, 2 labels-only methods once + 7 teacher-signal methods (multiteacher
    # included) with and without the unlabelled text; sms: 9 methods; vision: baseline, hinton and hooks;
    # plus one teacher per task.
    assert len(cells) == 3 + 2 * 2 * (2 + 7 * 2) + 2 * 2 * 9 + 2 * 3
    assert len(set(cells)) == len(cells)
    assert quality.Cell("movie", "theseus", 3, None, 0) in cells and quality.Cell("sms", "hinton", 2, None, 1) in cells
    assert quality.Cell("movie", "pkd", 2, False, 1) in cells
    assert quality.Cell("vision", "hooks", None, None, 1) in cells
    assert quality.Cell("vision", "hinton", None, None, 0) in cells

    assert quality.student_layers("hinton", 3) == [1, 3, 5] and quality.student_layers("pkd", 2) == [2, 5]
    assert quality.student_layers("distilbert", 3) == [0, 2, 4] and quality.student_layers("distilbert", 2) == [0, 3]
    with pytest.raises(quality.ConfigError, match="--layers: 7 is not between 1"):
        quality.student_layers("hinton", 7)

    fresh = tmp_path / "new" / "results.md"
    quality.update_marked_section(fresh, "table one")
    assert fresh.read_text() == "# Results\n\n<!-- quality:begin -->\ntable one\n<!-- quality:end -->\n"
    quality.update_marked_section(fresh, "table two")
    assert fresh.read_text().count("quality:begin") == 1 and "table two" in fresh.read_text()
    quality.update_marked_section(fresh, "chains", "quality-chains")
    quality.update_marked_section(fresh, "table three")
    text = fresh.read_text()
    assert text.count("quality:begin") == text.count("quality-chains:begin") == 1
    assert "table three" in text and "<!-- quality-chains:begin -->\nchains\n<!-- quality-chains:end -->" in text
    half = tmp_path / "half.md"
    half.write_text("text\n<!-- quality:begin -->\n")
    with pytest.raises(quality.ConfigError, match="only one of the markers"):
        quality.update_marked_section(half, "x")


def test_every_cell_is_a_config_that_validates(quality, tmp_path, monkeypatch):
    """Each row is a kdistill run config: it validates (no weights load), with the method's options."""
    from kdistill.config import config_from_dict

    monkeypatch.setenv("KDISTILL_CACHE", str(tmp_path / "cache"))
    options = quality.Options(tasks=("movie", "sms", "vision"), layers=(2,), seeds=(0,), unlabelled=(True, False),
                              teacher="tiny", subset=64, results=tmp_path / "r.jsonl")
    configs = {}
    for cell in quality.plan_cells(options):
        if cell.method == "teacher":
            continue
        raw = quality.cell_config(cell, options)
        config = config_from_dict(raw, source=quality.describe(cell), import_from_base=False)
        configs[quality.describe(cell)] = config
        assert config.seed == 0 and Path(config.output_dir).parent == tmp_path / "cells"
    assert configs["movie baseline 2 layers seed 0"].matches == [] and \
        configs["movie baseline 2 layers seed 0"].data.distil_on == "train"
    hinton = configs["movie hinton 2 layers +unlabelled seed 0"]
    assert hinton.data.distil_on == "train+unlabelled" and hinton.cache == "logits"
    assert configs["movie hinton 2 layers labelled only seed 0"].data.unlabelled is None
    assert configs["movie minilm-assistant 2 layers +unlabelled seed 0"].method_args["assistant"] == {"layers": [1, 3, 5]}
    assert configs["sms theseus 2 layers seed 0"].method_args["seed"] == 0
    assert [m.name for m in configs["vision hooks seed 0"].matches] == ["hint", "soft"]
    folders = {config.output_dir for config in configs.values()}
    assert len(folders) == len(configs)  # every cell its own run folder


def test_minilm_assistant_row_trains_through_its_chain(quality, tmp_path, capsys, monkeypatch):
    """minilm-assistant: teacher -> assistant, assistant -> student, then KD from the teacher: three stages."""
    monkeypatch.setenv("KDISTILL_CACHE", str(tmp_path / "cache"))
    args = [*SMOKE, "--methods", "minilm-assistant", "--layers", "2", "--seeds", "0",
            "--results", str(tmp_path / "r.jsonl")]
    report = run(quality, capsys, *args)
    cells = {c["method"]: c for c in report["cells"]}
    assert cells["minilm-assistant"]["assistant_layers"] == quality.assistant_layers(2) == [1, 3, 5]
    assert quality.assistant_layers(3) == [1, 2, 3, 5]
    summary = json.loads((Path(cells["minilm-assistant"]["run"]) / "summary.json").read_text())
    assert [stage["stage"] for stage in summary["stages"]] == ["distil_assistant", "distil_student", "prediction"]
    assert cells["minilm-assistant"]["steps"] == 3


def test_vision_rows_distil_a_cnn_through_hooks(quality, tmp_path, capsys, monkeypatch):
    """The vision rows on the packaged 8×8 digits standing in for Fashion-MNIST (a Debian package CI
    lacks): the teacher trains in its own run, each row trains its student with the matches it names."""
    monkeypatch.setenv("KDISTILL_CACHE", str(tmp_path / "cache"))
    common = ["--tasks", "vision", "--seeds", "0", "--vision-data", "digits", "--epochs", "1", "--no-progress",
              "--json", "--results", str(tmp_path / "r.jsonl")]
    report = run(quality, capsys, *common, "--methods", "baseline,hinton,hooks")
    assert report["ran"] == 4  # the teacher and three students
    cells = {c["method"]: c for c in report["cells"]}
    assert set(cells) == {"teacher", "baseline", "hinton", "hooks"}
    assert all(0.0 <= c["accuracy"] <= 1.0 for c in cells.values())
    assert cells["hooks"]["parameters"] == cells["baseline"]["parameters"] < cells["teacher"]["parameters"]
    parts = {name: json.loads((Path(c["run"]) / "summary.json").read_text()) for name, c in cells.items()
             if name != "teacher"}
    metrics = {name: (Path(cells[name]["run"]) / "metrics.jsonl").read_text() for name in parts}
    assert '"hint"' in metrics["hooks"] and '"soft"' in metrics["hinton"] and '"soft"' not in metrics["baseline"]

    # another temperature: new cells for the KD rows; the baseline and the teacher are kept
    again = run(quality, capsys, *common, "--methods", "baseline,hinton", "--vision-temperature", "1")
    assert (again["ran"], again["skipped"]) == (1, 2)


def test_the_multiteacher_cell_is_two_teachers_of_one_base_with_other_seeds(quality, tmp_path, monkeypatch):
    from kdistill.config import config_from_dict

    monkeypatch.setenv("KDISTILL_CACHE", str(tmp_path / "cache"))
    options = quality.Options(tasks=("movie",), methods=("multiteacher",), layers=(3,), seeds=(0,), subset=64,
                              teacher="tiny", results=tmp_path / "results.jsonl", progress=False)
    raw = quality.cell_config(quality.Cell("movie", "multiteacher", 3, True, 0), options)
    teachers = raw["teachers"]
    assert list(teachers) == ["teacher", "reseeded"] and "teacher" not in raw and raw["cache"] is None
    assert teachers["reseeded"]["finetune"]["seed"] == teachers["teacher"]["finetune"]["seed"] + 1
    assert teachers["teacher"] == quality.teacher_config("movie", options)["teacher"]  # the table's teacher
    config = config_from_dict(raw, base_dir=tmp_path)  # validates: both teachers read by the ensemble
    assert config.method == "multiteacher" and list(config.teacher_specs()) == ["teacher", "reseeded"]
