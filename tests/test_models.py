"""Offline loading, the block list, students built from teacher layers or a smaller config."""

from __future__ import annotations

import logging
import re

import pytest
import torch
import transformers
from torch import nn

import tiny_stacks
from kdistill import models, packaged
from kdistill.errors import ConfigError
from kdistill.models import count_parameters, find_layer_list, student_from_config, student_from_teacher

INPUT_IDS = torch.randint(1, 100, (2, 7), generator=torch.Generator().manual_seed(0))


def tiny(kind: str, layers: int = 4) -> nn.Module:
    torch.manual_seed(0)
    if kind == "bert":
        config = transformers.BertConfig(
            num_hidden_layers=layers, hidden_size=32, num_attention_heads=2, intermediate_size=64, vocab_size=100
        )
        return transformers.BertForSequenceClassification(config).eval()
    if kind == "gpt2":
        config = transformers.GPT2Config(
            n_layer=layers, n_embd=32, n_head=2, vocab_size=100, n_positions=32, bos_token_id=0, eos_token_id=0
        )
        return transformers.GPT2LMHeadModel(config).eval()
    if kind == "distilbert":
        config = transformers.DistilBertConfig(n_layers=layers, dim=32, n_heads=2, hidden_dim=64, vocab_size=100)
        return transformers.DistilBertForSequenceClassification(config).eval()
    if kind == "qwen2":
        config = transformers.Qwen2Config(
            num_hidden_layers=layers, hidden_size=32, num_attention_heads=2, num_key_value_heads=1,
            intermediate_size=64, vocab_size=100, use_sliding_window=True, sliding_window=4,
            layer_types=["full_attention", "sliding_attention"] * (layers // 2),
        )
        return transformers.Qwen2ForCausalLM(config).eval()
    if kind in ("mistral", "gemma"):
        size = dict(num_hidden_layers=layers, hidden_size=32, num_attention_heads=2, num_key_value_heads=1,
                    intermediate_size=64, vocab_size=100, head_dim=16)
        if kind == "mistral":
            return transformers.MistralForCausalLM(transformers.MistralConfig(**size)).eval()
        return transformers.GemmaForCausalLM(transformers.GemmaConfig(**size)).eval()
    raise AssertionError(kind)


LAYER_PATHS = {
    "bert": "bert.encoder.layer",
    "gpt2": "transformer.h",
    "distilbert": "distilbert.transformer.layer",
    "qwen2": "model.layers",
    "mistral": "model.layers",
    "gemma": "model.layers",
}


@pytest.mark.parametrize("kind", sorted(LAYER_PATHS))
def test_find_layer_list(kind):
    model = tiny(kind)
    path, blocks = find_layer_list(model)
    assert path == LAYER_PATHS[kind]
    assert blocks is model.get_submodule(path) and models.num_layers(model) == 4


def test_find_layer_list_ignores_lists_nested_in_blocks():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.experts = nn.ModuleList(nn.Linear(2, 2) for _ in range(8))

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.heads = nn.ModuleList([nn.Linear(2, 2), nn.ReLU()])  # mixed classes: not blocks
            self.blocks = nn.ModuleList(Block() for _ in range(2))

    assert find_layer_list(Model())[0] == "blocks"
    with pytest.raises(ConfigError, match="Sequential has no nn.ModuleList of identical blocks"):
        find_layer_list(nn.Sequential(nn.Linear(2, 2)))


@pytest.mark.parametrize("kind", sorted(LAYER_PATHS))
def test_student_from_teacher_copies_blocks_weight_by_weight(kind, tmp_path):
    teacher = tiny(kind)
    teacher_before = {name: tensor.clone() for name, tensor in teacher.state_dict().items()}
    layers = [3, 1]
    student = student_from_teacher(teacher, layers)

    path, student_blocks = find_layer_list(student)
    _, teacher_blocks = find_layer_list(teacher)
    assert len(student_blocks) == 2 and models.num_layers_of_config(student.config) == 2
    for position, index in enumerate(layers):
        student_weights = student_blocks[position].state_dict()
        teacher_weights = teacher_blocks[index].state_dict()
        assert student_weights.keys() == teacher_weights.keys()
        for name, tensor in teacher_weights.items():
            assert torch.equal(student_weights[name], tensor), f"{path}.{position}.{name}"
            assert student_weights[name].data_ptr() != tensor.data_ptr()  # a copy, not shared
    # Everything outside the blocks (embeddings, final norm, heads) is copied unchanged.
    outside = {n: t for n, t in teacher.state_dict().items() if not n.startswith(path + ".")}
    student_state = student.state_dict()
    assert outside.keys() == {n for n in student_state if not n.startswith(path + ".")}
    assert all(torch.equal(student_state[n], t) for n, t in outside.items())
    # The teacher is untouched.
    assert models.num_layers(teacher) == 4 and models.num_layers_of_config(teacher.config) == 4
    assert all(torch.equal(teacher.state_dict()[n], t) for n, t in teacher_before.items())

    student.save_pretrained(tmp_path)
    reloaded = type(teacher).from_pretrained(tmp_path, local_files_only=True).eval()
    with torch.no_grad():
        assert torch.equal(student(input_ids=INPUT_IDS).logits, reloaded(input_ids=INPUT_IDS).logits)


def test_student_config_per_layer_lists_and_positions_follow_the_kept_layers():
    student = student_from_teacher(tiny("qwen2"), [1, 2, 3])
    assert student.config.layer_types == ["sliding_attention", "full_attention", "sliding_attention"]
    assert student.config.num_hidden_layers == 3
    assert [block.self_attn.layer_idx for block in student.model.layers] == [0, 1, 2]
    assert all(block.self_attn.config is student.config for block in student.model.layers)


def test_a_layer_listed_twice_gets_its_own_copy():
    student = student_from_teacher(tiny("bert"), [0, 0])
    first, second = student.bert.encoder.layer
    assert first is not second
    with torch.no_grad():
        first.output.dense.weight.add_(1.0)
    assert not torch.equal(first.output.dense.weight, second.output.dense.weight)


def test_student_from_teacher_errors():
    teacher = tiny("bert", layers=6)
    with pytest.raises(ConfigError) as info:
        student_from_teacher(teacher, [0, 3, 7])
    assert str(info.value) == "student.from_teacher.layers[2]: 7 is out of range: the teacher has 6 layers (0–5)."
    with pytest.raises(ConfigError, match=r"student.from_teacher.layers\[0\]: -1 is out of range"):
        student_from_teacher(teacher, [-1])
    with pytest.raises(ConfigError, match="give at least one teacher layer"):
        student_from_teacher(teacher, [])


@pytest.mark.parametrize("kind", ["bert", "gpt2", "distilbert", "qwen2"])
def test_student_from_config(kind):
    teacher = tiny(kind)
    student = student_from_config(teacher, num_layers=2, hidden_size=16, num_attention_heads=2, intermediate_size=24)
    assert type(student) is type(teacher)
    assert models.num_layers(student) == 2 and student.config.hidden_size == 16
    assert count_parameters(student) < count_parameters(teacher)
    assert teacher.config.hidden_size == 32 and models.num_layers_of_config(teacher.config) == 4
    with torch.no_grad():
        logits = student(input_ids=INPUT_IDS).logits
    assert logits.shape[0] == 2


def test_student_from_config_rejects_indivisible_heads():
    with pytest.raises(ConfigError, match="hidden_size: 30 is not divisible by num_attention_heads=4"):
        student_from_config(tiny("bert"), num_layers=2, hidden_size=30, num_attention_heads=4)


def test_count_parameters_tied_and_trainable():
    model = tiny("gpt2", layers=2)  # lm_head is tied to the word embeddings
    assert count_parameters(model) == sum(p.numel() for p in set(model.parameters()))
    model.transformer.wte.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == count_parameters(model) - 100 * 32


# ---------------------------------------------------------------------------------------------
# Loading


def test_load_hf_model_errors(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError, match=f"cannot load sequence-classification model from '{missing}'"):
        models.load_hf_model(missing)
    (tmp_path / "weights.bin").write_text("")
    with pytest.raises(ConfigError) as info:
        models.load_hf_model(tmp_path)
    assert str(info.value) == f"model.path: the folder '{tmp_path}' has no config.json (it holds: weights.bin)."
    with pytest.raises(ConfigError, match="unknown task 'sequence-clasification'; did you mean 'sequence-classification'?"):
        models.load_hf_model(tmp_path, task="sequence-clasification")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match=f"cannot load sequence-classification model from the folder '{tmp_path}'"):
        models.load_hf_model(tmp_path)


