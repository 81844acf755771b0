"""MiniLM relation losses against a per-head, per-query oracle in float64."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kdistill.errors import ConfigError, ShapeError
from kdistill.losses import relation_kl, value_relation_kl

from ._helpers import assert_finite_backward, kl_div, padding_mask, randn, softmax, valid_tokens, with_garbage

B, T = 3, 5
MASK = padding_mask([5, 2, 1], T)
PROPERTY = settings(max_examples=12, deadline=None)


def relation_row(x, b, head, query, num_heads, keys):
    width = x.shape[-1] // num_heads
    part = slice(head * width, (head + 1) * width)
    q = x[b, query, part].tolist()
    scores = [sum(a * c for a, c in zip(q, x[b, k, part].tolist())) / math.sqrt(width) for k in keys]
    return softmax(scores)


def oracle(student, teacher, num_heads, mask):
    terms = []
    for b, query in valid_tokens(mask, B, T):
        keys = [k for k in range(T) if mask is None or mask[b, k]]
        for head in range(num_heads):
            terms.append(kl_div(relation_row(teacher, b, head, query, num_heads, keys),
                                relation_row(student, b, head, query, num_heads, keys)))
    return sum(terms) / len(terms)


@pytest.mark.parametrize("loss", [relation_kl, value_relation_kl], ids=lambda f: f.__name__)
def test_relation_kl_matches_oracle_with_different_widths(loss):
    student = with_garbage(randn(B, T, 6, seed=1, scale=2), MASK)
    teacher = with_garbage(randn(B, T, 12, seed=2, scale=2), MASK, -1e6)
    assert loss(student, teacher, num_heads=3, mask=MASK).item() == pytest.approx(
        oracle(student, teacher, 3, MASK), rel=1e-10)
    student, teacher = randn(B, T, 6, seed=3, scale=2), randn(B, T, 12, seed=4, scale=2)
    assert loss(student, teacher, num_heads=2).item() == pytest.approx(oracle(student, teacher, 2, None), rel=1e-10)


@PROPERTY
@given(seed=st.integers(0, 10_000), permutation=st.permutations(range(B)), num_heads=st.sampled_from([1, 2, 4]))
def test_properties(seed, permutation, num_heads):
    student, teacher = randn(B, T, 8, seed=seed), randn(B, T, 4, seed=seed + 1)
    order = list(permutation)
    assert torch.equal(relation_kl(student, teacher, num_heads=num_heads, mask=torch.ones(B, T)),
                       relation_kl(student, teacher, num_heads=num_heads))
    value = relation_kl(student, teacher, num_heads=num_heads, mask=MASK)
    assert value.item() >= 0
    assert relation_kl(student[order], teacher[order], num_heads=num_heads, mask=MASK[order]).item() == pytest.approx(
        value.item(), rel=1e-12)
    assert relation_kl(teacher, teacher, num_heads=num_heads, mask=MASK).item() == pytest.approx(0.0, abs=1e-14)


def test_gradients_are_finite_and_skip_padding_even_for_an_all_padding_example():
    mask = padding_mask([5, 2, 0], T)
    student = with_garbage(randn(B, T, 8, seed=3, dtype=torch.float32), mask, 1e30).requires_grad_()
    teacher = with_garbage(randn(B, T, 4, seed=4, dtype=torch.float32), mask, -1e30).requires_grad_()
    assert_finite_backward(relation_kl(student, teacher, num_heads=2, mask=mask), student, teacher)
    assert student.grad[mask == 0].abs().max() == 0


def test_errors_name_the_width_and_the_fix():
    with pytest.raises(ShapeError, match=r"the teacher's width 10 is not divisible by num_heads=4 "
                                         r"\(student 8, teacher 10\): choose a number of relation heads"):
        relation_kl(torch.zeros(2, T, 8), torch.zeros(2, T, 10), num_heads=4)
    with pytest.raises(ShapeError, match=r"\(batch, tokens\) differ \(student \(2, 5\), teacher \(2, 6\)\)"):
        relation_kl(torch.zeros(2, T, 8), torch.zeros(2, 6, 8), num_heads=4)
    with pytest.raises(ConfigError, match="num_heads must be a positive integer, got 0"):
        value_relation_kl(torch.zeros(2, T, 8), torch.zeros(2, T, 8), num_heads=0)


def causal_oracle(student, teacher, num_heads, mask):
    """Relation of query i over the real keys j ≤ i only, KL per (batch, head, real query), averaged."""
    terms = []
    for b, query in valid_tokens(mask, B, T):
        keys = [k for k in range(query + 1) if mask[b, k]]
        for head in range(num_heads):
            terms.append(kl_div(relation_row(teacher, b, head, query, num_heads, keys),
                                relation_row(student, b, head, query, num_heads, keys)))
    return sum(terms) / len(terms)


@pytest.mark.parametrize("loss", [relation_kl, value_relation_kl], ids=lambda f: f.__name__)
def test_causal_relations_match_oracle_over_keys_up_to_each_query(loss):
    student = with_garbage(randn(B, T, 8, seed=31), MASK)
    teacher = with_garbage(randn(B, T, 12, seed=32), MASK)
    expected = causal_oracle(student, teacher, 2, MASK)
    assert loss(student, teacher, num_heads=2, mask=MASK, causal=True).item() == pytest.approx(expected, rel=1e-10)
    assert loss(student, teacher, num_heads=2, mask=MASK).item() != pytest.approx(expected, rel=1e-3)


def test_a_future_token_never_changes_the_causal_relation_of_an_earlier_query():
    """Student and teacher agree on every token but the last: with causal=True every earlier query
    compares identical relations (zero), so the loss is the last query's term alone, whatever the
    last token holds; without it, every query sees the differing token."""
    mask = torch.ones(1, T)
    teacher = randn(1, T, 8, seed=33)
    for seed in (34, 35):
        student = teacher.clone()
        student[:, -1] = randn(8, seed=seed)
        heads = 2
        last = [kl_div(relation_row(teacher, 0, h, T - 1, heads, range(T)),
                       relation_row(student, 0, h, T - 1, heads, range(T))) for h in range(heads)]
        causal = relation_kl(student, teacher, num_heads=heads, mask=mask, causal=True).item()
        assert causal == pytest.approx(sum(last) / (heads * T), rel=1e-10)
        assert relation_kl(student, teacher, num_heads=heads, mask=mask).item() != pytest.approx(causal, rel=1e-3)
