"""Unpadding: the linear layers of a transformer's blocks work on the real tokens only.

In a batch padded to its longest example, every linear layer of every block (query, key, value,
attention output, feed-forward) also multiplies the padding rows, which no loss reads. On random
batches of short sentences that is a third or more of the model's work. Length-bucketed batches
avoid most padding, but they change the training dynamics of some jobs (see docs/speed.md);
unpadding removes the padded work whatever the batch order.

How it is done: :func:`enable_unpadding` gives each ``nn.Linear`` inside the model's block list
(:func:`kdistill.models.find_layer_list`) an instance-level ``forward`` that gathers the rows of
real tokens, applies the layer to those alone, and scatters the result back into a zero tensor of
the padded shape. A forward pre-hook on the model reads the ``attention_mask`` of each call.
Everything else (embeddings, layer norms, attention itself, heads) runs as before.

Exact for models whose only exchange between positions is masked attention (BERT, RoBERTa,
DistilBERT, MiniLM, ELECTRA, GPT-2-style decoders with their padding masked, …): a real token's
output never depends on a padding row, and the gradient reaching a padding row is zero anyway,
so outputs at real tokens and all parameter gradients are those of the padded model (up to
floating-point summation order). Outputs *at padding positions* differ (they are never used by
kdistill: every match masks them). Not for models that mix positions otherwise (convolutions over
the sequence, Funnel pooling). The parameters, state dict and class of every module are
unchanged; :func:`disable_unpadding` removes every trace. Calls without an ``attention_mask``, or
whose mask has no padding, run unchanged.
"""

from __future__ import annotations

import types
from typing import Any

from torch import Tensor, nn

from kdistill.models import find_layer_list

_STATE = "_kdistill_unpad"


class _Rows:
    """The real-token rows of the current call: flat indices into (batch × length), and the last
    input packed (query, key and value read the same hidden states: packed once, saved once)."""

    def __init__(self) -> None:
        self.set(None)

    def set(self, mask: Tensor | None) -> None:
        self.shape: tuple[int, int] | None = None
        self.index: Tensor | None = None
        self.last: tuple[Tensor, Tensor] | None = None
        if mask is None or mask.dim() != 2 or bool(mask.all()):
            return
        self.shape = (mask.shape[0], mask.shape[1])
        self.index = mask.reshape(-1).nonzero().squeeze(1)

    def pack(self, input: Tensor) -> Tensor:
        if self.last is not None and self.last[0] is input:
            return self.last[1]
        packed = input.reshape(-1, input.shape[-1]).index_select(0, self.index)
        self.last = (input, packed)
        return packed


def _packed_forward(self: nn.Linear, input: Tensor) -> Tensor:
    rows: _Rows = getattr(self, _STATE)
    if rows.index is None or input.dim() != 3 or tuple(input.shape[:2]) != rows.shape:
        return nn.Linear.forward(self, input)
    batch, length, _ = input.shape
    real = nn.Linear.forward(self, rows.pack(input))
    out = real.new_zeros(batch * length, real.shape[-1]).index_copy(0, rows.index, real)
    return out.view(batch, length, real.shape[-1])


def _mask_of(args: tuple, kwargs: dict) -> Any:
    mask = kwargs.get("attention_mask")
    if mask is None and len(args) > 1 and isinstance(args[1], Tensor):  # forward(input_ids, attention_mask)
        mask = args[1]
    return mask


def enable_unpadding(model: nn.Module) -> int:
    """Run the linear layers of ``model``'s blocks on real tokens only; returns how many were changed.

    Calling it again on the same model is a no-op (returns 0).
    """
    if hasattr(model, _STATE):
        return 0
    _, blocks = find_layer_list(model)
    rows = _Rows()

    def remember_mask(module, args, kwargs):
        mask = _mask_of(args, kwargs)
        rows.set(mask if isinstance(mask, Tensor) else None)

    def forget_mask(module, args, kwargs, output):
        rows.set(None)

    handles = [model.register_forward_pre_hook(remember_mask, with_kwargs=True),
               model.register_forward_hook(forget_mask, with_kwargs=True)]
    linears = [m for block in blocks for m in block.modules() if type(m) is nn.Linear]
    for linear in linears:
        setattr(linear, _STATE, rows)
        linear.forward = types.MethodType(_packed_forward, linear)
    object.__setattr__(model, _STATE, (handles, linears))
    return len(linears)


def disable_unpadding(model: nn.Module) -> None:
    """Undo :func:`enable_unpadding` (a no-op on a model without it)."""
    state = model.__dict__.pop(_STATE, None)
    if state is None:
        return
    handles, linears = state
    for handle in handles:
        handle.remove()
    for linear in linears:
        linear.__dict__.pop("forward", None)
        linear.__dict__.pop(_STATE, None)


def is_unpadded(model: nn.Module) -> bool:
    return _STATE in model.__dict__


__all__ = ["enable_unpadding", "disable_unpadding", "is_unpadded"]
