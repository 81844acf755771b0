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
