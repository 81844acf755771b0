"""The Hugging Face adapter: reads ``ModelOutput`` and asks only for what the matches need.

Attention weights are the trap: with transformers' default SDPA attention,
``output_attentions=True`` silently returns an empty tuple. Two ways to get them:

- ``attention="hooks"``: hook the query/key projections of the matched blocks and compute
  ``softmax(q·kᵀ/√d + mask)`` ourselves; the model keeps its fast SDPA kernel. Exact for
  encoders with absolute position embeddings (BERT, RoBERTa, XLM-R, ELECTRA, DistilBERT) and for
  GPT-2 (its fused ``c_attn`` split into q|k|v, with the causal mask). Not for rotary models
  (Llama, Qwen2, Mistral, Gemma): their ``q_proj``/``k_proj`` outputs are rotated inside the
  attention's forward, after any hook could see them, so they get eager attention.
- ``attention="eager"``: switch the model to eager attention and read ``outputs.attentions``
  (slower: every block materialises its attention matrix).

``"auto"`` (default) picks hooks where they are exact, else eager. An empty attentions tuple is
always an error, never read as "no loss".
"""

from __future__ import annotations

import inspect
import math
import sys
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from kdistill.adapters.base import NON_INPUT_KEYS, HookSet, batch_mask, get_submodule
from kdistill.errors import ConfigError, DataError, FeatureError, RefError
from kdistill.features import Features
from kdistill.refs import ATTENTION_KINDS, LAYER_KINDS, QKV_KINDS, Ref

# Encoders whose attention is exactly softmax(q·kᵀ/√d + mask) on the projections below.
HOOKABLE_MODEL_TYPES = frozenset({"bert", "roberta", "xlm-roberta", "electra", "camembert", "distilbert"})
# Decoders whose attention is exactly softmax(q·kᵀ/√d + causal and padding mask) on the projections.
HOOKABLE_DECODER_TYPES = frozenset({"gpt2"})
# One projection computing q|k|v side by side (GPT-2's Conv1D ``c_attn``, output 3·D).
FUSED_PROJECTION_NAMES = ("c_attn",)
FUSED_ORDER = ("query", "key", "value")
PROJECTION_NAMES = {
    "query": ("query", "q_lin", "q_proj"),
    "key": ("key", "k_lin", "k_proj"),
    "value": ("value", "v_lin", "v_proj"),
}
ATTENTION_MODES = ("auto", "hooks", "eager")


def is_hf_model(model: nn.Module) -> bool:
    # A model can only be a PreTrainedModel if transformers is already imported: checking
    # sys.modules first keeps plain-PyTorch runs from paying for importing transformers.
    module = sys.modules.get("transformers")
    if module is None:
        return False
    return isinstance(model, module.PreTrainedModel)


def hf_num_layers(model: nn.Module) -> int | None:
    """The blocks that ``hidden.N``/``attn.N`` count: the config's layer count (ALBERT: how often its
    shared layer runs); on an encoder-decoder, the length of the stack named with ``blocks`` (None
    when none is named: which stack a ref reads cannot be guessed)."""
    from kdistill.models import LAYER_COUNT_KEYS, is_encoder_decoder, named_blocks, num_layers_of_config

    if is_encoder_decoder(model):
        path = named_blocks(model)
        return None if path is None else len(model.get_submodule(path))
    return num_layers_of_config(getattr(model, "config", None), (*LAYER_COUNT_KEYS, "num_layers"))


def encoder_decoder_stack(model: nn.Module, refs: Iterable[Ref], where: str) -> str | None:
    """``"encoder"``/``"decoder"``: the stack an encoder-decoder's layer refs read (the one named with
    ``blocks``); None for other models or without layer refs. Unnamed, it is a RefError."""
    from kdistill.models import block_candidates, describe_lists, is_encoder_decoder, named_blocks

    layer_refs = [str(ref) for ref in refs if ref.kind in LAYER_KINDS]
    if not layer_refs or not is_encoder_decoder(model):
        return None
    path = named_blocks(model)
    parts = path.split(".") if path is not None else []
    stack = "encoder" if "encoder" in parts else "decoder" if "decoder" in parts else None
    if stack is None:
        named = f"the block list '{path}' is in neither stack" if path else "no stack is named"
        raise RefError(
            f"{where}: {', '.join(layer_refs)} on {type(model).__name__}, an encoder-decoder whose block lists are "
            f"{describe_lists(block_candidates(model))}: {named}. Name the stack the refs read with "
            f"'{where}.blocks' (its encoder or decoder block list); hidden.N then reads that stack's hidden states."
        )
    return stack


