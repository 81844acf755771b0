"""task: causal-lm end to end from YAML on tiny random Llama and GPT-2 models: the plan, a run with
token-level KD on completion tokens only, the baseline, perplexity in the summary and `kdistill eval`,
and the checks before any weight loads."""

from __future__ import annotations

import json

import pytest
import torch

from kdistill.cli import main
from kdistill.config import config_from_dict
from kdistill.errors import ConfigError

from tests.test_lm_data import build_tokenizer, write_jsonl

PAIRS = [{"prompt": f"Question {i}: what is {i} plus {i}? " + "Please. " * (i % 3),  # lengths differ
          "completion": f"The answer is {2 * i}." + " Yes." * (i % 2)} for i in range(24)]


def _tiny(kind: str, tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    vocab = len(tokenizer)
    if kind == "llama":
        config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        return LlamaForCausalLM(config)
    config = GPT2Config(vocab_size=vocab, n_embd=32, n_layer=4, n_head=4, n_positions=128,
                        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id)
    return GPT2LMHeadModel(config)


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def lm_teacher(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"{request.param}-teacher")
    tokenizer = build_tokenizer()
    _tiny(request.param, tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _raw(teacher, tmp_path, **changes):
    data = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    raw = {"teacher": {"path": str(teacher), "task": "causal-lm"},
           "student": {"from_teacher": {"layers": [1, 3]}},
           "data": {"path": str(data), "kind": "prompt_completion", "split": [0.5, 0.25, 0.25], "max_length": 96,
                    "batch_size": 4, "eval_batch_size": 2},  # evaluation batches of several lengths
           "matches": [{"teacher": "logits", "student": "logits", "loss": "token_kl", "name": "kd",
                        "args": {"temperature": 1.0}}],
           "hard_label_weight": 0.5, "baseline": True,
           "training": {"lr": 1e-3, "max_steps": 3, "log_every": 1, "progress": False, "tensorboard": False},
           "output_dir": str(tmp_path / "run")}
    raw.update(changes)
    return raw


def test_a_causal_lm_run_distils_on_the_completion_tokens(lm_teacher, tmp_path, capsys):
    import yaml

    config_file = tmp_path / "lm.yaml"
    config_file.write_text(yaml.safe_dump(_raw(lm_teacher, tmp_path)))
    assert main(["plan", str(config_file)]) == 0
    plan = capsys.readouterr().out
    assert "prompt_completion: loss on the completion tokens only" in plan and "token_kl" in plan
    assert main(["run", str(config_file)]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    test = summary["metrics"]["test"]
    assert test["tokens"] > 0 and 0.0 <= test["agreement"] <= 1.0
    for role in ("teacher", "student"):
        assert test[role]["perplexity"] == pytest.approx(torch.tensor(test[role]["loss"]).exp().item(), rel=1e-5)
    assert "test" in summary["baseline"]["metrics"]
    steps = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all({"kd", "hard_label"} <= set(r) for r in steps if r["kind"] == "train")
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## Perplexity" in report
    # Training throughput: the real tokens of the batches trained over the stage's seconds.
    stage, baseline = summary["stages"][0], summary["baseline"]
    assert stage["tokens_per_second"] > 0 and baseline["tokens_per_second"] > 0 and stage["seconds"] > 0
    assert "Training throughput (real tokens" in report and f"'distil' {stage['tokens_per_second']:,.0f}" in report
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["student"]["perplexity"] == pytest.approx(test["student"]["perplexity"], rel=1e-4)
    assert again["baseline"]["perplexity"] == pytest.approx(summary["baseline"]["metrics"]["test"]["perplexity"],
                                                            rel=1e-4)


def test_the_token_loss_sees_only_the_positions_that_predict_completion_tokens(lm_teacher, tmp_path):
    """Shifted targets: position t is compared where token t + 1 is a completion token, never on the prompt."""
    from kdistill.run import build

    parts = build(config_from_dict(_raw(lm_teacher, tmp_path)))
    batch = next(iter(parts.loaders["train"]))
    labels, mask = batch["labels"], batch["loss_mask"]
    assert torch.equal(mask.bool(), labels != -100)
    tokenizer = parts.tokenizer
    for row in range(labels.shape[0]):
        ids = batch["input_ids"][row]
        predicted = ids[1:][mask[row, :-1].bool()]
        assert torch.equal(predicted, labels[row][mask[row].bool()])  # the target is the next token
        text = tokenizer.decode(predicted)
        assert text.startswith("The answer") and "Question" not in text and "plus" not in text


def test_lm_data_problems_are_found_before_weights_load(lm_teacher, tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "answer": "b"}])
    raw = _raw(lm_teacher, tmp_path)
    raw["data"]["path"] = str(bad)
    with pytest.raises(ConfigError, match="completion"):
        config_from_dict(raw)
    raw = _raw(lm_teacher, tmp_path)
    raw["data"]["kind"] = "classification"
    with pytest.raises(ConfigError, match="data.kind: 'classification' data cannot teach a causal-lm teacher"):
        config_from_dict(raw)


def test_a_narrower_decoder_student_learns_hidden_states_through_projections(lm_teacher, tmp_path):
    """Hidden-state matches between decoders of different widths (a learned projection) beside token KD."""
    from kdistill.run import run

    raw = _raw(lm_teacher, tmp_path, baseline=False, layer_map="uniform",
               student={"from_teacher": {"num_layers": 2, "hidden_size": 16, "num_attention_heads": 2,
                                         "intermediate_size": 32}})
    raw["matches"] = raw["matches"] + [{"teacher": "hidden.*", "loss": "hidden_mse", "projection": "linear",
                                        "name": "hidden"}]
    summary = run(config_from_dict(raw))
    steps = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in steps if r["kind"] == "train"]
    assert all("kd" in r and any(k.startswith("hidden") for k in r) for r in train)
    assert summary["metrics"]["test"]["student"]["perplexity"] > 0


