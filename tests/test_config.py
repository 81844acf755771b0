"""The run config: schema, whole-file validation with every problem listed, overrides, YAML."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import pytest

from kdistill.config import (
    DataSpec,
    RunConfig,
    TrainingSpec,
    config_from_dict,
    load_config,
    parse_yaml,
)
from kdistill.errors import ConfigError
from kdistill.losses import LOSSES
from kdistill.methods import METHODS
from kdistill.train import TrainConfig

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
DATA = EXAMPLES / "data"


def base(**changes) -> dict:
    """A valid config as a dict (files from examples/data); ``changes`` replace top-level keys."""
    config = {
        "teacher": {"factory": "tiny_models:tiny_bert", "args": {"num_layers": 2}},
        "student": {"from_teacher": {"layers": [1]}},
        "data": {"train": "data/reviews_train.csv", "validation": "data/reviews_validation.csv",
                 "tokenizer": "data/tiny_tokenizer", "max_length": 16},
        "matches": [{"teacher": "logits", "loss": "kl", "args": {"temperature": 2.0}}],
    }
    config.update(changes)
    return config


def problems(raw: dict, overrides=(), base_dir=EXAMPLES) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw, overrides, base_dir=base_dir, source="run.yaml")
    lines = str(info.value).splitlines()
    assert lines[0].startswith("invalid config run.yaml (")
    return [line.removeprefix("  - ") for line in lines[1:]]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------
# Valid configs


def test_valid_config_resolves_paths_and_fills_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = config_from_dict(base(), base_dir=EXAMPLES, source="cfg/run.yaml")
    assert isinstance(config, RunConfig)
    assert config.data.train == str(DATA / "reviews_train.csv")
    assert config.data.tokenizer == str(DATA / "tiny_tokenizer")
    assert config.output_dir == str(tmp_path / "runs" / "run")  # relative to the current directory
    assert config.python_path == [str(EXAMPLES)]
    assert config.training.lr == 5e-5 and config.training.epochs == 1
    assert config.data.batch_size == 16 and config.data.label == "label"
    assert config.matches[0].student is None and config.matches[0].weight == 1.0
    # The resolved form validates again to the same config.
    again = config_from_dict(config.resolved(), base_dir=tmp_path, import_from_base=False)
    assert again.resolved() == config.resolved()


def test_training_section_mirrors_train_config():
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    assert set(TrainingSpec.model_fields) == set(fields)
    defaults = TrainingSpec()
    for name, field in fields.items():
        default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
        if name == "seed":
            assert defaults.seed is None  # falls back to the run's top-level seed
        else:
            assert getattr(defaults, name) == default, name


def test_yaml_reads_exponent_floats_and_rejects_duplicate_keys(tmp_path):
    assert parse_yaml("lr: 3e-5\nn: 3\nx: 1.5\ns: abc") == {"lr": 3e-5, "n": 3, "x": 1.5, "s": "abc"}
    with pytest.raises(ConfigError, match=r"^x\.yaml:3:1: not valid YAML: the key 'lr' appears twice"):
        parse_yaml("lr: 1\nepochs: 2\nlr: 3\n", source="x.yaml")
    with pytest.raises(ConfigError, match=r"^x\.yaml:2:\d+: not valid YAML"):
        parse_yaml("a: [1, 2\nb: 3\n", source="x.yaml")


def test_load_config_reads_the_file_relative_to_itself(tmp_path):
    (tmp_path / "data").mkdir()
    for name in ("reviews_train.csv", "reviews_validation.csv"):
        (tmp_path / "data" / name).write_text((DATA / name).read_text())
    yaml_text = """
