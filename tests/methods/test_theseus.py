"""BERT-of-Theseus: replacement rate follows its schedule, successors alone at the end, a plain exported model."""

from __future__ import annotations

import pytest
import torch
import transformers
from transformers.utils import ModelOutput

import tiny_stacks
from kdistill import models
from kdistill.errors import ConfigError
from kdistill.methods import expand
from kdistill.methods.theseus import TheseusModule, curriculum_rate, group_layers
from kdistill.models import find_layer_list, student_from_teacher
from kdistill.schedules import Linear

from ._helpers import loader_of, make_batch, stage_distiller, tiny_bert, tiny_distilbert, tiny_gpt2, train_history

INPUTS = {"input_ids": torch.randint(1, 100, (2, 6), generator=torch.Generator().manual_seed(0)),
          "attention_mask": torch.ones(2, 6, dtype=torch.long)}


def run_counting(module: TheseusModule, forwards: int) -> tuple[list[list[bool]], list[int], list[int]]:
    """Training forwards (no grad, for speed); per forward the draws, and how often each block ran."""
    predecessor_calls = [0] * len(module.predecessor_blocks)
    successor_blocks = find_layer_list(module.successor)[1]
    successor_calls = [0] * len(successor_blocks)
    handles = [block.register_forward_hook(lambda *_, i=i: predecessor_calls.__setitem__(i, predecessor_calls[i] + 1))
               for i, block in enumerate(module.predecessor_blocks)]
    handles += [block.register_forward_hook(lambda *_, i=i: successor_calls.__setitem__(i, successor_calls[i] + 1))
                for i, block in enumerate(successor_blocks)]
    draws = []
    module.train()
    with torch.no_grad():
        for _ in range(forwards):
            module(**INPUTS)
            draws.append(list(module.last_replaced))
    for handle in handles:
        handle.remove()
    return draws, predecessor_calls, successor_calls


def within_binomial(count: int, trials: int, p: float) -> bool:
    return abs(count - trials * p) <= 4 * (trials * p * (1 - p)) ** 0.5 + 1


def test_constant_rate_one_bernoulli_per_group_per_forward():
    module = TheseusModule(tiny_bert(4), 2, replace_rate=0.3, seed=0)
    draws, predecessor_calls, successor_calls = run_counting(module, 300)
    replaced = [sum(d[g] for d in draws) for g in range(2)]
    assert all(within_binomial(r, 300, 0.3) for r in replaced), replaced
    # The blocks that ran are the ones drawn: successor g when replaced, else predecessor group g.
    assert successor_calls == replaced
    assert predecessor_calls == [300 - replaced[0]] * 2 + [300 - replaced[1]] * 2
    assert int(module.step) == 300
    # Deterministic given the seed.
    again, _, _ = run_counting(TheseusModule(tiny_bert(4), 2, replace_rate=0.3, seed=0), 40)
    other, _, _ = run_counting(TheseusModule(tiny_bert(4), 2, replace_rate=0.3, seed=1), 40)
    assert again == draws[:40] and other != again


def test_linear_rate_and_successor_only_phase():
    total = 400
    module = TheseusModule(tiny_bert(4), 2, replace_rate=Linear(0.1, 0.9), total_steps=total,
                           successor_only_fraction=0.75, seed=1)
    assert module.rate(0) == pytest.approx(0.1) and module.rate(200) == pytest.approx(0.5)
    assert module.rate(299) == pytest.approx(0.1 + 0.8 * 299 / 400) and module.rate(300) == 1.0
    draws, _, _ = run_counting(module, total)
    for begin, end in ((0, 100), (100, 200), (200, 300)):
        count = sum(sum(d) for d in draws[begin:end])
        expected = sum(2 * module.rate(step) for step in range(begin, end))
        assert abs(count - expected) <= 4 * (expected * (1 - expected / 200)) ** 0.5 + 1, (begin, count, expected)
    assert all(all(d) for d in draws[300:])  # the final phase: successors alone
    # Eval mode always runs the successors alone, whatever the step.
    module.set_step(0)
    hooks = [b.register_forward_hook(lambda *_: pytest.fail("a predecessor block ran in eval mode"))
             for b in module.predecessor_blocks]
    module.eval()
    with torch.no_grad():
        module(**INPUTS)
    for h in hooks:
        h.remove()


def test_curriculum_rate_is_the_reference_linear_scheduler():
    rate = curriculum_rate(0.3, 0.01)
    assert [rate(t) for t in (0, 10, 70, 100)] == pytest.approx([0.3, 0.4, 1.0, 1.0])
    assert curriculum_rate(0.3, 0.3)(2) == pytest.approx(0.9)  # the slope is k, not (1 − b) / ceil((1 − b) / k)
    assert group_layers(5, 2) == [[0, 1], [2, 3, 4]] and group_layers(12, 6)[1] == [2, 3]
    with pytest.raises(ConfigError, match="between 1 and 4 layers"):
        group_layers(4, 5)


