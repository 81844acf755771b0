"""LegacyOutputs: the article's tuple-unpacking adaptors on today's ModelOutput."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn
from transformers import GPT2Config, GPT2Model

from kdistill.compat.legacy import HookedAttentions, LegacyCaller, LegacyOutputs, save_pretrained
from kdistill.errors import ConfigError
from ._models import bert, padded_batch


def eager_attentions(model: nn.Module, batch) -> tuple[torch.Tensor, ...]:
    reference = copy.deepcopy(model).eval()
    reference.set_attn_implementation("eager")
    with torch.no_grad():
        return reference(*batch, output_attentions=True, return_dict=True).attentions


def test_raw_model_output_does_not_unpack_into_four():
    """The trap the compat layer exists for (transformers 5): five keys, and SDPA returns no weights."""
    model = bert().eval()
    output = model(*padded_batch())
    assert list(output.keys()) == ["last_hidden_state", "pooler_output", "hidden_states", "attentions",
                                   "cross_attentions"]
    assert output.attentions == ()
    with pytest.raises(ValueError, match="too many values to unpack"):
        last_hidden_state, pooler_output, hidden_states, attentions = output


def test_legacy_outputs_unpack_into_four_with_eager_equal_attentions():
    model = bert(layers=2).eval()
    batch = padded_batch()
    outputs = LegacyCaller(model)(batch)
    assert isinstance(outputs, tuple) and isinstance(outputs, LegacyOutputs)
    last_hidden_state, pooler_output, hidden_states, attentions = outputs
    assert outputs.keys() == ["last_hidden_state", "pooler_output", "hidden_states", "attentions"]
    assert last_hidden_state.shape == (4, 8, 32) and pooler_output.shape == (4, 32)
    assert len(hidden_states) == 3 and torch.equal(hidden_states[-1], last_hidden_state)
    assert len(attentions) == 2
    reference = eager_attentions(model, batch)
    for ours, eager in zip(attentions, reference):
        assert ours.shape == (4, 4, 8, 8)
        torch.testing.assert_close(ours, eager, atol=1e-6, rtol=1e-5)
    # padded keys get no attention weight
    assert float(attentions[0][0, :, :, 5:].detach().abs().max()) < 1e-6
    # attribute, key and index access, like ModelOutput and the old tuple
    assert outputs.pooler_output is pooler_output and outputs[1] is pooler_output
    assert outputs["attentions"] is attentions
    assert "attentions" in outputs and "cross_attentions" not in outputs
    with pytest.raises(KeyError, match="last_hidden_state, pooler_output, hidden_states, attentions"):
        outputs["cross_attentions"]


def test_eager_mode_gives_the_same_attentions_as_hooks():
    model = bert(layers=2).eval()
    batch = padded_batch(seed=1)
    hooked = LegacyCaller(copy.deepcopy(model))(batch).attentions
    eager_caller = LegacyCaller(model, attention="eager")
    assert eager_caller.attention_mode == "eager" and model.config._attn_implementation == "eager"
    eager = eager_caller(batch).attentions
    assert isinstance(eager, tuple) and len(eager) == 2
    for a, b in zip(hooked, eager):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_hooked_attentions_are_computed_on_demand_and_carry_gradients():
    model = bert(layers=2).train()
    attentions = LegacyCaller(model)(padded_batch()).attentions
    assert isinstance(attentions, HookedAttentions)
    assert "0 computed" in repr(attentions)
    attentions[1].sum().backward()
    assert "1 computed" in repr(attentions)
    query = model.encoder.layer[1].attention.self.query.weight
    assert query.grad is not None and float(query.grad.abs().sum()) > 0
    with pytest.raises(IndexError, match="the model has 2 layers"):
        attentions[2]


def test_tuple_length_follows_the_config_like_old_transformers():
    model = bert(attentions=False).eval()
    outputs = LegacyCaller(model)(padded_batch())
    assert outputs.keys() == ["last_hidden_state", "pooler_output", "hidden_states"]
    with_head = bert(head=True).eval()
    ids, mask, types = padded_batch()
    outputs = LegacyCaller(with_head)({"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 2, 0])})
    loss, logits, hidden_states, attentions = outputs
    assert loss.dim() == 0 and logits.shape == (4, 3) and len(hidden_states) == 3 and len(attentions) == 2


def test_models_without_hookable_attention_switch_to_eager():
    config = GPT2Config(vocab_size=100, n_positions=16, n_embd=32, n_layer=2, n_head=4, output_attentions=True,
                        output_hidden_states=True)
    model = GPT2Model(config).eval()
    caller = LegacyCaller(model)
    assert caller.attention_mode == "eager"
    outputs = caller((torch.randint(0, 100, (2, 6)),))
    attentions = outputs.attentions
    assert len(attentions) == 2 and attentions[0].shape == (2, 4, 6, 6)
    with pytest.raises(ConfigError, match="only exact for BERT-like encoders"):
        LegacyCaller(GPT2Model(config), attention="hooks")


def test_plain_modules_get_their_own_output():
    model = nn.Linear(3, 2)
    x = torch.randn(5, 3)
    assert torch.equal(LegacyCaller(model)((x,)), model(x))


def test_legacy_outputs_pickle_and_repr():
    outputs = LegacyOutputs([("logits", torch.ones(2, 3)), ("hidden_states", (torch.zeros(1),))])
    copy_ = pickle.loads(pickle.dumps(outputs))
    assert copy_.keys() == ["logits", "hidden_states"] and torch.equal(copy_.logits, outputs.logits)
    assert repr(outputs) == "LegacyOutputs(logits=Tensor(2, 3), hidden_states=tuple of 1)"
    with pytest.raises(AttributeError, match="fields: logits, hidden_states"):
        outputs.pooler_output


def test_save_pretrained_with_attentions_under_sdpa(tmp_path):
    model = bert()
    assert model.config._attn_implementation == "sdpa" and model.config.output_attentions
    save_pretrained(model, tmp_path / "student")
    assert (tmp_path / "student" / "model.safetensors").exists()
    assert model.config.output_attentions  # restored on the live model


def test_an_empty_attentions_tuple_is_an_error_never_a_silent_zero():
    from transformers import BertModel

    from kdistill.errors import FeatureError

    from ._models import bert_config

    class DropsAttentions(BertModel):
        def forward(self, *args, **kwargs):
            output = super().forward(*args, **kwargs)
            output["attentions"] = ()
            return output

    caller = LegacyCaller(DropsAttentions(bert_config()), attention="eager")
    with pytest.raises(FeatureError, match="returned no attention weights \\(an empty tuple\\)"):
        caller(padded_batch())