def test_load_base_checkpoint_as_classifier_summarises_new_head(tmp_path, caplog, capsys):
    base = transformers.BertModel(tiny("bert", layers=2).config)
    base.save_pretrained(tmp_path)
    with caplog.at_level(logging.INFO, logger="kdistill.models"):
        model = models.load_hf_model(tmp_path, num_labels=3)
    assert isinstance(model, transformers.BertForSequenceClassification) and model.config.num_labels == 3
    assert "2 weights newly initialised (classifier.bias, classifier.weight)" in caplog.text
    assert "LOAD REPORT" not in capsys.readouterr().err
    assert torch.equal(model.bert.embeddings.word_embeddings.weight, base.embeddings.word_embeddings.weight)
    eager = models.load_hf_model(tmp_path, task="base", attn_implementation="eager")
    assert eager.config._attn_implementation == "eager"


def test_load_tokenizer(tmp_path):
    with pytest.raises(ConfigError, match="tokenizer.path: cannot load a tokenizer from"):
        models.load_tokenizer(tmp_path / "nowhere")
    transformers.BertConfig(vocab_size=6).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match=r"^data\.tokenizer: the folder '.*' has no tokenizer files \(expected one "
                                          r"of tokenizer\.json, vocab\.txt, .*\); it holds: config\.json\.$"):
        models.load_tokenizer(tmp_path, where="data.tokenizer")  # transformers would give 5 special tokens
    vocab = {word: index for index, word in enumerate("[PAD] [UNK] [CLS] [SEP] [MASK] good".split())}
    transformers.BertTokenizer(vocab=vocab).save_pretrained(tmp_path)
    assert models.load_tokenizer(tmp_path)("good")["input_ids"] == [2, 5, 3]