@pytest.mark.parametrize("base", [0.0, 0.3, 0.5, 0.77, 1.0])
@pytest.mark.parametrize("k", [1e-4, 0.003, 0.07, 0.3, 0.45, 2.0])
def test_curriculum_rate_is_min_1_kt_plus_b_at_every_step(base, k):
    rate = curriculum_rate(base, k)
    module_rate = [min(1.0, k * t + base) for t in range(0, 400)]
    assert [rate(t) for t in range(0, 400)] == pytest.approx(module_rate, abs=1e-12)
    assert rate(10**9, 10) == 1.0 and rate(3, None) == pytest.approx(min(1.0, 3 * k + base))


def test_a_module_on_the_curriculum_replaces_with_the_reference_probability():
    module = TheseusModule(tiny_bert(4), 2, replace_rate=curriculum_rate(0.3, 0.3))
    assert [module.rate(t) for t in (0, 1, 2, 3)] == pytest.approx([0.3, 0.6, 0.9, 1.0])
    with pytest.raises(ConfigError, match=r"curriculum rate needs 0 ≤ base ≤ 1 and k > 0"):
        curriculum_rate(0.3, 0.0)


def test_fractions_need_total_steps():
    module = TheseusModule(tiny_bert(4), 2, successor_only_fraction=0.5)
    module.train()
    with pytest.raises(ConfigError, match="total_steps is unknown"):
        module(**INPUTS)
    assert int(module.step) == 0


def block_weights_equal(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("successor, layers", [(2, [0, 1]), ([1, 3], [1, 3])])
def test_successor_starts_from_predecessor_blocks(successor, layers):
    predecessor = tiny_bert(4)
    module = TheseusModule(predecessor, successor)
    _, blocks = find_layer_list(module.successor)
    assert all(block_weights_equal(blocks[i], predecessor.bert.encoder.layer[j]) for i, j in enumerate(layers))
    grouped = TheseusModule(predecessor, 2, successor_init="groups")
    assert block_weights_equal(find_layer_list(grouped.successor)[1][1], predecessor.bert.encoder.layer[2])


def test_only_successor_blocks_train_and_all_predecessor_draws_still_backprop():
    module = TheseusModule(tiny_bert(4), 2, replace_rate=0.0, seed=0)
    trainable = {name for name, p in module.named_parameters() if p.requires_grad}
    assert trainable and all(name.startswith("successor.bert.encoder.layer.") for name in trainable)
    module.train()
    out = module(**INPUTS, labels=torch.tensor([0, 1]))
    assert module.last_replaced == [False, False]
    out.loss.backward()  # no successor ran: backward must still work, leaving successor grads empty
    assert all(p.grad is None for p in module.parameters())
    module.replace_rate = 1.0
    module(**INPUTS, labels=torch.tensor([0, 1])).loss.backward()
    assert all(p.grad is not None for name, p in module.named_parameters() if name in trainable)
    assert all(p.grad is None for p in module.predecessor_blocks.parameters())
    everything = TheseusModule(tiny_bert(4), 2, train_outside_blocks=True)
    assert any(n.startswith("successor.classifier") for n, p in everything.named_parameters() if p.requires_grad)


def test_forward_installs_a_mixed_model_and_restores_it_even_on_error():
    module = TheseusModule(tiny_bert(4), 2, replace_rate=0.0, seed=3)
    host_blocks = find_layer_list(module.successor)[1]
    seen = {}

    def inside(block, *_):
        seen["layers"] = module.successor.config.num_hidden_layers
        seen["index"] = block.attention.self.layer_idx
        seen["list"] = len(find_layer_list(module.successor)[1])
        raise RuntimeError("boom")

    handle = module.predecessor_blocks[3].register_forward_hook(inside)
    module.train()
    with torch.no_grad(), pytest.raises(RuntimeError, match="boom"):
        module(**INPUTS)
    handle.remove()
    # Inside: the four predecessor blocks, numbered 0-3, and a config saying four layers.
    assert seen == {"layers": 4, "index": 3, "list": 4}
    # After: the successor model as it was.
    assert find_layer_list(module.successor)[1] is host_blocks and len(host_blocks) == 2
    assert module.successor.config.num_hidden_layers == 2
    assert [b.attention.self.layer_idx for b in host_blocks] == [0, 1]
    assert [b.attention.self.layer_idx for b in module.predecessor_blocks] == [0, 1, 2, 3]


AUTO = {"bert": transformers.AutoModelForSequenceClassification, "gpt2": transformers.AutoModelForCausalLM,
        "distilbert": transformers.AutoModelForSequenceClassification}
BUILD = {"bert": tiny_bert, "gpt2": tiny_gpt2, "distilbert": tiny_distilbert}


@pytest.mark.parametrize("kind", sorted(AUTO))
def test_export_is_a_plain_model_with_only_the_successors(kind, tmp_path):
    predecessor = BUILD[kind](4)
    module = TheseusModule(predecessor, 2, replace_rate=0.5, seed=0)
    module.train()
    labels = INPUTS["input_ids"] if kind == "gpt2" else torch.tensor([0, 2])
    for _ in range(4):  # mixed forwards with the model's own kwargs, returning its ModelOutput
        out = module(**INPUTS, labels=labels)
        assert isinstance(out, ModelOutput) and out.loss.dim() == 0 and out.logits.shape[0] == 2
    module.eval()
    exported = module.export()
    assert type(exported) is type(predecessor)
    path, blocks = find_layer_list(exported)
    assert len(blocks) == 2 and exported.config.num_hidden_layers == 2
    assert not any("predecessor" in key for key in exported.state_dict())
    assert all(p.requires_grad for p in exported.parameters())
    exported.save_pretrained(tmp_path)
    reloaded = AUTO[kind].from_pretrained(tmp_path, local_files_only=True).eval()
    assert type(reloaded) is type(predecessor) and len(find_layer_list(reloaded)[1]) == 2
    with torch.no_grad():
        expected = module(**INPUTS).logits
        assert torch.allclose(reloaded(**INPUTS).logits, expected, atol=1e-6)
        assert torch.allclose(exported(**INPUTS).logits, expected, atol=1e-6)


def test_recipe_and_trainer():
    teacher = tiny_bert(4, seed=1)
    with torch.no_grad():  # a head on a fine-tuned scale: Theseus trains the blocks under the frozen head
        teacher.classifier.weight.mul_(50)
    recipe = expand("theseus", teacher, replace_rate=0.5, successor_only_fraction=0.5)
    assert recipe.student_init == {"from_teacher": {"layers": [0, 1]}}
    (stage,) = recipe.stages
    assert stage.matches == [] and stage.hard_label_weight == 1.0
    assert expand("theseus", teacher_layers=12).student_init["from_teacher"]["layers"] == [0, 1, 2, 3, 4, 5]
    with pytest.raises(ConfigError, match="method_args.replace_rate: 1.5 is out of range; it must be between 0 and 1"):
        expand("theseus", teacher, replace_rate=1.5)
    student = student_from_teacher(teacher, recipe.student_init["from_teacher"]["layers"])
    wrapper = recipe.student_wrapper(teacher, student)
    assert isinstance(wrapper, TheseusModule) and wrapper.successor is student
    distiller = stage_distiller(stage, teacher, wrapper)
    wrapper.follow(distiller)
    history = train_history(distiller, loader_of(make_batch(), copies=4), steps=20, lr=5e-3)
    assert len(history) == 20 and set(history[0]) >= {"loss", "hard_label"}
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]
    assert int(wrapper.step) == 19 + 1 and wrapper.total_steps == 20 and wrapper.successor_only()


