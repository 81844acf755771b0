"""The Hugging Face adapter on tiny random BERT / DistilBERT / RoBERTa / GPT-2 built from configs."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers

from kdistill.adapters import HFAdapter, make_adapter
import tiny_stacks
from kdistill import models
from kdistill.errors import ConfigError, DataError, FeatureError, RefError
from kdistill.refs import Ref, parse_ref
from tiny_engine import bert_config, token_batch


LENGTHS = [7, 4, 2]  # padding in two of three rows


def refs(text: str) -> list[Ref]:
    return list(parse_ref(text))


def build(kind: str, seed: int = 0):
    """A model with the default (SDPA) attention and an eager twin with the same weights."""
    torch.manual_seed(seed)
    if kind == "bert":
        config, cls = bert_config(), transformers.BertForSequenceClassification
    elif kind == "distilbert":
        config = transformers.DistilBertConfig(n_layers=2, dim=32, n_heads=2, hidden_dim=64, vocab_size=100)
        cls = transformers.DistilBertForSequenceClassification
    elif kind == "roberta":
        config = transformers.RobertaConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2,
                                            intermediate_size=64, vocab_size=100, max_position_embeddings=40)
        cls = transformers.RobertaForSequenceClassification
    else:
        raise ValueError(kind)
    model = cls(copy.deepcopy(config)).eval()
    eager = cls(copy.deepcopy(config)).eval()
    eager.load_state_dict(model.state_dict())
    eager.set_attn_implementation("eager")
    assert model.config._attn_implementation == "sdpa"
    return model, eager


def spy_forward_kwargs(model) -> list[dict]:
    calls: list[dict] = []
    model.register_forward_pre_hook(lambda _m, _a, kwargs: calls.append(dict(kwargs)), with_kwargs=True)
    return calls


def test_hidden_states_count_and_shape():
    model, _ = build("bert")
    adapter = make_adapter(model, refs("hidden.0,hidden.-1"))
    features = adapter(token_batch(lengths=LENGTHS))
    assert len(features.hidden) == 3  # embeddings + 2 blocks
    assert all(h.shape == (3, 7, 32) for h in features.hidden)
    assert features.logits.shape == (3, 2)
    assert torch.equal(features.attention_mask, token_batch(lengths=LENGTHS)["attention_mask"])
    assert adapter.num_layers == 2


@pytest.mark.parametrize("kind", ["bert", "distilbert", "roberta"])
def test_hooked_attention_equals_eager_attention_with_padding(kind):
    model, eager = build(kind)
    adapter = make_adapter(model, refs("attn.0,attn.-1"))
    assert adapter.attention_mode == "hooks"
    batch = token_batch(lengths=LENGTHS, labels=None)
    features = adapter(batch)
    reference = eager(**batch, output_attentions=True).attentions
    assert len(features.attentions) == 2
    for layer in (0, 1):
        assert features.attentions[layer].shape == (3, 2, 7, 7)
        torch.testing.assert_close(features.attentions[layer], reference[layer], atol=1e-5, rtol=0)
        # Padded keys get no probability at all.
        assert features.attentions[layer][1, :, :, 4:].abs().max() < 1e-12
    assert model.config._attn_implementation == "sdpa"  # hooks keep the fast kernel


def test_hooked_attention_scores_are_masked_pre_softmax_scores():
    model, eager = build("bert")
    adapter = make_adapter(model, refs("attn_scores.1,attn.1"))
    batch = token_batch(lengths=LENGTHS, labels=None)
    features = adapter(batch)
    scores = features.attention_scores[1]
    assert (scores[2, :, :, 2:] == torch.finfo(scores.dtype).min).all()
    torch.testing.assert_close(scores.softmax(-1), eager(**batch, output_attentions=True).attentions[1],
                               atol=1e-5, rtol=0)


def test_eager_mode_returns_attentions():
    model, eager = build("bert")
    adapter = make_adapter(model, refs("attn.1"), attention="eager")
    assert adapter.attention_mode == "eager"
    assert model.config._attn_implementation == "eager"
    batch = token_batch(lengths=LENGTHS, labels=None)
    features = adapter(batch)
    assert list(features.attentions) == [1]
    torch.testing.assert_close(features.attentions[1], eager(**batch, output_attentions=True).attentions[1])


def test_attentions_are_requested_only_when_a_match_needs_them():
    model, _ = build("bert")
    calls = spy_forward_kwargs(model)
    batch = token_batch(labels=None)
    make_adapter(model, refs("logits"))(batch)
    make_adapter(model, refs("hidden.1"))(batch)
    make_adapter(model, refs("attn.0"))(batch)  # hooks: no attention weights from the model
    make_adapter(model, refs("attn.0"), attention="eager")(batch)
    assert [c["output_attentions"] for c in calls] == [False, False, False, True]
    assert [c["output_hidden_states"] for c in calls] == [False, True, False, False]
    assert all(c["return_dict"] is True for c in calls)


def test_labels_and_foreign_keys_are_not_fed_to_the_model():
    model, _ = build("bert")
    calls = spy_forward_kwargs(model)
    batch = {**token_batch(), "index": torch.arange(3), "text_length": torch.ones(3)}
    make_adapter(model, refs("logits"))(batch)
    assert set(calls[0]) >= {"input_ids", "attention_mask"}
    assert not set(calls[0]) & {"labels", "index", "text_length"}


def test_qkv_features_equal_the_projection_outputs():
    model, _ = build("bert")
    adapter = make_adapter(model, refs("query.1,key.1,value.0,hidden.0,hidden.1"))
    features = adapter(token_batch(lengths=LENGTHS, labels=None))
    attention = model.bert.encoder.layer[1].attention.self
    torch.testing.assert_close(features.queries[1], attention.query(features.hidden[1]))
    torch.testing.assert_close(features.keys[1], attention.key(features.hidden[1]))
    first = model.bert.encoder.layer[0].attention.self
    torch.testing.assert_close(features.values[0], first.value(features.hidden[0]))
    assert set(features.queries) == {1} and set(features.values) == {0}


def tiny_decoder(kind: str, seed: int = 0):
    """A tiny random decoder-only LM (eval mode: no attention dropout) and an eager twin, same weights."""
    torch.manual_seed(seed)
    if kind == "gpt2":
        config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=16,
                                         bos_token_id=0, eos_token_id=0)
        cls = transformers.GPT2LMHeadModel
    else:
        config = transformers.LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                                          pad_token_id=0)
        cls = transformers.LlamaForCausalLM
    model = cls(copy.deepcopy(config)).eval()
    reference = cls(copy.deepcopy(config)).eval()
    reference.load_state_dict(model.state_dict())
    reference.set_attn_implementation("eager")
    return model, reference


def test_gpt2_attention_from_its_split_fused_projection_equals_eager_attention():
    """GPT-2's c_attn (q|k|v in one Conv1D) is hooked and split: auto keeps SDPA and its maps carry the
    causal and the padding mask, equal to eager attention on every real query."""
    model, reference = tiny_decoder("gpt2")
    adapter = make_adapter(model, refs("attn.-1,attn_scores.0,hidden.-1"))
    assert adapter.attention_mode == "hooks" and adapter.causal
    assert model.config._attn_implementation == "sdpa"
    batch = token_batch(lengths=LENGTHS, labels=None)
    features = adapter(batch)
    eager = reference(**batch, output_attentions=True).attentions
    real = batch["attention_mask"].bool()
    for layer in (0, 1):
        probs = features.attentions[1] if layer == 1 else features.attention_scores[0].softmax(-1)
        torch.testing.assert_close(probs.transpose(1, 2)[real], eager[layer].transpose(1, 2)[real])
    assert features.attentions[1][0].triu(1).abs().max() == 0  # no token attends to a later one
    assert (features.attention_scores[0][0].triu(1) == torch.finfo(torch.float32).min).sum() == 2 * 7 * 6 / 2
    assert features.attentions[1].shape == (3, 2, 7, 7)


def test_gpt2_query_key_value_refs_are_thirds_of_the_fused_projection():
    model, _ = tiny_decoder("gpt2")
    adapter = make_adapter(model, refs("query.1,key.1,value.0,hidden.0,hidden.1"))
    features = adapter(token_batch(lengths=LENGTHS, labels=None))
    for layer, hidden in ((1, features.hidden[1]), (0, features.hidden[0])):
        block = model.transformer.h[layer]
        qkv = block.attn.c_attn(block.ln_1(hidden))
        wanted = {"query": features.queries, "key": features.keys, "value": features.values}
        for third, kind in enumerate(("query", "key", "value")):
            if layer in wanted[kind]:
                torch.testing.assert_close(wanted[kind][layer], qkv[..., 32 * third:32 * (third + 1)])
    assert set(features.queries) == {1} and set(features.values) == {0}


def test_rotary_decoders_read_eager_attention_and_refuse_hooked_scores():
    """Llama's q_proj/k_proj outputs are rotated inside the attention: hooks would not be exact."""
    model, reference = tiny_decoder("llama")
    adapter = make_adapter(model, refs("attn.1"))
    assert adapter.attention_mode == "eager" and adapter.causal
    batch = token_batch(lengths=LENGTHS, labels=None)
    torch.testing.assert_close(adapter(batch).attentions[1], reference(**batch, output_attentions=True).attentions[1])
    for text, mode in (("attn_scores.1", "auto"), ("attn.1", "hooks")):
        with pytest.raises(RefError, match="not 'llama' \\(rotary or relative positions .*Use 'attn.N'"):
            make_adapter(tiny_decoder("llama")[0], refs(text), attention=mode)


