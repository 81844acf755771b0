"""Several teachers in one config (``teachers:``; kdistill.teachers): validation, the loss, plan, run, eval."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

from kdistill.config import config_from_dict, load_config
from kdistill.errors import ConfigError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
DATA = EXAMPLES / "data"
TOKENIZER = DATA / "tiny_tokenizer"


def _tiny_models():
    spec = importlib.util.spec_from_file_location("_kdistill_test_teachers_models", EXAMPLES / "tiny_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _save(model, folder: Path, *, tokenizer: Path = TOKENIZER, labels: tuple[str, ...] | None = None) -> Path:
    if labels is not None:
        model.config.id2label = dict(enumerate(labels))
        model.config.label2id = {name: i for i, name in enumerate(labels)}
    model.save_pretrained(folder)
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(tokenizer / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """Two tiny BERT teachers of different seeds (2 layers; 32 and 48 wide) and a 1-layer student."""
    models = _tiny_models()
    root = tmp_path_factory.mktemp("teachers")
    first = models.tiny_bert(num_layers=2, hidden_size=32, num_heads=2, seed=1)
    second = models.tiny_bert(num_layers=2, hidden_size=48, num_heads=2, seed=2)
    with torch.no_grad():  # confident teachers: soft targets far from uniform
        first.classifier.weight.mul_(20)
        second.classifier.weight.mul_(20)
    return {"first": _save(first, root / "first"), "second": _save(second, root / "second"),
            "student": _save(models.tiny_bert(num_layers=1, hidden_size=32, num_heads=2, seed=3), root / "student")}


def raw_config(folders: dict[str, Path], out: Path, **changes) -> dict:
    raw = {
        "teachers": {"first": {"path": str(folders["first"])}, "second": {"path": str(folders["second"])}},
        "teacher_weights": {"first": 3.0, "second": 1.0},
        "student": {"path": str(folders["student"])},
        "data": {"train": str(DATA / "reviews_train.csv"), "validation": str(DATA / "reviews_validation.csv"),
                 "test": str(DATA / "reviews_test.csv"), "max_length": 16, "batch_size": 16, "bucket": False},
        "matches": [
            {"teacher": "logits", "loss": "kl", "teacher_name": "ensemble", "args": {"temperature": 2.0},
             "name": "soft"},
            {"teacher": "hidden.2", "student": "hidden.1", "loss": "hidden_mse", "teacher_name": "second",
             "weight": 0.5, "name": "second_top"},
        ],
        "hard_label_weight": 0.25,
        "training": {"lr": 1e-3, "max_steps": 2, "log_every": 1, "progress": False, "tensorboard": False},
        "output_dir": str(out),
    }
    raw.update(changes)
    return raw


def problems_of(raw: dict) -> str:
    with pytest.raises(ConfigError) as caught:
        config_from_dict(raw, base_dir=EXAMPLES)
    return str(caught.value)


# ---------------------------------------------------------------------------------------------
# validate


def test_yaml_with_two_teachers_validates_and_the_first_is_primary(folders, tmp_path):
    import yaml

    file = tmp_path / "two.yaml"
    file.write_text(yaml.safe_dump(raw_config(folders, tmp_path / "run"), sort_keys=False))
    config = load_config(file)
    assert list(config.teacher_specs()) == ["first", "second"]
    assert config.teacher.path == str(folders["first"])  # the primary teacher
    resolved = config.resolved()
    assert "teacher" not in resolved and list(resolved["teachers"]) == ["first", "second"]
    assert config_from_dict(resolved, base_dir=tmp_path).resolved() == resolved  # the run folder's copy reloads


def test_a_bad_teacher_name_lists_the_names(folders, tmp_path):
    raw = raw_config(folders, tmp_path)
    raw["matches"][1]["teacher_name"] = "secnd"
    text = problems_of(raw)
    assert ("matches[1].teacher_name: no teacher named 'secnd'; did you mean 'second'? Teachers: first, second "
            "(or 'ensemble', their weighted average).") in text


def test_teacher_and_teachers_together_and_reserved_names_are_refused(folders, tmp_path):
    both = raw_config(folders, tmp_path, teacher={"path": str(folders["first"])})
    assert "teachers: give either 'teacher' (one teacher) or 'teachers' (several, by name), not both" in problems_of(both)
    reserved = raw_config(folders, tmp_path)
    reserved["teachers"] = {"ensemble": reserved["teachers"]["first"], "second": reserved["teachers"]["second"]}
    assert "teachers: 'ensemble' cannot name a teacher" in problems_of(reserved)


def test_weights_name_every_teacher_and_need_an_ensemble_match(folders, tmp_path):
    raw = raw_config(folders, tmp_path, teacher_weights={"first": 1.0})
    assert "teacher_weights: no weight for 'second'; give one for every teacher (first, second)" in problems_of(raw)
    raw = raw_config(folders, tmp_path)
    raw["matches"][0]["teacher_name"] = "first"
    assert "teacher_weights: no match reads the ensemble" in problems_of(raw)


def test_a_teacher_no_match_reads_is_refused(folders, tmp_path):
    raw = raw_config(folders, tmp_path, teacher_weights=None)
    raw["matches"] = [raw["matches"][1]]
    raw["matches"][0]["teacher_name"] = "first"
    raw["matches"][0]["teacher"] = "hidden.1"
    assert "teachers.second: no match reads this teacher" in problems_of(raw)


def test_mismatched_label_orders_are_refused_before_weights_load(folders, tmp_path, monkeypatch):
    models = _tiny_models()
    named = _save(models.tiny_bert(seed=4), tmp_path / "named", labels=("neg", "pos"))
    swapped = _save(models.tiny_bert(seed=5), tmp_path / "swapped", labels=("pos", "neg"))
    raw = raw_config(folders, tmp_path / "run")
    raw["teachers"] = {"first": {"path": str(named)}, "second": {"path": str(swapped)}}
    import kdistill.models

    def no_weights(*args, **kwargs):
        raise AssertionError("validate loaded weights")

    monkeypatch.setattr(kdistill.models, "load_hf_model", no_weights)
    assert ("teachers.second: its classes are pos, neg (in id order), but the primary teacher 'first''s are neg, "
            "pos; the ensemble and the labels need one order.") in problems_of(raw)


def test_mismatched_tokenizers_are_refused(folders, tmp_path):
    other_tokenizer = tmp_path / "tok"
    shutil.copytree(TOKENIZER, other_tokenizer)
    vocab = (other_tokenizer / "vocab.txt").read_text(encoding="utf-8").splitlines()
    vocab[-1], vocab[-2] = vocab[-2], vocab[-1]  # two ids swapped: same size, other ids
    (other_tokenizer / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    other = _save(_tiny_models().tiny_bert(seed=6), tmp_path / "other", tokenizer=other_tokenizer)
    raw = raw_config(folders, tmp_path / "run")
    raw["teachers"]["second"] = {"path": str(other)}
    raw["matches"][1]["teacher"] = "hidden.2"
    assert "teachers.second.path: its tokenizer" in problems_of(raw)
    assert "differs from the primary teacher 'first''s" in problems_of(raw)


def test_multiteacher_method_with_one_teacher_is_an_error(folders, tmp_path):
    raw = {
        "teacher": {"path": str(folders["first"])}, "student": {"path": str(folders["student"])},
        "data": raw_config(folders, tmp_path)["data"], "method": "multiteacher", "output_dir": str(tmp_path),
    }
    assert "method: 'multiteacher' averages several teachers' soft targets, but the config gives one teacher" \
        in problems_of(raw)
    weights = raw_config(folders, tmp_path, method="multiteacher", matches=[], teacher_weights=None,
                         method_args={"teacher_weights": {"first": 1, "second": 2}})
    assert "method_args.teacher_weights: give the ensemble's weights once, as the top-level teacher_weights" \
        in problems_of(weights)


def test_several_teachers_refuse_cache(folders, tmp_path):
    assert "cache: stores or scores one teacher's outputs" in problems_of(raw_config(folders, tmp_path, cache="logits"))


# ---------------------------------------------------------------------------------------------
# build, loss, plan


def test_the_loss_equals_a_hand_computation_on_one_batch(folders, tmp_path):
    from kdistill.run import build

    config = config_from_dict(raw_config(folders, tmp_path / "run"), base_dir=EXAMPLES)
    parts = build(config)
    distiller = parts.distiller
    assert set(distiller.teachers) == {"first", "second"}
    batch = next(iter(parts.stages[0].loader))
    distiller.prepare(batch)
    out = distiller(batch, step=0)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
    with torch.no_grad():
        first = parts.teachers["first"](**inputs, output_hidden_states=True)
        second = parts.teachers["second"](**inputs, output_hidden_states=True)
        student = parts.student(**inputs, output_hidden_states=True)
        t = 2.0
        mixed = 0.75 * (first.logits.double() / t).softmax(-1) + 0.25 * (second.logits.double() / t).softmax(-1)
        log_s = (student.logits.double() / t).log_softmax(-1)
        soft = t * t * (mixed * (mixed.log() - log_s)).sum(-1).mean()
        projected = distiller.projections["m1"](student.hidden_states[1]).double()  # 32 -> 48, to the second
        mask = batch["attention_mask"].double().unsqueeze(-1)
        squared = ((projected - second.hidden_states[2].double()) ** 2 * mask).sum()
        hidden = squared / (mask.sum() * projected.shape[-1])
        hard = torch.nn.functional.cross_entropy(student.logits.double(), batch["labels"])
    assert float(out.parts["soft"]) == pytest.approx(float(soft), rel=1e-4)
    assert float(out.parts["second_top"]) == pytest.approx(0.5 * float(hidden), rel=1e-4)
    assert float(out.parts["hard_label"]) == pytest.approx(0.25 * float(hard), rel=1e-4)
    assert float(out.loss.detach()) == pytest.approx(float(soft + 0.5 * hidden + 0.25 * hard), rel=1e-4)


def test_the_plan_lists_both_teachers_and_what_reads_them(folders, tmp_path):
    from kdistill.run import plan

    text = plan(config_from_dict(raw_config(folders, tmp_path / "run"), base_dir=EXAMPLES))
    assert "teacher 'first' (primary) BertForSequenceClassification, 2 layers, hidden 32" in text
    assert "teacher 'second' BertForSequenceClassification, 2 layers, hidden 48" in text
    assert "read by: soft (ensemble)\n" in text and "read by: soft (ensemble), second_top" in text
    assert "ensemble:logits" in text and "second:hidden.2" in text
    assert "teacher asks for: 'first': logits only; 'second': " in text


def test_multiteacher_method_takes_every_teacher(folders, tmp_path):
    from kdistill.run import build

    raw = raw_config(folders, tmp_path / "run", method="multiteacher", method_args={
        "temperature": 2.0, "alpha": 0.5,
        "intermediate": [{"teacher_name": "second", "teacher": "hidden.2", "student": "hidden.1", "loss": "hidden_mse"}]})
    raw["matches"] = []
    parts = build(config_from_dict(raw, base_dir=EXAMPLES))
    distiller = parts.distiller
    assert set(distiller.teachers) == {"first", "second"} and distiller.teacher_weights == {"first": 0.75, "second": 0.25}
    assert [b.match.teacher_name for b in distiller.bound] == ["ensemble", "second"]


# ---------------------------------------------------------------------------------------------
# run and eval


def test_run_summary_has_each_teacher_and_eval_matches_it(folders, tmp_path):
    from kdistill.run import evaluate_run, run

    out = tmp_path / "run"
    summary = run(config_from_dict(raw_config(folders, out, baseline=True), base_dir=EXAMPLES))
    teachers = summary["teachers"]
    assert list(teachers) == ["first", "second"]
    assert teachers["first"]["metrics"]["test"]["accuracy"] == summary["metrics"]["test"]["teacher"]["accuracy"]
    assert teachers["second"]["parameters"] > teachers["first"]["parameters"]
    assert set(teachers["second"]["metrics"]["test"]) == {"accuracy", "macro_f1", "agreement"}
    assert set(summary["ensemble"]["test"]) == {"accuracy", "macro_f1"}
    assert "baseline" in summary
    assert json.loads((out / "summary.json").read_text())["teachers"] == teachers
    assert "## Teachers" in (out / "report.md").read_text()

    again = evaluate_run(out, split="test")
    for name in ("first", "second"):
        assert again["teachers"][name] == pytest.approx(teachers[name]["metrics"]["test"])
    assert again["ensemble"] == pytest.approx(summary["ensemble"]["test"])
    assert again["student"] == pytest.approx(summary["metrics"]["test"]["student"])


def test_two_fine_tunes_of_one_base_with_other_seeds_are_two_teachers(folders, tmp_path, monkeypatch):
    from kdistill.run import evaluate_run, run

    monkeypatch.setenv("KDISTILL_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    raw = raw_config(folders, out, teacher_weights=None)
    raw["teachers"] = {name: {"path": str(folders["first"]), "finetune": {"max_steps": 1, "lr": 1e-2, "seed": seed}}
                       for name, seed in (("one", 1), ("two", 2))}
    raw["matches"] = [{"teacher": "logits", "loss": "kl", "teacher_name": "ensemble", "args": {"temperature": 2.0}},
                      {"teacher": "hidden.2", "student": "hidden.1", "loss": "hidden_mse", "teacher_name": "two"}]
    summary = run(config_from_dict(raw, base_dir=EXAMPLES))
    one, two = (summary["teachers"][name]["finetune"] for name in ("one", "two"))
    assert one["cache"] != two["cache"] and not one["cached"] and not two["cached"]  # two cache entries
    assert one["folder"] == str(out / "teachers" / "one") and (out / "teachers" / "two" / "config.json").is_file()
    assert "teacher_finetune" not in summary
    again = evaluate_run(out, split="test")  # each fine-tuned teacher read back from teachers/<name>/
    for name in ("one", "two"):
        assert again["teachers"][name] == pytest.approx(summary["teachers"][name]["metrics"]["test"])
    assert again["teacher"] == pytest.approx(summary["metrics"]["test"]["teacher"])
    cached = run(config_from_dict({**raw, "output_dir": str(tmp_path / "again")}, base_dir=EXAMPLES))
    assert all(cached["teachers"][name]["finetune"]["cached"] for name in ("one", "two"))
