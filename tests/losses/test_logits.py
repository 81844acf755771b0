"""Logit losses against per-token oracles in float64, plus their properties."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kdistill.errors import ConfigError, ShapeError
from kdistill.losses import hard_ce, jsd, kl, logits_mse, reverse_kl, soft_ce

from ._helpers import assert_finite_backward, kl_div, padding_mask, randn, softmax, valid_tokens, with_garbage

B, T, C = 3, 5, 4
MASK = padding_mask([5, 3, 1], T)
SOFT_LOSSES = [soft_ce, kl, reverse_kl, jsd]
PROPERTY = settings(max_examples=15, deadline=None)


def rows(student, teacher, mask):
    if student.dim() == 2:
        return list(zip(student.tolist(), teacher.tolist()))
    return [(student[b, i].tolist(), teacher[b, i].tolist()) for b, i in valid_tokens(mask, B, T)]


def per_row_oracle(name, s_row, t_row, temperature):
    p_s = softmax([v / temperature for v in s_row])
    p_t = softmax([v / temperature for v in t_row])
    if name == "soft_ce":
        return -sum(pt * math.log(ps) for pt, ps in zip(p_t, p_s))
    if name == "kl":
        return kl_div(p_t, p_s)
    if name == "reverse_kl":
        return kl_div(p_s, p_t)
    middle = [(a + b) / 2 for a, b in zip(p_s, p_t)]
    return 0.5 * kl_div(p_s, middle) + 0.5 * kl_div(p_t, middle)


def oracle(name, student, teacher, temperature, t2_scale, mask=None):
    values = [per_row_oracle(name, s, t, temperature) for s, t in rows(student, teacher, mask)]
    return sum(values) / len(values) * (temperature**2 if t2_scale else 1.0)


@pytest.mark.parametrize("loss", SOFT_LOSSES, ids=lambda f: f.__name__)
@pytest.mark.parametrize("temperature,t2_scale", [(1.0, True), (2.0, True), (4.0, False)])
def test_soft_losses_match_oracle_per_example(loss, temperature, t2_scale):
    student, teacher = randn(B, C, seed=1, scale=3), randn(B, C, seed=2, scale=3)
    value = loss(student, teacher, temperature=temperature, t2_scale=t2_scale, mask=MASK)  # mask ignored: 2-D
    assert value.dtype == torch.float64
    assert value.item() == pytest.approx(oracle(loss.__name__, student, teacher, temperature, t2_scale), rel=1e-10)


@pytest.mark.parametrize("loss", SOFT_LOSSES, ids=lambda f: f.__name__)
def test_soft_losses_match_oracle_per_valid_token_and_ignore_padding(loss):
    student = with_garbage(randn(B, T, C, seed=3, scale=3), MASK)
    teacher = with_garbage(randn(B, T, C, seed=4, scale=3), MASK, value=-1e6)
    value = loss(student, teacher, temperature=2.0, mask=MASK)
    assert value.item() == pytest.approx(oracle(loss.__name__, student, teacher, 2.0, True, MASK), rel=1e-10)


def test_logits_mse_matches_oracle_per_element_over_valid_tokens():
    student = with_garbage(randn(B, T, C, seed=5), MASK)
    teacher = randn(B, T, C, seed=6)
    squares = [((s - t) / 2.0) ** 2 for s_row, t_row in rows(student, teacher, MASK) for s, t in zip(s_row, t_row)]
    value = logits_mse(student, teacher, temperature=2.0, mask=MASK)
    assert value.item() == pytest.approx(sum(squares) / len(squares), rel=1e-12)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_hard_ce_matches_oracle_and_skips_ignored_labels(smoothing):
    logits = randn(B, T, C, seed=7, scale=2)
    labels = torch.tensor([[0, 1, 2, 3, -100], [1, -100, 3, -100, -100], [2, -100, -100, -100, -100]])
    logits = torch.where((labels == -100)[..., None], torch.full_like(logits, 1e6), logits)
    expected = []
    for b, i in [(b, i) for b in range(B) for i in range(T) if labels[b, i] != -100]:
        log_q = [math.log(p) for p in softmax(logits[b, i].tolist())]
        expected.append((1 - smoothing) * -log_q[labels[b, i]] + smoothing * -sum(log_q) / C)
    value = hard_ce(logits, None, labels=labels, label_smoothing=smoothing)
    assert value.item() == pytest.approx(sum(expected) / len(expected), rel=1e-10)
    assert hard_ce(logits[:, 0], labels=labels[:, 0]).item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits[:, 0], labels[:, 0]).item(), rel=1e-12)


def test_hard_ce_with_every_label_ignored_is_zero_not_nan():
    logits = randn(2, C, seed=8, dtype=torch.float32).requires_grad_()
    value = hard_ce(logits, labels=torch.full((2,), -100))
    assert value.item() == 0.0
    value.backward()


def test_kl_is_soft_ce_minus_teacher_entropy():
    student, teacher = randn(B, T, C, seed=9), randn(B, T, C, seed=10)
    teacher_probs = torch.softmax(teacher / 3.0, -1)
    entropy = -(teacher_probs * teacher_probs.log()).sum(-1)[MASK.bool()].mean()
    difference = soft_ce(student, teacher, temperature=3.0, t2_scale=False, mask=MASK) - kl(
        student, teacher, temperature=3.0, t2_scale=False, mask=MASK)
    assert difference.item() == pytest.approx(entropy.item(), rel=1e-10)


@PROPERTY
@given(seed=st.integers(0, 10_000), scale=st.floats(0.1, 20.0), temperature=st.floats(0.5, 8.0))
def test_divergences_are_nonnegative_and_zero_at_equality(seed, scale, temperature):
    student, teacher = randn(B, T, C, seed=seed, scale=scale), randn(B, T, C, seed=seed + 1, scale=scale)
    for loss in (kl, reverse_kl, jsd):
        assert loss(student, teacher, temperature=temperature, mask=MASK).item() >= -1e-12
        assert loss(teacher, teacher, temperature=temperature, mask=MASK).item() == pytest.approx(0.0, abs=1e-12)
    assert jsd(student, teacher, temperature=temperature, t2_scale=False).item() <= math.log(2) + 1e-12
    teacher_probs = torch.softmax(teacher / temperature, -1)
    entropy = -(teacher_probs * teacher_probs.log()).sum(-1)[MASK.bool()].mean()
    assert soft_ce(student, teacher, temperature=temperature, t2_scale=False, mask=MASK) >= entropy - 1e-10


@PROPERTY
@given(seed=st.integers(0, 10_000), temperature=st.floats(0.5, 8.0))
def test_t2_scale_multiplies_by_temperature_squared(seed, temperature):
    student, teacher = randn(B, T, C, seed=seed, scale=4), randn(B, T, C, seed=seed + 1, scale=4)
    for loss in SOFT_LOSSES:
        scaled = loss(student, teacher, temperature=temperature, t2_scale=True, mask=MASK)
        plain = loss(student, teacher, temperature=temperature, t2_scale=False, mask=MASK)
        assert scaled.item() == pytest.approx(temperature**2 * plain.item(), rel=1e-12, abs=1e-15)


@PROPERTY
@given(seed=st.integers(0, 10_000), permutation=st.permutations(range(B)))
def test_all_ones_mask_is_no_mask_and_batch_order_does_not_matter(seed, permutation):
    student, teacher = randn(B, T, C, seed=seed, scale=3), randn(B, T, C, seed=seed + 1, scale=3)
    order = list(permutation)
    for loss in [*SOFT_LOSSES, logits_mse]:
        assert torch.equal(loss(student, teacher, mask=torch.ones(B, T)), loss(student, teacher))
        assert loss(student[order], teacher[order], mask=MASK[order]).item() == pytest.approx(
            loss(student, teacher, mask=MASK).item(), rel=1e-12)


def test_half_precision_is_computed_in_float32():
    student, teacher = randn(B, T, C, seed=11, dtype=torch.bfloat16), randn(B, T, C, seed=12, dtype=torch.bfloat16)
    value = kl(student, teacher, temperature=2.0, mask=MASK)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(kl(student.double(), teacher.double(), temperature=2.0, mask=MASK).item(),
                                         rel=1e-5)


@pytest.mark.parametrize("loss", [*SOFT_LOSSES, logits_mse], ids=lambda f: f.__name__)
def test_gradients_are_finite_with_garbage_in_padding(loss):
    student = with_garbage(randn(B, T, C, seed=13, dtype=torch.float32), MASK, 1e30).requires_grad_()
    teacher = with_garbage(randn(B, T, C, seed=14, dtype=torch.float32), MASK, -1e30).requires_grad_()
    assert_finite_backward(loss(student, teacher, temperature=2.0, mask=MASK), student, teacher)
    assert student.grad[MASK == 0].abs().max() == 0


def test_hard_ce_gradient_flows_to_student():
    logits = randn(B, C, seed=15, dtype=torch.float32).requires_grad_()
    assert_finite_backward(hard_ce(logits, labels=torch.tensor([0, 3, -100])), logits)


def test_shape_errors_say_what_differs_and_what_to_do():
    with pytest.raises(ShapeError, match=r"kl: numbers of classes differ \(student 4, teacher 6\).*predict"):
        kl(randn(B, C, seed=0), randn(B, 6, seed=0))
    with pytest.raises(ShapeError, match=r"soft_ce: batch sizes differ \(student 3, teacher 2\)"):
        soft_ce(randn(B, C, seed=0), randn(2, C, seed=0))
    with pytest.raises(ShapeError, match=r"mask has shape \(3, 4\) but the input's \(batch, tokens\) are \(3, 5\)"):
        soft_ce(randn(B, T, C, seed=0), randn(B, T, C, seed=0), mask=torch.ones(B, 4))
    with pytest.raises(ShapeError, match=r"hard_ce: labels have shape \(3, 5\) but the logits \(3, 4\) need \(3,\)"):
        hard_ce(randn(B, C, seed=0), labels=torch.zeros(B, T, dtype=torch.long))
    with pytest.raises(ConfigError, match="temperature must be > 0, got 0"):
        kl(randn(B, C, seed=0), randn(B, C, seed=0), temperature=0)


@pytest.mark.parametrize("loss", [soft_ce, kl, reverse_kl, jsd, logits_mse])
def test_a_temperature_tensor_is_one_number_or_a_config_error(loss):
    student, teacher = randn(3, 4, seed=0), randn(3, 4, seed=1)
    name = loss.__name__
    assert float(loss(student, teacher, temperature=torch.tensor(2.0))) == pytest.approx(
        float(loss(student, teacher, temperature=2.0)))
    with pytest.raises(ConfigError, match=rf"{name}: temperature must be one number > 0, got a tensor of shape \(2,\)"):
        loss(student, teacher, temperature=torch.tensor([1.0, 2.0]))
    with pytest.raises(ConfigError, match=rf"{name}: temperature must be > 0, got tensor\(-1.\)"):
        loss(student, teacher, temperature=torch.tensor(-1.0))
    with pytest.raises(ConfigError, match=rf"{name}: temperature must be a number > 0, got str '2'"):
        loss(student, teacher, temperature="2")
