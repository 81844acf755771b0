"""LayerDrop: blocks skipped in train mode only, identity when skipped, no trace when removed; pruning."""

from __future__ import annotations

import pytest
import torch
import transformers
from torch import nn

from kdistill.errors import ConfigError
from kdistill.layerdrop import disable_layerdrop, enable_layerdrop, keep_layers, layerdrop_stats, parse_keep_layers

INPUT_IDS = torch.randint(5, 30, (4, 9), generator=torch.Generator().manual_seed(0))


def tiny_bert(layers: int = 4, seed: int = 0) -> transformers.BertForSequenceClassification:
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=32, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                                     intermediate_size=64, num_labels=2, max_position_embeddings=16)
    return transformers.BertForSequenceClassification(config)


def test_blocks_are_skipped_in_train_mode_as_identity():
    model = tiny_bert().train()
    enable_layerdrop(model, 0.5)
    identities = [0] * 4
    runs = [0] * 4

    def watch(index):
        def hook(module, args, output):
            runs[index] += 1
            identities[index] += int(output is args[0])  # a skipped block hands back its input itself
        return hook

    for index, block in enumerate(model.bert.encoder.layer):
        block.register_forward_hook(watch(index))
    torch.manual_seed(123)
    for _ in range(20):
        model(input_ids=INPUT_IDS)
    stats = layerdrop_stats(model)
    skipped = [state.skipped for state in stats]
    assert [state.train_calls for state in stats] == [20] * 4 == runs
    assert skipped == identities
    assert all(3 <= count <= 17 for count in skipped), skipped  # ~Binomial(20, 0.5) each (minus the first call)
    # The same seed drops the same blocks.
    again = tiny_bert().train()
    enable_layerdrop(again, 0.5)
    torch.manual_seed(123)
    for _ in range(20):
        again(input_ids=INPUT_IDS)
    assert [state.skipped for state in layerdrop_stats(again)] == skipped


def test_eval_mode_runs_every_block_exactly():
    plain = tiny_bert().eval()
    dropped = tiny_bert().eval()
    enable_layerdrop(dropped, 0.9)
    with torch.no_grad():
        for _ in range(5):
            torch.testing.assert_close(dropped(input_ids=INPUT_IDS).logits, plain(input_ids=INPUT_IDS).logits,
                                       rtol=0, atol=0)
    assert [state.skipped for state in layerdrop_stats(dropped)] == [0, 0, 0, 0]


def test_skipped_block_gets_no_gradient_and_hidden_states_keep_their_count():
    model = tiny_bert().train()
    enable_layerdrop(model, 0.5)
    torch.manual_seed(7)
    for _ in range(30):  # until some block is skipped in one step while another runs
        model.zero_grad(set_to_none=True)
        before = [state.skipped for state in layerdrop_stats(model)]
        output = model(input_ids=INPUT_IDS, output_hidden_states=True)
        output.logits.sum().backward()
        now = [state.skipped for state in layerdrop_stats(model)]
        skipped_now = [b != a for b, a in zip(before, now)]
        if any(skipped_now) and not all(skipped_now):
            break
    assert len(output.hidden_states) == 5  # transformers' recorder still sees every block
    for index, (block, skipped) in enumerate(zip(model.bert.encoder.layer, skipped_now)):
        grad = block.attention.self.query.weight.grad
        if skipped:
            assert grad is None, index
            torch.testing.assert_close(output.hidden_states[index + 1], output.hidden_states[index])
        else:
            assert grad is not None and grad.abs().sum() > 0, index


def test_disable_leaves_no_trace_and_state_dict_never_changes(tmp_path):
    model = tiny_bert()
    keys = list(model.state_dict())
    blocks = enable_layerdrop(model, 0.3)
    assert list(model.state_dict()) == keys  # same modules, same names: checkpoints and freeze patterns agree
    assert all(type(block).__name__ == "BertLayer" for block in blocks)
    assert disable_layerdrop(model) == 4
    assert all("forward" not in vars(block) and "_kdistill_layerdrop" not in vars(block) for block in blocks)
    assert layerdrop_stats(model) == [None] * 4
    model.save_pretrained(tmp_path)
    reloaded = transformers.BertForSequenceClassification.from_pretrained(tmp_path).eval()
    model.eval()
    torch.testing.assert_close(reloaded(input_ids=INPUT_IDS).logits, model(input_ids=INPUT_IDS).logits)


def test_enable_twice_changes_p_and_rejects_bad_values():
    model = tiny_bert()
    enable_layerdrop(model, 0.2)
    enable_layerdrop(model, 0.4)
    assert [state.p for state in layerdrop_stats(model)] == [0.4] * 4
    assert disable_layerdrop(model) == 4 and "forward" not in vars(model.bert.encoder.layer[0])
    for bad in (1.0, -0.1, True, "0.5"):
        with pytest.raises(ConfigError, match="must be a probability in \\[0, 1\\)"):
            enable_layerdrop(model, bad)


class TupleBlock(nn.Module):
    """A block in the older transformers style: returns (hidden_states, attention)."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, hidden_states):
        return self.linear(hidden_states), hidden_states.sum()


class TupleModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([TupleBlock() for _ in range(3)])

    def forward(self, x):
        for block in self.blocks:
            x = block(x)[0]
        return x


def test_tuple_output_blocks_are_imitated():
    model = TupleModel().train()
    enable_layerdrop(model, 0.5)
    x = torch.randn(2, 4)
    outputs = []
    model.blocks[0].register_forward_hook(lambda module, args, output: outputs.append(output))
    torch.manual_seed(0)
    for _ in range(15):
        model(x)
    skipped = [o for o in outputs if o[0] is x]
    assert len(skipped) == layerdrop_stats(model)[0].skipped > 0
    assert all(len(o) == 2 and o[1] is None for o in skipped)


# ---------------------------------------------------------------------------------------------
# Pruning


def test_keep_every_other_layer_copies_blocks_and_runs(tmp_path):
    model = tiny_bert()
    enable_layerdrop(model, 0.5)
    pruned = keep_layers(model, "every_other").eval()
    assert pruned.config.num_hidden_layers == 2 and len(pruned.bert.encoder.layer) == 2
    assert model.config.num_hidden_layers == 4 and len(model.bert.encoder.layer) == 4  # original untouched
    torch.testing.assert_close(pruned.bert.encoder.layer[1].intermediate.dense.weight,
                               model.bert.encoder.layer[2].intermediate.dense.weight)
    assert layerdrop_stats(pruned) == [None, None]
    assert layerdrop_stats(model)[0] is not None
    assert pruned(input_ids=INPUT_IDS).logits.shape == (4, 2)
    pruned.save_pretrained(tmp_path)
    assert transformers.AutoConfig.from_pretrained(tmp_path).num_hidden_layers == 2


def test_parse_keep_layers():
    assert parse_keep_layers("0,2,4", 6) == [0, 2, 4]
    assert parse_keep_layers("every_other", 5) == [0, 2, 4]
    assert parse_keep_layers("every-other", 4) == [0, 2]
    assert parse_keep_layers([3, 1], 4) == [3, 1]
    with pytest.raises(ConfigError, match="layer 6 is out of range: the model has 6 layers \\(0–5\\)"):
        parse_keep_layers("0,6", 6)
    with pytest.raises(ConfigError, match="neither a comma-separated list"):
        parse_keep_layers("half", 6)
    with pytest.raises(ConfigError, match="repeat"):
        parse_keep_layers("1,1", 6)
