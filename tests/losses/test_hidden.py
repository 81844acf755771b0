"""Hidden-state and feature-map losses against per-example oracles in float64, plus their properties."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kdistill.errors import ShapeError
from kdistill.losses import cosine, fsp, hidden_mse, mmd, nst, pkd, rkd, rkd_angle, rkd_distance

from ._helpers import GARBAGE, assert_finite_backward, huber, padding_mask, randn, valid_tokens, with_garbage

B, T, D = 4, 5, 6
MASK = padding_mask([5, 3, 1, 4], T)
PROPERTY = settings(max_examples=12, deadline=None)


def dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def unit(v):
    norm = math.sqrt(dot(v, v))
    return [x / norm for x in v] if norm > 0 else [0.0] * len(v)


def test_hidden_mse_is_mean_over_valid_tokens_and_dims():
    student = with_garbage(randn(B, T, D, seed=1), MASK)
    teacher = with_garbage(randn(B, T, D, seed=2), MASK, -GARBAGE)
    squares = [(s - t) ** 2 for b, i in valid_tokens(MASK, B, T)
               for s, t in zip(student[b, i].tolist(), teacher[b, i].tolist())]
    assert hidden_mse(student, teacher, mask=MASK).item() == pytest.approx(sum(squares) / len(squares), rel=1e-12)
    assert hidden_mse(student[:, 0], teacher[:, 0], mask=MASK).item() == pytest.approx(
        ((student[:, 0] - teacher[:, 0]) ** 2).mean().item(), rel=1e-12)


def test_cosine_is_mean_of_one_minus_cos_over_valid_tokens():
    student, teacher = with_garbage(randn(B, T, D, seed=3), MASK), randn(B, T, D, seed=4)
    terms = [1 - dot(unit(student[b, i].tolist()), unit(teacher[b, i].tolist())) for b, i in valid_tokens(MASK, B, T)]
    assert cosine(student, teacher, mask=MASK).item() == pytest.approx(sum(terms) / len(terms), rel=1e-10)


def test_pkd_is_batch_mean_of_squared_distance_between_normalised_cls():
    student, teacher = with_garbage(randn(B, T, D, seed=5), MASK), randn(B, T, D, seed=6)
    terms = [sum((a - b) ** 2 for a, b in zip(unit(student[b, 0].tolist()), unit(teacher[b, 0].tolist())))
             for b in range(B)]
    assert pkd(student, teacher, mask=MASK).item() == pytest.approx(sum(terms) / B, rel=1e-10)
    assert pkd(student[:, 0], teacher[:, 0]).item() == pytest.approx(sum(terms) / B, rel=1e-10)


def mmd_oracle(student_neurons, teacher_neurons):
    """Per example: lists of neuron vectors (each over that example's positions)."""
    s = [unit(v) for v in student_neurons]
    t = [unit(v) for v in teacher_neurons]

    def mean_kernel(xs, ys):
        return sum(dot(x, y) ** 2 for x in xs for y in ys) / (len(xs) * len(ys))

    return mean_kernel(s, s) + mean_kernel(t, t) - 2 * mean_kernel(s, t)


def test_mmd_matches_oracle_over_valid_tokens_with_different_widths():
    student, teacher = with_garbage(randn(B, T, D, seed=7), MASK), with_garbage(randn(B, T, 9, seed=8), MASK)
    expected = []
    for b in range(B):
        tokens = [i for i in range(T) if MASK[b, i]]
        expected.append(mmd_oracle([[student[b, i, j].item() for i in tokens] for j in range(D)],
                                   [[teacher[b, i, j].item() for i in tokens] for j in range(9)]))
    assert mmd(student, teacher, mask=MASK).item() == pytest.approx(sum(expected) / B, rel=1e-10)
    assert nst is mmd


def test_mmd_on_feature_maps_compares_channels_over_positions():
    student, teacher = randn(2, 3, 4, 4, seed=9), randn(2, 5, 4, 4, seed=10)
    expected = [mmd_oracle(student[b].reshape(3, -1).tolist(), teacher[b].reshape(5, -1).tolist()) for b in range(2)]
    assert mmd(student, teacher).item() == pytest.approx(sum(expected) / 2, rel=1e-10)
    assert mmd(student, student).item() == pytest.approx(0.0, abs=1e-12)


def gram_oracle(first, second, positions):
    """first: [position][channel]; G[c1][c2] = Σ_p first[p][c1]·second[p][c2] / N."""
    return [[sum(first[p][a] * second[p][c] for p in positions) / len(positions)
             for c in range(len(second[0]))] for a in range(len(first[0]))]


def test_fsp_matches_oracle_on_tokens_and_feature_maps():
    s1, s2 = with_garbage(randn(B, T, 3, seed=11), MASK), with_garbage(randn(B, T, 2, seed=12), MASK)
    t1, t2 = randn(B, T, 3, seed=13), with_garbage(randn(B, T, 2, seed=14), MASK)
    squares = []
    for b in range(B):
        tokens = [i for i in range(T) if MASK[b, i]]
        g_s = gram_oracle(s1[b].tolist(), s2[b].tolist(), tokens)
        g_t = gram_oracle(t1[b].tolist(), t2[b].tolist(), tokens)
        squares += [(x - y) ** 2 for rs, rt in zip(g_s, g_t) for x, y in zip(rs, rt)]
    assert fsp((s1, s2), (t1, t2), mask=MASK).item() == pytest.approx(sum(squares) / len(squares), rel=1e-10)

    maps = [randn(2, c, 3, 3, seed=20 + c) for c in (2, 4)]
    teacher_maps = [randn(2, c, 3, 3, seed=30 + c) for c in (2, 4)]
    squares = []
    for b in range(2):
        as_positions = [m[b].reshape(m.shape[1], -1).T.tolist() for m in maps + teacher_maps]
        g_s = gram_oracle(as_positions[0], as_positions[1], range(9))
        g_t = gram_oracle(as_positions[2], as_positions[3], range(9))
        squares += [(x - y) ** 2 for rs, rt in zip(g_s, g_t) for x, y in zip(rs, rt)]
    assert fsp(tuple(maps), tuple(teacher_maps)).item() == pytest.approx(sum(squares) / len(squares), rel=1e-10)


def rkd_oracle(student, teacher):
    """Reference semantics of Park et al.'s code: means over all B² pairs and B³ triplets."""
    n = len(student)

    def distances(e):
        d = [[math.dist(e[i], e[j]) for j in range(n)] for i in range(n)]
        mean = sum(d[i][j] for i in range(n) for j in range(n) if i != j) / (n * n - n)
        return [[x / mean for x in row] for row in d]

    def cosines(e):
        out = []
        for i, j, k in itertools.product(range(n), repeat=3):
            u = unit([a - b for a, b in zip(e[j], e[i])])
            v = unit([a - b for a, b in zip(e[k], e[i])])
            out.append(dot(u, v))
        return out

    d_s, d_t = distances(student), distances(teacher)
    distance = sum(huber(d_s[i][j] - d_t[i][j]) for i in range(n) for j in range(n)) / n**2
    angle = sum(huber(a - b) for a, b in zip(cosines(student), cosines(teacher))) / n**3
    return distance, angle


def test_rkd_matches_oracle_on_flattened_and_token_averaged_embeddings():
    student, teacher = randn(B, 2, 3, 2, seed=15), randn(B, 7, seed=16)
    distance, angle = rkd_oracle(student.reshape(B, -1).tolist(), teacher.tolist())
    assert rkd_distance(student, teacher).item() == pytest.approx(distance, rel=1e-10)
    assert rkd_angle(student, teacher).item() == pytest.approx(angle, rel=1e-10)
    assert rkd(student, teacher).item() == pytest.approx(25 * distance + 50 * angle, rel=1e-10)

    tokens_s, tokens_t = with_garbage(randn(B, T, D, seed=17), MASK), with_garbage(randn(B, T, 3, seed=18), MASK)
    pooled_s = [[sum(tokens_s[b, i, j].item() for i in range(T) if MASK[b, i]) / MASK[b].sum().item()
                 for j in range(D)] for b in range(B)]
    pooled_t = [[sum(tokens_t[b, i, j].item() for i in range(T) if MASK[b, i]) / MASK[b].sum().item()
                 for j in range(3)] for b in range(B)]
    distance, angle = rkd_oracle(pooled_s, pooled_t)
    assert rkd(tokens_s, tokens_t, distance_weight=2.0, angle_weight=3.0, mask=MASK).item() == pytest.approx(
        2 * distance + 3 * angle, rel=1e-10)


def test_rkd_of_a_single_example_is_zero():
    assert rkd(randn(1, D, seed=0), randn(1, D, seed=1)).item() == 0.0


TOKEN_LOSSES = [hidden_mse, cosine, pkd, mmd, rkd, rkd_distance, rkd_angle]


@PROPERTY
@given(seed=st.integers(0, 10_000), permutation=st.permutations(range(B)))
def test_all_ones_mask_is_no_mask_and_batch_order_does_not_matter(seed, permutation):
    student, teacher = randn(B, T, D, seed=seed), randn(B, T, D, seed=seed + 1)
    order = list(permutation)
    pairs = [(loss, student, teacher) for loss in TOKEN_LOSSES] + [(fsp, (student, teacher), (teacher, student))]
    for loss, s, t in pairs:
        assert torch.equal(loss(s, t, mask=torch.ones(B, T)), loss(s, t)), loss.__name__
        permuted_s = tuple(x[order] for x in s) if isinstance(s, tuple) else s[order]
        permuted_t = tuple(x[order] for x in t) if isinstance(t, tuple) else t[order]
        assert loss(permuted_s, permuted_t, mask=MASK[order]).item() == pytest.approx(
            loss(s, t, mask=MASK).item(), rel=1e-10, abs=1e-14), loss.__name__


@PROPERTY
@given(seed=st.integers(0, 10_000), scale=st.floats(1e-3, 1e3))
def test_cosine_ignores_positive_scaling_of_the_student(seed, scale):
    student, teacher = randn(B, T, D, seed=seed), randn(B, T, D, seed=seed + 1)
    assert cosine(student * scale, teacher, mask=MASK).item() == pytest.approx(
        cosine(student, teacher, mask=MASK).item(), rel=1e-10)


@pytest.mark.parametrize("loss", TOKEN_LOSSES, ids=lambda f: f.__name__)
def test_gradients_are_finite_and_skip_padding(loss):
    student = with_garbage(randn(B, T, D, seed=19, dtype=torch.float32), MASK, 1e30).requires_grad_()
    teacher = with_garbage(randn(B, T, D, seed=20, dtype=torch.float32), MASK, -1e30).requires_grad_()
    assert_finite_backward(loss(student, teacher, mask=MASK), student, teacher)
    assert student.grad[MASK == 0].abs().max() == 0


def test_fsp_gradients_are_finite():
    features = [randn(2, 3, 4, 4, seed=21 + i, dtype=torch.float32).requires_grad_() for i in range(4)]
    assert_finite_backward(fsp(tuple(features[:2]), tuple(features[2:])), *features)


def test_shape_errors_say_what_differs_and_what_to_do():
    with pytest.raises(ShapeError, match=r"hidden_mse: widths differ \(student 256, teacher 384\): add a projection"):
        hidden_mse(randn(2, T, 256, seed=0), randn(2, T, 384, seed=0))
    with pytest.raises(ShapeError, match=r"cosine: sequence lengths differ \(student 5, teacher 7\)"):
        cosine(randn(2, 5, D, seed=0), randn(2, 7, D, seed=0))
    with pytest.raises(ShapeError, match=r"mmd: spatial sizes differ .*pool the larger map"):
        mmd(randn(2, 3, 4, 4, seed=0), randn(2, 3, 2, 2, seed=0))
    with pytest.raises(ShapeError, match=r"fsp: the second features' channels differ \(student 2, teacher 5\)"):
        fsp((randn(2, T, 3, seed=0), randn(2, T, 2, seed=0)), (randn(2, T, 3, seed=0), randn(2, T, 5, seed=0)))
    with pytest.raises(ShapeError, match=r"fsp: the student must be two features .*'hidden.1,hidden.3'"):
        fsp(randn(2, T, 3, seed=0), (randn(2, T, 3, seed=0), randn(2, T, 3, seed=0)))
    with pytest.raises(ShapeError, match=r"rkd: batch sizes differ \(student 2, teacher 3\)"):
        rkd(randn(2, D, seed=0), randn(3, D, seed=0))