teacher: {factory: "tiny_models:tiny_bert"}
student: {from_teacher: {layers: [0]}}
data: {train: data/reviews_train.csv, validation: data/reviews_validation.csv, tokenizer: %s}
method: hinton
method_args: {temperature: 2.0, alpha: 0.5}
training: {lr: 3e-5}
python_path: [%s]
""" % (DATA / "tiny_tokenizer", EXAMPLES)
    config = load_config(write(tmp_path / "run.yaml", yaml_text), ["training.epochs=3"])
    assert config.data.train == str(tmp_path / "data" / "reviews_train.csv")
    assert config.training.lr == 3e-5 and config.training.epochs == 3
    assert config.python_path == [str(tmp_path), str(EXAMPLES)]
    assert config.source == str(tmp_path / "run.yaml")
    with pytest.raises(ConfigError, match=r"^config file '.*nope\.yaml' does not exist\.$"):
        load_config(tmp_path / "nope.yaml")


def test_every_example_config_validates():
    paths = sorted(EXAMPLES.glob("*.yaml"))
    assert {p.name for p in paths} >= {"hinton_classifier.yaml", "tinybert_matches.yaml", "cnn_module_hooks.yaml"}
    for path in paths:
        config = load_config(path)
        assert config.method is not None or config.matches


# ---------------------------------------------------------------------------------------------
# Every problem at once, each named by its path


def test_all_problems_are_collected_into_one_error(tmp_path):
    raw = base(
        trainig={"lr": 1e-3},
        method="hintn",
        matches=[
            {"teacher": "logits", "loss": "kl"},
            {"teacher": "hiden.2", "student": "hidden.1", "loss": "hidden_mse"},
            {"teacher": "hidden.2", "student": "hidden.1", "loss": "hiden_mse"},
        ],
    )
    raw["teacher"] = {"pth": "somewhere", "factory": "tiny_models:tiny_bert"}
    raw["data"]["label"] = "lable"
    raw["data"]["test"] = "data/missing.csv"
    raw["training"] = {"epochs": "many", "mixed_precision": "fp8"}
    found = problems(raw)
    names = ", ".join(LOSSES.names())
    expected = [
        "trainig: unknown key 'trainig'; did you mean 'training'? Valid keys: ",
        "teacher.pth: unknown key 'pth'; did you mean 'path'? Valid keys: args, blocks, factory, finetune, from_teacher, lora, num_labels, path, pooling, task.",
        "training.epochs: expected a number, got 'many'.",
        "training.mixed_precision: 'fp8' is not a valid choice. Choose one of: no, bf16, fp16.",
        f"method: unknown method 'hintn'; did you mean 'hinton'? Available: {', '.join(METHODS.names())}.",
        f"data.label: no column 'lable' in '{DATA / 'reviews_train.csv'}'; did you mean 'label'? Columns: text, label. "
        "(Set 'label: null' for unlabelled data.)",
        f"data.test: the data file '{DATA / 'missing.csv'}' does not exist.",
        "matches[1].teacher: unknown feature ref 'hiden.2'; did you mean 'hidden'? Valid forms: logits, pooled, embedding, "
        "hidden.N, attn.N, attn_scores.N, query.N, key.N, value.N, module:PATH.",
        f"matches[2].loss: unknown loss 'hiden_mse'; did you mean 'hidden_mse'? Available: {names}.",
    ]
    for line in expected:
        assert any(p.startswith(line) for p in found), (line, found)
    assert len(found) == len(expected) + 1  # the validation file also lacks 'lable'
    text = "\n".join(found)
    assert "pydantic" not in text and "For further information" not in text and "Input should" not in text


def test_unknown_key_without_a_close_match_lists_the_valid_keys():
    raw = base()
    raw["data"]["zzzz"] = 1
    (line,) = problems(raw)
    assert line == ("data.zzzz: unknown key 'zzzz'. Valid keys: " + ", ".join(sorted(DataSpec.model_fields)) + ".")


def test_missing_sections_and_nothing_to_distil():
    found = problems({"student": {"from_teacher": {"layers": [0]}}})
    assert found == [
        "teacher: required, but missing.",
        "data: required, but missing.",
        "matches: give a 'method' (e.g. method: hinton; see `kdistill methods`) or a list of 'matches' "
        "(see `kdistill losses`) — the run has neither. (A run on the labels alone, without a teacher signal: "
        "matches: [] and hard_label_weight: 1.)",
    ]


def test_loss_and_method_arguments_are_checked_against_their_signatures():
    raw = base(method="hinton", method_args={"temprature": 2.0})
    raw["matches"] = [{"teacher": "logits", "loss": "kl", "args": {"temprature": 2.0}}]
    found = problems(raw)
    assert found == [
        "method_args.temprature: method 'hinton' takes no argument 'temprature'; did you mean 'temperature'? "
        "It takes: temperature, alpha, loss, teacher_layers, student_layers.",
        "matches[0].args.temprature: loss 'kl' takes no argument 'temprature'; did you mean 'temperature'? "
        "It takes: temperature, t2_scale.",
    ]


def test_hyper_parameters_out_of_range_are_refused_with_the_range():
    raw = base(method="hinton", hard_label_weight=-0.5,
               method_args={"alpha": 2, "temperature": {"schedule": "linear", "start_value": 4, "end_value": 0}})
    raw["matches"] = [{"teacher": "logits", "loss": "kl", "weight": -1, "args": {"temperature": 0}},
                      {"teacher": "value.-1", "loss": "relation_kl", "args": {"num_heads": 2.5}},
                      {"teacher": "logits", "loss": "hard_ce", "args": {"label_smoothing": 1.5}}]
    assert problems(raw) == [
        "method_args.alpha: 2 is out of range; it must be between 0 and 1 (the weight of the soft-target loss; "
        "the hard-label weight is 1 − alpha).",
        "method_args.temperature.end_value: 0 is out of range; it must be greater than 0 (the softmax temperature "
        "T; T = 0 divides by zero).",
        "hard_label_weight: -0.5 is out of range; it must be at least 0 (a weight multiplies its loss; a negative "
        "weight would train the student to maximise it).",
        "matches[0].args.temperature: 0 is out of range; it must be greater than 0 (the softmax temperature T; "
        "T = 0 divides by zero).",
        "matches[0].weight: -1 is out of range; it must be at least 0 (a weight multiplies its loss; a negative "
        "weight would train the student to maximise it).",
        "matches[1].args.num_heads: 2.5 is not a whole number; it must be a whole number, at least 1 (the "
        "relation heads; each model's width must be divisible by it).",
        "matches[2].args.label_smoothing: 1.5 is out of range; it must be between 0 and 1.",
    ]


def test_method_options_outside_their_choices_are_refused():
    raw = base(method="pkd", method_args={"strategy": "lst", "t2_scale": "yes", "teacher_layers": 0})
    assert problems(raw) == [
        "method_args.strategy: 'lst' is not valid; did you mean 'last'? It must be one of skip, last.",
        "method_args.t2_scale: 'yes' is not valid. It must be one of true, false.",
        "method_args.teacher_layers: 0 is out of range; it must be a whole number, at least 1 (a number of layers).",
    ]


def test_schedules_weights_projections_and_layer_maps():
    raw = base(layer_map=[[0, 0], [2]])
    raw["matches"] = [
        {"teacher": "hidden.*", "loss": "hidden_mse", "weight": {"schedule": "linar", "start_value": 1.0}},
        {"teacher": "logits", "loss": "kl", "weight": "heavy", "projection": "lineer", "start": -1},
        {"teacher": "attn.*", "student": "hidden.1", "loss": "attention_mse"},
        {"teacher": "logits", "loss": "kl", "weight": {"schedule": "linear", "start_value": 0, "end_value": 1}},
    ]
    found = problems(raw)
    assert found[0].startswith("matches[0].weight.schedule: unknown schedule 'linar'; did you mean 'linear'?")
    assert found[1:] == [
        "matches[1].weight: expected a weight or a schedule, got 'heavy'.",
        "matches[1].start: expected a step (a whole number) or a fraction of the run (0.0–1.0), got -1.",
        "matches[1].projection: unknown projection 'lineer'; did you mean 'linear'? Available: auto, linear, "
        "mlp, none, or 'package.module:function' building a module from (in_width, out_width).",
        "matches[2]: '.*' refs expand over the layer map, so teacher and student must both use one of the same "
        "kind (e.g. teacher: hidden.*, student: hidden.*); got 'attn.*' and 'hidden.1'.",
        "layer_map[1]: expected [teacher_hidden, student_hidden] (two layer numbers, 0 = embeddings), got [2].",
    ]


def test_model_sources_and_factory_form():
    raw = base(student={"factory": "tiny_models.tiny_bert", "from_teacher": {"layers": [0]}})
    raw["teacher"] = {"from_teacher": {"num_layers": 1, "layers": [0]}}
    assert problems(raw) == [
        "teacher.from_teacher: only a student can be built from the teacher; give the teacher a 'path' (a Hugging "
        "Face folder) or a 'factory'.",
        "teacher: say where the model comes from: one of path, factory.",
        "teacher.from_teacher: give either 'layers' (teacher blocks to copy, e.g. [0, 2, 4]) or 'num_layers' "
        "(a randomly initialised smaller model), not both or neither.",
        "student: give only one of path, factory, from_teacher; this has factory and from_teacher.",
        "student.factory: 'tiny_models.tiny_bert' is not of the form 'package.module:function' "
        "(e.g. 'my_models:build_student').",
    ]


def test_text_data_needs_a_tokenizer_when_the_teacher_is_a_factory():
    raw = base()
    del raw["data"]["tokenizer"]
    assert problems(raw) == [
        "data.tokenizer: the teacher is built by a factory, so name the tokenizer folder for the text "
        "(data.tokenizer: path/to/folder).",
    ]


def test_tokenizer_folders_must_hold_a_vocabulary(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text("{}")  # settings only: every word would be [UNK]
    data = {**base()["data"], "tokenizer": str(tmp_path), "student_tokenizer": str(tmp_path / "nope")}
    expected = ("tokenizer.json, vocab.txt, vocab.json, spiece.model, sentencepiece.bpe.model, tokenizer.model")
    assert problems(base(data=data)) == [
        f"data.tokenizer: the folder '{tmp_path}' has no tokenizer files (expected one of {expected}); it holds: "
        "tokenizer_config.json.",
        f"data.student_tokenizer: the tokenizer folder '{tmp_path / 'nope'}' does not exist.",
    ]


def test_model_folder_missing_without_config_or_damaged(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "weights.bin").write_bytes(b"")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    found = problems(base(teacher={"path": str(tmp_path / "nope")}, student={"path": str(tmp_path / "empty")}))
    assert found == [
        f"teacher.path: the model folder '{tmp_path / 'nope'}' does not exist (models load offline, from a folder "
        "holding config.json and the weights; nothing is downloaded).",
        f"student.path: the folder '{tmp_path / 'empty'}' has no config.json, so it is not a Hugging Face model "
        "folder (it holds: weights.bin).",
    ]
    (line,) = problems(base(teacher={"path": str(tmp_path / "broken")}))
    assert line == (f"teacher.path: '{tmp_path / 'broken' / 'config.json'}' is not valid JSON (line 1, column 2: "
                    "Expecting property name enclosed in double quotes); the model folder is damaged.")


def test_unreadable_model_folder(tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    folder.chmod(0)
    try:
        if os.access(folder, os.R_OK | os.X_OK):
            pytest.skip("running as a user (root) whom permissions do not stop")
        (line,) = problems(base(teacher={"path": str(folder)}))
        assert line == f"teacher.path: the model folder '{folder}' cannot be read (permission denied)."
    finally:
        folder.chmod(0o755)


def test_empty_and_header_only_data_files(tmp_path):
    write(tmp_path / "empty.csv", "")
    write(tmp_path / "header.csv", "text,label\n")
    write(tmp_path / "rows.jsonl", '{"sentence": "good film", "label": 1}\n')
    raw = base()
    raw["data"] = {"train": str(tmp_path / "empty.csv"), "validation": str(tmp_path / "header.csv"),
                   "test": str(tmp_path / "rows.jsonl"), "tokenizer": str(DATA / "tiny_tokenizer")}
    assert problems(raw) == [
        f"data.train: the data file '{tmp_path / 'empty.csv'}' is empty.",
        f"data.validation: the data file '{tmp_path / 'header.csv'}' has a header but no records.",
        f"data.text: no column 'text' in '{tmp_path / 'rows.jsonl'}'. Columns: sentence, label.",
    ]


def test_data_sources_and_split():
    raw = base()
    raw["data"] = {"builtin": "movie_reviews", "path": "data/reviews_train.csv", "split": [0.5, 0.6],
                   "tokenizer": "data/tiny_tokenizer"}
    assert problems(raw) == [
        "data: give only one of 'builtin', 'path' or 'train'/'validation'/'test' files; this has builtin and path.",
        "data.split: [0.5, 0.6] must be two or three non-negative fractions that sum to 1 (train, validation[, "
        "test]), e.g. [0.8, 0.1, 0.1].",
    ]


# ---------------------------------------------------------------------------------------------
# Overrides


def test_overrides_set_values_by_dotted_path():
    config = config_from_dict(
        base(), ["training.lr=3e-5", "matches.0.weight=2", "data.text=[text]", "student.from_teacher.layers=[0, 1]",
                 "matches.0.args.temperature=4", "method=hinton", "training.max_steps=3", "data.label=null"],
        base_dir=EXAMPLES,
    )
    assert config.training.lr == 3e-5 and isinstance(config.training.lr, float)
    assert config.matches[0].weight == 2
    assert config.matches[0].args == {"temperature": 4}
    assert config.data.text == ["text"] and config.data.label is None
    assert config.student.from_teacher.layers == [0, 1]
    assert config.method == "hinton" and config.training.max_steps == 3


def test_override_creates_missing_sections():
    raw = base()
    raw.pop("student")
    config = config_from_dict(raw, ["student.from_teacher.num_layers=1", "training.epochs=2"], base_dir=EXAMPLES)
    assert config.student.from_teacher.num_layers == 1 and config.training.epochs == 2


def test_bad_override_paths_are_errors_with_suggestions():
    found = problems(base(), ["training.lrr=3e-5", "matches.3.weight=1", "matches.x.weight=1", "trainng.lr=1",
                              "training.lr.value=1", "epochs"])
    assert found == [
        "training.lrr: unknown key 'lrr' (from the override 'training.lrr=3e-5'); did you mean 'lr'? Valid keys: "
        + ", ".join(sorted(TrainingSpec.model_fields)) + ".",
        "matches.3: index 3 is out of range (from the override 'matches.3.weight=1'): 'matches' has 1 item.",
        "matches.x: 'x' is not a list index (from the override 'matches.x.weight=1'); use a number, e.g. 'matches.0'.",
        "trainng: unknown key 'trainng' (from the override 'trainng.lr=1'); did you mean 'training'? Valid keys: "
        + ", ".join(sorted(RunConfig.model_fields)) + ".",
        "training.lr.value: 'training.lr' holds a single value, so it has no key 'value' (from the override "
        "'training.lr.value=1').",
        "override 'epochs': expected KEY=VALUE, e.g. 'training.lr=3e-5' or 'matches.0.weight=2'.",
    ]


def test_override_values_are_validated_like_the_file():
    (line,) = problems(base(), ["data.batch_size=0"])
    assert line == "data.batch_size: must be at least 1, got 0."



def test_a_training_metric_the_task_never_reports_is_refused_before_any_weight_loads(tmp_path):
    """The trainer keeps the best step by ``training.metric``; a name the validation never gives would
    silently keep no best step and never stop early, so validate names the task's figures instead."""
    from kdistill.config import load_config

    examples = Path(__file__).resolve().parents[1] / "examples"
    cases = {
        "hinton_classifier.yaml": ("training.metric=f1", "choose one of accuracy, macro_f1."),
        "ner_conll.yaml": ("training.metric=macro_f1", "choose one of f1, precision, recall, accuracy."),
        "embedding_distil.yaml": ("training.metric=knn_accuracy", "an embedding run is not evaluated during training"),
        "causal_lm_completions.yaml": ("training.early_stop_patience=2", "remove training.early_stop_patience."),
        "multitask.yaml": ("training.metric=reviews/f1", "choose one of accuracy, macro_f1, reviews/accuracy, "
                                                         "reviews/macro_f1, messages/accuracy, messages/macro_f1."),
    }
    for name, (override, message) in cases.items():
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_config(examples / name, [override])
    assert load_config(examples / "ner_conll.yaml", ["training.metric=precision"]).training.metric == "precision"
    assert load_config(examples / "multitask.yaml",
                       ["training.metric=messages/macro_f1"]).training.metric == "messages/macro_f1"
