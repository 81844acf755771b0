"""Token losses over a language model's vocabulary, computed a chunk of tokens at a time.

student, teacher: logits (B, T, V) (or (N, V) rows); mask: (B, T) of 0/1 — 0 marks padding or prompt
tokens, which never enter the loss (nor its gradient). A causal LM's vocabulary is large (49,152 for
SmolLM2) and a batch holds thousands of tokens: full float32 softmaxes of both models, plus what
autograd saves of them, take several times the logits' own memory — what runs users of TRL's
GKDTrainer or DistillKit out of memory. Here the valid tokens are visited ``chunk_tokens`` at a time
(:class:`_Chunked`): each chunk is cast to float32 (float64 stays float64), its loss and the gradient
w.r.t. the student's logits are computed (autograd on the chunk alone) and the float32 intermediates
dropped. What is kept for backward is one gradient the size of the student's logits, in their dtype.
The teacher gets none. The default of 256 tokens keeps about ten float32 (256, V) tensors alive at
once, ~0.5 GB at V = 49,152; ``benchmarks/vocab_memory.py`` measures it against the full softmax.

Every loss: summed over the vocabulary, mean over valid tokens (0 when there are none); ``vocab_size``
compares only the first ``vocab_size`` entries (an embedding padded to a multiple of 64 adds rows that
are no tokens). Logits of different widths without it are a ShapeError.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from kdistill.errors import ShapeError
from kdistill.losses import register_loss
from kdistill.losses._common import kl_rows, require_positive, require_same_shape, t2_factor, token_mask, upcast
from kdistill.ranges import FLAG, TEMPERATURE, OneOf, Range, check_value

RowLoss = Callable[[Tensor, Tensor], Tensor]  # (n, V) student and teacher logits / T -> (n,) per token

CHUNK = Range(1, integer=True, why="valid tokens per chunk; memory grows with it, the loss does not")
VOCAB = Range(1, integer=True, why="the true vocabulary size; entries past it are embedding padding")
BETA = Range(0, 1, why="0 is forward KL(p_t ‖ p_s), 1 reverse KL(p_s ‖ p_t), 0.5 the symmetric JSD")
SKEW = Range(0, 1, high_open=True, why="the first distribution's share of the mixture; 0 is plain KL, and at "
                                       "1 the mixture is the first distribution itself, so the loss is always 0")
DIRECTION = OneOf(("forward", "reverse"), why="forward compares the teacher with the mixture, reverse the student")
_RANGES = {"temperature": TEMPERATURE, "t2_scale": FLAG, "chunk_tokens": CHUNK, "vocab_size": VOCAB}
_PADDED_HINT = ("when one model's embedding is padded (e.g. 49,152 vs 49,216), set vocab_size to the true "
                "vocabulary size in the match's args; models with different tokenizers need 'uld'")


class _Chunked(torch.autograd.Function):
    """mean over paired rows of ``row_loss(student[i] / T, teacher[j] / T)``, a chunk of rows at a time.

    student, teacher: (R, V) logits; student_rows, teacher_rows: (N,) row indices paired one to one;
    widths: how many leading columns of (student, teacher) to read (None: all). Forward stores the
    gradient w.r.t. ``student`` (its shape and dtype); backward scales it. Not twice differentiable.
    """

    @staticmethod
    def forward(ctx, student: Tensor, teacher: Tensor, student_rows: Tensor, teacher_rows: Tensor,
                row_loss: RowLoss, temperature: float, chunk_tokens: int, widths: tuple) -> Tensor:
        needs_grad = ctx.needs_input_grad[0]
        grad = torch.zeros_like(student) if needs_grad else None
        total = None
        for start in range(0, len(student_rows), chunk_tokens):
            rows_s, rows_t = student_rows[start:start + chunk_tokens], teacher_rows[start:start + chunk_tokens]
            chunk_s, chunk_t = upcast(student[rows_s, :widths[0]], teacher[rows_t, :widths[1]])
            with torch.enable_grad():
                chunk_s.requires_grad_(needs_grad)
                value = row_loss(chunk_s / temperature, chunk_t / temperature).sum()
                if needs_grad:
                    (chunk_grad,) = torch.autograd.grad(value, chunk_s)
                    grad[rows_s, :chunk_grad.shape[1]] = chunk_grad.to(grad.dtype)
            total = value.detach() if total is None else total + value.detach()
        if total is None:  # no valid token: 0, and a zero gradient
            (total,) = upcast(student.new_zeros(()))
        ctx.rows = max(len(student_rows), 1)
        ctx.save_for_backward(grad)
        return total / ctx.rows

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor):
        (grad,) = ctx.saved_tensors
        student_grad = None if grad is None else grad * (grad_output / ctx.rows).to(grad.dtype)
        return student_grad, None, None, None, None, None, None, None


def _flat(x: Tensor) -> Tensor:
    """(B, T, V) or (N, V) as (rows, V); a view for contiguous logits (no copy of the vocabulary)."""
    return x.reshape(-1, x.shape[-1])


def _same_vocab_loss(loss: str, student: Tensor, teacher: Tensor, mask: Tensor | None, row_loss: RowLoss, *,
                     temperature: float, t2_scale: bool, chunk_tokens: int, vocab_size: int | None) -> Tensor:
    """A token loss of two models over one vocabulary (its first ``vocab_size`` entries), chunked."""
    require_positive(loss, "temperature", temperature)
    if vocab_size is None:
        require_same_shape(loss, student, teacher, last="vocabulary sizes", hint=_PADDED_HINT)
    else:
        require_same_shape(loss, student[..., :1], teacher[..., :1])
        narrowest = min(student.shape[-1], teacher.shape[-1])
        if vocab_size > narrowest:
            raise ShapeError(f"{loss}: vocab_size {vocab_size} is larger than the logits (student {student.shape[-1]}, "
                             f"teacher {teacher.shape[-1]}): set it to the true vocabulary size, at most {narrowest}.")
    keep = token_mask(loss, mask, student)
    rows = torch.arange(student.numel() // student.shape[-1], device=student.device)
    if keep is not None:
        rows = rows[keep.reshape(-1)]
    value = _Chunked.apply(_flat(student), _flat(teacher.detach()), rows, rows, row_loss, temperature, chunk_tokens,
                           (vocab_size, vocab_size))
    return value * t2_factor(temperature, t2_scale)


def _log_probs(student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
    return student.log_softmax(-1), teacher.log_softmax(-1)


def _forward_kl_rows(student: Tensor, teacher: Tensor) -> Tensor:
    log_s, log_t = _log_probs(student, teacher)
    return kl_rows(log_t, log_s)


def _reverse_kl_rows(student: Tensor, teacher: Tensor) -> Tensor:
    log_s, log_t = _log_probs(student, teacher)
    return kl_rows(log_s, log_t)


def _mixture_kl_rows(log_p: Tensor, log_q: Tensor, share: float) -> Tensor:
    """KL(p ‖ share·p + (1 − share)·q) per row; share = 0 is KL(p ‖ q)."""
    if share == 0:
        return kl_rows(log_p, log_q)
    log_mix = torch.logaddexp(log_p + math.log(share), log_q + math.log1p(-share))
    return kl_rows(log_p, log_mix)


@register_loss(ranges=_RANGES, width_free=True, topk=True)
def token_kl(student: Tensor, teacher: Tensor, *, temperature: float = 1.0, t2_scale: bool = True,
             chunk_tokens: int = 256, vocab_size: int | None = None, mask: Tensor | None = None) -> Tensor:
    """Forward KL(p_teacher ‖ p_student) per token over a vocabulary, chunked (memory-safe ``kl``).

    student, teacher: logits (B, T, V) or (N, V); mask: (B, T) of 0/1 (0 = padding or prompt).
    Reduction: summed over the vocabulary, mean over valid tokens. Scaling: × T² when ``t2_scale``.
    Mass-covering: the student is pushed to put probability wherever the teacher does. Equals
    ``kl`` on the same tokens; ``chunk_tokens`` changes memory only.
    """
    return _same_vocab_loss("token_kl", student, teacher, mask, _forward_kl_rows, temperature=temperature,
                            t2_scale=t2_scale, chunk_tokens=chunk_tokens, vocab_size=vocab_size)


@register_loss(ranges=_RANGES, width_free=True, topk=True)
def token_reverse_kl(student: Tensor, teacher: Tensor, *, temperature: float = 1.0, t2_scale: bool = True,
                     chunk_tokens: int = 256, vocab_size: int | None = None, mask: Tensor | None = None) -> Tensor:
    """Reverse KL(p_student ‖ p_teacher) per token over a vocabulary, chunked (MiniLLM's objective).

    student, teacher: logits (B, T, V) or (N, V); mask: (B, T) of 0/1 (0 = padding or prompt).
    Reduction: summed over the vocabulary, mean over valid tokens. Scaling: × T² when ``t2_scale``.
    Mode-seeking: the student may drop teacher modes it cannot fit (Gu et al. 2024, MiniLLM).
    """
    return _same_vocab_loss("token_reverse_kl", student, teacher, mask, _reverse_kl_rows, temperature=temperature,
                            t2_scale=t2_scale, chunk_tokens=chunk_tokens, vocab_size=vocab_size)


@register_loss(ranges={**_RANGES, "beta": BETA}, width_free=True, topk=True)
def token_jsd(student: Tensor, teacher: Tensor, *, beta: float = 0.5, temperature: float = 1.0, t2_scale: bool = True,
              chunk_tokens: int = 256, vocab_size: int | None = None, mask: Tensor | None = None) -> Tensor:
    """Generalized JSD(β) per token over a vocabulary (GKD, Agarwal et al. 2024; TRL's GKDTrainer), chunked.

    JSD(β) = β·KL(p_t ‖ m) + (1 − β)·KL(p_s ‖ m) with m = β·p_t + (1 − β)·p_s, as TRL's
    ``GKDTrainer.generalized_jsd_loss`` computes it (the mixture in log space), with its two ends
    taken exactly: β = 0 is forward KL(p_t ‖ p_s), β = 1 reverse KL(p_s ‖ p_t). In between the
    value shrinks towards the ends (≈ β·KL near 0) while its gradient behaves like the nearer KL;
    β = 0.5 is the symmetric JSD (``jsd`` with ``t2_scale=False``).
    student, teacher: logits (B, T, V) or (N, V); mask: (B, T) of 0/1 (0 = padding or prompt).
    Reduction: summed over the vocabulary, mean over valid tokens ('batchmean' over tokens, as TRL).
    Scaling: × T² when ``t2_scale`` (TRL applies none: set it False to match TRL's value).
    """
    def rows(s: Tensor, t: Tensor) -> Tensor:
        log_s, log_t = _log_probs(s, t)
        if beta == 0:
            return kl_rows(log_t, log_s)
        if beta == 1:
            return kl_rows(log_s, log_t)
        log_m = torch.logaddexp(log_t + math.log(beta), log_s + math.log1p(-beta))
        return beta * kl_rows(log_t, log_m) + (1 - beta) * kl_rows(log_s, log_m)

    return _same_vocab_loss("token_jsd", student, teacher, mask, rows, temperature=temperature, t2_scale=t2_scale,
                            chunk_tokens=chunk_tokens, vocab_size=vocab_size)


@register_loss(ranges={**_RANGES, "alpha": SKEW, "direction": DIRECTION}, width_free=True, topk=True)
def token_skew_kl(student: Tensor, teacher: Tensor, *, alpha: float = 0.1, direction: str = "forward",
                  temperature: float = 1.0, t2_scale: bool = True, chunk_tokens: int = 256,
                  vocab_size: int | None = None, mask: Tensor | None = None) -> Tensor:
    """Skew KL per token over a vocabulary (DistiLLM, Ko et al. 2024), chunked.

    forward: KL(p_t ‖ α·p_t + (1 − α)·p_s) — DistiLLM's skew KL; reverse: KL(p_s ‖ α·p_s + (1 − α)·p_t)
    — its skew reverse KL. α is the share of the KL's first distribution in the mixture, as in
    DistiLLM's ``skewed_forward_kl`` / ``skewed_reverse_kl`` (their ``lam``, default 0.1); α = 0 is
    ordinary forward KL(p_t ‖ p_s) (reverse: KL(p_s ‖ p_t)). The mixture keeps the loss and its
    gradient bounded where the student gives a teacher token almost no probability. DistiLLM's
    forward code omits the teacher's entropy (same gradient); here it is a true KL, 0 at student = teacher.
    student, teacher: logits (B, T, V) or (N, V); mask: (B, T) of 0/1 (0 = padding or prompt).
    Reduction: summed over the vocabulary, mean over valid tokens. Scaling: × T² when ``t2_scale``.
    """
    check_value(DIRECTION, direction, "token_skew_kl: direction")

    def rows(s: Tensor, t: Tensor) -> Tensor:
        log_s, log_t = _log_probs(s, t)
        first, second = (log_t, log_s) if direction == "forward" else (log_s, log_t)
        return _mixture_kl_rows(first, second, alpha)

    return _same_vocab_loss("token_skew_kl", student, teacher, mask, rows, temperature=temperature,
                            t2_scale=t2_scale, chunk_tokens=chunk_tokens, vocab_size=vocab_size)


def _tv_rows(student: Tensor, teacher: Tensor) -> Tensor:
    return 0.5 * (student.softmax(-1) - teacher.softmax(-1)).abs().sum(-1)


@register_loss(ranges=_RANGES, width_free=True, topk=True)
def token_tv(student: Tensor, teacher: Tensor, *, temperature: float = 1.0, t2_scale: bool = False,
             chunk_tokens: int = 256, vocab_size: int | None = None, mask: Tensor | None = None) -> Tensor:
    """Total variation ½·Σ|p_t − p_s| per token over a vocabulary (DistiLLM's ``tv_distance``), chunked.

    student, teacher: logits (B, T, V) or (N, V); mask: (B, T) of 0/1 (0 = padding or prompt).
    Reduction: summed over the vocabulary, mean over valid tokens; each token's value is in [0, 1].
    Scaling: none by default (``t2_scale=False``): TV's gradient shrinks like 1/T, not 1/T² as KL's,
    so Hinton's T² does not fit it; ``t2_scale=True`` multiplies by T² anyway.
    """
    return _same_vocab_loss("token_tv", student, teacher, mask, _tv_rows, temperature=temperature,
                            t2_scale=t2_scale, chunk_tokens=chunk_tokens, vocab_size=vocab_size)


def _uld_rows(student: Tensor, teacher: Tensor) -> Tensor:
    """L1 distance of the two probability vectors sorted descending, the shorter padded with zeros."""
    p_s = student.softmax(-1).sort(-1, descending=True).values
    p_t = teacher.softmax(-1).sort(-1, descending=True).values
    common = min(p_s.shape[-1], p_t.shape[-1])
    tails = p_s[:, common:].sum(-1) + p_t[:, common:].sum(-1)  # against the zero padding
    return (p_s[:, :common] - p_t[:, :common]).abs().sum(-1) + tails


def _paired_rows(student: Tensor, teacher: Tensor, mask: Tensor | None,
                 teacher_mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """Flat row indices pairing each example's k-th valid student token with its k-th valid teacher token."""
    if student.dim() != teacher.dim() or student.shape[:-2] != teacher.shape[:-2]:
        raise ShapeError(f"uld: student logits {tuple(student.shape)} and teacher logits {tuple(teacher.shape)} "
                         f"must both be (batch, tokens, vocabulary) with the same batch, or both (rows, vocabulary).")
    if student.dim() == 2:
        count = min(len(student), len(teacher))
        return torch.arange(count, device=student.device), torch.arange(count, device=student.device)
    if teacher_mask is None and mask is not None and student.shape[1] != teacher.shape[1]:
        raise ShapeError(f"uld: the student has {student.shape[1]} tokens and the teacher {teacher.shape[1]}: pass "
                         f"teacher_mask, the teacher's own (batch, tokens) mask, to say which of its tokens count.")
    keep_s = token_mask("uld", mask, student)
    keep_t = token_mask("uld", teacher_mask if teacher_mask is not None else mask, teacher)
    rows_s, rows_t = [], []
    for b in range(student.shape[0]):
        valid_s = _valid_positions(keep_s, b, student.shape[1], student.device)
        valid_t = _valid_positions(keep_t, b, teacher.shape[1], student.device)
        count = min(len(valid_s), len(valid_t))
        rows_s.append(valid_s[:count] + b * student.shape[1])
        rows_t.append(valid_t[:count] + b * teacher.shape[1])
    return torch.cat(rows_s), torch.cat(rows_t)


def _valid_positions(keep: Tensor | None, example: int, length: int, device: torch.device) -> Tensor:
    if keep is None:
        return torch.arange(length, device=device)
    return keep[example].nonzero().reshape(-1).to(device)


@register_loss(ranges={"temperature": TEMPERATURE, "chunk_tokens": CHUNK}, width_free=True, topk=True)
def uld(student: Tensor, teacher: Tensor, *, temperature: float = 1.0, chunk_tokens: int = 256,
        mask: Tensor | None = None, teacher_mask: Tensor | None = None) -> Tensor:
    """Universal Logit Distillation (Boizard et al. 2024): sorted-probability L1, any two vocabularies.

    Per token pair, both probability vectors (softmax of logits / T) are sorted descending, the
    shorter padded with zeros, and their L1 distance taken — the paper's closed form of the
    Wasserstein distance, which needs no mapping between tokenizers (invariant to permuting either
    vocabulary). student: (B, T_s, V_s), teacher: (B, T_t, V_t) (or (N, V) rows paired in order).
    Alignment: as in the reference implementation (Nicolas-BZRD/llm-recipes), each example's k-th
    valid student token is paired with its k-th valid teacher token, from the first valid token on,
    and the longer side is truncated to the shorter. mask: (B, T_s), 0 = padding or prompt (the
    response starts where the mask turns 1); teacher_mask: (B, T_t), default ``mask`` (kdistill
    supplies the teacher's attention mask; one tokenization gives the same positions).
    Reduction: summed over the vocabulary, mean over paired tokens of the whole batch (the reference
    averages per example first). Scaling: none (no T²); each token's value is in [0, 2].
    """
    require_positive("uld", "temperature", temperature)
    rows_s, rows_t = _paired_rows(student, teacher, mask, teacher_mask)
    return _Chunked.apply(_flat(student), _flat(teacher.detach()), rows_s, rows_t, _uld_rows, temperature,
                          chunk_tokens, (None, None))
