"""The serving benchmark: the timing core (fake clock), the whole bench on a tiny run, the report."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import transformers
from test_export import make_run, make_tokenizer, onnx_installed, synthetic, tiny_bert, write_csv  # noqa: F401

from kdistill.bench import (
    SECTION_END,
    SECTION_START,
    add_bench_arguments,
    append_report,
    bench,
    bench_main,
    bench_models,
    find_teacher,
)
from kdistill.errors import ConfigError, DataError
from kdistill.export import held_out, torch_runner

# ---------------------------------------------------------------------------------------------
# bench_models with a fake clock: exact numbers, no timing in tests


class FakeClock:
    def __init__(self):
        self.now = 0.0
        self.calls: list[str] = []

    def __call__(self) -> float:
        return self.now

    def model(self, name: str, ms_per_example: float):
        def run(batch):
            self.calls.append(name)
            self.now += ms_per_example * len(batch) / 1000.0

        return run


def test_bench_models_reports_ms_per_example_and_alternates():
    clock = FakeClock()
    models = {"a": clock.model("a", 2.0), "b": clock.model("b", 0.5), "c": clock.model("c", 1.0)}
    batches = [[0] * 4, [0] * 2]  # 6 examples
    timings = bench_models(models, batches, repeats=3, warmup=1, clock=clock)
    assert timings["a"].median_ms == pytest.approx(2.0) and timings["b"].median_ms == pytest.approx(0.5)
    assert timings["c"].examples_per_second == pytest.approx(1000.0)
    assert timings["a"].repeats == pytest.approx([2.0, 2.0, 2.0]) and timings["a"].spread == pytest.approx(0.0)
    # warm-up: one batch each; then three repeats, the order rotating a b c / b c a / c a b.
    warm, timed = clock.calls[:3], clock.calls[3:]
    assert warm == ["a", "b", "c"]
    firsts = [timed[i] for i in range(0, len(timed), 2)]
    assert firsts == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]


def test_bench_models_median_and_spread_of_noisy_repeats():
    clock = FakeClock()
    delays = iter([1.0, 3.0, 2.0, 10.0, 2.5])

    def noisy(batch):
        clock.now += next(delays) / 1000.0 * len(batch)

    timings = bench_models({"x": noisy}, {"x": [[0]]}, repeats=4, warmup=1, clock=clock)
    assert timings["x"].repeats == pytest.approx([3.0, 2.0, 10.0, 2.5])
    assert (timings["x"].median_ms, timings["x"].min_ms, timings["x"].max_ms) == pytest.approx((2.75, 2.0, 10.0))
    assert timings["x"].spread == pytest.approx(8.0 / 2.75)
    with pytest.raises(ConfigError, match="repeats=0 must be at least 1"):
        bench_models({"x": noisy}, [[0]], repeats=0, clock=clock)
    with pytest.raises(DataError, match="no batches to time 'x'"):
        bench_models({"x": noisy}, [], clock=clock)


# ---------------------------------------------------------------------------------------------
# The whole benchmark on a tiny run


@pytest.fixture(scope="module")
def run_with_teacher(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("bench")
    run = make_run(root / "run", steps=20)
    tokenizer = make_tokenizer(root / "vocab")
    teacher = tiny_bert(tokenizer.vocab_size, layers=3, seed=5)
    teacher.save_pretrained(root / "teacher")
    tokenizer.save_pretrained(root / "teacher")
    return run, root / "teacher"


def small(run, **kwargs):
    return bench(run, repeats=2, latency_examples=4, latency_batches=1, threads=1, log=None, **kwargs)


@onnx_installed
def test_bench_measures_every_model_and_runtime_and_writes_the_report(run_with_teacher):
    run, teacher = run_with_teacher
    (run / "report.md").write_text("# My run\n\nEarlier findings.\n")
    result = small(run, teacher_dir=teacher)
    rows = {(row["model"], row["runtime"]): row for row in result["rows"]}
    assert list(rows) == [(m, r) for m in ("teacher", "student") for r in ("pytorch", "onnx", "onnx-int8")]
    # Accuracy of the PyTorch rows equals a direct evaluation on the run's test file.
    data = held_out(run)
    for role, folder in (("teacher", teacher), ("student", run / "student")):
        model = transformers.AutoModelForSequenceClassification.from_pretrained(folder).eval()
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
        predictions = torch_runner(model)(dict(tokenizer(data.texts, padding=True, return_tensors="pt"))).argmax(-1)
        assert rows[(role, "pytorch")]["accuracy"] == pytest.approx(float((predictions == np.array(data.labels)).mean()))
        assert rows[(role, "onnx")]["accuracy"] == rows[(role, "pytorch")]["accuracy"]
        assert rows[(role, "onnx")]["agreement"] == 1.0
    assert rows[("student", "pytorch")]["accuracy"] >= 0.9 and rows[("student", "onnx-int8")]["agreement"] >= 0.99
    for row in rows.values():
        for key in ("batch_1", "batch_32"):
            timing = row["latency"][key]
            assert 0 < timing["min_ms"] <= timing["median_ms"] <= timing["max_ms"] and len(timing["repeats"]) == 2
        assert row["size_bytes"] > 10_000
    comparisons = result["comparisons"]
    assert set(comparisons) == {"student_int8_vs_fp32_speedup", "student_int8_accuracy_drop_points",
                                "teacher_fp32_to_student_int8_speedup", "teacher_to_student_fp32_speedup"}
    assert result["teacher"] == {"path": str(teacher), "found_by": "--teacher"} and result["notes"] == []
    assert json.loads((run / "bench.json").read_text())["rows"] == result["rows"]
    assert (run / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (run / "report.md").read_text()
    assert report.startswith("# My run\n\nEarlier findings.\n")
    assert "| teacher | onnx-int8 |" in report and "![serving latency](bench.png)" in report
    assert "int8 ONNX student vs fp32 PyTorch student at batch 1:" in report
    # A second benchmark replaces the section instead of adding another.
    small(run, teacher_dir=teacher, runtimes=["pytorch"], write_report=True)
    report = (run / "report.md").read_text()
    assert report.count(SECTION_START) == 1 and report.count(SECTION_END) == 1
    assert "| teacher | onnx-int8 |" not in report and "| student | pytorch |" in report


def test_bench_without_onnxruntime_skips_those_rows_with_a_note(run_with_teacher, monkeypatch):
    run, _ = run_with_teacher
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    result = small(run, write_report=False)
    assert [(row["model"], row["runtime"]) for row in result["rows"]] == [("student", "pytorch")]
    notes = " ".join(result["notes"])
    assert "ONNX Runtime rows skipped" in notes and "pip install 'kdistill[onnx]'" in notes
    assert "Teacher not measured: the run names no teacher; pass --teacher DIR." in notes


def test_bench_needs_data(tmp_path):
    tokenizer = make_tokenizer(tmp_path / "run" / "student")
    tiny_bert(tokenizer.vocab_size).save_pretrained(tmp_path / "run" / "student")
    with pytest.raises(DataError, match="no test data found .* pass --data FILE --text-column TEXT --label-column LABEL"):
        small(tmp_path / "run")


def test_cli_bench_with_a_data_file_and_columns(run_with_teacher, tmp_path, capsys):
    run, teacher = run_with_teacher
    texts, labels = synthetic(40, seed=9)
    write_csv(tmp_path / "eval.csv", texts, labels)
    (tmp_path / "eval.csv").write_text((tmp_path / "eval.csv").read_text().replace("text,label", "sentence,gold", 1))
    parser = argparse.ArgumentParser()
    add_bench_arguments(parser)
    args = parser.parse_args([str(run), "--teacher", str(teacher), "--data", str(tmp_path / "eval.csv"),
                              "--text-column", "sentence", "--label-column", "gold", "--runtimes", "pytorch",
                              "--threads", "1", "--repeats", "1", "--latency-examples", "2",
                              "--latency-batches", "1", "--no-report"])
    assert bench_main(args) == 0
    printed = capsys.readouterr().out
    assert "| student | pytorch |" in printed and "| teacher | pytorch |" in printed
    saved = json.loads((run / "bench.json").read_text())
    assert saved["data"] == {"source": f"file {tmp_path / 'eval.csv'}", "examples": 40, "labelled": True}


def test_find_teacher_reads_the_resolved_config(tmp_path, run_with_teacher):
    _, teacher = run_with_teacher
    (tmp_path / "config.resolved.yaml").write_text(f"teacher:\n  path: {teacher}\n")
    assert find_teacher(tmp_path) == (teacher, "teacher.path in config.resolved.yaml")
    assert find_teacher(tmp_path / "nothing")[0] is None


def test_append_report_creates_and_replaces(tmp_path):
    path = tmp_path / "report.md"
    append_report(path, f"{SECTION_START}\nfirst\n{SECTION_END}")
    append_report(path, f"{SECTION_START}\nsecond\n{SECTION_END}")
    text = path.read_text()
    assert text.startswith("# Report\n") and "second" in text and "first" not in text
    assert not list(tmp_path.glob(".*tmp*"))


def test_a_teacher_without_a_classifier_is_noted_not_a_traceback(run_with_teacher, tmp_path):
    """A pretrained base as --teacher (no classification head): bench measures the student and says why
    the teacher is not measured (its outputs were compared as classes before: a broadcast traceback)."""
    run, _ = run_with_teacher
    tokenizer = make_tokenizer(tmp_path / "vocab")
    base = transformers.BertModel(transformers.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32,
                                                          num_hidden_layers=1, num_attention_heads=2,
                                                          intermediate_size=37, max_position_embeddings=32))
    base.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    result = small(run, teacher_dir=tmp_path / "base", runtimes=["pytorch"], write_report=False)
    assert [row["model"] for row in result["rows"]] == ["student"]
    assert any("has no sequence-classification head" in note for note in result["notes"])
