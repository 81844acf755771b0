"""Inputs a careless user writes, each once a run to a wrong figure: a teacher whose classifier is
made at load, labels written "1.0", a split too small for its fractions (issue 15)."""

from __future__ import annotations

import json

import pytest
from test_labels import _config, _csv, _rows, _teacher

from kdistill.data import load_records
from kdistill.errors import ConfigError, DataError
from kdistill.run import build, plan
from kdistill.run_data import read_tables


@pytest.mark.parametrize("how", ["base model", "num_labels"])
def test_a_teacher_whose_classifier_is_made_at_load_is_no_logits_target(tmp_path, how):
    # A bare BertModel folder, or teacher.num_labels replacing the head: the teacher's classifier is
    # random and frozen, so distilling its logits trained the student on noise without a word.
    from transformers import BertModel

    teacher = _teacher(tmp_path / "teacher", None)
    if how == "base model":
        BertModel.from_pretrained(teacher).save_pretrained(teacher)
    spec = {"path": str(teacher), **({"num_labels": 3} if how == "num_labels" else {})}
    train = _csv(tmp_path / "train.csv", _rows([0, 1, 2] * 4 if how == "num_labels" else [0, 1] * 6))
    config = _config(teacher, tmp_path, {"train": str(train)}, teacher=spec)
    with pytest.raises(ConfigError) as info:
        plan(config)
    message = str(info.value)
    assert "its logits are random" in message and "match 'soft'" in message
    assert ("has no sequence-classification head" if how == "base model"
            else "teacher.num_labels 3 replaces the checkpoint's 2-class head") in message


def test_a_new_teacher_head_is_fine_when_only_hidden_states_are_matched(tmp_path):
    teacher = _teacher(tmp_path / "teacher", None)
    train = _csv(tmp_path / "train.csv", _rows([0, 1, 2] * 4))
    config = _config(teacher, tmp_path, {"train": str(train)}, teacher={"path": str(teacher), "num_labels": 3},
                     method=None, matches=[{"teacher": "hidden.-1", "student": "hidden.-1", "loss": "hidden_mse"}])
    assert build(config).data.num_classes == 3


def test_labels_written_with_a_decimal_point_are_class_ids_as_in_json(tmp_path):
    # "0.0"/"2.0" (pandas writes an int column with a gap as floats) were names in sorted order: "2.0"
    # became class 1 of a three-class teacher, while JSON's 2.0 was class 2.
    teacher = _teacher(tmp_path / "teacher", None, num_labels=3)
    train = _csv(tmp_path / "train.csv", _rows(["0.0", "2.0"] * 6))
    tables = read_tables(_config(teacher, tmp_path, {"train": str(train)}))
    assert tables.label_names is None
    assert tables.tables["train"].labels[:2] == [0, 2]


def test_a_split_too_small_for_its_fractions_is_refused_not_left_out(tmp_path):
    # Three records cut [0.8, 0.1, 0.1]: validation and test rounded to none, and the run reported no
    # validation or test figures without a word.
    teacher = _teacher(tmp_path / "teacher", None)
    everything = _csv(tmp_path / "all.csv", _rows([0, 1, 0]))
    with pytest.raises(DataError) as info:
        _config(teacher, tmp_path, {"path": str(everything), "split": [0.8, 0.1, 0.1]})
    assert str(info.value) == (f"data.split: [0.8, 0.1, 0.1] of the 3 records of {everything} leaves the "
                               "'validation' split empty; give more records, a larger fraction, or 0 for no "
                               "'validation' split.")
    assert set(read_tables(_config(teacher, tmp_path, {"path": str(everything), "split": [1.0, 0.0]})).tables) == {
        "train"}


def test_white_space_around_a_string_label_is_not_another_class(tmp_path):
    # "good film, positive": ' positive' and 'positive' were two classes, and the error advised
    # teacher.num_labels: 4 for two labels.
    teacher = _teacher(tmp_path / "teacher", None)
    train = _csv(tmp_path / "train.csv", _rows([" positive", "negative ", "positive", " negative "] * 3))
    tables = read_tables(_config(teacher, tmp_path, {"train": str(train)}))
    assert tables.label_names == ["negative", "positive"]
    assert tables.tables["train"].labels[:4] == [1, 0, 1, 0]


def test_a_header_naming_a_column_twice_is_refused(tmp_path):
    # "text,text,label": the second 'text' column silently replaced the first.
    path = tmp_path / "twice.csv"
    path.write_text("text,text,label\ngood film,bad plot,1\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_records(path)
    assert str(info.value) == (f"'{path}' line 1 names the column 'text' more than once (header: text, text, "
                               "label); rename the columns so that each name is used once.")


@pytest.mark.parametrize(("column", "value", "message"), [
    ("label", [1], "has a JSON list in 'label' ([1]); a label is one class: an integer or a string."),
    ("text", {"a": 1}, "has a JSON dict in 'text' ({'a': 1}); a text is one string."),
])
def test_a_json_list_or_object_is_no_label_or_text(tmp_path, column, value, message):
    # A label [1] was the class named "[1]"; a text {"a": 1} was the text "{'a': 1}".
    teacher = _teacher(tmp_path / "teacher", None)
    records = [{"text": "good film", "label": 0}, {"text": "bad plot", "label": 1}]
    records[1][column] = value
    train = tmp_path / "train.jsonl"
    train.write_text("\n".join(json.dumps(record) for record in records), encoding="utf-8")
    with pytest.raises(DataError) as info:
        _config(teacher, tmp_path, {"train": str(train)})
    assert str(info.value) == f"{train}: record 1 {message}"


def test_a_student_folder_without_kdistills_list_keeps_the_users_files(tmp_path):
    """A student/ the user made (or one written before the list existed): its model files are
    kdistill's, everything else is the user's, through a save and an overwrite."""
    from kdistill.config import load_config
    from kdistill.run import run

    from ._helpers import write_config

    out = tmp_path / "run"
    (out / "student").mkdir(parents=True)
    (out / "student" / "README.md").write_text("my card")
    (out / "student" / "config.json").write_text("{}")  # a stale model file: kdistill's to replace
    (out / "config.resolved.yaml").write_text("{}")  # an old run: this folder is a kdistill run folder
    path = write_config(tmp_path, out, training={"max_steps": 1})
    run(load_config(path), overwrite=True)
    assert (out / "student" / "README.md").read_text() == "my card"
    assert (out / "student" / "config.json").read_text() != "{}"
    (out / "student" / ".kdistill-files.json").unlink()  # as a folder saved before the list existed
    run(load_config(path, ["training.max_steps=2"]), overwrite=True)
    assert (out / "student" / "README.md").read_text() == "my card"
