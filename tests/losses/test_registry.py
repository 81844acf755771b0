"""The loss registry: built-in names, user losses by decorator or import string, helpful errors."""

from __future__ import annotations

import inspect

import pytest
import torch

from kdistill import losses
from kdistill.errors import ConfigError
from kdistill.losses import LOSSES, get_loss, register_loss

BUILT_IN = {
    "soft_ce", "kl", "reverse_kl", "jsd", "logits_mse", "hard_ce", "hidden_mse", "cosine", "pkd", "mmd", "nst",
    "fsp", "rkd", "rkd_distance", "rkd_angle", "attention_mse", "attention_kl", "relation_kl", "value_relation_kl",
    "token_kl", "token_reverse_kl", "token_jsd", "token_skew_kl", "token_tv", "uld", "span_kl",
}


def test_every_built_in_loss_is_registered_exported_and_documented():
    assert BUILT_IN <= set(LOSSES.names())
    for name in BUILT_IN:
        fn = get_loss(name)
        assert getattr(losses, name) is fn
        first_line = fn.__doc__.strip().splitlines()[0]
        assert first_line and len(first_line) <= 110, name
        assert "Reduction" in fn.__doc__ and "Scaling" in fn.__doc__, name
        parameters = inspect.signature(fn).parameters
        assert list(parameters)[:2] == ["student", "teacher"], name
        assert all(p.kind is p.KEYWORD_ONLY for p in list(parameters.values())[2:]), name


def test_every_token_loss_accepts_a_mask():
    for name in BUILT_IN - {"hard_ce"}:
        assert inspect.signature(get_loss(name)).parameters["mask"].default is None, name


def test_user_loss_registers_with_a_decorator_and_is_found_by_name():
    @register_loss("test_registry_l1")
    def l1(student, teacher, *, mask=None):
        """Mean absolute error."""
        return (student - teacher).abs().mean()

    @register_loss()
    def test_registry_unnamed(student, teacher):
        return (student - teacher).sum()

    try:
        assert get_loss("test_registry_l1") is l1
        assert get_loss("test_registry_unnamed") is test_registry_unnamed
        assert get_loss("test_registry_l1")(torch.ones(2), torch.zeros(2)).item() == 1.0
    finally:  # the registry is global; leave it as the other tests expect
        LOSSES._items.pop("test_registry_l1")
        LOSSES._items.pop("test_registry_unnamed")


def test_a_name_taken_by_another_loss_is_a_config_error_naming_both():
    def kl(student, teacher):
        return (student - teacher).sum()

    with pytest.raises(ConfigError, match=r"^a loss named 'kl' is already registered \(kdistill.losses.logits.kl\); "
                                          r"choose another name, or pass overwrite=True to replace it.$"):
        register_loss()(kl)
    assert get_loss("kl") is losses.kl
    register_loss()(losses.kl)  # registering the same object again is harmless


def test_a_callable_passes_through_and_an_import_string_is_imported():
    def custom(student, teacher):
        return (student - teacher).sum()

    assert get_loss(custom) is custom
    assert get_loss("kdistill.losses.hidden:hidden_mse") is losses.hidden_mse


def test_unknown_names_suggest_the_closest_and_list_the_rest():
    with pytest.raises(ConfigError, match=r"matches\[2\]\.loss: unknown loss 'hiden_mse'; did you mean "
                                          r"'hidden_mse'\? Available: attention_kl, attention_mse, cosine"):
        get_loss("hiden_mse", path="matches[2].loss")
    with pytest.raises(ConfigError, match=r"has no attribute 'nope'"):
        get_loss("kdistill.losses.hidden:nope")
    with pytest.raises(ConfigError, match="expected a loss name or a function, got int 3"):
        get_loss(3)


def test_a_range_declared_at_registration_is_checked_for_config_and_distiller():
    from kdistill.ranges import POSITIVE, argument_problems, declared

    @register_loss("test_registry_scaled", ranges={"scale": POSITIVE})
    def scaled(student, teacher, *, scale: float = 1.0):
        """Scaled sum."""
        return scale * (student - teacher).sum()

    try:
        assert declared(get_loss("test_registry_scaled")) == {"scale": POSITIVE}
        assert argument_problems(scaled, {"scale": -2}, "matches[0].args") == [
            "matches[0].args.scale: -2 is out of range; it must be greater than 0."]
    finally:
        LOSSES._items.pop("test_registry_scaled")


def test_loss_properties_are_declared_where_each_loss_is_registered():
    """width_free (no projection where widths differ) and topk (works from top-k cached logits) are
    part of a loss's registration, not lists of names kept elsewhere."""
    from kdistill.losses import LOSSES, loss_properties, register_loss, topk_losses

    width_free = {name for name in LOSSES.names() if loss_properties(name).width_free}
    assert width_free == {"soft_ce", "kl", "reverse_kl", "jsd", "hard_ce", "mmd", "nst", "rkd", "rkd_distance",
                          "rkd_angle", "relation_kl", "value_relation_kl", "attention_mse", "attention_kl", "fsp",
                          "token_kl", "token_reverse_kl", "token_jsd", "token_skew_kl", "token_tv", "token_topk_kl",
                          "uld", "span_kl"}
    assert topk_losses() == ["jsd", "kl", "reverse_kl", "soft_ce", "token_jsd", "token_kl", "token_reverse_kl",
                             "token_skew_kl", "token_tv", "uld"]
    assert not loss_properties("hidden_mse").width_free and not loss_properties(lambda s, t: s).width_free

    @register_loss("_test_gram_distance", width_free=True)
    def gram_distance(student, teacher):
        return ((student @ student.T) - (teacher @ teacher.T)).pow(2).mean()

    try:
        assert loss_properties("_test_gram_distance").width_free
        assert not loss_properties("_test_gram_distance").topk
    finally:
        LOSSES._items.pop("_test_gram_distance")


def test_a_width_free_user_loss_gets_no_projection():
    import torch
    from torch import nn

    from kdistill import Distiller, Match
    from kdistill.losses import LOSSES, register_loss

    @register_loss("_test_gram", width_free=True)
    def gram(student, teacher):
        return ((student @ student.T) - (teacher @ teacher.T)).pow(2).mean()

    try:
        teacher, student = nn.Linear(4, 8), nn.Linear(4, 3)
        distiller = Distiller(teacher, student, [Match("logits", "logits", "_test_gram")])
        distiller.prepare({"inputs": torch.randn(5, 4)})
        assert sum(p.numel() for p in distiller.projections.parameters()) == 0
    finally:
        LOSSES._items.pop("_test_gram")
