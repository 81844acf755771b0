"""The kdistill command: every verb through cli.main, errors as one line on stderr with status 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from kdistill import cli
from kdistill.cli import main
from kdistill.losses import LOSSES
from kdistill.methods import METHODS

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
DATA = EXAMPLES / "data"

CONFIG = f"""
teacher: {{factory: "tiny_models:tiny_bert", args: {{num_layers: 2, hidden_size: 32}}}}
student: {{from_teacher: {{layers: [0]}}}}
data:
  train: {DATA / 'reviews_train.csv'}
  validation: {DATA / 'reviews_validation.csv'}
  test: {DATA / 'reviews_test.csv'}
  tokenizer: {DATA / 'tiny_tokenizer'}
  max_length: 16
method: hinton
method_args: {{temperature: 2.0, alpha: 0.5}}
training: {{lr: 1.0e-3, max_steps: 2, progress: false, tensorboard: false}}
python_path: [{EXAMPLES}]
"""


@pytest.fixture
def config_file(tmp_path) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(CONFIG, encoding="utf-8")
    return path


def test_losses_and_methods_list_one_line_each(capsys):
    assert main(["losses"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "losses (use as `loss: NAME` in a match):"
    assert len(lines) == 1 + len(LOSSES.names())
    hidden = next(line for line in lines if line.split()[0] == "hidden_mse")
    assert hidden.split(None, 1)[1] == LOSSES.get("hidden_mse").__doc__.strip().splitlines()[0]

    assert main(["methods"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[1:]] == METHODS.names()
    assert "hinton" in METHODS.names()


def test_validate_ok_and_with_every_problem(config_file, capsys):
    assert main(["validate", str(config_file), "training.epochs=3"]) == 0
    assert capsys.readouterr().out == (f"ok: {config_file} is valid (method hinton; output_dir "
                                       f"{Path.cwd() / 'runs' / 'run'}).\n"
                                       "this config imports and calls (a config is code):\n"
                                       f"  tiny_models:tiny_bert (teacher.factory) from {EXAMPLES / 'tiny_models.py'}\n")

    bad = config_file.with_name("bad.yaml")
    bad.write_text(CONFIG.replace("method: hinton", "method: hinton\nmatches: [{teacher: logits, loss: hiden_mse}]"))
    assert main(["validate", str(bad), "training.lrr=3e-5"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"error: invalid config {bad} (2 problems):\n")
    assert "  - training.lrr: unknown key 'lrr' (from the override 'training.lrr=3e-5'); did you mean 'lr'?" in captured.err
    assert "  - matches[0].loss: unknown loss 'hiden_mse'; did you mean 'hidden_mse'? Available: " in captured.err
    assert "Traceback" not in captured.err


def test_validate_refuses_the_standard_library_and_out_of_range_arguments(config_file, capsys):
    assert main(["validate", str(config_file), "teacher.factory=os:system", "method_args.alpha=2"]) == 2
    err = capsys.readouterr().err
    assert "  - method_args.alpha: 2 is out of range; it must be between 0 and 1 (" in err
    assert "  - teacher.factory: 'os:system' is in the Python standard library ('os'); " in err
    assert "Traceback" not in err


def test_errors_print_one_message_and_exit_2(tmp_path, capsys):
    assert main(["plan", str(tmp_path / "missing.yaml")]) == 2
    assert capsys.readouterr().err == f"error: config file '{tmp_path / 'missing.yaml'}' does not exist.\n"
    assert main(["eval", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (f"error: '{tmp_path}' is not a kdistill run folder: it has no "
                                       "config.resolved.yaml.\n")
    (tmp_path / "x.yaml").write_text("teacher: [1\n")
    assert main(["validate", str(tmp_path / "x.yaml"), "--", "oops"]) == 2
    assert capsys.readouterr().err == ("error: 'oops' is not an override: write KEY=VALUE (e.g. training.lr=3e-5); "
                                       "options such as --resume go after the verb.\n")


def test_a_config_module_that_registers_a_taken_loss_name_is_an_error_not_a_traceback(config_file, tmp_path,
                                                                                        capsys):
    (tmp_path / "clashing_losses.py").write_text(
        "from kdistill.losses import register_loss\n"
        "from tiny_models import tiny_bert\n\n\n"
        "@register_loss()\n"
        "def kl(student, teacher):\n"
        "    return (student - teacher).square().mean()\n", encoding="utf-8")
    config_file.write_text(config_file.read_text(encoding="utf-8").replace(
        '"tiny_models:tiny_bert"', '"clashing_losses:tiny_bert"').replace(
        f"python_path: [{EXAMPLES}]", f"python_path: [{EXAMPLES}, {tmp_path}]"), encoding="utf-8")
    try:
        assert main(["validate", str(config_file)]) == 2
    finally:
        sys.modules.pop("clashing_losses", None)
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "a loss named 'kl' is already registered (kdistill.losses.logits.kl)" in err
    assert "Traceback" not in err


def test_run_then_eval_then_a_changed_rerun(config_file, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", str(config_file), f"output_dir={out}"]) == 0
    stdout = capsys.readouterr().out
    assert stdout.startswith(f"done: student in {out / 'student'}\n")
    summary = json.loads((out / "summary.json").read_text())
    test = summary["metrics"]["test"]
    assert (f"  test: teacher accuracy {test['teacher']['accuracy']:.4f}, student accuracy "
            f"{test['student']['accuracy']:.4f}, agreement {test['agreement']:.4f}") in stdout

    assert main(["eval", str(out), "--split", "test"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{out}: split 'test', 16 examples",
        "            accuracy  macro_f1",
        f"  teacher     {test['teacher']['accuracy']:.4f}    {test['teacher']['macro_f1']:.4f}",
        f"  student     {test['student']['accuracy']:.4f}    {test['student']['macro_f1']:.4f}",
        f"  agreement (same prediction): {test['agreement']:.4f}",
    ]
    assert main(["eval", str(out), "--split", "validation", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"split": "validation", **summary["metrics"]["validation"]}
    assert main(["eval", str(out), "--split", "dev"]) == 2
    assert capsys.readouterr().err == ("error: --split: the run's data has no 'dev' split; it has: train, "
                                       "validation, test.\n")

    assert main(["run", str(config_file), f"output_dir={out}", "training.lr=0.002"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: output_dir: '{out}' holds a run with a different config (training.lr: 0.001 -> "
                          "0.002). Pass --resume")
    with pytest.raises(SystemExit) as info:
        main(["run", str(config_file), "--resume", "--overwrite"])
    assert info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_plan_prints_the_matches(config_file, capsys):
    assert main(["plan", str(config_file), "data.batch_size=8"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"kdistill plan: {config_file}\n\nthis config imports and calls (a config is code):\n"
                          f"  tiny_models:tiny_bert (teacher.factory) from {EXAMPLES / 'tiny_models.py'}\n\n")
    assert "stage 1/1 'distil': teacher -> student, data 'train', hard_label_weight 0.5, 2 steps" in out
    assert "soft        logits   (8, 2)  logits   (8, 2)  kl       0.5" in out


@pytest.mark.parametrize("verb", ["run", "plan", "eval", "validate", "losses", "methods"])
def test_help_of_every_verb_has_an_example(verb, capsys):
    with pytest.raises(SystemExit) as info:
        main([verb, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: kdistill {verb}")
    assert "example" in out and f"kdistill {verb}" in out.split("example", 1)[1]


def test_no_verb_prints_help(capsys):
    assert main([]) == 2
    out = capsys.readouterr().out
    for verb in ("run", "plan", "eval", "validate", "losses", "methods"):
        assert f"    {verb} " in out


def test_plugin_verbs_are_found_and_imported_only_when_used(tmp_path, monkeypatch, capsys):
    (tmp_path / "kd_fake_verb.py").write_text(
        "def add_arguments(parser):\n    parser.add_argument('--size', type=int, default=1)\n\n"
        "def main(args):\n    print('fake ran with size', args.size)\n    return 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cli.PLUGIN_VERBS, "fake", ("kd_fake_verb", "a verb from another module"))
    monkeypatch.delitem(sys.modules, "kd_fake_verb", raising=False)
    assert main(["losses"]) == 0
    assert "kd_fake_verb" not in sys.modules
    capsys.readouterr()
    assert main(["fake", "--size", "3"]) == 0
    assert capsys.readouterr().out == "fake ran with size 3\n"
    monkeypatch.setitem(cli.PLUGIN_VERBS, "absent", ("kd_no_such_module_xyz", "missing"))
    with pytest.raises(SystemExit):
        main(["absent"])
    assert "invalid choice: 'absent'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Models whose blocks are not one plain list end in 'error: …', never a traceback


def _stack_folder(tmp_path: Path, build: str, **kwargs) -> Path:
    import shutil

    import tiny_stacks

    folder = tmp_path / build
    getattr(tiny_stacks, build)(**kwargs).save_pretrained(folder)
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(DATA / "tiny_tokenizer" / name, folder / name)
    return folder


def _stack_config(tmp_path: Path, teacher: str, method: str) -> Path:
    path = tmp_path / "stack.yaml"
    path.write_text(f"""
