"""Hyper-parameter ranges: declared at registration, one checker for validate, methods.expand and the Distiller."""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import pytest

from kdistill import Distiller, Match
from kdistill.config import config_from_dict
from kdistill.distiller import _OPTIONAL_LOSS_INPUTS
from kdistill.errors import ConfigError
from kdistill.losses import LOSSES, register_loss
from kdistill.methods import METHODS, expand
from kdistill.ranges import ALPHA, COUNT, FLAG, TEMPERATURE, WEIGHT, OneOf, Range, declared
from kdistill.schedules import Linear, Piecewise
from tiny_engine import tiny_bert

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
ALPHA_WHY = "(the weight of the soft-target loss; the hard-label weight is 1 − alpha)."
# Structured options, checked by the method itself against the models (layer lists, mappings, a loss name).
STRUCTURED = {("distilbert", "layers"), ("hinton", "loss"), ("minilm", "assistant"),
              ("multiteacher", "teacher_weights"), ("multiteacher", "intermediate"), ("tinybert", "layer_map"),
              ("tinybert", "general_teacher")}
SUPPLIED = {"teacher", "student", *_OPTIONAL_LOSS_INPUTS}  # what the Distiller passes, never a config


def test_range_sentences_name_the_path_the_value_and_the_range():
    assert ALPHA.problem(0.5, "method_args.alpha") is None
    assert ALPHA.problem(2, "method_args.alpha") == (f"method_args.alpha: 2 is out of range; it must be between 0 and 1 "
                                                     f"{ALPHA_WHY}")
    assert ALPHA.problem(-1, "a").startswith("a: -1 is out of range")
    assert TEMPERATURE.problem(0, "t") == (
        "t: 0 is out of range; it must be greater than 0 (the softmax temperature T; T = 0 divides by zero).")
    assert TEMPERATURE.problem(math.inf, "t").startswith("t: inf is out of range")
    assert TEMPERATURE.problem(math.nan, "t").startswith("t: nan is out of range")
    assert COUNT.problem(2.5, "n") == "n: 2.5 is not a whole number; it must be a whole number, at least 1."
    assert COUNT.problem(True, "n") == "n: expected a whole number, got True; it must be a whole number, at least 1."
    assert WEIGHT.problem("heavy", "w").startswith("w: expected a number or a schedule, got 'heavy'; it must be at "
                                                   "least 0")
    assert Range(0, 1, high_open=True).describe() == "at least 0 and less than 1"
    assert FLAG.problem("yes", "f") == "f: 'yes' is not valid. It must be one of true, false."
    assert OneOf(("skip", "last")).problem("lst", "s") == (
        "s: 'lst' is not valid; did you mean 'last'? It must be one of skip, last.")
    assert OneOf((1, 2)).problem(True, "v") is not None  # True is not the version 1


def test_a_schedule_is_checked_at_every_value_it_takes():
    assert ALPHA.problem(Linear(0.0, 1.0), "a") is None
    assert ALPHA.problem(Linear(0.5, 2.0, 0, 1000), "a") == (
        f"a.end_value: 2 is out of range; it must be between 0 and 1 {ALPHA_WHY}")
    assert ALPHA.problem(Piecewise((5,), (0.5, -1.0)), "a").startswith("a.values[1]: -1 is out of range")
    assert COUNT.problem(Linear(1, 2), "n") == "n: expected a whole number, at least 1, not a schedule."


def test_every_argument_of_every_loss_and_method_has_a_range():
    for registry in (LOSSES, METHODS):
        for name, function in registry.items():
            if not function.__module__.startswith("kdistill."):
                continue  # a loss another test registered
            ranges = declared(function)
            for param in inspect.signature(function).parameters:
                if param in SUPPLIED or (name, param) in STRUCTURED:
                    continue
                assert param in ranges, f"{registry.kind} '{name}': no range declared for '{param}'"


def test_register_refuses_a_range_for_a_parameter_the_function_lacks():
    with pytest.raises(ValueError, match="name no parameter of it: temprature"):
        @register_loss("test_ranges_typo", ranges={"temprature": TEMPERATURE})
        def typo(student, teacher, *, temperature=1.0):
            return (student - teacher).sum()
    assert "test_ranges_typo" not in LOSSES


def _config_problem(**changes) -> str:
    raw = {
        "teacher": {"factory": "tiny_models:tiny_bert"}, "student": {"from_teacher": {"layers": [0]}},
        "data": {"train": "data/reviews_train.csv", "tokenizer": "data/tiny_tokenizer"},
        "method": "hinton", **changes,
    }
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw, base_dir=EXAMPLES)
    (line,) = str(info.value).splitlines()[1:]
    return line.removeprefix("  - ")


def test_expand_refuses_what_validate_refuses_with_the_same_sentence():
    for args in ({"alpha": 2}, {"alpha": -1}, {"temperature": 0}, {"temperature": {"schedule": "linear",
                                                                                  "start_value": 4, "end_value": 0}}):
        problem = _config_problem(method_args=args)
        python_args = {k: Linear(4, 0) if isinstance(v, dict) else v for k, v in args.items()}
        with pytest.raises(ConfigError) as info:
            expand("hinton", teacher_layers=2, student_layers=1, **python_args)
        assert str(info.value) == problem
    assert _config_problem(method_args={"alpha": 2}) == (
        f"method_args.alpha: 2 is out of range; it must be between 0 and 1 {ALPHA_WHY}")


def test_the_distiller_refuses_out_of_range_loss_arguments_and_weights():
    teacher, student = tiny_bert(2, 32, labels=3), tiny_bert(2, 16, seed=1, labels=3)
    problem = _config_problem(matches=[{"teacher": "logits", "loss": "kl", "args": {"temperature": 0}}])
    assert problem.startswith("matches[0].args.temperature: 0 is out of range; it must be greater than 0")
    with pytest.raises(ConfigError) as info:
        Distiller(teacher, student, [Match("logits", "logits", "kl", args={"temperature": 0})])
    assert str(info.value) == problem
    with pytest.raises(ConfigError, match=r"^matches\[0\].weight: -1 is out of range; it must be at least 0"):
        Distiller(teacher, student, [Match("logits", "logits", "kl", -1)])
    with pytest.raises(ConfigError, match=r"^hard_label_weight: -0.5 is out of range; it must be at least 0"):
        Distiller(teacher, student, [], hard_label_weight=-0.5)
