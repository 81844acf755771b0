"""LoRA students (student.lora, through peft) on tiny random Llama models: only the adapters train, the
saved student is merged (a plain Hugging Face folder equal to the merged model), `kdistill eval` of it
equals the summary; the checks at validate."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from kdistill.cli import main
from kdistill.config import config_from_dict
from kdistill.errors import ConfigError, MissingDependencyError
from kdistill.lora import has_lora, merge_lora

from tests.test_on_policy import _raw as on_policy_raw
from tests.test_on_policy import llama_teacher  # noqa: F401 - the fixture

LORA = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}


def _raw(teacher, tmp_path, **changes):
    raw = on_policy_raw(teacher, tmp_path, student={"from_teacher": {"layers": [1, 3]}, "lora": LORA})
    raw.pop("on_policy")
    raw["matches"] = [{"teacher": "logits", "student": "logits", "loss": "token_kl", "name": "kd"}]
    raw.update(changes)
    return raw


def test_only_the_adapters_train_and_the_saved_student_is_the_merged_one(llama_teacher, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    from kdistill.run import STAGE_STUDENT, build, run

    config = config_from_dict(_raw(llama_teacher, tmp_path))
    parts = build(config)
    assert has_lora(parts.student) and "LoRA r=4" in parts.model_sources["student"]
    before = {k: v.clone() for k, v in parts.student.state_dict().items()}
    trainable = {n for n, p in parts.student.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)

    summary = run(config)
    trained = load_file(tmp_path / "run" / STAGE_STUDENT)  # the stage's student, adapters unmerged
    changed = {k for k in before if not torch.equal(before[k], trained[k])}
    assert changed and changed <= trainable, changed - trainable  # only adapter weights moved
    assert any(".lora_B." in k for k in changed)

    # The saved student: a plain folder (no adapter names) holding the merged weights.
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "student").eval()
    assert not any("lora" in name for name, _ in saved.named_parameters())
    unmerged = build(config).student
    unmerged.load_state_dict(trained)
    merged = merge_lora(unmerged).eval()
    ids = torch.tensor([[3, 17, 42, 8, 99, 5]])
    with torch.no_grad():
        assert torch.allclose(saved(ids).logits, merged(ids).logits, atol=1e-5)
    key = "model.layers.0.self_attn.q_proj.weight"  # the adapter is in it: the weight moved
    assert not torch.equal(saved.state_dict()[key], before[key.replace(".weight", ".base_layer.weight")])

    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["student"]["perplexity"] == pytest.approx(summary["metrics"]["test"]["student"]["perplexity"],
                                                           rel=1e-4)


def test_the_plan_counts_the_adapters_as_trainable(llama_teacher, tmp_path):
    from kdistill.run import plan

    text = plan(config_from_dict(_raw(llama_teacher, tmp_path)))
    line = next(line for line in text.splitlines() if line.strip().startswith("trainable"))
    student = [line for line in text.splitlines() if line.strip().startswith("student ")][-1]  # parameters
    assert int(line.split()[1].replace(",", "")) < int(student.split()[1].replace(",", "")) / 10
    assert "LoRA r=4, alpha 8 on q_proj, v_proj" in text


def test_lora_problems_are_found_at_validate(llama_teacher, tmp_path, monkeypatch):
    raw = _raw(llama_teacher, tmp_path)
    raw["teacher"] = {**raw["teacher"], "lora": LORA}
    with pytest.raises(ConfigError, match=r"teacher\.lora: LoRA adapters train a student"):
        config_from_dict(raw)
    with pytest.raises(ConfigError, match=r"student\.lora\.r: must be at least 1"):
        config_from_dict(_raw(llama_teacher, tmp_path, student={"from_teacher": {"layers": [1]}, "lora": {"r": 0}}))

    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "peft" else real(name, *a))
    with pytest.raises(MissingDependencyError, match=r"student\.lora: .*pip install 'kdistill\[peft\]'"):
        config_from_dict(_raw(llama_teacher, tmp_path))


def test_target_modules_the_student_lacks_are_a_config_error(llama_teacher, tmp_path):
    from kdistill.run import build

    raw = _raw(llama_teacher, tmp_path, student={"from_teacher": {"layers": [1]},
                                                 "lora": {"target_modules": ["no_such_proj"]}})
    with pytest.raises(ConfigError, match=r"student\.lora\.target_modules: \['no_such_proj'\] does not fit"):
        build(config_from_dict(raw))
