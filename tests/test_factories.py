"""A config is code: every 'module:function' it names is listed with its file; the standard library is refused."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch

from kdistill.config import config_from_dict
from kdistill.errors import ConfigError
from kdistill.registry import import_object

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def raw(**changes) -> dict:
    config = {
        "teacher": {"factory": "tiny_models:tiny_bert"}, "student": {"from_teacher": {"layers": [0]}},
        "data": {"train": "data/reviews_train.csv", "tokenizer": "data/tiny_tokenizer"},
        "matches": [{"teacher": "logits", "loss": "kl"}],
    }
    config.update(changes)
    return config


def problems(config: dict, **kwargs) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config_from_dict(config, base_dir=EXAMPLES, **kwargs)
    return [line.removeprefix("  - ") for line in str(info.value).splitlines()[1:]]


@pytest.mark.parametrize("spec", ["os:system", "subprocess:run", "builtins:eval", "shutil:rmtree", "os.path:join"])
def test_the_standard_library_is_refused_before_it_is_imported(spec):
    with pytest.raises(ConfigError, match=rf"^teacher.factory: '{spec}' is in the Python standard library "
                                          rf"\('{spec.partition(':')[0]}'\); a config may import only your own modules"):
        import_object(spec, path="teacher.factory")


def test_every_place_a_config_names_a_function_is_checked():
    config = raw(method="hinton", method_args={"loss": "builtins:eval"},
                 matches=[{"teacher": "logits", "loss": "subprocess:run"},
                          {"teacher": "hidden.1", "loss": "hidden_mse", "projection": "shutil:rmtree"}])
    config["teacher"]["factory"] = "os:system"
    found = problems(config)
    assert [p.split(":")[0] for p in found] == ["method_args.loss", "teacher.factory", "matches[0].loss",
                                                  "matches[1].projection"]
    assert all("is in the Python standard library" in p for p in found)


def test_a_standard_library_function_re_exported_by_a_user_module_is_refused(tmp_path):
    (tmp_path / "kd_reexport.py").write_text("from os import system\nfrom subprocess import run as go\n")
    config = raw(python_path=[str(tmp_path)])
    config["teacher"]["factory"] = "kd_reexport:go"
    (line,) = problems(config)
    assert line.startswith("teacher.factory: 'kd_reexport:go' is subprocess.run of the Python standard library, "
                           "re-exported by 'kd_reexport'; a config may import only your own modules")


def test_validation_imports_and_lists_each_function_with_its_file(tmp_path):
    (tmp_path / "kd_user_losses.py").write_text("def l1(student, teacher):\n    return (student - teacher).abs().mean()\n")
    config = config_from_dict(raw(python_path=[str(tmp_path)], matches=[
        {"teacher": "logits", "loss": "kd_user_losses:l1"},
        {"teacher": "hidden.1", "loss": "hidden_mse", "projection": "torch.nn:Linear"},  # third-party: allowed
    ]), base_dir=EXAMPLES)
    assert [item.line() for item in config.imports] == [
        f"tiny_models:tiny_bert (teacher.factory) from {EXAMPLES / 'tiny_models.py'}",
        f"kd_user_losses:l1 (matches[0].loss) from {tmp_path / 'kd_user_losses.py'}",
        f"torch.nn:Linear (matches[1].projection) from {inspect.getsourcefile(torch.nn.Linear)}",
    ]


def test_a_factory_that_cannot_be_imported_or_called_is_a_validation_error():
    config = raw(matches=[{"teacher": "logits", "loss": "tiny_models:nope"}])
    config["teacher"]["factory"] = "no_such_module_kd:build"
    assert problems(config) == [
        "teacher.factory: cannot import module 'no_such_module_kd' named in 'no_such_module_kd:build': "
        "No module named 'no_such_module_kd'.",
        "matches[0].loss: module 'tiny_models' has no attribute 'nope' (from 'tiny_models:nope').",
    ]
