"""Run fuzz: the data a user brings — label sets in any order, teachers that name their classes or
not, unknown and out-of-range labels, missing texts in CSV and JSON lines, a split path with a test
file beside it, a teacher folder without its tokenizer — run through ``kdistill run`` as the CLI
does. Every case ends either in a finished run whose summary agrees with an independent evaluation
of the saved student (and the teacher) with plain ``transformers``, or in a KdistillError printed
as ``error: …`` with exit 2 — never a traceback.

    PYTHONPATH=src .venv/bin/python -m pytest tests/reliability/test_run_fuzz.py -q
    KDISTILL_RUN_FUZZ_EXAMPLES=200 PYTHONPATH=src .venv/bin/python -m pytest tests/reliability/test_run_fuzz.py -q -s
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kdistill.cli import main

ROOT = Path(__file__).resolve().parents[2]
TOKENIZER = ROOT / "examples" / "data" / "tiny_tokenizer"
WORDS = ["good", "bad", "film", "plot", "great", "story", "cast", "sharp", "dull", "not"]
NAMES = ["pos", "neg", "mid", "spam", "ham"]
PER_TEST = int(os.environ.get("KDISTILL_RUN_FUZZ_EXAMPLES", "24"))
OUTCOMES: Counter = Counter()


def _teacher(folder: Path, names: list[str] | None, classes: int, seed: int) -> None:
    from transformers import BertConfig, BertForSequenceClassification

    vocab = len((TOKENIZER / "vocab.txt").read_text(encoding="utf-8").split())
    named = {"id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)}} if names else {}
    config = BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=classes,
                        initializer_range=0.5, **named)
    torch.manual_seed(seed)
    BertForSequenceClassification(config).save_pretrained(folder)
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(TOKENIZER / name, folder / name)


def _write(path: Path, rows: list[tuple[object, object]], fmt: str) -> None:
    if fmt == "csv":
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            writer.writerows(("" if text is None or (isinstance(text, float)) else text, label)
                             for text, label in rows)
    else:
        lines = [json.dumps({"text": text, "label": label}) for text, label in rows]  # NaN stays NaN (valid for Python)
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@st.composite
def cases(draw):
    classes = draw(st.integers(2, 3))
    string_labels = draw(st.booleans())
    vocabulary = draw(st.permutations(NAMES))[:classes] if string_labels else list(range(classes))
    teacher_names = draw(st.sampled_from(["named", "generic"]))
    names = [str(v) for v in draw(st.permutations(vocabulary))] if teacher_names == "named" else None
    if names and not string_labels:
        names = [NAMES[i] for i in draw(st.permutations(range(len(NAMES))))[:classes]]
    rows = {}
    for split, size in (("train", 16), ("validation", 8), ("test", 8)):
        rows[split] = [(" ".join(draw(st.lists(st.sampled_from(WORDS), min_size=2, max_size=6))),
                        draw(st.sampled_from(vocabulary))) for _ in range(size)]
    faults = draw(st.lists(st.sampled_from(["unknown_label", "out_of_range", "negative", "missing_text",
                                            "no_tokenizer", "nan_text"]), max_size=2, unique=True))
    for fault in faults:
        split = draw(st.sampled_from(list(rows)))
        at = draw(st.integers(0, len(rows[split]) - 1))
        text, label = rows[split][at]
        if fault == "unknown_label":
            rows[split][at] = (text, "other" if string_labels else classes + 1)
        elif fault == "out_of_range":
            rows[split][at] = (text, classes)
        elif fault == "negative":
            rows[split][at] = (text, -1)
        elif fault == "missing_text":
            rows[split][at] = (draw(st.sampled_from([None, "", "   "])), label)
        elif fault == "nan_text":
            rows[split][at] = (float("nan"), label)
    return {
        "classes": classes, "names": names, "rows": rows, "faults": faults,
        "format": draw(st.sampled_from(["csv", "jsonl"])),
        "layout": draw(st.sampled_from(["files", "path+test"])),
        "missing_text": draw(st.sampled_from(["error", "skip"])),
        "seed": draw(st.integers(0, 3)),
    }


def _config(case: dict, folder: Path) -> Path:
    teacher = folder / "teacher"
    _teacher(teacher, case["names"], case["classes"], case["seed"])
    data: dict = {"max_length": 16, "batch_size": 8, "missing_text": case["missing_text"]}
    if "no_tokenizer" in case["faults"]:
        (teacher / "vocab.txt").unlink()
    ext = case["format"]
    for split, rows in case["rows"].items():
        _write(folder / f"{split}.{ext}", rows, ext)
    if case["layout"] == "files":
        data.update(train=f"train.{ext}", validation=f"validation.{ext}", test=f"test.{ext}")
    else:  # the train and validation rows in one file cut by split, the test file beside it
        _write(folder / f"all.{ext}", case["rows"]["train"] + case["rows"]["validation"], ext)
        data.update(path=f"all.{ext}", split=[0.75, 0.25], test=f"test.{ext}")
    raw = {
        "teacher": {"path": "teacher"}, "student": {"from_teacher": {"layers": [1]}}, "data": data,
        "method": "hinton", "method_args": {"temperature": 2.0, "alpha": 0.5},
        "training": {"lr": 1e-3, "max_steps": 2, "log_every": 1, "progress": False, "tensorboard": False},
        "output_dir": str(folder / "run"),
    }
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def _independent_accuracy(model_dir: Path, rows: list[tuple[object, object]], skip_missing: bool) -> float:
    """Accuracy of a saved classifier on raw rows, with plain transformers and the model's own id2label."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    kept = [(t, y) for t, y in rows if isinstance(t, str) and t.strip()] if skip_missing else rows
    encoded = tokenizer([t for t, _ in kept], truncation=True, max_length=16, padding=True, return_tensors="pt")
    with torch.no_grad():
        predicted = model(**encoded).logits.argmax(-1).tolist()
    id2label = {int(k): v for k, v in model.config.id2label.items()}
    right = 0
    for p, (_, label) in zip(predicted, kept):
        right += (id2label[p] == label) if isinstance(label, str) else (p == int(label))
    return right / len(kept)


