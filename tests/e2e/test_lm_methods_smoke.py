"""benchmarks/lm_methods.py on a tiny random Llama: supervised KD (with its baseline), sequence-level KD
on `kdistill generate`'s answers and on-policy GKD all run through the command line, and the independent
recount of every saved model's test perplexity equals kdistill's own figure. Nothing reads a timing."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytest.importorskip("datasets")


def test_quick_run_gives_every_row_and_the_recount_agrees(tmp_path):
    out = tmp_path / "methods"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "lm_methods.py"), "--quick", "--output", str(out)],
                   check=True, cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "KDISTILL_CACHE": str(tmp_path / "cache"),
                                                  "PYTHONPATH": str(ROOT / "src")})
    result = json.loads((out / "lm_methods.json").read_text())
    rows = result["rows"]
    assert list(rows) == ["teacher", "baseline", "supervised KD", "sequence-level KD", "on-policy GKD"]
    for name, row in rows.items():
        assert math.isfinite(row["perplexity"]) and row["perplexity"] > 1
        assert row["recounted"] == pytest.approx(row["perplexity"], rel=1e-4), name  # kdistill's figure, recounted
    # every run evaluates the same teacher on the same real test completions
    for name in ("supervised KD", "sequence-level KD", "on-policy GKD"):
        assert rows[name]["teacher_perplexity"] == pytest.approx(rows["teacher"]["perplexity"], rel=1e-6), name
    answers = json.loads((out / "teacher-answers" / "kdistill-generation.json").read_text())
    assert answers["max_new_tokens"] == 8 and answers["result"]["generated"] == 32  # every training prompt
    assert set(result["generations"]) == {"teacher", "baseline", "supervised KD", "sequence-level KD", "on-policy GKD"}
    assert all(len(texts) == len(result["prompts"]) == 4 for texts in result["generations"].values())
    assert "| on-policy GKD |" in (out / "lm_methods.md").read_text()
