"""token_topk_kl against per-token float64 loops, both ways (tail bucket, renormalised), the mask, T²,
stored vs live top-k, and k = V equal to token_kl."""

from __future__ import annotations

import math

import pytest
import torch

from kdistill.features import Features
from kdistill.losses import token_kl, token_topk_kl
from kdistill.losses.topk import teacher_topk


def _oracle(student, teacher, mask, k, mode, temperature):
    """A per-token loop in float64: the loss as the module docstring states it."""
    total, count = 0.0, 0
    for b in range(student.shape[0]):
        for t in range(student.shape[1]):
            if not mask[b, t]:
                continue
            p_t = teacher[b, t].double().softmax(-1)
            p_s = student[b, t].double().softmax(-1)
            top = p_t.topk(k)
            ids = top.indices
            t_mass = top.values.tolist()
            s_mass = [p_s[i].item() for i in ids]
            if mode == "tail":
                t_mass.append(1 - sum(t_mass))
                s_mass.append(1 - sum(s_mass))
            t_w = [m ** (1 / temperature) for m in t_mass]
            s_w = [m ** (1 / temperature) for m in s_mass]
            t_q = [w / sum(t_w) for w in t_w]
            s_q = [w / sum(s_w) for w in s_w]
            total += sum(p * math.log(p / q) for p, q in zip(t_q, s_q) if p > 0)
            count += 1
    return total / max(count, 1) * temperature**2


@pytest.mark.parametrize("mode", ["tail", "renormalised"])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_topk_kl_equals_a_per_token_loop_in_float64(mode, temperature):
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 5, 11, dtype=torch.float64), torch.randn(2, 5, 11, dtype=torch.float64) * 2
    mask = torch.tensor([[1, 1, 0, 1, 0], [0, 1, 1, 1, 1]])
    value = token_topk_kl(student, teacher, k=4, topk=mode, temperature=temperature, mask=mask)
    assert value.item() == pytest.approx(_oracle(student, teacher, mask, 4, mode, temperature), rel=1e-9)


def test_masked_tokens_never_enter_the_loss_nor_its_gradient():
    torch.manual_seed(1)
    student = torch.randn(1, 4, 9, requires_grad=True)
    teacher = torch.randn(1, 4, 9)
    mask = torch.tensor([[1, 0, 1, 0]])
    changed = teacher.clone()
    changed[0, 1] = torch.randn(9) * 5
    assert token_topk_kl(student, teacher, k=3, mask=mask).item() == pytest.approx(
        token_topk_kl(student, changed, k=3, mask=mask).item())
    token_topk_kl(student, teacher, k=3, mask=mask).backward()
    assert student.grad[0, 1].abs().sum() == 0 and student.grad[0, 0].abs().sum() > 0


@pytest.mark.parametrize("mode", ["tail", "renormalised"])
@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_at_k_equal_to_the_vocabulary_both_ways_are_token_kl(mode, temperature):
    torch.manual_seed(2)
    student, teacher = torch.randn(2, 3, 7, dtype=torch.float64), torch.randn(2, 3, 7, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [1, 0, 1]])
    full = token_kl(student, teacher, temperature=temperature, mask=mask)
    assert token_topk_kl(student, teacher, k=7, topk=mode, temperature=temperature, mask=mask).item() == \
        pytest.approx(full.item(), rel=1e-8, abs=1e-12)


def test_stored_top_k_gives_the_live_value_and_zero_when_the_student_is_the_teacher():
    torch.manual_seed(3)
    student, teacher = torch.randn(2, 3, 13), torch.randn(2, 3, 13)
    top, ids, tail = teacher_topk(teacher, 5)
    stored = Features(logits=top.half().float(), extra={"topk_ids": ids, "topk_tail": tail})
    for mode in ("tail", "renormalised"):
        live = token_topk_kl(student, teacher, k=5, topk=mode)
        from_store = token_topk_kl(student, stored.logits, k=5, topk=mode, teacher_features=stored)
        assert from_store.item() == pytest.approx(live.item(), rel=2e-3)
        assert token_topk_kl(teacher, teacher, k=5, topk=mode).item() == pytest.approx(0.0, abs=1e-6)


def test_t2_scale_multiplies_by_t_squared():
    torch.manual_seed(4)
    student, teacher = torch.randn(3, 8), torch.randn(3, 8)
    plain = token_topk_kl(student, teacher, k=3, temperature=2.0, t2_scale=False)
    assert token_topk_kl(student, teacher, k=3, temperature=2.0).item() == pytest.approx(4 * plain.item())