@pytest.mark.parametrize("kind,causal", [("llama", True), ("qwen2", True), ("mistral", True), ("gemma", True),
                                         ("gpt2", True), ("bert", False)])
def test_decoder_only_models_are_marked_causal_and_encoders_not(kind, causal):
    size = dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=32, head_dim=8)
    model = {
        "llama": lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(**size)),
        "qwen2": lambda: transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**size)),
        "mistral": lambda: transformers.MistralForCausalLM(transformers.MistralConfig(**size)),
        "gemma": lambda: transformers.GemmaForCausalLM(transformers.GemmaConfig(**size)),
        "gpt2": lambda: tiny_decoder("gpt2")[0],
        "bert": lambda: build("bert")[0],
    }[kind]()
    features = make_adapter(model, refs("hidden.1"))(token_batch(lengths=LENGTHS, labels=None))
    assert features.causal is causal


def test_an_empty_attentions_tuple_is_an_error():
    model, _ = build("bert")
    adapter = make_adapter(model, refs("attn.0"), attention="eager")
    model.set_attn_implementation("sdpa")  # SDPA silently returns no weights
    with pytest.raises(FeatureError, match="returned no attention weights"):
        adapter(token_batch(labels=None))


def test_missing_features_are_feature_errors_naming_the_ref():
    model, _ = build("bert")
    features = make_adapter(model, refs("logits"))(token_batch(labels=None))
    with pytest.raises(FeatureError, match=r"no 'attn.0'.*come back empty"):
        features.get(Ref("attn", 0))
    with pytest.raises(FeatureError, match="no 'hidden.1'"):
        features.get(Ref("hidden", 1))
    bare = transformers.BertModel(bert_config()).eval()
    with pytest.raises(FeatureError, match="no head producing logits"):
        make_adapter(bare, refs("logits"))(token_batch(labels=None)).get(Ref("logits"))


