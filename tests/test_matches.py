"""Matches and layer-map helpers."""

from __future__ import annotations

import pytest

from kdistill.errors import ConfigError, RefError
from kdistill.matches import (
    Match,
    attention_matches,
    describe_match,
    explicit_layer_map,
    hidden_matches,
    last_k_layer_map,
    skip_layer_map,
    uniform_layer_map,
)
from kdistill.refs import Ref
from kdistill.schedules import Linear


def test_match_defaults():
    match = Match("hidden.4")
    assert match.student == "hidden.4"
    assert match.loss == "hidden_mse" and match.weight == 1.0 and match.projection == "auto"
    assert match.args == {} and match.start == 0 and match.stop is None
    assert Match("hidden.4").args is not match.args  # no shared mutable default


def test_match_refs_are_parsed_with_their_config_path():
    match = Match("hidden.4", "hidden.2,hidden.1")
    assert match.teacher_refs() == (Ref("hidden", 4),)
    assert match.student_refs() == (Ref("hidden", 2), Ref("hidden", 1))
    with pytest.raises(RefError, match=r"^matches\[3\]\.student: unknown feature ref 'hiden.2'"):
        Match("hidden.4", "hiden.2").student_refs("matches[3]")


def test_default_names():
    assert Match("logits", loss="kl").default_name() == "kl[logits]"
    assert Match("hidden.6", "hidden.2").default_name() == "hidden_mse[hidden.2<-hidden.6]"
    assert Match("hidden.1", loss="my.pkg:fancy").default_name() == "fancy[hidden.1]"

    def my_loss(student, teacher):
        return student

    assert Match("logits", loss=my_loss).loss_name == "my_loss"


def test_active_window_in_steps_and_fractions():
    staged = Match("hidden.1", start=10, stop=20)
    assert [staged.active(step, 100) for step in (0, 9, 10, 19, 20)] == [False, False, True, True, False]
    late = Match("logits", start=0.5)
    assert not late.active(49, 100) and late.active(50, 100) and late.active(10**6, 100)
    early = Match("hidden.1", stop=0.25)
    assert early.active(24, 100) and not early.active(25, 100)
    assert Match("logits").active(0, None)


def test_with_returns_a_changed_copy():
    match = Match("logits", loss="kl", weight=0.5)
    changed = match.with_(weight=Linear(0.0, 1.0))
    assert match.weight == 0.5 and changed.weight == Linear(0.0, 1.0) and changed.loss == "kl"


def test_describe_match():
    text = describe_match(Match("hidden.6", "hidden.2", weight=2.0))
    assert text == "hidden_mse[hidden.2<-hidden.6]: hidden.6 -> hidden.2, loss=hidden_mse, weight=2.0"


# ------------------------------------------------------------------ layer maps


def test_uniform_layer_map_is_tinybert_g():
    assert uniform_layer_map(12, 4) == [(0, 0), (3, 1), (6, 2), (9, 3), (12, 4)]
    assert uniform_layer_map(6, 3, embeddings=False) == [(2, 1), (4, 2), (6, 3)]


def test_uniform_layer_map_non_integer_ratio_ends_on_the_last_layer():
    pairs = uniform_layer_map(6, 4, embeddings=False)
    teacher = [t for t, _ in pairs]
    assert [s for _, s in pairs] == [1, 2, 3, 4]
    assert teacher[-1] == 6 and teacher == sorted(set(teacher))


def test_uniform_layer_map_rejects_non_positive_counts():
    with pytest.raises(ConfigError, match="layer counts must be positive"):
        uniform_layer_map(12, 0)


def test_last_k_and_skip_maps():
    assert last_k_layer_map(12, 3) == [(10, 1), (11, 2), (12, 3)]
    assert skip_layer_map(12, 6) == [(2, 1), (4, 2), (6, 3), (8, 4), (10, 5), (12, 6)]
    with pytest.raises(ConfigError, match="more layers than the teacher"):
        last_k_layer_map(2, 3)


def test_explicit_layer_map_validates_pairs():
    assert explicit_layer_map([[4, 1], (8, 2)]) == [(4, 1), (8, 2)]
    with pytest.raises(ConfigError, match=r"layer_map\[1\]: expected \[teacher_index, student_index\], got \[8\]"):
        explicit_layer_map([[4, 1], [8]])
    with pytest.raises(ConfigError, match=r"layer_map\[0\]"):
        explicit_layer_map([["4", 1]])


def test_hidden_and_attention_matches_from_a_layer_map():
    layer_map = uniform_layer_map(4, 2)  # [(0, 0), (2, 1), (4, 2)]
    hidden = hidden_matches(layer_map, weight=0.5)
    assert [(m.teacher, m.student, m.loss, m.weight) for m in hidden] == [
        ("hidden.0", "hidden.0", "hidden_mse", 0.5),
        ("hidden.2", "hidden.1", "hidden_mse", 0.5),
        ("hidden.4", "hidden.2", "hidden_mse", 0.5),
    ]
    # hidden m is the output of block m - 1; the embeddings pair has no attention.
    attention = attention_matches(layer_map)
    assert [(m.teacher, m.student, m.loss) for m in attention] == [
        ("attn.1", "attn.0", "attention_mse"),
        ("attn.3", "attn.1", "attention_mse"),
    ]
    scores = attention_matches(layer_map, kind="attn_scores", loss="attention_kl")
    assert [m.teacher for m in scores] == ["attn_scores.1", "attn_scores.3"]
