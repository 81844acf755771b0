"""The seed article's two scripts, sizes scaled down, run unchanged but for their imports, and learn."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = {"textbrewer": ROOT / "examples" / "seed_textbrewer.py",
           "knowledge_distillation": ROOT / "examples" / "seed_knowledge_distillation.py"}
TIMEOUT = 150  # seconds; each runs in ~10 s on an idle 2-core machine (most of it importing transformers)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Both scripts at once (one core each), each in its own working directory."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    started = {}
    for name, script in SCRIPTS.items():
        cwd = tmp_path_factory.mktemp(name)
        process = subprocess.Popen([sys.executable, str(script)], cwd=cwd, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        started[name] = (process, cwd)
    results = {}
    for name, (process, cwd) in started.items():
        try:
            output, _ = process.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
        results[name] = (process.returncode, output, cwd)
    return results


def assert_falls(losses: list[float]) -> None:
    quarter = max(len(losses) // 4, 1)
    first, last = losses[:quarter], losses[-quarter:]
    assert sum(last) / len(last) < sum(first) / len(first), losses


def test_textbrewer_script_runs_and_its_loss_falls(runs):
    code, output, cwd = runs["textbrewer"]
    assert code == 0, output[-3000:]
    assert "too many values to unpack" not in output
    records = [json.loads(line) for line in (cwd / "logs" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["total_loss"] for r in records]
    assert len(losses) == 20  # 320 rows / batch 16, one epoch
    assert all(r["attention_attention_mse_0_3"] > 0 for r in records)  # attentions reached the loss
    assert_falls(losses)
    # ckpt_frequency=10 on a 20-step epoch: 10 state dicts, not one per step
    saved = sorted(p.name for p in (cwd / "saved_models").iterdir())
    assert len(saved) == 10 and all(re.fullmatch(r"gs\d+\.safetensors", name) for name in saved)
    assert (cwd / "logs" / "tensorboard").is_dir()


def test_knowledge_distillation_script_runs_and_its_loss_falls(runs):
    code, output, cwd = runs["knowledge_distillation"]
    assert code == 0, output[-3000:]
    losses = [float(v) for v in re.findall(r"epoch:0,\s+step:\d+,\s+loss value:([0-9.eE+-]+)", output)]
    assert len(losses) == 19  # steps 1..19 of 20 (800 rows / batch 40), printed every step
    assert_falls(losses)
    assert (cwd / "save_model" / "0-10" / "model.safetensors").exists()
    assert len((cwd / "save_model" / "LossValue.txt").read_text().splitlines()) == 19
