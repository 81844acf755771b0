"""Attention-map losses against per-entry oracles in float64, and every masking convention."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kdistill.errors import ConfigError, ShapeError
from kdistill.losses import attention_kl, attention_mse

from ._helpers import assert_finite_backward, kl_div, padding_mask, randn, valid_tokens

B, H, T = 3, 2, 5
MASK = padding_mask([5, 3, 2], T)
PROPERTY = settings(max_examples=12, deadline=None)


def masked_scores(scores, mask, fill):
    """Scores with padded keys set the way a model sets them: −inf, −1e4 added, or finfo.min."""
    padded_keys = (mask == 0)[:, None, None, :]
    if fill == "add-1e4":
        return scores + padded_keys * -1e4
    value = float("-inf") if fill == "-inf" else torch.finfo(scores.dtype).min
    return scores.masked_fill(padded_keys, value)


def probs_with_garbage_rows(scores, mask):
    """Softmax over keys, then padded query rows overwritten with junk a loss must not read."""
    probs = torch.softmax(masked_scores(scores, mask, "-inf"), -1)
    return torch.where((mask == 0)[:, None, :, None], torch.full_like(probs, 1e6), probs)


def test_attention_mse_on_probs_is_mean_over_valid_query_key_entries():
    student = probs_with_garbage_rows(randn(B, H, T, T, seed=1), MASK)
    teacher = probs_with_garbage_rows(randn(B, H, T, T, seed=2), MASK)
    squares = [(student[b, h, q, k] - teacher[b, h, q, k]).item() ** 2
               for b, q in valid_tokens(MASK, B, T) for h in range(H) for k in range(T) if MASK[b, k]]
    assert attention_mse(student, teacher, mask=MASK).item() == pytest.approx(sum(squares) / len(squares), rel=1e-12)


def test_attention_mse_on_scores_keeps_legitimate_negative_scores():
    # Scores down to −30: TextBrewer zeroed every value ≤ −1e-3; all of these must count.
    student, teacher = randn(B, H, T, T, seed=3, scale=10), randn(B, H, T, T, seed=4, scale=10)
    assert student.min() < -20
    expected = ((student - teacher) ** 2).mean().item()
    assert attention_mse(student, teacher, kind="scores").item() == pytest.approx(expected, rel=1e-12)


def test_attention_mse_on_scores_skips_causal_and_padding_masking_without_a_mask():
    scores_s, scores_t = randn(B, H, T, T, seed=5, scale=3), randn(B, H, T, T, seed=6, scale=3)
    future = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    student = masked_scores(scores_s.masked_fill(future, float("-inf")), MASK, "add-1e4")
    teacher = masked_scores(scores_t.masked_fill(future, torch.finfo(torch.float64).min), MASK, "finfo.min")
    squares = [(scores_s[b, h, q, k] - scores_t[b, h, q, k]).item() ** 2
               for b in range(B) for h in range(H) for q in range(T) for k in range(q + 1) if MASK[b, k]]
    expected = sum(squares) / len(squares)
    assert attention_mse(student, teacher, kind="scores").item() == pytest.approx(expected, rel=1e-12)


@PROPERTY
@given(seed=st.integers(0, 10_000), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_every_masking_convention_gives_the_same_finite_value(seed, dtype):
    scores_s, scores_t = randn(B, H, T, T, seed=seed, dtype=dtype), randn(B, H, T, T, seed=seed + 1, dtype=dtype)
    conventions = ["-inf", "add-1e4", "finfo.min"]
    for kind in ("scores", "probs"):
        values = []
        for fill in conventions:
            student, teacher = masked_scores(scores_s, MASK, fill), masked_scores(scores_t, MASK, fill)
            if kind == "probs":
                student, teacher = torch.softmax(student, -1), torch.softmax(teacher, -1)
            values.append(attention_mse(student, teacher, mask=MASK, kind=kind))
        if kind == "probs":  # probabilities that are exactly 0 at padded keys, and junk in padded queries
            probs_s, probs_t = (torch.exp(x) * MASK[:, None, None, :] for x in (scores_s, scores_t))
            probs_s, probs_t = probs_s / probs_s.sum(-1, keepdim=True), probs_t / probs_t.sum(-1, keepdim=True)
            values.append(attention_mse(probs_s, probs_t, mask=MASK))
            kl_values = [attention_kl(torch.softmax(masked_scores(scores_s, MASK, f), -1),
                                      torch.softmax(masked_scores(scores_t, MASK, f), -1), mask=MASK)
                         for f in conventions]
            assert all(torch.isfinite(v) for v in kl_values)
            assert max(kl_values).item() == pytest.approx(min(kl_values).item(), rel=1e-4)
        assert all(torch.isfinite(v) for v in values)
        assert max(values).item() == pytest.approx(min(values).item(), rel=1e-4, abs=1e-12)


def test_attention_kl_is_mean_over_batch_heads_valid_queries_of_kl_over_keys():
    student = probs_with_garbage_rows(randn(B, H, T, T, seed=7, scale=2), MASK)
    teacher = probs_with_garbage_rows(randn(B, H, T, T, seed=8, scale=2), MASK)
    terms = [kl_div([teacher[b, h, q, k].item() for k in range(T) if MASK[b, k]],
                    [student[b, h, q, k].item() for k in range(T) if MASK[b, k]])
             for b, q in valid_tokens(MASK, B, T) for h in range(H)]
    assert attention_kl(student, teacher, mask=MASK).item() == pytest.approx(sum(terms) / len(terms), rel=1e-10)
    assert attention_kl(teacher, teacher, mask=MASK).item() == pytest.approx(0.0, abs=1e-14)


@PROPERTY
@given(seed=st.integers(0, 10_000), permutation=st.permutations(range(B)))
def test_all_ones_mask_is_no_mask_and_batch_order_does_not_matter(seed, permutation):
    student = torch.softmax(randn(B, H, T, T, seed=seed), -1)
    teacher = torch.softmax(randn(B, H, T, T, seed=seed + 1), -1)
    order = list(permutation)
    for loss, options in [(attention_mse, {}), (attention_mse, {"kind": "scores"}), (attention_kl, {})]:
        assert torch.equal(loss(student, teacher, mask=torch.ones(B, T), **options), loss(student, teacher, **options))
        assert loss(student[order], teacher[order], mask=MASK[order], **options).item() == pytest.approx(
            loss(student, teacher, mask=MASK, **options).item(), rel=1e-12)
        assert loss(student, teacher, **options) >= 0


@pytest.mark.parametrize("fill", ["-inf", "add-1e4", "finfo.min"])
def test_gradients_are_finite_through_softmax_of_masked_scores(fill):
    scores_s = randn(B, H, T, T, seed=9, dtype=torch.float32).requires_grad_()
    scores_t = randn(B, H, T, T, seed=10, dtype=torch.float32).requires_grad_()
    masked_s, masked_t = masked_scores(scores_s, MASK, fill), masked_scores(scores_t, MASK, fill)
    probs_s, probs_t = torch.softmax(masked_s, -1), torch.softmax(masked_t, -1)
    total = (attention_mse(probs_s, probs_t, mask=MASK) + attention_mse(masked_s, masked_t, kind="scores")
             + attention_kl(probs_s, probs_t, mask=MASK) + attention_kl(probs_s, probs_t))
    assert_finite_backward(total, scores_s, scores_t)


def test_shape_and_config_errors():
    with pytest.raises(ShapeError, match=r"head counts differ \(student 4, teacher 12\).*relation_kl"):
        attention_mse(torch.zeros(2, 4, T, T), torch.zeros(2, 12, T, T))
    with pytest.raises(ShapeError, match=r"attention_kl: attention maps must be \(B, H, T, T\)"):
        attention_kl(torch.zeros(2, T, T), torch.zeros(2, T, T))
    with pytest.raises(ShapeError, match=r"attention_kl: batch sizes differ \(student 2, teacher 3\)"):
        attention_kl(torch.zeros(2, 4, T, T), torch.zeros(3, 4, T, T))
    with pytest.raises(ConfigError, match=r"unknown attention kind 'score'; did you mean 'scores'\?"):
        attention_mse(torch.zeros(2, 4, T, T), torch.zeros(2, 4, T, T), kind="score")


def causal_probs(scores, mask):
    """A decoder's attention: softmax over real keys j ≤ i; padded query rows filled with junk."""
    future = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    return probs_with_garbage_rows(scores.masked_fill(future, float("-inf")), mask)