def test_minilm_teacher_loads_as_classifier():
    try:
        path = packaged.minilm_teacher_path()
    except Exception:
        pytest.skip("no MiniLM teacher installed")
    model = models.load_hf_model(path, num_labels=2)
    assert isinstance(model, transformers.BertForSequenceClassification)
    assert models.num_layers(model) == 6 and model.config.hidden_size == 384
    assert 22_000_000 < count_parameters(model) < 23_000_000
    student = student_from_teacher(model, [0, 2, 4])
    assert models.num_layers(student) == 3


def test_load_factory():
    layer = models.load_factory("torch.nn:Linear", in_features=2, out_features=3)
    assert isinstance(layer, nn.Linear) and layer.out_features == 3
    with pytest.raises(ConfigError, match="'torch.nn:Linear' cannot take the arguments \\['in_feature'\\]"):
        models.load_factory("torch.nn:Linear", in_feature=2)
    with pytest.raises(ConfigError, match="'torch.nn.init:calculate_gain' returned a float, not a torch.nn.Module"):
        models.load_factory("torch.nn.init:calculate_gain", nonlinearity="relu")
    with pytest.raises(ConfigError, match="'builtins:dict' is in the Python standard library"):
        models.load_factory("builtins:dict", a=1)
    with pytest.raises(ConfigError, match="cannot import module 'no_such_module'"):
        models.load_factory("no_such_module:make")


# ---------------------------------------------------------------------------------------------
# The one rule for block lists: several stacks and shared-weight layers are refused, a named list is used


@pytest.mark.parametrize(("build", "lists"), [
    ("tiny_t5", ["transformer.encoder.block (2 of T5Block)", "transformer.decoder.block (2 of T5Block)"]),
    ("tiny_bart", ["model.encoder.layers (2 of BartEncoderLayer)", "model.decoder.layers (2 of BartDecoderLayer)"]),
])
def test_encoder_decoders_are_refused_naming_both_stacks(build, lists):
    model = getattr(tiny_stacks, build)()
    for refuse in (find_layer_list, lambda m: student_from_teacher(m, [1]),
                   lambda m: student_from_config(m, num_layers=1)):
        with pytest.raises(ConfigError, match="several block lists") as info:
            refuse(model)
        assert all(text in str(info.value) for text in lists) and "blocks: <path>" in str(info.value)


