"""kdistill capture: the teacher's top-k stored once (a datasets folder), resumed after SIGKILL to the same
bytes, refused when made for another teacher, data or k, its size per token as predicted, and a run that
trains from it without running the teacher."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from kdistill.cli import main
from kdistill.config import config_from_dict
from kdistill.errors import ConfigError

from tests.test_causal_lm import PAIRS, _tiny
from tests.test_lm_data import build_tokenizer, write_jsonl

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama-teacher")
    tokenizer = build_tokenizer()
    _tiny("llama", tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _raw(teacher, tmp_path, *, k=8, chunk=3, **changes):
    data = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    raw = {"teacher": {"path": str(teacher), "task": "causal-lm"},
           "student": {"from_teacher": {"layers": [1, 3]}},
           "data": {"path": str(data), "kind": "prompt_completion", "split": [0.5, 0.25, 0.25], "max_length": 96,
                    "batch_size": 4, "eval_batch_size": 2},
           "matches": [{"teacher": "logits", "student": "logits", "loss": "token_kl", "name": "kd",
                        "args": {"temperature": 2.0}}],
           "hard_label_weight": 0.5,
           "capture": {"path": str(tmp_path / "capture"), "k": k, "chunk": chunk},
           "training": {"lr": 1e-3, "max_steps": 3, "log_every": 1, "progress": False, "tensorboard": False},
           "output_dir": str(tmp_path / "run")}
    raw.update(changes)
    return raw


def _config_file(raw, tmp_path, name="lm.yaml"):
    file = tmp_path / name
    file.write_text(yaml.safe_dump(raw))
    return file


def _files(folder: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(folder.iterdir())}


def test_capture_stores_the_teacher_top_k_at_the_loss_tokens_as_a_dataset(teacher, tmp_path, capsys):
    import datasets

    from kdistill.capture import bytes_per_token
    from kdistill.losses.topk import teacher_topk
    from kdistill.run_build import build

    raw = _raw(teacher, tmp_path)
    assert main(["capture", str(_config_file(raw, tmp_path))]) == 0
    out = capsys.readouterr().out
    vocabulary = len(build_tokenizer())
    assert f"{bytes_per_token(8, vocabulary)} bytes per loss token" in out and "done:" in out
    assert bytes_per_token(8, vocabulary) == 4 + 4 + 8 * (2 + 2) + 4  # uint16 ids below 65,536 tokens
    assert bytes_per_token(64, 49_152) == 268 and bytes_per_token(64, 128_256) == 396
    stored = datasets.load_from_disk(str(tmp_path / "capture"))
    assert set(stored.column_names) == {"example", "position", "ids", "logprobs", "tail"}
    assert stored.features["logprobs"].feature.dtype == "float16" and stored.features["ids"].feature.dtype == "uint16"
    record = json.loads((tmp_path / "capture" / "kdistill-capture.json").read_text())
    parts = build(config_from_dict(raw))
    dataset = parts.stages[0].datasets[0]
    assert record["tokens"] == stored.num_rows == dataset.loss_tokens.total
    # The rows of example 1 are the teacher's own top-k at its loss-bearing positions.
    batch = parts.loaders["train"].collate_fn([dataset[1]])
    with torch.no_grad():
        top, ids, tail = teacher_topk(parts.teacher(input_ids=batch["input_ids"]).logits, 8)
    positions = batch["loss_mask"][0].nonzero().reshape(-1)
    rows = stored.with_format("numpy").filter(lambda r: r["example"] == 1)[:]
    assert np.array_equal(rows["position"], positions.numpy())
    assert np.array_equal(rows["ids"], ids[0, positions].numpy())
    np.testing.assert_allclose(rows["logprobs"].astype(np.float32), top[0, positions].numpy(), rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(rows["tail"], tail[0, positions].numpy(), rtol=1e-5, atol=1e-6)
    # Size on disk: the data files hold the predicted bytes per token, plus Arrow's framing (< 1% + 16 KiB).
    data_bytes = sum(f.stat().st_size for f in (tmp_path / "capture").glob("data-*.arrow"))
    predicted = record["tokens"] * bytes_per_token(8, vocabulary)
    assert predicted <= data_bytes <= predicted * 1.01 + 16 * 1024


_SLOW_CAPTURE = """
import functools, sys, time
from transformers import LlamaForCausalLM
forward = LlamaForCausalLM.forward
@functools.wraps(forward)  # the adapter reads forward's signature
def slow(self, *args, **kwargs):
    time.sleep(0.4)
    return forward(self, *args, **kwargs)