def test_causal_attention_losses_count_only_keys_up_to_their_query():
    """A decoder's future entries are zero in both maps: attention_mse must not average them in, and a
    student that puts weight on future keys (here: a full, non-causal map) is not judged there."""
    student = causal_probs(randn(B, H, T, T, seed=21), MASK)
    leaky = probs_with_garbage_rows(randn(B, H, T, T, seed=22), MASK)  # weight on future keys
    teacher = causal_probs(randn(B, H, T, T, seed=23), MASK)
    entries = [(b, h, q, k) for b, q in valid_tokens(MASK, B, T) for h in range(H) for k in range(q + 1) if MASK[b, k]]
    for candidate in (student, leaky):
        squares = [(candidate[e] - teacher[e]).item() ** 2 for e in entries]
        assert attention_mse(candidate, teacher, mask=MASK, causal=True).item() == pytest.approx(
            sum(squares) / len(squares), rel=1e-12)
    kls = [kl_div([teacher[b, h, q, k].item() for k in range(q + 1) if MASK[b, k]],
                  [student[b, h, q, k].item() for k in range(q + 1) if MASK[b, k]])
           for b, q in valid_tokens(MASK, B, T) for h in range(H)]
    assert attention_kl(student, teacher, mask=MASK, causal=True).item() == pytest.approx(sum(kls) / len(kls),
                                                                                         rel=1e-12)
    assert attention_mse(student, student, mask=MASK, causal=True).item() == 0.0
    assert attention_kl(student, student, mask=MASK, causal=True).item() == 0.0
