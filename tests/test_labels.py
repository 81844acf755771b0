"""Labels and splits as users write them: the teacher's own label order, a test file beside a split
path, labels outside the classes, and the one rule for missing texts (issue 15, items 1, 2, 8, 10)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from kdistill.config import config_from_dict
from kdistill.errors import ConfigError, DataError
from kdistill.labels import teacher_labels
from kdistill.run import build, plan, run
from kdistill.run_data import read_tables

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "examples" / "data" / "tiny_tokenizer"
WORDS = ["good", "bad", "film", "plot", "great", "story", "cast", "sharp"]


def _teacher(folder: Path, id2label: dict[int, str] | None, *, always: int | None = None, num_labels=2) -> Path:
    """A tiny BERT classifier saved with ``id2label``; ``always=i`` makes it predict class i for any input
    (zero classifier weights, a large bias), so its accuracy on a file is the share of that class."""
    from transformers import BertConfig, BertForSequenceClassification

    vocab = len((TOKENIZER / "vocab.txt").read_text(encoding="utf-8").split())
    kwargs = {"id2label": id2label, "label2id": {v: k for k, v in id2label.items()}} if id2label else {}
    config = BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=num_labels, **kwargs)
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    if always is not None:
        with torch.no_grad():
            model.classifier.weight.zero_()
            model.classifier.bias.fill_(-5.0)
            model.classifier.bias[always] = 5.0
    model.save_pretrained(folder)
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(TOKENIZER / name, folder / name)
    return folder


def _csv(path: Path, rows: list[tuple[str, object]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return path


def _rows(labels: list[object], seed: int = 0) -> list[tuple[str, object]]:
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for label in labels:
        words = [WORDS[int(i)] for i in torch.randint(0, len(WORDS), (5,), generator=generator)]
        rows.append((" ".join(words), label))
    return rows


def _config(teacher_folder: Path, tmp_path: Path, data: dict, **changes):
    raw = {
        "teacher": {"path": str(teacher_folder)},
        "student": {"from_teacher": {"layers": [1]}},
        "data": {"max_length": 16, "batch_size": 8, **data},
        "method": "hinton",
        "training": {"lr": 1e-3, "max_steps": 2, "log_every": 1, "progress": False, "tensorboard": False},
        "output_dir": str(tmp_path / "run"),
        **changes,
    }
    return config_from_dict(raw, base_dir=tmp_path)


# ---------------------------------------------------------------------------------------------
# 1. The teacher's label ids


def test_string_labels_follow_the_teachers_id2label_not_sorted_order(tmp_path):
    # Fine-tuned with label2id in order of first appearance: positive = 0, negative = 1 (sorted would swap them).
    teacher = _teacher(tmp_path / "teacher", {0: "positive", 1: "negative"}, always=0)
    labels = ["positive"] * 12 + ["negative"] * 4
    train = _csv(tmp_path / "train.csv", _rows(labels))
    validation = _csv(tmp_path / "validation.csv", _rows(labels, seed=1))
    config = _config(teacher, tmp_path, {"train": str(train), "validation": str(validation),
                                         "test": str(validation)})
    parts = build(config)
    assert parts.data.label_names == ["positive", "negative"]
    assert list(parts.datasets["train"].labels[:13]) == [0] * 12 + [1]
    summary = run(config)
    # The teacher always says 'positive' (its id 0): 12 of the 16 validation records are positive.
    assert summary["metrics"]["validation"]["teacher"]["accuracy"] == pytest.approx(0.75)
    saved = json.loads((tmp_path / "run" / "student" / "config.json").read_text())
    assert saved["id2label"] == {"0": "positive", "1": "negative"}
    text = plan(config)
    assert "labels: the teacher's ids (0 = positive, 1 = negative), from id2label in" in text


def test_a_label_the_teacher_does_not_know_is_refused_before_weights_load(tmp_path):
    teacher = _teacher(tmp_path / "teacher", {0: "positive", 1: "negative"})
    train = _csv(tmp_path / "train.csv", _rows(["positive", "negative", "Positive", "positive"]))
    with pytest.raises(DataError) as info:
        _config(teacher, tmp_path, {"train": str(train)})
    message = str(info.value)
    assert "record 2 has the label 'Positive'" in message and "the teacher does not know" in message
    assert "did you mean 'positive'?" in message and "positive, negative" in message


def test_integer_labels_against_a_named_teacher_say_which_name_each_id_means(tmp_path):
    teacher = _teacher(tmp_path / "teacher", {0: "negative", 1: "positive"})
    train = _csv(tmp_path / "train.csv", _rows([0, 1] * 8))
    text = plan(_config(teacher, tmp_path, {"train": str(train)}))
    assert "labels: integer labels are class ids (teacher 0 = negative, 1 = positive)" in text


def test_generic_teacher_names_keep_sorted_order_and_the_plan_says_so(tmp_path):
    teacher = _teacher(tmp_path / "teacher", None)  # LABEL_0, LABEL_1
    assert teacher_labels(type("Spec", (), {"path": str(teacher), "task": "sequence-classification",
                                            "num_labels": None})()).names is None
    train = _csv(tmp_path / "train.csv", _rows(["pos", "neg"] * 8))
    text = plan(_config(teacher, tmp_path, {"train": str(train)}))
    assert "labels: ids in sorted order of the training labels (0 = neg, 1 = pos); the teacher names no classes" in text


def test_a_new_head_ignores_the_checkpoints_names(tmp_path):
    teacher = _teacher(tmp_path / "teacher", {0: "b", 1: "a"})
    train = _csv(tmp_path / "train.csv", _rows(["a", "b", "c"] * 4))
    config = _config(teacher, tmp_path, {"train": str(train)}, teacher={"path": str(teacher), "num_labels": 3})
    assert read_tables(config).label_names == ["a", "b", "c"]  # (distilling the new head's logits is refused)


# ---------------------------------------------------------------------------------------------
# 2. A test file beside a path cut by split; ignored keys are errors


def test_path_split_and_a_test_file_evaluate_on_the_test_file(tmp_path):
    teacher = _teacher(tmp_path / "teacher", None)
    everything = _csv(tmp_path / "all.csv", _rows([0, 1] * 20))
    test = _csv(tmp_path / "test.csv", _rows([1] * 7, seed=3))
    config = _config(teacher, tmp_path, {"path": str(everything), "split": [0.9, 0.1], "test": str(test)})
    parts = build(config)
    assert {k: len(v) for k, v in parts.datasets.items()} == {"train": 36, "validation": 4, "test": 7}
    assert parts.data.sources["test"] == str(test)
    summary = run(config)
    assert summary["metrics"]["test"]["examples"] == 7
    # Without split, a test file beside a path cuts the path 0.9 / 0.1.
    config = _config(teacher, tmp_path, {"path": str(everything), "test": str(test)})
    assert {k: len(v) for k, v in build(config).datasets.items()} == {"train": 36, "validation": 4, "test": 7}


@pytest.mark.parametrize("data, message", [
    ({"path": "all.csv", "validation": "all.csv"}, "data.validation: 'path' data is cut into train/validation by 'split'"),
    ({"path": "all.csv", "split": [0.8, 0.1, 0.1], "test": "all.csv"},
     "data.split: [0.8, 0.1, 0.1] cuts a test split too, but data.test names a test file"),
    ({"builtin": "movie_reviews", "test": "all.csv"}, "data.test: a 'builtin' set is cut into train/validation/test"),
    ({"builtin": "movie_reviews", "text": "sentence"}, "data.text: the builtin set 'movie_reviews' has its own columns"),
    ({"builtin": "movie_reviews", "format": "csv"}, "data.format: the builtin set 'movie_reviews' has its own"),
])
def test_keys_a_split_would_ignore_are_errors(tmp_path, data, message):
    teacher = _teacher(tmp_path / "teacher", None)
    _csv(tmp_path / "all.csv", _rows([0, 1] * 4))
    with pytest.raises(ConfigError) as info:
        _config(teacher, tmp_path, data)
    assert message in str(info.value)


# ---------------------------------------------------------------------------------------------
# 8. Labels outside the models' classes


@pytest.mark.parametrize("bad, line", [(2, "the label 2"), (-1, "the label -1")])
def test_labels_outside_the_classes_name_the_record_and_the_range(tmp_path, bad, line):
    teacher = _teacher(tmp_path / "teacher", None)
    train = _csv(tmp_path / "train.csv", _rows([0, 1] * 4))
    validation = _csv(tmp_path / "validation.csv", _rows([0, 1, 1, bad, 0]))
    with pytest.raises(DataError) as info:
        _config(teacher, tmp_path, {"train": str(train), "validation": str(validation)})
    message = str(info.value)
    assert f"validation.csv: record 3 has the label {bad} in 'label', outside the models' classes" in message
    assert "whole numbers from 0 to 1" in message


def test_labels_outside_a_factory_models_outputs_are_refused_at_build(tmp_path):
    train = _csv(tmp_path / "train.csv", _rows([0, 1] * 4))
    validation = _csv(tmp_path / "validation.csv", _rows([0, 2]))
    raw = {
        "teacher": {"factory": "reliability._models:bert", "args": {"num_layers": 2, "hidden_size": 32}},
        "student": {"factory": "reliability._models:bert", "args": {"num_layers": 1, "hidden_size": 32}},
        "data": {"train": str(train), "validation": str(validation), "tokenizer": str(TOKENIZER)},
        "matches": [{"teacher": "logits", "loss": "kl"}],
        "python_path": [str(ROOT / "tests")],
        "training": {"max_steps": 1, "progress": False, "tensorboard": False},
        "output_dir": str(tmp_path / "run"),
    }
    config = config_from_dict(raw, base_dir=tmp_path)  # a factory's size is unknown before it is built
    with pytest.raises(DataError, match=r"validation.csv: record 1 has the label 2 in 'label', outside the "
                                        r"teacher's 2 classes"):
        build(config)


# ---------------------------------------------------------------------------------------------
# 10. Missing texts: one rule for every format


def _write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("\n".join(texts) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("name, body", [
    ("train.csv", 'text,label\ngood film,1\n,0\nbad plot,0\n'),
    ("train.csv", 'text,label\ngood film,1\n"   ",0\nbad plot,0\n'),
    ("train.jsonl", '{"text": "good film", "label": 1}\n{"text": NaN, "label": 0}\n{"text": "bad plot", "label": 0}\n'),
    ("train.jsonl", '{"text": "good film", "label": 1}\n{"text": null, "label": 0}\n{"text": "bad plot", "label": 0}\n'),
])
def test_a_missing_text_is_refused_in_every_format_unless_skipped(tmp_path, name, body):
    teacher = _teacher(tmp_path / "teacher", None)
    train = tmp_path / name
    train.write_text(body, encoding="utf-8")
    with pytest.raises(DataError) as info:
        _config(teacher, tmp_path, {"train": str(train)})
    assert f"{name}: record 1 has no text in 'text'" in str(info.value)
    assert "data.missing_text: skip" in str(info.value)
    config = _config(teacher, tmp_path, {"train": str(train), "missing_text": "skip"})
    parts = build(config)
    assert len(parts.datasets["train"]) == 2 and list(parts.datasets["train"].labels) == [1, 0]
    assert "records left out for a missing text (data.missing_text: skip): train 1" in plan(config)


def test_the_string_nan_is_a_text(tmp_path):
    teacher = _teacher(tmp_path / "teacher", None)
    train = tmp_path / "train.csv"
    train.write_text("text,label\nnan,1\ngood,0\n", encoding="utf-8")
    assert len(build(_config(teacher, tmp_path, {"train": str(train)})).datasets["train"]) == 2


def test_export_and_bench_read_the_runs_labels_by_the_runs_rule(tmp_path):
    """The held-out data of export and bench is the run's own split with the run's label ids, and a
    --data file's string labels take the student's id2label (they were sorted names: a teacher that
    always says 'positive' (id 0) measured 25% instead of 75%)."""
    from kdistill.export import held_out
    from kdistill.run_folder import model_label_names

    teacher = _teacher(tmp_path / "teacher", {0: "positive", 1: "negative"}, always=0)
    labels = ["positive"] * 12 + ["negative"] * 4
    train = _csv(tmp_path / "train.csv", _rows(labels))
    test = _csv(tmp_path / "test.csv", _rows(labels, seed=1))
    run(_config(teacher, tmp_path, {"train": str(train), "validation": str(test), "test": str(test)}))
    data = held_out(tmp_path / "run", split="test")
    assert data.labels == [0] * 12 + [1] * 4 and "test split of the run" in data.source
    names = model_label_names(tmp_path / "run" / "student")
    assert names == ["positive", "negative"]
    given = held_out(None, data=test, label_names=names)
    assert given.labels == [0] * 12 + [1] * 4


def test_every_run_writes_a_report_whose_figures_are_the_summarys(tmp_path):
    """report.md: the accuracy table of summary.json, the loss and accuracy plots, the resolved config
    at its end; a benchmark section added by `kdistill bench` survives the next save."""
    import yaml

    from kdistill.report import BENCH_END, BENCH_START, CONFIG_HEADING, put_section

    teacher = _teacher(tmp_path / "teacher", {0: "positive", 1: "negative"}, always=0)
    labels = ["positive"] * 12 + ["negative"] * 4
    train = _csv(tmp_path / "train.csv", _rows(labels))
    test = _csv(tmp_path / "test.csv", _rows(labels, seed=1))
    config = _config(teacher, tmp_path, {"train": str(train), "validation": str(test), "test": str(test)})
    summary = run(config)
    out = tmp_path / "run"
    report = (out / "report.md").read_text()
    assert (out / "loss.png").is_file() and (out / "accuracy.png").is_file()
    student = summary["metrics"]["test"]["student"]["accuracy"]
    assert f"| test | teacher | 75.00% |" in report and f"| test | student | {student:.2%} |" in report
    head, _, config_part = report.partition(CONFIG_HEADING)
    assert yaml.safe_load(config_part.strip().removeprefix("```yaml").removesuffix("```")) == config.resolved()
    put_section(out / "report.md", f"{BENCH_START}\n## Benchmark\nfast\n{BENCH_END}")
    run(config)  # the same config again: complete; the student is saved again and the report rewritten
    report = (out / "report.md").read_text()
    assert "## Benchmark\nfast" in report and report.index("## Benchmark") < report.index(CONFIG_HEADING)