teacher: {teacher}
data:
  train: {DATA / 'reviews_train.csv'}
  validation: {DATA / 'reviews_validation.csv'}
  max_length: 16
  batch_size: 8
{method}
training: {{lr: 1.0e-3, max_steps: 1, progress: false, tensorboard: false}}
output_dir: {tmp_path / 'out'}
""", encoding="utf-8")
    return path


@pytest.mark.parametrize(("build", "method", "verb", "message"), [
    ("tiny_t5", "method: theseus", "run", "several block lists (transformer.encoder.block (2 of T5Block), "
                                          "transformer.decoder.block (2 of T5Block))"),
    ("tiny_bart", "method: theseus", "run", "several block lists (model.encoder.layers (2 of BartEncoderLayer)"),
    ("tiny_albert", "method: theseus", "plan", "shared-weight layers (num_hidden_groups=1"),
    ("tiny_albert", "method: minilm\nmethod_args: {version: 2, data: train}\nstudent: {path: STUDENT}", "plan",
     "key.1, query.1, value.1 hook the projections inside the blocks, but AlbertForSequenceClassification has "
     "shared-weight layers"),
])
def test_block_lists_that_cannot_be_picked_end_in_an_error(build, method, verb, message, tmp_path, capsys):
    # BART saves no num_labels when it is its default 3 (transformers 5): keep 3 so that it reloads.
    teacher = _stack_folder(tmp_path, build, **({"num_labels": 3} if build == "tiny_bart" else {}))
    config = _stack_config(tmp_path, f"{{path: {teacher}}}", method.replace("STUDENT", str(teacher)))
    capsys.readouterr()  # saving the folder printed a progress bar
    assert main([verb, str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_t5_whose_eos_is_not_in_the_inputs_ends_in_an_error(tmp_path, capsys):
    teacher = _stack_folder(tmp_path, "tiny_t5", eos_token_id=1)  # the tiny tokenizer ends texts with [SEP] = 3
    config = _stack_config(tmp_path, f"{{path: {teacher}}}", "method: hinton\nstudent: {path: " + str(teacher) + "}")
    capsys.readouterr()
    assert main(["plan", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: teacher: T5ForSequenceClassification classifies at the end-of-sequence token "
                          "(its config's eos_token_id=1)")


def test_a_named_t5_stack_is_shown_in_the_plan_and_theseus_runs(tmp_path, capsys):
    teacher = _stack_folder(tmp_path, "tiny_t5")
    config = _stack_config(tmp_path, f"{{path: {teacher}, blocks: transformer.encoder.block}}", "method: theseus")
    assert main(["plan", str(config)]) == 0
    out = capsys.readouterr().out
    assert "blocks: transformer.encoder.block (2 of T5Block, named in the config)" in out
    assert "blocks: transformer.encoder.block (1 of T5Block, named in the config)" in out  # the successor
    assert main(["run", str(config)]) == 0
    assert main(["validate", str(_stack_config(tmp_path, f"{{path: {teacher}, blocks: 'encoder..block'}}",
                                               "method: theseus"))]) == 2
    assert "teacher.blocks: value error, expected the dotted module path" in capsys.readouterr().err


def test_plan_json_is_the_plan_as_data(capsys):
    """`kdistill plan --json`: the same plan as the text, as data for tools."""
    import json as _json

    from kdistill.cli import main

    config = str(Path(__file__).resolve().parents[1] / "examples" / "tinybert_matches.yaml")
    assert main(["plan", config, "--json"]) == 0
    data = _json.loads(capsys.readouterr().out)
    assert {"source", "splits", "models", "stages", "parameters", "total_steps", "expansion"} <= set(data)
    stage = data["stages"][0]
    assert stage["matches"] and {"teacher_shape", "student_shape", "projection", "active"} <= set(stage["matches"][0])
    assert data["total_steps"] == sum(s["steps"] for s in data["stages"])
    assert main(["plan", config]) == 0
    text = capsys.readouterr().out
    assert f"estimated steps: {data['total_steps']} optimiser steps in all" in text
