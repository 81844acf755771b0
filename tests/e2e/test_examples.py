"""Every config in examples/ validates and runs a few steps on its tiny models, writing a full run folder."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from kdistill.config import load_config
from kdistill.run import run

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CONFIGS = sorted(EXAMPLES.glob("*.yaml"))


def test_the_three_documented_examples_exist():
    assert {p.name for p in CONFIGS} >= {"hinton_classifier.yaml", "tinybert_matches.yaml", "cnn_module_hooks.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_example_runs_three_steps(path, tmp_path):
    out = tmp_path / path.stem
    config = load_config(path, ["training.max_steps=3", "training.log_every=1", "training.progress=false",
                                "training.tensorboard=false", f"output_dir={out}"])
    summary = run(config)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in train)
    assert (out / "config.resolved.yaml").is_file() and (out / "summary.json").is_file()
    if path.stem == "multitask":  # several tasks: a folder per task, each a whole HF classifier with its card
        assert sorted(p.name for p in (out / "student").iterdir()) == [".kdistill-files.json", "messages", "reviews"]
        for task in ("messages", "reviews"):
            assert sorted(p.name for p in (out / "student" / task).iterdir()) == [
                "README.md", "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
            assert "validation" in summary["tasks"][task]["metrics"]
        assert summary["stages"][0]["steps"] == 3
        assert summary["parameters"]["student"] < summary["parameters"]["teacher"]
        return
    saved = sorted(p.name for p in (out / "student").iterdir())
    generation = ["generation_config.json"] if path.stem.startswith("causal_lm") else []  # a causal LM's own file
    pooling = ["1_Pooling"] if path.stem.startswith("embedding") else []  # sentence-transformers' Pooling module
    sentence_modules = ["modules.json"] if pooling else []
    # the manifest (what --overwrite may remove), the model card, then the model's own files
    assert saved == [".kdistill-files.json", *pooling, "README.md"] + (
        ["student.safetensors"] if path.stem == "cnn_module_hooks"
        else ["config.json", *generation, "model.safetensors", *sentence_modules, "tokenizer.json",
              "tokenizer_config.json"])
    assert summary["stages"][0]["steps"] == 3
    assert summary["parameters"]["student"] < summary["parameters"]["teacher"]
    assert "validation" in summary["metrics"]
