"""MiniLM (and TinyBERT's attention) on decoder-only LMs from YAML: tiny random Llama and GPT-2 teachers,
smaller students, task: causal-lm on plain text; what cannot apply is refused at validate."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from kdistill.cli import main
from kdistill.config import config_from_dict
from kdistill.errors import ConfigError

from tests.test_causal_lm import _tiny
from tests.test_lm_data import build_tokenizer, write_jsonl

TEXTS = [{"text": f"Question {i}: what is {i} plus {i}? The answer is {2 * i}." + " Yes." * (i % 3)} for i in range(16)]


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def decoder_teacher(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"{request.param}-teacher")
    tokenizer = build_tokenizer()
    _tiny(request.param, tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return request.param, folder


def _raw(teacher, tmp_path, method, **method_args):
    data = write_jsonl(tmp_path / "texts.jsonl", TEXTS)
    return {"teacher": {"path": str(teacher), "task": "causal-lm"},
            "student": {"from_teacher": {"num_layers": 2, "hidden_size": 16, "num_attention_heads": 4,
                                         "intermediate_size": 32}},
            "data": {"path": str(data), "kind": "text", "split": [0.5, 0.25, 0.25], "max_length": 32,
                     "batch_size": 4},
            "method": method, "method_args": method_args,
            "training": {"lr": 1e-3, "max_steps": 2, "log_every": 1, "progress": False, "tensorboard": False},
            "output_dir": str(tmp_path / "run")}


@pytest.mark.parametrize("version", [1, 2])
def test_minilm_runs_from_yaml_on_a_decoder_with_causal_relations(decoder_teacher, version, tmp_path, capsys):
    kind, teacher = decoder_teacher
    config_file = tmp_path / "minilm.yaml"
    config_file.write_text(yaml.safe_dump(_raw(teacher, tmp_path, "minilm", version=version, data="train")))
    assert main(["plan", str(config_file)]) == 0
    plan = capsys.readouterr().out
    names = ["attention", "value_relation"] if version == 1 else ["query_relation", "key_relation", "value_relation"]
    for name in names:
        assert name in plan
    assert "attention_kl" in plan if version == 1 else "relation_kl" in plan
    assert "causal: no query attends to or relates with a later token" in plan
    if (kind, version) in (("llama", 2), ("gpt2", 1)):
        return  # the plan ran every loss on the first batch; two whole runs cover the rest
    assert main(["run", str(config_file)]) == 0
    steps = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    distil = [r for r in steps if r["kind"] == "train" and "value_relation" in r]
    assert distil and all(math.isfinite(r[name]) for r in distil for name in names)


def test_methods_that_need_what_a_decoder_run_lacks_are_refused_at_validate(decoder_teacher, tmp_path):
    kind, teacher = decoder_teacher
    with pytest.raises(ConfigError, match="method_args.data: MiniLM distils on 'unlabelled' text .* set "
                                          "method_args.data: train"):
        config_from_dict(_raw(teacher, tmp_path, "minilm"))
    with pytest.raises(ConfigError, match="method_args.stage: 'both' has a general stage on 'unlabelled' text"):
        config_from_dict(_raw(teacher, tmp_path, "tinybert", stage="both", attention="probs"))
    scores = _raw(teacher, tmp_path, "tinybert")
    if kind == "gpt2":  # GPT-2's scores come from its hooked, split c_attn: exact
        config_from_dict(scores)
    else:
        with pytest.raises(ConfigError, match="method_args.attention: 'scores' .* cannot be read from the 'llama' "
                                              "teacher: its queries and keys are rotated .* set method_args.attention: probs"):
            config_from_dict(scores)


def test_tinybert_attention_probabilities_on_a_rotary_decoder_are_planned(decoder_teacher, tmp_path, capsys):
    kind, teacher = decoder_teacher
    config_file = tmp_path / "tinybert.yaml"
    config_file.write_text(yaml.safe_dump(_raw(teacher, tmp_path, "tinybert", attention="probs")))
    assert main(["plan", str(config_file)]) == 0
    plan = capsys.readouterr().out
    assert "attention_mse" in plan and "attn.1" in plan
