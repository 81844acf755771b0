"""benchmarks/toolkit_tasks.py (issue 17's NER, embedding and multi-task rows) end to end on a few
records of the packaged data: every cell is a kdistill run, the tables render from the results file,
and a rerun skips what is there. Structure only: nothing here reads a timing or a score's level."""

from __future__ import annotations

import json

import pytest

from tests.e2e import benchmark_module



@pytest.fixture(scope="module")
def toolkit():
    with benchmark_module("toolkit_tasks.py", "toolkit_benchmark") as module:
        yield module


def test_every_cell_is_a_config_that_validates(toolkit, tmp_path, monkeypatch):
    from kdistill.config import config_from_dict

    monkeypatch.setenv("KDISTILL_CACHE", str(tmp_path / "cache"))
    options = toolkit.Options(seeds=(0, 1), subset=32, results=tmp_path / "r.jsonl")
    cells = toolkit.plan_cells(options)
    assert [(c.row, c.method) for c in cells if c.seed == 0] == [
        ("ner", "baseline"), ("ner", "hinton"), ("embedding", "cosine+mse"), ("multitask", "hinton")]
    configs = {cell: config_from_dict(cell.config(options), source=str(cell), import_from_base=False)
               for cell in cells}
    ner = configs[toolkit.Cell("ner", "hinton", 1)]
    assert ner.teacher.task == "token-classification" and ner.training.metric == "f1" and ner.seed == 1
    assert configs[toolkit.Cell("ner", "baseline", 0)].matches == []
    embedding = configs[toolkit.Cell("embedding", "cosine+mse", 0)]
    assert embedding.teacher.task == "embedding" and embedding.baseline and embedding.data.distil_on == "train+unlabelled"
    multitask = configs[toolkit.Cell("multitask", "hinton", 0)]
    assert list(multitask.tasks) == ["movie", "sms"] and not multitask.baseline
    assert len({config.output_dir for config in configs.values()}) == len(cells)  # a folder per cell


def test_smoke_run_writes_the_tables_and_a_rerun_skips_finished_cells(toolkit, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KDISTILL_CACHE", str(tmp_path / "cache"))
    results, out = tmp_path / "results.jsonl", tmp_path / "results.md"
    out.write_text("# Results\n\n<!-- toolkit:begin -->\nSTALE TABLE\n<!-- toolkit:end -->\n\ntail kept\n")
    args = ["--seeds", "0", "--subset", "32", "--epochs", "0.1", "--results", str(results), "--out", str(out),
            "--no-progress"]
    assert toolkit.main(args) == 0
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert [(r["row"], r["method"]) for r in records] == [
        ("ner", "baseline"), ("ner", "hinton"), ("embedding", "cosine+mse"), ("multitask", "hinton")]
    ner = records[1]
    assert set(ner["student"]) >= {"f1", "precision", "recall", "accuracy"} and ner["examples"] == 32
    embedding = records[2]
    assert set(embedding["student"]) >= {"knn_accuracy", "cosine_agreement"} and "knn_accuracy" in embedding["baseline"]
    multitask = records[3]
    assert set(multitask["tasks"]) == {"movie", "sms"}
    assert all({"teacher", "student"} <= set(task) for task in multitask["tasks"].values())
    text = out.read_text()
    assert text.endswith("<!-- toolkit:end -->\n\ntail kept\n") and "STALE TABLE" not in text
    for heading in ("### WNUT-16 Twitter NER", "### Sentence embeddings", "### Multi-task"):
        assert heading in text
    assert "| multi-task student, Hinton KD |" in text.replace("| movie ", "|").replace("| sms ", "|")
    capsys.readouterr()
    assert toolkit.main([*args, "--table-only"]) == 0
    assert "toolkit: 4 cells, 4 in" in capsys.readouterr().err
    assert len(results.read_text().splitlines()) == 4  # nothing ran again
