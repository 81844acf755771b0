"""Schedules: exact values at given steps, fractions of the run, config round trips and errors."""

from __future__ import annotations

import math

import pytest

from kdistill.errors import ConfigError
from kdistill.methods._common import one_minus
from kdistill.ranges import PROBABILITY
from kdistill.schedules import (
    Constant,
    Cosine,
    Linear,
    Piecewise,
    Ramp,
    maybe_schedule,
    schedule_from_dict,
    schedule_to_dict,
    value_at,
)


def test_constant_and_plain_numbers():
    assert Constant(2.5)(0) == 2.5 and Constant(2.5)(10**6, 10) == 2.5
    assert value_at(3, 7, 10) == 3.0 and isinstance(value_at(3, 7, 10), float)
    assert value_at(0.25, 0) == 0.25


def test_linear_over_the_whole_run_by_default():
    schedule = Linear(0.0, 1.0)
    assert [schedule(step, 10) for step in (0, 5, 10, 20)] == [0.0, 0.5, 1.0, 1.0]


def test_linear_between_explicit_steps_is_flat_outside():
    schedule = Linear(4.0, 1.0, start=10, end=40)
    assert schedule(0, 100) == 4.0
    assert schedule(10, 100) == 4.0
    assert schedule(25, 100) == pytest.approx(2.5)
    assert schedule(40, 100) == 1.0
    assert schedule(99, 100) == 1.0


def test_float_bounds_are_fractions_of_the_run():
    schedule = Linear(0.0, 1.0, start=0.5, end=1.0)
    assert schedule(49, 100) == 0.0
    assert schedule(75, 100) == pytest.approx(0.5)
    assert schedule(100, 100) == 1.0
    # The same schedule on a run twice as long moves with it.
    assert schedule(150, 200) == pytest.approx(0.5)


def test_zero_length_linear_jumps_at_its_start():
    schedule = Linear(1.0, 0.0, start=5, end=5)
    assert schedule(4, 10) == 1.0 and schedule(5, 10) == 0.0


def test_cosine_values():
    schedule = Cosine(1.0, 0.0, start=0, end=100)
    assert schedule(0, 100) == pytest.approx(1.0)
    assert schedule(50, 100) == pytest.approx(0.5)
    assert schedule(25, 100) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert schedule(100, 100) == pytest.approx(0.0)
    assert schedule(200, 100) == pytest.approx(0.0)


def test_piecewise_switches_at_boundaries():
    schedule = Piecewise((10, 0.5), (0.0, 1.0, 2.0))
    assert [schedule(s, 100) for s in (0, 9, 10, 49, 50, 99)] == [0.0, 0.0, 1.0, 1.0, 2.0, 2.0]


def test_piecewise_needs_one_more_value_than_boundaries():
    with pytest.raises(ConfigError, match="one more entry than 'boundaries'"):
        Piecewise((10,), (1.0,))


def test_ramp_moves_by_slope_per_step_and_stops_at_end_value():
    up, down = Ramp(0.3, 0.3, 1.0), Ramp(2.0, -0.25, 1.0)
    assert [up(t) for t in (0, 1, 2, 3, 100)] == pytest.approx([0.3, 0.6, 0.9, 1.0, 1.0])
    assert [down(t, 10) for t in (0, 2, 4, 1000)] == pytest.approx([2.0, 1.5, 1.0, 1.0])
    assert schedule_from_dict(schedule_to_dict(up)) == up
    assert schedule_from_dict({"schedule": "ramp", "start_value": 0.3, "slope": 0.3, "end_value": 1.0}) == up
    assert PROBABILITY.problem(up, "p") is None  # a range checks the values a ramp moves between
    complement = one_minus(up)  # a scheduled alpha's hard-label weight
    assert [complement(t) for t in (0, 1, 2, 3, 9)] == pytest.approx([1 - up(t) for t in (0, 1, 2, 3, 9)])
    assert PROBABILITY.problem(Ramp(0.3, 0.3, 1.5), "p") == "p.end_value: 1.5 is out of range; it must be between 0 and 1."
    for slope in (0.0, -0.1):
        with pytest.raises(ConfigError, match=f"^a ramp schedule's slope {slope} does not lead from start_value 0.3"):
            Ramp(0.3, slope, 1.0)
    with pytest.raises(ConfigError, match=r"^method_args.replace_rate: a ramp schedule's slope -0.3 does not lead"):
        schedule_from_dict({"schedule": "ramp", "start_value": 0.3, "slope": -0.3, "end_value": 1.0},
                           path="method_args.replace_rate")


def test_schedule_from_dict_and_back():
    data = {"schedule": "linear", "start_value": 0.3, "end_value": 1.0, "start": 0, "end": 0.5}
    schedule = schedule_from_dict(data)
    assert schedule == Linear(0.3, 1.0, 0, 0.5)
    assert schedule_from_dict(schedule_to_dict(schedule)) == schedule
    piecewise = schedule_from_dict({"schedule": "piecewise", "boundaries": [5], "values": [1, 2]})
    assert piecewise(5, 10) == 2.0
    assert schedule_to_dict(2.0) == 2.0


def test_unknown_schedule_suggests_and_lists_choices():
    with pytest.raises(ConfigError) as info:
        schedule_from_dict({"schedule": "cosin", "start_value": 1, "end_value": 0}, path="matches[1].weight")
    message = str(info.value)
    assert message.startswith("matches[1].weight.schedule: unknown schedule 'cosin'; did you mean 'cosine'?")
    assert "Available: constant, cosine, linear, piecewise, ramp." in message


def test_bad_schedule_arguments_name_the_fields():
    with pytest.raises(ConfigError, match=r"temperature: bad arguments for a 'linear' schedule .*"
                                          r"it takes start_value, end_value, start, end"):
        schedule_from_dict({"schedule": "linear", "start_value": 1, "stop_value": 0}, path="temperature")


def test_maybe_schedule_converts_only_schedule_dicts():
    assert maybe_schedule({"schedule": "constant", "value": 2}, path="x") == Constant(2)
    assert maybe_schedule({"a": 1}, path="x") == {"a": 1}
    assert maybe_schedule(0.5, path="x") == 0.5


def test_a_point_of_the_run_is_one_rule_and_a_fraction_needs_the_run_length():
    """Match start/stop, schedule ends and Theseus' phases read points through step_at; a fraction
    without the run's length is an error everywhere (a schedule used to read it as step 0)."""
    from kdistill.errors import ConfigError
    from kdistill.matches import Match
    from kdistill.schedules import Linear, step_at

    assert step_at(0.5, 10) == 5 and step_at(3, None) == 3 and step_at(0.25, 6) == 2 and step_at(7.0, 100) == 7
    with pytest.raises(ConfigError, match="schedule: 0.5 is a fraction of the run"):
        Linear(0.0, 1.0, start=0.5)(3)
    with pytest.raises(ConfigError, match="match 'kl\\[logits\\]' start/stop: 0.5 is a fraction of the run"):
        Match("logits", "logits", "kl", start=0.5).active(3, None)
    assert Linear(0.0, 1.0, start=0.5)(5, 10) == 0.0 and Linear(0.0, 1.0, start=0.5)(10, 10) == 1.0
