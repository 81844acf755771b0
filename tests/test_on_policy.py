"""On-policy distillation (GKD) on tiny random Llama models: with λ = 1 the loss covers the student's
own samples and the teacher reads exactly those tokens; λ = 0 is the run without the key; the
hard-label loss is left out on sampled batches; the checks before any weight loads; the plan."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import load_file

from kdistill.config import config_from_dict
from kdistill.errors import ConfigError
from kdistill.on_policy import OnPolicy, completion_batch, on_policy_settings, prompts_of, sampled_batch

from tests.test_causal_lm import PAIRS, _tiny
from tests.test_lm_data import build_tokenizer, write_jsonl

GKD = {"teacher": "logits", "student": "logits", "loss": "token_jsd", "name": "gkd",
       "args": {"beta": 0.5, "t2_scale": False}}


@pytest.fixture(scope="module")
def llama_teacher(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama-teacher")
    tokenizer = build_tokenizer()
    _tiny("llama", tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _raw(teacher, tmp_path, **changes):
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    raw = {"teacher": {"path": str(teacher), "task": "causal-lm"},
           "student": {"from_teacher": {"layers": [1, 3]}},
           "data": {"path": str(data), "kind": "prompt_completion", "split": [0.5, 0.25, 0.25], "max_length": 96,
                    "batch_size": 4},
           "matches": [GKD], "hard_label_weight": 0.5,
           "on_policy": {"lmbda": 1.0, "temperature": 1.0, "max_new_tokens": 6},
           "training": {"lr": 1e-3, "max_steps": 2, "log_every": 1, "progress": False, "tensorboard": False},
           "output_dir": str(tmp_path / "run")}
    raw.update(changes)
    return raw


def test_completion_batch_puts_the_loss_on_the_completion_through_its_eos():
    batch = completion_batch([[5, 6, 7], [8]], [[9, 2], [10, 11, 12]], 0, torch.device("cpu"))
    assert batch["input_ids"].tolist() == [[5, 6, 7, 9, 2], [8, 10, 11, 12, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    # Shifted targets: position t predicts token t + 1; the loss is where that token is a completion token.
    assert batch["labels"].tolist() == [[-100, -100, 9, 2, -100], [10, 11, 12, -100, -100]]
    assert batch["loss_mask"].tolist() == [[0, 0, 1, 1, 0], [1, 1, 1, 0, 0]]
    assert prompts_of(batch) == [[5, 6, 7], [8]]


def test_the_draw_is_seeded_per_batch_and_comes_out_lambda_of_the_time():
    settings = OnPolicy(0.3, 1.0, 4, seed=7, pad_token_id=0, eos_token_ids=(1,))
    draws = [settings.draw(epoch, batch) for epoch in range(4) for batch in range(250)]
    assert draws == [settings.draw(epoch, batch) for epoch in range(4) for batch in range(250)]  # resume is exact
    share = sum(sampled for sampled, _ in draws) / len(draws)
    assert 0.25 < share < 0.35
    assert not any(OnPolicy(0.0, 1.0, 4, 7, 0, (1,)).draw(0, b)[0] for b in range(500))
    assert all(OnPolicy(1.0, 1.0, 4, 7, 0, (1,)).draw(0, b)[0] for b in range(500))


def test_with_lambda_one_the_loss_covers_the_students_samples_and_the_teacher_reads_them(llama_teacher, tmp_path):
    from kdistill.distiller import Distiller
    from kdistill.run import _prepare_stage, build, stage_train_config
    from kdistill.train import Trainer

    config = config_from_dict(_raw(llama_teacher, tmp_path, training={
        "lr": 1e-3, "max_steps": 1, "progress": False, "tensorboard": False}))
    parts = build(config)
    part = parts.stages[0]
    distiller = _prepare_stage(parts, part)
    settings = on_policy_settings(config, parts.tokenizer, distiller.student)
    seen_by_teacher, trained_on = [], []
    hook = part.teacher.register_forward_pre_hook(
        lambda module, args, kwargs: seen_by_teacher.append(kwargs["input_ids"].clone()), with_kwargs=True)
    original = Distiller.forward

    def recording(self, batch, **kwargs):
        trained_on.append(({k: v.clone() for k, v in batch.items() if torch.is_tensor(v)}, kwargs))
        return original(self, batch, **kwargs)

    try:
        Distiller.forward = recording
        Trainer(distiller, part.loader, config=stage_train_config(config, part), on_policy=settings).train()
    finally:
        Distiller.forward = original
        hook.remove()
    (batch, kwargs), = trained_on
    assert kwargs["hard_label"] is False  # GKD: no hard-label loss on the student's own samples
    assert torch.equal(seen_by_teacher[-1], batch["input_ids"])  # the teacher scores exactly these tokens
    prompts = prompts_of(batch)
    assert all(parts.tokenizer.decode(p).startswith("Question") and "The answer" not in parts.tokenizer.decode(p)
               for p in prompts)
    # The same student (built again from the same config), the same prompts and seed: the same samples.
    fresh = build(config).student
    _, seed = settings.draw(0, 1)
    again = sampled_batch(fresh, batch, settings, seed=seed)
    for key in ("input_ids", "attention_mask", "labels", "loss_mask"):
        assert torch.equal(again[key], batch[key]), key
    mask = batch["loss_mask"].bool()
    for row, prompt in enumerate(prompts):  # the loss covers the sampled tokens, which follow the prompt
        sample = batch["labels"][row][mask[row]].tolist()
        assert batch["input_ids"][row, len(prompt): len(prompt) + len(sample)].tolist() == sample
        assert 1 <= len(sample) <= 6
        assert parts.tokenizer.eos_token_id not in sample[:-1]


def _train_steps(out):
    return [{k: v for k, v in json.loads(line).items() if k != "time"}
            for line in (out / "metrics.jsonl").read_text().splitlines() if json.loads(line)["kind"] == "train"]


def test_lambda_zero_is_the_run_without_the_key_and_sampled_batches_have_no_hard_label(llama_teacher, tmp_path):
    from kdistill.run import run

    without = _raw(llama_teacher, tmp_path / "a")
    without.pop("on_policy")
    run(config_from_dict(without))
    run(config_from_dict(_raw(llama_teacher, tmp_path / "b", on_policy={"lmbda": 0.0})))
    assert _train_steps(tmp_path / "a" / "run") == _train_steps(tmp_path / "b" / "run")
    first, second = (load_file(tmp_path / name / "run" / "student" / "model.safetensors") for name in ("a", "b"))
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert all("hard_label" in step for step in _train_steps(tmp_path / "a" / "run"))

    run(config_from_dict(_raw(llama_teacher, tmp_path / "c")))  # λ = 1: every batch sampled
    steps = _train_steps(tmp_path / "c" / "run")
    assert len(steps) == 2 and all("gkd" in step and "hard_label" not in step for step in steps)


def test_the_plan_shows_on_policy(llama_teacher, tmp_path):
    from kdistill.run import plan

    text = plan(config_from_dict(_raw(llama_teacher, tmp_path, on_policy={"lmbda": 0.25, "max_new_tokens": 9})))
    assert "on_policy (GKD): with probability 0.25" in text and "at most 9 new tokens" in text


@pytest.mark.parametrize("changes, message", [
    ({"matches": [{"teacher": "hidden.-1", "loss": "hidden_mse"}]},
     "on_policy: needs a match of the two models' logits"),
    ({"cache": "teacher"}, "on_policy: sampled batches hold new tokens the teacher must score, so cache: 'teacher'"),
    ({"capture": {"path": "captures/x"}}, "on_policy: sampled batches hold new tokens the teacher must score, which a "
                                          "capture"),
    ({"training": {"unpad": True}}, "on_policy: the student generates with a key-value cache"),
    ({"on_policy": {"lmbda": 1.5}}, "on_policy.lmbda: must be at most 1.0, got 1.5"),
    ({"on_policy": {"temperature": 0}}, "on_policy.temperature: must be greater than 0"),
    ({"on_policy": {"max_new_tokens": 0}}, "on_policy.max_new_tokens: must be at least 1"),
    ({"on_policy": {"lambda": 0.5}}, "on_policy.lambda: unknown key 'lambda'"),
])
def test_on_policy_problems_are_found_at_validate(llama_teacher, tmp_path, changes, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        config_from_dict(_raw(llama_teacher, tmp_path, **changes))


def test_on_policy_needs_prompts_and_a_causal_lm(llama_teacher, tmp_path):
    raw = _raw(llama_teacher, tmp_path)
    raw["data"] = {**raw["data"], "kind": "text", "path": str(write_jsonl(tmp_path / "t.jsonl", [{"text": "a b"}] * 8))}
    with pytest.raises(ConfigError, match="on_policy: the student continues each example's prompt.*kind is 'text'"):
        config_from_dict(raw)
    raw = _raw(llama_teacher, tmp_path)
    raw["teacher"] = {**raw["teacher"], "task": "sequence-classification"}
    with pytest.raises(ConfigError, match="on_policy: samples completions from a causal language model"):
        config_from_dict(raw)