LlamaForCausalLM.forward = slow
from kdistill.cli import main
sys.exit(main(["capture", sys.argv[1]]))
"""


def test_a_capture_killed_with_sigkill_resumes_to_the_same_bytes(teacher, tmp_path):
    raw = _raw(teacher, tmp_path, chunk=2)
    config = _config_file(raw, tmp_path)
    partial = tmp_path / "capture.partial"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + str(ROOT)}
    process = subprocess.Popen([sys.executable, "-c", _SLOW_CAPTURE, str(config)], env=env, cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while len(list(partial.glob("chunk-*.arrow"))) < 2:  # two chunks of six are done
            assert process.poll() is None, process.stderr.read().decode()[-2000:]
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert not (tmp_path / "capture").exists()
    kept = len(list(partial.glob("chunk-*.arrow")))
    assert 2 <= kept < 6
    assert main(["capture", str(config)]) == 0  # resumes from the finished chunks
    assert not partial.exists()
    resumed = _files(tmp_path / "capture")
    whole = _raw(teacher, tmp_path, chunk=2)
    whole["capture"]["path"] = str(tmp_path / "uninterrupted")
    assert main(["capture", str(_config_file(whole, tmp_path, "whole.yaml"))]) == 0
    assert resumed == _files(tmp_path / "uninterrupted")


def test_a_run_trains_from_the_capture_and_never_runs_the_teacher_in_training(teacher, tmp_path, monkeypatch, capsys):
    from kdistill.distiller import Distiller
    from kdistill.run import run

    live = []
    original = Distiller.teacher_features

    def spy(self, batch, names=None):
        live.append("teacher_features" not in batch)
        return original(self, batch, names)

    raw = _raw(teacher, tmp_path)
    file = _config_file(raw, tmp_path)
    assert main(["plan", str(file)]) == 0
    assert "not captured yet: `kdistill run` captures first" in capsys.readouterr().out
    monkeypatch.setattr(Distiller, "teacher_features", spy)
    summary = first = run(config_from_dict(raw))  # no capture yet: captured first, then trained from it
    assert (tmp_path / "capture" / "kdistill-capture.json").is_file()
    captured = live.count(True)
    assert captured == 8  # the capture alone: 12 training examples, 4 chunks of 3, in teacher batches of 2
    live.clear()
    monkeypatch.setattr(Distiller, "teacher_features", spy)
    from kdistill.train import Trainer

    held, train = [], Trainer.train

    def teacher_in_memory(self, *args, **kwargs):  # the teacher's weights while the student trains
        held.append(sum(t.numel() for model in self.distiller.teachers.values() for t in model.parameters()))
        return train(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "train", teacher_in_memory)
    raw["output_dir"] = str(tmp_path / "second")
    summary = run(config_from_dict(raw))
    assert live and not any(live)  # every batch the distiller saw carried the stored top-k
    assert held and not any(held)  # no teacher weights in memory while the student trains
    assert summary["metrics"]["test"]["teacher"]["perplexity"] == first["metrics"]["test"]["teacher"]["perplexity"]
    steps = [json.loads(line) for line in (tmp_path / "second" / "metrics.jsonl").read_text().splitlines()]
    assert all("kd" in r for r in steps if r["kind"] == "train")
    assert summary["metrics"]["test"]["student"]["perplexity"] > 0
    monkeypatch.setattr(Distiller, "teacher_features", original)
    assert main(["plan", str(file)]) == 0
    plan = capsys.readouterr().out
    assert "the teacher does not run in training" in plan and "token_topk_kl" in plan
    assert "44 bytes per loss token" in plan


def test_a_capture_made_for_another_teacher_data_or_k_is_refused_naming_it(teacher, tmp_path):
    from kdistill.run import run

    raw = _raw(teacher, tmp_path)
    assert main(["capture", str(_config_file(raw, tmp_path))]) == 0
    with pytest.raises(ConfigError, match=r"capture.path: .* other k \(8 then, 4 now\)"):
        run(config_from_dict(_raw(teacher, tmp_path, k=4)))
    changed = _raw(teacher, tmp_path)
    changed["data"]["max_length"] = 24  # cuts the longer examples: other token ids and loss masks
    with pytest.raises(ConfigError, match="other the tokenised data"):
        run(config_from_dict(changed))
    other = tmp_path / "other-teacher"
    tokenizer = build_tokenizer()
    torch.manual_seed(1)
    model = _tiny("llama", tokenizer)
    torch.nn.init.normal_(model.lm_head.weight)
    model.save_pretrained(other)
    tokenizer.save_pretrained(other)
    with pytest.raises(ConfigError, match="other the teacher's weights"):
        run(config_from_dict(_raw(other, tmp_path)))
    assert main(["run", str(_config_file(_raw(teacher, tmp_path, k=4), tmp_path, "k4.yaml"))]) == 2
    with pytest.raises(ConfigError, match="capture.k: 100000 is more tokens than the teacher's vocabulary"):
        run(config_from_dict(_raw(teacher, tmp_path, k=100_000)))


def test_a_stage_that_reads_hidden_states_runs_the_teacher_live_and_the_plan_says_so(teacher, tmp_path, capsys):
    raw = _raw(teacher, tmp_path)
    raw["matches"].append({"teacher": "hidden.2", "student": "hidden.1", "loss": "hidden_mse", "name": "hid"})
    assert main(["plan", str(_config_file(raw, tmp_path))]) == 0
    assert "capture not used (match 'hid' reads the teacher's hidden.2" in capsys.readouterr().out
    assert main(["capture", str(_config_file(raw, tmp_path))]) == 2
    assert "capture: no stage of this run can train from a capture" in capsys.readouterr().err


def test_capture_is_refused_at_validate_beside_a_cache_or_for_another_task(teacher, tmp_path):
    with pytest.raises(ConfigError, match="capture: replaces the teacher in training, so 'cache: teacher'"):
        config_from_dict(_raw(teacher, tmp_path, cache="teacher"))
    raw = _raw(teacher, tmp_path)
    raw["capture"]["loss"] = "renormalized"
    with pytest.raises(ConfigError, match="capture.loss"):
        config_from_dict(raw)
    raw = _raw(teacher, tmp_path)
    raw["capture"]["k"] = 0
    with pytest.raises(ConfigError, match="capture.k: must be at least 1"):
        config_from_dict(raw)