def test_shared_weight_layers_are_refused():
    albert = tiny_stacks.tiny_albert()
    for refuse in (find_layer_list, lambda m: student_from_teacher(m, [0])):
        with pytest.raises(ConfigError, match=r"shared-weight layers \(num_hidden_groups=1 for num_hidden_layers=2; "
                                              r"its block lists: albert.encoder.albert_layer_groups \(1 of"):
            refuse(albert)
    # A fresh, smaller ALBERT needs no teacher blocks: it shares its own layer.
    assert student_from_config(albert, num_layers=1).config.num_hidden_layers == 1


@pytest.mark.parametrize(("stack", "count_key", "other_key"), [
    ("encoder", "num_layers", "num_decoder_layers"), ("decoder", "num_decoder_layers", "num_layers")])
def test_a_named_stack_is_the_one_copied_and_counted(stack, count_key, other_key, tmp_path):
    teacher = tiny_stacks.tiny_t5()
    path = f"transformer.{stack}.block"
    models.name_blocks(teacher, path)
    assert find_layer_list(teacher) == (path, teacher.get_submodule(path))
    assert models.describe_blocks(teacher) == f"blocks: {path} (2 of T5Block, named in the config)"

    student = student_from_teacher(teacher, [1])
    assert find_layer_list(student)[0] == path and len(student.get_submodule(path)) == 1
    other = path.replace(stack, "decoder" if stack == "encoder" else "encoder")
    assert len(student.get_submodule(other)) == 2
    assert getattr(student.config, count_key) == 1 and getattr(student.config, other_key) == 2
    student.save_pretrained(tmp_path)
    reloaded = transformers.T5ForSequenceClassification.from_pretrained(tmp_path)
    assert len(reloaded.get_submodule(path)) == 1 and len(reloaded.get_submodule(other)) == 2

    fresh = student_from_config(teacher, num_layers=1)
    assert getattr(fresh.config, count_key) == 1 and getattr(fresh.config, other_key) == 2
    assert len(fresh.get_submodule(path)) == 1 and models.named_blocks(fresh) == path


def test_a_named_path_must_be_a_block_list():
    t5 = tiny_stacks.tiny_t5()
    candidates = "transformer.encoder.block (2 of T5Block), transformer.decoder.block (2 of T5Block)"
    with pytest.raises(ConfigError, match=r"teacher.blocks: 'transformer.encoder.blocks' is not a module of "
                                          r"T5ForSequenceClassification; its block lists: " + re.escape(candidates)):
        models.name_blocks(t5, "transformer.encoder.blocks", where="teacher.blocks")
    with pytest.raises(ConfigError, match="'transformer.encoder' is a T5Stack, not a non-empty nn.ModuleList"):
        models.name_blocks(t5, "transformer.encoder")
    with pytest.raises(ConfigError, match="is not a dotted module path"):
        models.name_blocks(t5, "transformer..block")


def test_a_plain_module_with_two_lists_is_refused_unless_one_is_named():
    class EncoderDecoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.ModuleList(nn.Linear(2, 2) for _ in range(2))
            self.decoder = nn.ModuleList(nn.Linear(2, 2) for _ in range(3))

    model = EncoderDecoder()
    with pytest.raises(ConfigError, match=r"several block lists \(encoder \(2 of Linear\), decoder \(3 of Linear\)\)"):
        find_layer_list(model)
    models.name_blocks(model, "encoder")
    assert find_layer_list(model)[0] == "encoder" and models.num_layers(model) == 2


@pytest.mark.parametrize("kind", sorted(LAYER_PATHS))
def test_the_plan_names_the_block_list_found(kind):
    blocks = find_layer_list(tiny(kind))[1]
    assert models.describe_blocks(tiny(kind)) == f"blocks: {LAYER_PATHS[kind]} (4 of {type(blocks[0]).__name__}, found)"


def test_weights_that_do_not_fit_transformers_defaults_are_a_config_error(tmp_path):
    # transformers leaves id2label out of config.json for 2 labels; BART's default is 3, so the saved
    # 2-class head no longer fits on reload (a RuntimeError from transformers before).
    from transformers import BartConfig, BartForSequenceClassification

    config = BartConfig(vocab_size=100, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, num_labels=2)
    BartForSequenceClassification(config).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="have other shapes than its config.json gives .* Set num_labels"):
        models.load_hf_model(tmp_path)
    assert models.load_hf_model(tmp_path, num_labels=2).config.num_labels == 2