def test_vocabularies_padded_past_the_tokenizer_are_compared_over_the_real_one(tmp_path):
    """A teacher whose embedding is rounded up (vocab + 16 rows) and a student without the padding:
    the token loss compares the tokenizer's entries (vocab_size set for it; the plan shows it)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from kdistill.run import build, run

    tokenizer = build_tokenizer()
    folders = {}
    for role, extra in (("teacher", 16), ("student", 0)):
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=len(tokenizer) + extra, hidden_size=32, intermediate_size=64,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id)
        folders[role] = tmp_path / role
        LlamaForCausalLM(config).save_pretrained(folders[role])
        tokenizer.save_pretrained(folders[role])
    raw = _raw(folders["teacher"], tmp_path, baseline=False,
               student={"path": str(folders["student"]), "task": "causal-lm"})
    parts = build(config_from_dict(raw))
    (match,) = parts.stages[0].stage.matches
    assert match.args["vocab_size"] == len(tokenizer)
    summary = run(config_from_dict(raw))
    assert summary["stages"][0]["steps"] == 3


def test_chat_data_with_a_tokenizer_without_a_template_is_refused_at_validate(tmp_path):
    from tests.test_lm_data import CONVERSATION

    tokenizer = build_tokenizer(template=None)
    folder = tmp_path / "teacher"
    _tiny("llama", tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    chats = write_jsonl(tmp_path / "chats.jsonl", [{"messages": CONVERSATION}] * 8)
    raw = _raw(folder, tmp_path)
    raw["data"].update(path=str(chats), kind="chat")
    with pytest.raises(ConfigError, match="data.kind: 'chat' renders each conversation with the tokenizer's chat "
                                          "template, but the tokenizer in .* has none"):
        config_from_dict(raw)


def test_a_student_folder_with_another_tokenizer_is_refused_before_weights_load(lm_teacher, tmp_path):
    from transformers import PreTrainedTokenizerFast

    other = build_tokenizer()
    vocab = dict(other.get_vocab())
    folder = tmp_path / "student"
    _tiny("llama", other).save_pretrained(folder)
    # The same tokenizer with two tokens swapped: a different vocabulary.
    backend = other.backend_tokenizer
    first, second = sorted(vocab, key=vocab.get)[10:12]
    swapped = json.loads(backend.to_str())
    swapped["model"]["vocab"][first], swapped["model"]["vocab"][second] = vocab[second], vocab[first]
    from tokenizers import Tokenizer

    PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(swapped)),
                            eos_token=other.eos_token, pad_token=other.pad_token).save_pretrained(folder)
    raw = _raw(lm_teacher, tmp_path, student={"path": str(folder), "task": "causal-lm"})
    with pytest.raises(ConfigError, match="holds its own tokenizer, which differs from the teacher's"):
        config_from_dict(raw)


def test_training_tokens_per_second_counts_the_real_tokens_of_the_batches_trained():
    from torch.utils.data import DataLoader

    from kdistill.lm_bench import training_tokens_per_second

    class Lengths(list):
        lengths = [3, 5, 4, 8]  # 20 real tokens in 2 batches of 2: 10 per batch

    loader = DataLoader(Lengths(range(4)), batch_size=2)
    assert training_tokens_per_second(loader, steps=3, grad_accum=2, seconds=4.0) == pytest.approx(10 * 6 / 4.0)
    assert training_tokens_per_second(DataLoader(list(range(4)), batch_size=2), 3, 1, 1.0) is None  # no lengths