def test_pooled_output_of_a_classifier_and_of_a_bare_model():
    model, _ = build("bert")
    features = make_adapter(model, refs("pooled,hidden.-1"))(token_batch(labels=None))
    assert features.pooled.shape == (3, 32)
    torch.testing.assert_close(features.pooled, model.bert.pooler(features.hidden[-1]))
    bare = transformers.BertModel(bert_config()).eval()
    bare_features = make_adapter(bare, refs("pooled"))(token_batch(labels=None))
    torch.testing.assert_close(bare_features.pooled, bare(**token_batch(labels=None)).pooler_output)


def test_refs_are_checked_against_the_model_at_construction():
    model, _ = build("bert")
    with pytest.raises(RefError, match=r"teacher: 'hidden.3' is out of range: .*the model has 2 layers"):
        make_adapter(model, refs("hidden.3"), where="teacher")
    with pytest.raises(RefError, match=r"'attn.-3' is out of range: valid are layers 0–1"):
        make_adapter(model, refs("attn.-3"))
    adapter = make_adapter(model, refs("hidden.-1,attn.-1"))
    assert adapter.refs == [Ref("hidden", 2), Ref("attn", 1)]


def test_module_refs_on_hf_models_and_bad_paths():
    model, _ = build("bert")
    adapter = make_adapter(model, refs("module:bert.encoder.layer.1.output"))
    features = adapter(token_batch(labels=None))
    assert features.modules["bert.encoder.layer.1.output"].shape == (3, 7, 32)
    with pytest.raises(RefError, match=r"no sub-module 'module:bert.encoder.layr.1'.*Close names: bert.encoder.layer.1"):
        make_adapter(model, refs("module:bert.encoder.layr.1"))