@settings(max_examples=PER_TEST, deadline=None, derandomize="KDISTILL_RUN_FUZZ_EXAMPLES" not in os.environ,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(case=cases())
def test_a_run_ends_in_a_result_that_re_evaluates_the_same_or_in_an_error(case, tmp_path_factory, capsys):
    folder = tmp_path_factory.mktemp("case")
    config = _config(case, folder)
    capsys.readouterr()
    code = main(["run", str(config)])  # any exception other than a KdistillError fails the test here
    err = capsys.readouterr().err
    if code != 0:
        assert code == 2 and err.startswith("error: "), err
        assert "Traceback" not in err
        OUTCOMES["error"] += 1
        return
    assert case["faults"] in ([], ["missing_text"], ["nan_text"], ["missing_text", "nan_text"],
                              ["nan_text", "missing_text"]), f"ran despite {case['faults']}"
    assert case["missing_text"] == "skip" or not {"missing_text", "nan_text"} & set(case["faults"])
    summary = json.loads((folder / "run" / "summary.json").read_text(encoding="utf-8"))
    test = summary["metrics"]["test"]
    skip = case["missing_text"] == "skip"
    student = _independent_accuracy(folder / "run" / "student", case["rows"]["test"], skip)
    teacher = _independent_accuracy(folder / "teacher", case["rows"]["test"], skip) if case["names"] or \
        not isinstance(case["rows"]["test"][0][1], str) else None
    assert math.isclose(test["student"]["accuracy"], student, abs_tol=1e-6)
    if teacher is not None:  # a generic teacher's own id2label cannot name string labels
        assert math.isclose(test["teacher"]["accuracy"], teacher, abs_tol=1e-6)
    OUTCOMES["ran"] += 1


def test_report_the_outcomes():
    print(f"\nrun fuzz outcomes: {dict(OUTCOMES)}")
    if OUTCOMES:
        assert OUTCOMES["ran"] and OUTCOMES["error"], "the cases should reach both outcomes"
