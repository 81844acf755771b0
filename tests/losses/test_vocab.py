"""Chunked vocabulary losses: per-token oracles in float64, chunking, gradients, masks, padded vocabularies."""

from __future__ import annotations

import math
import weakref

import pytest
import torch

from kdistill.errors import ConfigError, ShapeError
from kdistill.losses import (
    jsd,
    kl,
    loss_properties,
    reverse_kl,
    token_jsd,
    token_kl,
    token_reverse_kl,
    token_skew_kl,
    token_tv,
    topk_losses,
    uld,
)
from kdistill.ranges import check_arguments

from ._helpers import GARBAGE, kl_div, padding_mask, randn, softmax, valid_tokens, with_garbage

B, T, V = 3, 5, 6
MASK = padding_mask([5, 3, 1], T)  # 9 valid tokens
TOKEN_LOSSES = [token_kl, token_reverse_kl, token_jsd, token_skew_kl, token_tv]
# (loss, args) pairs covering each loss's options
CASES = [
    (token_kl, {}), (token_reverse_kl, {}), (token_tv, {}),
    (token_jsd, {"beta": 0.0}), (token_jsd, {"beta": 0.3}), (token_jsd, {"beta": 0.5}), (token_jsd, {"beta": 1.0}),
    (token_skew_kl, {"alpha": 0.0}), (token_skew_kl, {"alpha": 0.1}),
    (token_skew_kl, {"alpha": 0.7, "direction": "reverse"}),
]
CASE_IDS = [f"{loss.__name__}-{'-'.join(f'{k}={v}' for k, v in args.items())}" for loss, args in CASES]


def mixture(a: list[float], b: list[float], share: float) -> list[float]:
    return [share * x + (1 - share) * y for x, y in zip(a, b)]


def sorted_l1(p: list[float], q: list[float]) -> float:
    p, q = sorted(p, reverse=True), sorted(q, reverse=True)
    width = max(len(p), len(q))
    p, q = p + [0.0] * (width - len(p)), q + [0.0] * (width - len(q))
    return sum(abs(x - y) for x, y in zip(p, q))


def per_token(name: str, args: dict, p_s: list[float], p_t: list[float]) -> float:
    """One token's value, written from the definitions in the docstrings, one vocabulary entry at a time."""
    if name == "token_kl":
        return kl_div(p_t, p_s)
    if name == "token_reverse_kl":
        return kl_div(p_s, p_t)
    if name == "token_tv":
        return 0.5 * sum(abs(t - s) for s, t in zip(p_s, p_t))
    if name == "token_jsd":
        beta = args["beta"]
        if beta in (0.0, 1.0):  # TRL's ends: exact forward / reverse KL
            return kl_div(p_t, p_s) if beta == 0 else kl_div(p_s, p_t)
        m = mixture(p_t, p_s, beta)
        return beta * kl_div(p_t, m) + (1 - beta) * kl_div(p_s, m)
    alpha = args.get("alpha", 0.1)
    first, second = (p_t, p_s) if args.get("direction", "forward") == "forward" else (p_s, p_t)
    return kl_div(first, mixture(first, second, alpha))


def oracle(name, args, student, teacher, mask, temperature=1.0, t2_scale=True, vocab_size=None):
    values = []
    for b, i in valid_tokens(mask, student.shape[0], student.shape[1]):
        s_row, t_row = student[b, i].tolist()[:vocab_size], teacher[b, i].tolist()[:vocab_size]
        p_s, p_t = softmax([v / temperature for v in s_row]), softmax([v / temperature for v in t_row])
        values.append(per_token(name, args, p_s, p_t))
    return sum(values) / len(values) * (temperature**2 if t2_scale else 1.0)


def inputs(seed: int, dtype=torch.float64, scale: float = 3.0):
    student = randn(B, T, V, seed=seed, dtype=dtype, scale=scale).requires_grad_()
    return student, randn(B, T, V, seed=seed + 1, dtype=dtype, scale=scale)


