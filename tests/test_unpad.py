"""Unpadding: the same outputs at real tokens and the same gradients as the padded model, in float64,
with and without SDPA; the hooks of attention-score matches still see whole (batch, length) tensors."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_engine import tiny_bert, token_batch

from kdistill import Distiller, Match
from kdistill.unpad import disable_unpadding, enable_unpadding, is_unpadded

LENGTHS = [7, 3, 5, 1]


def grads(model) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_outputs_and_gradients_match_the_padded_model(attention):
    padded = tiny_bert(layers=2, dropout=0.0).double()
    padded.set_attn_implementation(attention)
    unpadded = copy.deepcopy(padded)
    assert enable_unpadding(unpadded) == 2 * 6  # q, k, v, attention output, intermediate, output per block
    assert enable_unpadding(unpadded) == 0 and is_unpadded(unpadded)
    batch = token_batch(4, 7, lengths=LENGTHS)
    mask = batch["attention_mask"].bool()

    results = []
    for model in (padded, unpadded):
        model.zero_grad()
        out = model(**batch, output_hidden_states=True)
        out.loss.backward()
        results.append((out, grads(model)))
    (a, grad_a), (b, grad_b) = results
    torch.testing.assert_close(b.logits, a.logits, rtol=1e-10, atol=1e-10)
    for hidden_a, hidden_b in zip(a.hidden_states, b.hidden_states):
        torch.testing.assert_close(hidden_b[mask], hidden_a[mask], rtol=1e-10, atol=1e-10)
    assert grad_a.keys() == grad_b.keys() and len(grad_a) > 10
    for name in grad_a:
        torch.testing.assert_close(grad_b[name], grad_a[name], rtol=1e-9, atol=1e-12, msg=name)
    # the padding rows really were skipped: the last block's padded outputs of the linears are zero
    assert not torch.equal(b.hidden_states[-1][~mask], a.hidden_states[-1][~mask])


def test_a_distillation_loss_with_attention_scores_is_unchanged():
    teacher = tiny_bert(layers=2, dropout=0.0, seed=1).double().eval()
    student = tiny_bert(layers=2, dropout=0.0, seed=2).double()
    matches = [Match("hidden.2", "hidden.2", "hidden_mse"), Match("attn_scores.1", "attn_scores.1", "attention_mse",
                                                                  args={"kind": "scores"})]
    batch = token_batch(4, 7, lengths=LENGTHS)
    plain = Distiller(teacher, student, matches)(batch).loss
    enable_unpadding(student)
    enable_unpadding(teacher)
    packed = Distiller(teacher, student, matches)(batch).loss
    torch.testing.assert_close(packed, plain, rtol=1e-10, atol=1e-12)


def test_no_padding_no_mask_and_disable_leave_the_model_as_it_was():
    model = tiny_bert(layers=2, dropout=0.0)
    reference = copy.deepcopy(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    enable_unpadding(model)
    full = token_batch(2, 5)
    torch.testing.assert_close(model(**full).logits, reference(**full).logits)  # mask without padding
    torch.testing.assert_close(model(input_ids=full["input_ids"]).logits, reference(input_ids=full["input_ids"]).logits)
    disable_unpadding(model)
    assert not is_unpadded(model)
    assert all("forward" not in m.__dict__ for m in model.modules())
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    disable_unpadding(model)  # twice: a no-op


def test_query_key_and_value_share_one_packed_input(monkeypatch):
    model = tiny_bert(layers=2, dropout=0.0)
    enable_unpadding(model)
    calls = []
    real = torch.Tensor.index_select

    def counting(self, dim, index):
        calls.append(tuple(self.shape))
        return real(self, dim, index)

    monkeypatch.setattr(torch.Tensor, "index_select", counting)
    model(**token_batch(4, 7, lengths=LENGTHS))
    # per block: q/k/v input once, attention output, intermediate and output dense inputs
    assert len(calls) == 2 * 4, calls