def test_unknown_attention_mode_is_a_config_error():
    model, _ = build("bert")
    with pytest.raises(ConfigError, match="student.attention: 'fast' is not one of auto, hooks, eager"):
        HFAdapter(model, refs("attn.0"), attention="fast", where="student")


# ---------------------------------------------------------------------------------------------
# Models whose blocks are not one plain list (T5, ALBERT)


def test_projection_refs_on_shared_weight_layers_are_a_ref_error():
    """MiniLM v2 hooks query/key/value of the last block; ALBERT has one shared layer (was an IndexError)."""
    albert = tiny_stacks.tiny_albert()
    with pytest.raises(RefError, match=r"teacher: key.1, query.1, value.1 hook the projections inside the blocks, "
                                       r"but AlbertForSequenceClassification has shared-weight layers"):
        HFAdapter(albert, refs("query.-1,key.-1,value.-1"), where="teacher")
    # Hidden states need no block list: ALBERT returns one per run of its shared layer.
    features = HFAdapter(albert, refs("hidden.2"))({"input_ids": tiny_stacks.ids_ending_in(3)})
    assert len(features.hidden) == 3


def test_layer_refs_on_an_encoder_decoder_read_the_named_stack():
    t5 = tiny_stacks.tiny_t5()
    with pytest.raises(RefError, match=r"student: hidden.1 on T5ForSequenceClassification, an encoder-decoder whose "
                                       r"block lists are transformer.encoder.block \(2 of T5Block\), "
                                       r"transformer.decoder.block \(2 of T5Block\): no stack is named. Name the stack "
                                       r"the refs read with 'student.blocks'"):
        HFAdapter(t5, refs("hidden.1"), where="student")
    assert HFAdapter(t5, refs("logits"), where="student").stack is None  # logits need no stack

    batch = {"input_ids": tiny_stacks.ids_ending_in(3), "attention_mask": torch.ones(2, 6, dtype=torch.long)}
    for stack in ("encoder", "decoder"):
        named = copy.deepcopy(t5)
        models.name_blocks(named, f"transformer.{stack}.block")
        adapter = HFAdapter(named, refs("hidden.-1"), where="student")
        assert adapter.num_layers == 2 and f"layer refs read the {stack} stack" in adapter.describe()
        features = adapter(batch)
        expected = named(**batch, output_hidden_states=True)[f"{stack}_hidden_states"]
        assert len(features.hidden) == 3 and torch.equal(features.hidden[2], expected[2])


def test_an_eos_classifier_without_eos_in_its_inputs_is_a_data_error():
    t5 = tiny_stacks.tiny_t5(eos_token_id=1)
    adapter = HFAdapter(t5, refs("logits"), where="teacher")
    with pytest.raises(DataError, match=r"teacher: T5ForSequenceClassification classifies at the end-of-sequence "
                                        r"token \(its config's eos_token_id=1\), but 2 of 2 texts in a batch lack it"):
        adapter({"input_ids": tiny_stacks.ids_ending_in(3)})
    uneven = tiny_stacks.ids_ending_in(1)
    uneven[0, 0] = 1
    with pytest.raises(DataError, match=r"texts in a batch hold it \[1, 2\] times"):
        adapter({"input_ids": uneven})
    assert adapter({"input_ids": tiny_stacks.ids_ending_in(1)}).logits.shape == (2, 2)