@pytest.mark.parametrize("loss,args", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("temperature,t2_scale", [(1.0, True), (2.0, True), (3.0, False)])
def test_each_loss_matches_its_per_token_oracle(loss, args, temperature, t2_scale):
    student, teacher = inputs(1)
    value = loss(student, teacher, **args, temperature=temperature, t2_scale=t2_scale, mask=MASK, chunk_tokens=4)
    assert value.dtype == torch.float64
    expected = oracle(loss.__name__, args, student, teacher, MASK, temperature, t2_scale)
    assert value.item() == pytest.approx(expected, rel=1e-10, abs=1e-14)


def test_uld_matches_its_oracle_across_vocabularies_and_tokenizations():
    """The teacher tokenizes the same text into more tokens over a larger vocabulary; pairs start at each
    side's first valid token and the longer side is cut."""
    student = randn(2, 4, 5, seed=2, scale=3).requires_grad_()
    teacher = randn(2, 6, 8, seed=3, scale=3)
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]])
    teacher_mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]])
    pairs = [((0, 0), (0, 2)), ((0, 1), (0, 3)), ((0, 2), (0, 4)), ((1, 1), (1, 0)), ((1, 2), (1, 1))]
    for temperature in (1.0, 2.5):
        expected = sum(sorted_l1(softmax([v / temperature for v in student[bs, i].tolist()]),
                                 softmax([v / temperature for v in teacher[bt, j].tolist()]))
                       for (bs, i), (bt, j) in pairs) / len(pairs)
        value = uld(student, teacher, temperature=temperature, mask=mask, teacher_mask=teacher_mask, chunk_tokens=2)
        assert value.item() == pytest.approx(expected, rel=1e-10)


def test_uld_with_one_tokenization_compares_the_same_positions():
    student, teacher = inputs(4)
    expected = sum(sorted_l1(softmax(student[b, i].tolist()), softmax(teacher[b, i].tolist()))
                   for b, i in valid_tokens(MASK, B, T)) / MASK.sum().item()
    assert uld(student, teacher, mask=MASK).item() == pytest.approx(expected, rel=1e-10)


def test_uld_refuses_two_lengths_without_the_teachers_mask():
    with pytest.raises(ShapeError, match=r"uld: the student has 4 tokens and the teacher 6: pass teacher_mask"):
        uld(randn(2, 4, 5, seed=1), randn(2, 6, 8, seed=2), mask=torch.ones(2, 4))


