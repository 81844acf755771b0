"""Every registered method expands to a recipe whose description is plain YAML a user can copy."""

from __future__ import annotations

import pytest
import yaml

from kdistill.methods import METHODS, expand

OPTIONS = {
    "hinton": {},
    "tinybert": {"teacher_layers": 12, "student_layers": 4, "stage": "both"},
    "distilbert": {"teacher_layers": 12},
    "theseus": {"teacher_layers": 12},
    "minilm": {"teacher_heads": 12, "student_heads": 12, "assistant": {"num_layers": 12, "hidden_size": 384}},
    "pkd": {"teacher_layers": 12, "student_layers": 6, "teacher_width": 768},
    "multiteacher": {"teacher_weights": {"a": 1.0, "b": 2.0}},
}


def test_all_methods_are_registered():
    assert set(OPTIONS) <= set(METHODS.names())


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_to_dict_is_plain_yaml(name):
    recipe = expand(name, **OPTIONS[name])
    text = yaml.safe_dump(recipe.to_dict(), sort_keys=False, allow_unicode=True)
    loaded = yaml.safe_load(text)
    assert loaded["method"] == name and len(loaded["stages"]) == len(recipe.stages)
    for stage, described in zip(recipe.stages, loaded["stages"]):
        assert [m["loss"] for m in described["matches"]] == [m.loss_name for m in stage.matches]