# ---------------------------------------------------------------------------------------------
# Models whose blocks are not one plain list


@pytest.mark.parametrize(("build", "message"), [
    ("tiny_t5", r"several block lists \(transformer.encoder.block \(2 of T5Block\), transformer.decoder.block"),
    ("tiny_bart", r"several block lists \(model.encoder.layers \(2 of BartEncoderLayer\), model.decoder.layers"),
    ("tiny_albert", r"shared-weight layers \(num_hidden_groups=1 for num_hidden_layers=2"),
])
def test_several_stacks_or_shared_layers_are_refused(build, message):
    predecessor = getattr(tiny_stacks, build)()
    with pytest.raises(ConfigError, match=message):
        TheseusModule(predecessor, 1)
    if build == "tiny_albert":  # its config counts 2 layers: the recipe builds, its student is refused
        recipe = expand("theseus", predecessor, None)
        with pytest.raises(ConfigError, match=message):
            student_from_teacher(predecessor, recipe.student_init["from_teacher"]["layers"])
    else:
        with pytest.raises(ConfigError, match=message):
            expand("theseus", predecessor, None)


@pytest.mark.parametrize("stack", ["encoder", "decoder"])
def test_a_named_stack_gives_both_predecessor_and_successor_blocks(stack):
    predecessor = tiny_stacks.tiny_t5()
    path = f"transformer.{stack}.block"
    other = path.replace(stack, "decoder" if stack == "encoder" else "encoder")
    models.name_blocks(predecessor, path)
    module = TheseusModule(predecessor, 1, replace_rate=0.0, successor_only_fraction=None)
    assert module.block_path == path and module.predecessor_blocks is predecessor.get_submodule(path)
    assert block_weights_equal(module.successor.get_submodule(path)[0], predecessor.get_submodule(path)[0])
    assert len(module.successor.get_submodule(other)) == 2

    ran = []
    handles = [block.register_forward_hook(lambda *_, i=i: ran.append(i))
               for i, block in enumerate(module.predecessor_blocks)]
    module.train()
    with torch.no_grad():  # p = 0: the predecessor's two blocks of that stack run inside the successor
        module(input_ids=tiny_stacks.ids_ending_in(3), labels=torch.tensor([0, 1]))
    assert ran == [0, 1]
    for handle in handles:
        handle.remove()
    exported = module.export()
    assert len(exported.get_submodule(path)) == 1 and len(exported.get_submodule(other)) == 2