def hf_num_heads(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    for name in ("num_attention_heads", "n_head", "n_heads"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


def hooks_are_exact(model: nn.Module) -> bool:
    config = model.config
    kind = getattr(config, "model_type", None)
    if kind in HOOKABLE_DECODER_TYPES:
        # GPT-2 scales by 1/√d unless told otherwise; by layer index is not softmax(q·kᵀ/√d).
        return getattr(config, "scale_attn_weights", True) and not getattr(config, "scale_attn_by_inverse_layer_idx", False)
    return kind in HOOKABLE_MODEL_TYPES and getattr(config, "position_embedding_type", "absolute") in (None, "absolute")


def is_causal_model(model: nn.Module) -> bool:
    """Whether the blocks the refs read attend causally (each token to itself and earlier ones).

    transformers' self-attention modules carry ``is_causal``: True in Llama, Qwen2, Mistral, Gemma,
    GPT-2 and decoder stacks, False in BERT-like encoders. The first one found decides (a decoder
    block's self-attention comes before its cross-attention); on an encoder-decoder, within the
    stack named with ``blocks``. A model without the attribute is taken as not causal.
    """
    from kdistill.models import is_encoder_decoder, named_blocks

    root = model
    if is_encoder_decoder(model) and named_blocks(model) is not None:
        root = model.get_submodule(named_blocks(model))
    flags = (getattr(module, "is_causal", None) for module in root.modules())
    return next((flag for flag in flags if isinstance(flag, bool)), False)


def find_projection(block: nn.Module, kind: str) -> nn.Module | None:
    for name, module in block.named_modules():
        if name.rsplit(".", 1)[-1] in PROJECTION_NAMES[kind] and isinstance(module, nn.Linear):
            return module
    return None


def find_fused_projection(block: nn.Module) -> nn.Module | None:
    """A self-attention q|k|v projection of output width 3·D (GPT-2's Conv1D ``c_attn``), else None."""
    for name, module in block.named_modules():
        if name.rsplit(".", 1)[-1] in FUSED_PROJECTION_NAMES and "crossattention" not in name:
            width_in, width_out = getattr(module, "nx", None), getattr(module, "nf", None)
            return module if width_in is not None and width_out == 3 * width_in else None
    return None


def attention_from_qk(query: Tensor, key: Tensor, num_heads: int, mask: Tensor | None,
                      *, causal: bool = False) -> Tensor:
    """Pre-softmax scores (B, H, T, T) from projections (B, T, D); padded keys — and with ``causal``
    keys after their query — get the dtype's min."""
    batch, length, width = query.shape
    head_dim = width // num_heads
    q = query.view(batch, length, num_heads, head_dim).transpose(1, 2)
    k = key.view(batch, key.shape[1], num_heads, head_dim).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / math.sqrt(head_dim)
    hidden = torch.zeros(batch, 1, length, key.shape[1], dtype=torch.bool, device=scores.device)
    if mask is not None:
        hidden |= mask[:, None, None, :] == 0
    if causal:
        hidden |= torch.ones(length, key.shape[1], dtype=torch.bool, device=scores.device).triu(1)
    return scores.masked_fill(hidden, torch.finfo(scores.dtype).min)


def check_eos_pooling(model: nn.Module, input_ids: Tensor | None, where: str) -> None:
    """Encoder-decoder classifiers (T5, BART … with a ``classification_head``) classify at the last
    ``eos_token_id`` of each text and fail inside forward unless every text holds it equally often:
    check that here, in words a user can act on. input_ids: (B, T)."""
    config = getattr(model, "config", None)
    pools_at_eos = getattr(config, "is_encoder_decoder", False) and hasattr(model, "classification_head")
    if input_ids is None or not pools_at_eos:
        return
    eos = config.eos_token_id
    counts = (input_ids == eos).sum(dim=1)
    if bool((counts == counts[0]).all()) and int(counts[0]) > 0:
        return
    missing = int((counts == 0).sum())
    found = f"{missing} of {len(counts)} texts in a batch lack it" if missing else \
        f"texts in a batch hold it {sorted(set(counts.tolist()))} times"
    raise DataError(
        f"{where}: {type(model).__name__} classifies at the end-of-sequence token (its config's eos_token_id={eos}), "
        f"but {found}. Tokenise with the model's own tokenizer (data.tokenizer), which ends each text with it, "
        "or set eos_token_id in the model's config.json to the id your tokenizer ends every text with."
    )


class HFAdapter:
    """Features of a ``transformers`` model. Refs are resolved against the model's layer count now."""

    def __init__(self, model: nn.Module, refs: Iterable[Ref], *, attention: str = "auto", where: str = "model"):
        if attention not in ATTENTION_MODES:
            raise ConfigError(f"{where}.attention: '{attention}' is not one of {', '.join(ATTENTION_MODES)}.")
        self.model = model
        self.where = where
        self.num_layers = hf_num_layers(model)
        self.num_heads = hf_num_heads(model)
        refs = list(refs)
        # On an encoder-decoder, layer refs read the named stack's outputs (encoder_hidden_states …).
        self.stack = encoder_decoder_stack(model, refs, where)
        self.refs = [ref.resolved(self.num_layers, where=where) for ref in refs]
        self.hooks = HookSet()
        self.causal = is_causal_model(model)
        self.want_hidden = any(r.kind == "hidden" for r in self.refs)
        self.want_embedding = any(r.kind == "embedding" for r in self.refs)
        attention_layers = sorted({r.index for r in self.refs if r.kind in ATTENTION_KINDS})
        wants_scores = any(r.kind == "attn_scores" for r in self.refs)
        self.attention_mode = self._pick_attention_mode(attention, attention_layers, wants_scores)
        self.input_names = self._forward_parameters()

        qkv_wanted = {(r.kind, r.index) for r in self.refs if r.kind in QKV_KINDS}
        if self.attention_mode == "hooks":
            qkv_wanted |= {(kind, layer) for layer in attention_layers for kind in ("query", "key")}
        self.attention_layers = attention_layers
        self._hook_projections(qkv_wanted)
        for ref in self.refs:
            if ref.kind == "module":
                self.hooks.add(get_submodule(model, ref.path, where=where), f"module:{ref.path}")
        # Models with a head (BertForSequenceClassification) run their pooler but do not return
        # its output; hook it so that 'pooled' works on them too.
        if any(r.kind == "pooled" for r in self.refs):
            pooler = next((m for name, m in model.named_modules() if name.rsplit(".", 1)[-1] == "pooler"), None)
            if pooler is not None:
                self.hooks.add(pooler, "pooled")

    def _pick_attention_mode(self, requested: str, layers: list[int], wants_scores: bool) -> str | None:
        if not layers:
            return None
        # Rotary models (Llama, Qwen2, Mistral, Gemma) rotate q/k inside the attention's forward: a hook
        # on q_proj/k_proj sees them before rotation, so hooks are not exact there and eager is used.
        exact = hooks_are_exact(self.model)
        if requested == "hooks" or (requested == "auto" and exact) or wants_scores:
            if not exact and (requested == "hooks" or wants_scores):
                kind = getattr(self.model.config, "model_type", type(self.model).__name__)
                exact_for = sorted(HOOKABLE_MODEL_TYPES | HOOKABLE_DECODER_TYPES)
                raise RefError(
                    f"{self.where}: pre-softmax scores (attn_scores.N) and attention: hooks compute attention from "
                    f"hooked queries/keys, which is only exact for {', '.join(exact_for)} with absolute positions, "
                    f"not '{kind}' (rotary or relative positions are applied inside the attention, after the "
                    "projections). Use 'attn.N' (probabilities, read with eager attention) instead."
                )
            return "hooks"
        if getattr(self.model.config, "_attn_implementation", "eager") != "eager":
            # SDPA/flash kernels return no attention weights; eager does.
            self.model.set_attn_implementation("eager")
        return "eager"

    def _forward_parameters(self) -> set[str] | None:
        params = inspect.signature(self.model.forward).parameters
        return {name for name, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}

    def _hook_projections(self, wanted: set[tuple[str, int]]) -> None:
        if not wanted:
            return
        from kdistill.models import find_layer_list

        try:
            _, blocks = find_layer_list(self.model)
        except ConfigError as exc:
            refs = ", ".join(f"{kind}.{layer}" for kind, layer in sorted(wanted))
            raise RefError(f"{self.where}: {refs} hook the projections inside the blocks, but {exc}") from None
        for kind, layer in sorted(wanted):
            module = find_projection(blocks[layer], kind)
            if module is not None:
                self.hooks.add(module, f"{kind}.{layer}")
                continue
            fused = find_fused_projection(blocks[layer])
            if fused is None:
                raise RefError(
                    f"{self.where}: cannot find the {kind} projection in block {layer} (looked for a Linear "
                    f"named {' / '.join(PROJECTION_NAMES[kind])}, or a q|k|v projection named "
                    f"{' / '.join(FUSED_PROJECTION_NAMES)} of output width 3·D)."
                )
            third = FUSED_ORDER.index(kind)
            self.hooks.add(fused, f"{kind}.{layer}", transform=lambda qkv, third=third: qkv.chunk(3, dim=-1)[third])

    def describe(self) -> str:
        """One line for the plan: what this adapter asks the model for."""
        parts = []
        if self.stack is not None:
            parts.append(f"layer refs read the {self.stack} stack")
        if self.want_hidden:
            parts.append("hidden states")
        if self.want_embedding:
            from kdistill.embedding import pooling_of

            parts.append(f"sentence embedding ({pooling_of(self.model) or 'mean'} pooling of the last hidden state)")
        if self.attention_layers:
            parts.append(f"attention of blocks {self.attention_layers} via {self.attention_mode}")
        if self.causal and (self.attention_layers or any(r.kind in QKV_KINDS for r in self.refs)):
            parts.append("causal: no query attends to or relates with a later token")
        hooked = sorted(self.hooks.outputs) or None
        return ", ".join(parts) or ("logits only" if not hooked else "")

    def __call__(self, batch: dict) -> Features:
        inputs = {
            key: value
            for key, value in batch.items()
            if key not in NON_INPUT_KEYS and (self.input_names is None or key in self.input_names)
        }
        check_eos_pooling(self.model, inputs.get("input_ids"), self.where)
        want_eager_attentions = self.attention_mode == "eager"
        output = self.model(
            **inputs,
            output_hidden_states=self.want_hidden or self.want_embedding,
            output_attentions=want_eager_attentions,
            return_dict=True,
        )
        hooked = self.hooks.take()
        hooked_pooled = hooked.pop("pooled", None)
        mask = batch_mask(batch)
        pooled = output.get("pooler_output")
        logits = output.get("logits")
        if logits is None:  # a question-answering model: start and end logits as one (B, 2, T) pair
            from kdistill.qa_spans import span_logits

            logits = span_logits(output, mask)
        features = Features(
            logits=logits,
            pooled=pooled if pooled is not None else hooked_pooled,
            attention_mask=mask,
            causal=self.causal,
        )
        if self.want_hidden:
            hidden = output.get(self._output_key("hidden_states"))
            if not hidden:
                raise FeatureError(f"{self.where}: the model returned no hidden states although they were requested.")
            features.hidden = tuple(hidden)
        if self.want_embedding:
            features.embedding = self._embedding(output, mask)
        for key, tensor in hooked.items():
            kind, _, rest = key.partition(".") if not key.startswith("module:") else ("module", "", key[7:])
            if kind == "module":
                features.modules[rest] = tensor
            else:
                {"query": features.queries, "key": features.keys, "value": features.values}[kind][int(rest)] = tensor
        if self.attention_layers:
            self._fill_attention(features, output, mask)
        return features

    def _embedding(self, output, mask: Tensor | None) -> Tensor:
        """The last hidden state pooled over the real tokens (the model's pooling, default mean): (B, D)."""
        from kdistill.embedding import pool, pooling_of

        hidden = output.get(self._output_key("hidden_states"))
        if not hidden:
            raise FeatureError(f"{self.where}: the model returned no hidden states to pool into a sentence embedding.")
        return pool(hidden[-1], mask, pooling_of(self.model) or "mean")

    def _output_key(self, name: str) -> str:
        """``hidden_states`` or, on an encoder-decoder, the named stack's (``encoder_hidden_states``)."""
        return name if self.stack is None else f"{self.stack}_{name}"

    def _fill_attention(self, features: Features, output, mask: Tensor | None) -> None:
        wants = {(r.kind, r.index) for r in self.refs if r.kind in ATTENTION_KINDS}
        if self.attention_mode == "eager":
            attentions = output.get(self._output_key("attentions"))
            if not attentions:
                raise FeatureError(
                    f"{self.where}: the model returned no attention weights (an empty tuple) although "
                    "eager attention was requested; this model's attention implementation drops them."
                )
            for kind, layer in wants:
                features.attentions[layer] = attentions[layer]
            return
        for kind, layer in wants:
            scores = attention_from_qk(features.queries[layer], features.keys[layer], self.num_heads, mask,
                                       causal=self.causal)
            if kind == "attn_scores":
                features.attention_scores[layer] = scores
            else:
                features.attentions[layer] = scores.softmax(dim=-1)