@pytest.mark.parametrize("loss,args", [*CASES, (uld, {})], ids=[*CASE_IDS, "uld"])
def test_chunk_size_changes_neither_the_loss_nor_its_gradient(loss, args):
    student, teacher = inputs(5)
    reference = loss(student, teacher, **args, mask=MASK, chunk_tokens=10_000)  # one chunk larger than N = 9
    (reference_grad,) = torch.autograd.grad(reference, student)
    for chunk in (1, 2, 4, 9):
        value = loss(student, teacher, **args, mask=MASK, chunk_tokens=chunk)
        (grad,) = torch.autograd.grad(value, student)
        assert value.item() == pytest.approx(reference.item(), rel=1e-12, abs=1e-15)
        torch.testing.assert_close(grad, reference_grad, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("loss,args", [*CASES, (uld, {})], ids=[*CASE_IDS, "uld"])
def test_gradcheck_in_float64(loss, args):
    student, teacher = inputs(6, scale=1.5)
    mask = padding_mask([4, 2, 0], T)  # an example with no valid token too
    assert torch.autograd.gradcheck(lambda s: loss(s, teacher, **args, temperature=1.5, mask=mask, chunk_tokens=3),
                                    (student,), eps=1e-6, atol=1e-7)


def test_uld_gradcheck_across_vocabularies():
    student = randn(2, 3, 4, seed=7).requires_grad_()
    teacher = randn(2, 3, 7, seed=8)
    assert torch.autograd.gradcheck(lambda s: uld(s, teacher, mask=torch.tensor([[1, 1, 0], [1, 1, 1]])),
                                    (student,), eps=1e-6, atol=1e-7)


def test_matches_the_full_softmax_losses():
    student, teacher = inputs(9)
    for chunked, full in ((token_kl, kl), (token_reverse_kl, reverse_kl)):
        for temperature in (1.0, 2.0):
            a = chunked(student, teacher, temperature=temperature, mask=MASK, chunk_tokens=2)
            b = full(student, teacher, temperature=temperature, mask=MASK)
            assert a.item() == pytest.approx(b.item(), rel=1e-12)
            torch.testing.assert_close(torch.autograd.grad(a, student)[0], torch.autograd.grad(b, student)[0])


def test_jsd_at_beta_one_half_is_the_symmetric_jsd():
    student, teacher = inputs(10)
    value = token_jsd(student, teacher, beta=0.5, temperature=2.0, t2_scale=False, mask=MASK, chunk_tokens=2)
    assert value.item() == pytest.approx(jsd(student, teacher, temperature=2.0, t2_scale=False, mask=MASK).item(),
                                         rel=1e-12)


def test_skew_kl_at_alpha_zero_is_kl_in_its_direction():
    student, teacher = inputs(11)
    forward = token_skew_kl(student, teacher, alpha=0.0, mask=MASK)
    reverse = token_skew_kl(student, teacher, alpha=0.0, direction="reverse", mask=MASK)
    assert forward.item() == pytest.approx(kl(student, teacher, mask=MASK).item(), rel=1e-12)
    assert reverse.item() == pytest.approx(reverse_kl(student, teacher, mask=MASK).item(), rel=1e-12)


def test_generalized_jsd_ends_are_the_two_kls():
    student, teacher = inputs(12)
    assert token_jsd(student, teacher, beta=0.0, mask=MASK).item() == pytest.approx(
        token_kl(student, teacher, mask=MASK).item(), rel=1e-12)
    assert token_jsd(student, teacher, beta=1.0, mask=MASK).item() == pytest.approx(
        token_reverse_kl(student, teacher, mask=MASK).item(), rel=1e-12)


@pytest.mark.parametrize("loss,args", [*CASES, (uld, {})], ids=[*CASE_IDS, "uld"])
def test_every_loss_is_zero_with_zero_gradient_when_student_equals_teacher(loss, args):
    student, teacher = inputs(13)
    same = teacher.clone().requires_grad_()
    value = loss(same, teacher, **args, temperature=2.0, mask=MASK)
    assert value.item() == pytest.approx(0.0, abs=1e-12)
    assert loss(student, teacher, **args, mask=MASK).item() > 1e-3
    if loss not in (token_tv, uld):  # |x| has no gradient at 0; the divergences are smooth there
        torch.testing.assert_close(torch.autograd.grad(value, same)[0], torch.zeros_like(same), atol=1e-12, rtol=0)


@pytest.mark.parametrize("loss,args", [*CASES, (uld, {})], ids=[*CASE_IDS, "uld"])
def test_masked_tokens_never_matter_to_the_loss_or_its_gradient(loss, args):
    student, teacher = inputs(14)
    value = loss(student, teacher, **args, mask=MASK, chunk_tokens=2)
    (grad,) = torch.autograd.grad(value, student)
    garbage_student = with_garbage(student.detach(), MASK).requires_grad_()
    garbage_teacher = with_garbage(teacher, MASK, value=-GARBAGE)
    garbage = loss(garbage_student, garbage_teacher, **args, mask=MASK, chunk_tokens=2)
    (garbage_grad,) = torch.autograd.grad(garbage, garbage_student)
    assert garbage.item() == value.item()
    assert torch.equal(garbage_grad, grad)
    assert torch.all(grad[MASK == 0] == 0)


@pytest.mark.parametrize("loss", TOKEN_LOSSES, ids=lambda f: f.__name__)
def test_padded_vocabulary_entries_are_ignored_with_vocab_size(loss):
    """SmolLM2's 49,152 tokens beside an embedding padded to 49,216: here 6 tokens beside 6 + 3."""
    student, teacher = inputs(15)
    padded_teacher = torch.cat([teacher, torch.full((B, T, 3), GARBAGE, dtype=teacher.dtype)], -1)
    padded_student = torch.cat([student.detach(), randn(B, T, 2, seed=16, scale=50)], -1).requires_grad_()
    value = loss(student, teacher, mask=MASK)
    padded = loss(padded_student, padded_teacher, vocab_size=V, mask=MASK, chunk_tokens=4)
    assert padded.item() == pytest.approx(value.item(), rel=1e-12)
    (grad,) = torch.autograd.grad(padded, padded_student)
    assert torch.all(grad[..., V:] == 0)
    torch.testing.assert_close(grad[..., :V], torch.autograd.grad(value, student)[0])
    with pytest.raises(ShapeError, match=rf"^{loss.__name__}: vocabulary sizes differ \(student 8, teacher 9\): when "
                                         r"one model's embedding is padded .* set vocab_size to the true vocabulary "
                                         r"size in the match's args; models with different tokenizers need 'uld'\.$"):
        loss(padded_student, padded_teacher, mask=MASK)
    with pytest.raises(ShapeError, match=r"vocab_size 10 is larger than the logits \(student 8, teacher 9\): set it "
                                         r"to the true vocabulary size, at most 8\."):
        loss(padded_student, padded_teacher, vocab_size=10, mask=MASK)


def test_uld_is_invariant_to_permuting_either_vocabulary():
    student, teacher = inputs(17)
    value = uld(student, teacher, mask=MASK)
    permuted = uld(student[..., torch.randperm(V)], teacher[..., torch.randperm(V)], mask=MASK)
    assert permuted.item() == pytest.approx(value.item(), rel=1e-12)


def test_half_precision_logits_are_computed_in_float32_and_the_gradient_keeps_their_dtype():
    for dtype in (torch.bfloat16, torch.float16):
        student, teacher = inputs(18, dtype=dtype)
        reference = token_kl(student.detach().double(), teacher.double(), mask=MASK)
        value = token_kl(student, teacher, mask=MASK, chunk_tokens=2)
        assert value.dtype == torch.float32
        assert value.item() == pytest.approx(reference.item(), rel=1e-5)
        value.backward()
        assert student.grad.dtype == dtype and torch.isfinite(student.grad).all()


def test_the_teacher_gets_no_gradient_and_no_valid_token_is_zero():
    student, teacher = inputs(19)
    teacher.requires_grad_()
    for loss in [*TOKEN_LOSSES, uld]:
        loss(student, teacher, mask=MASK).backward()
        assert teacher.grad is None
        empty = loss(student, teacher, mask=torch.zeros(B, T))
        assert empty.item() == 0.0
        empty.backward()  # a zero gradient, not an error
    with torch.no_grad():
        assert token_kl(student, teacher, mask=MASK).requires_grad is False


def test_registered_width_free_topk_and_ranges_checked():
    for loss in [*TOKEN_LOSSES, uld]:
        properties = loss_properties(loss.__name__)
        assert properties.width_free and properties.topk, loss.__name__
    assert {"token_kl", "uld"} <= set(topk_losses())
    with pytest.raises(ConfigError, match=r"matches\[0\]\.args\.beta: 1\.5 is out of range; it must be between 0 "
                                          r"and 1"):
        check_arguments(token_jsd, {"beta": 1.5}, "matches[0].args")
    with pytest.raises(ConfigError, match=r"args\.alpha: 1 is out of range; it must be at least 0 and less than 1 "
                                          r"\(the first distribution's share"):
        check_arguments(token_skew_kl, {"alpha": 1}, "args")
    with pytest.raises(ConfigError, match=r"args\.direction: 'revers' is not valid; did you mean 'reverse'\?"):
        check_arguments(token_skew_kl, {"direction": "revers"}, "args")
    with pytest.raises(ConfigError, match=r"token_skew_kl: direction: 'both' is not valid\. It must be one of "
                                          r"forward, reverse"):
        token_skew_kl(*inputs(20), direction="both")
    with pytest.raises(ConfigError, match=r"args\.chunk_tokens: 0 is out of range; it must be a whole number, at "
                                          r"least 1"):
        check_arguments(token_kl, {"chunk_tokens": 0, "vocab_size": None}, "args")


def test_skew_keeps_the_loss_finite_where_the_student_gives_a_teacher_token_no_mass():
    student = torch.tensor([[[0.0, -800.0]]], dtype=torch.float64, requires_grad=True)
    teacher = torch.tensor([[[0.0, 0.0]]], dtype=torch.float64)
    value = token_skew_kl(student, teacher, alpha=0.1)
    assert math.isfinite(value.item()) and value.item() <= 0.5 * math.log(1 / 0.1) + 1e-12
    value.backward()
    assert torch.isfinite(student.grad).all()


def saved_bytes(loss, student, teacher) -> int:
    """Bytes autograd keeps between forward and backward for ``loss(student, teacher)`` (what a chunk
    saves for its own gradient inside the forward is freed with the chunk, so only live ones count)."""
    saved = []

    def pack(tensor):
        saved.append(weakref.ref(tensor))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        value = loss(student, teacher, mask=torch.ones(4, 16))
    live = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in (ref() for ref in saved)
            if t is not None and t is not student and t is not teacher}
    del value
    return sum(live.values())


def test_backward_keeps_one_gradient_the_size_of_the_students_logits_not_the_probabilities():
    student = randn(4, 16, 64, seed=21, dtype=torch.float32).requires_grad_()
    teacher = randn(4, 16, 64, seed=22, dtype=torch.float32)
    logits_bytes = student.numel() * student.element_size()
    for loss in [*TOKEN_LOSSES, uld]:
        assert saved_bytes(lambda s, t, **kw: loss(s, t, chunk_tokens=8, **kw), student, teacher) <= logits_bytes
    assert saved_bytes(kl, student, teacher) >= 2 * logits_bytes  # the full-softmax loss keeps more than two
