"""Refs: parsing, helpful errors, negative indices and ranges checked against the real model."""

from __future__ import annotations

import pytest

from kdistill.errors import ConfigError, RefError
from kdistill.refs import Ref, format_refs, parse_ref


@pytest.mark.parametrize(
    "text, expected",
    [
        ("logits", Ref("logits")),
        ("pooled", Ref("pooled")),
        ("hidden.0", Ref("hidden", 0)),
        ("hidden.4", Ref("hidden", 4)),
        ("hidden.-1", Ref("hidden", -1)),
        ("attn.3", Ref("attn", 3)),
        ("attn_scores.-2", Ref("attn_scores", -2)),
        ("query.1", Ref("query", 1)),
        ("key.0", Ref("key", 0)),
        ("value.11", Ref("value", 11)),
        ("module:encoder.layer.3.output", Ref("module", path="encoder.layer.3.output")),
        ("module:layer2", Ref("module", path="layer2")),
    ],
)
def test_parse_single_refs(text, expected):
    assert parse_ref(text) == (expected,)
    assert str(expected) == text  # refs print as they are written (plans, part names)


def test_comma_separated_refs_give_a_tuple_in_order():
    refs = parse_ref("hidden.1, hidden.3")
    assert refs == (Ref("hidden", 1), Ref("hidden", 3))
    assert format_refs(refs) == "hidden.1,hidden.3"


def test_ref_errors_are_config_errors():
    assert issubclass(RefError, ConfigError)


@pytest.mark.parametrize(
    "text, suggestion",
    [("hiden.3", "hidden"), ("logit", "logits"), ("atn.2", "attn"), ("poold", "pooled"), ("querry.0", "query")],
)
def test_unknown_ref_suggests_the_close_name_and_lists_forms(text, suggestion):
    with pytest.raises(RefError) as info:
        parse_ref(text, where="matches[2].teacher")
    message = str(info.value)
    assert message.startswith("matches[2].teacher: unknown feature ref")
    assert f"did you mean '{suggestion}'?" in message
    for form in ("logits", "hidden.N", "attn.N", "module:PATH"):
        assert form in message


def test_unknown_ref_without_a_close_name_has_no_suggestion():
    with pytest.raises(RefError) as info:
        parse_ref("banana")
    assert "did you mean" not in str(info.value)
    assert "Valid forms: logits, pooled, embedding, hidden.N" in str(info.value)


@pytest.mark.parametrize("kind", ["hidden", "attn", "value"])
def test_layer_kind_without_index_asks_for_one(kind):
    with pytest.raises(RefError, match=rf"'{kind}' needs a layer index, e.g. '{kind}.2' or '{kind}.-1'"):
        parse_ref(kind)


@pytest.mark.parametrize("text", ["", "   ", None, 3])
def test_empty_or_non_string_ref(text):
    with pytest.raises(RefError, match="expected a feature ref such as 'hidden.4'"):
        parse_ref(text, where="m.student")


def test_module_ref_needs_a_path():
    with pytest.raises(RefError, match="'module:' needs a module path"):
        parse_ref("module:")


@pytest.mark.parametrize("text", ["hidden.x", "hidden.1.2", "hidden-1"])
def test_malformed_index_is_an_error(text):
    with pytest.raises(RefError):
        parse_ref(text)


# ------------------------------------------------------------------ resolution against a model


@pytest.mark.parametrize(
    "ref, layers, expected",
    [
        (Ref("hidden", -1), 4, 4),  # the last block's output (hidden has layers + 1 entries)
        (Ref("hidden", -5), 4, 0),  # the embeddings
        (Ref("hidden", 0), 4, 0),
        (Ref("hidden", 4), 4, 4),
        (Ref("attn", -1), 4, 3),  # blocks are 0-based: the last is layers - 1
        (Ref("attn", -4), 4, 0),
        (Ref("query", -2), 6, 4),
        (Ref("attn_scores", 5), 6, 5),
    ],
)
def test_negative_indices_resolve_against_the_layer_count(ref, layers, expected):
    resolved = ref.resolved(layers)
    assert resolved == Ref(ref.kind, expected)


@pytest.mark.parametrize(
    "ref, layers, valid",
    [
        (Ref("hidden", 5), 4, "hidden states 0–4 (0 = embeddings; the model has 4 layers)"),
        (Ref("hidden", -6), 4, "hidden states 0–4 (0 = embeddings; the model has 4 layers)"),
        (Ref("attn", 4), 4, "layers 0–3 (the model has 4 layers)"),
        (Ref("value", -3), 2, "layers 0–1 (the model has 2 layers)"),
    ],
)
def test_out_of_range_states_the_models_layer_count(ref, layers, valid):
    with pytest.raises(RefError) as info:
        ref.resolved(layers, where="matches[0].student")
    assert str(info.value) == f"matches[0].student: '{ref}' is out of range: valid are {valid}."


def test_refs_without_index_or_unknown_depth_are_left_alone():
    assert Ref("logits").resolved(2) == Ref("logits")
    assert Ref("module", path="layer1").resolved(2) == Ref("module", path="layer1")
    assert Ref("hidden", -1).resolved(None) == Ref("hidden", -1)  # plain modules: no layer count
