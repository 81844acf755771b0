"""benchmarks/speed.py's end-to-end section on a few sentences: kdistill's side runs with its default
(best at equal loss) settings and reports time, memory and a finite held-out loss."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_e2e_quick_without_peers():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location("speed_benchmark", ROOT / "benchmarks" / "speed.py")
        speed = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = speed
        spec.loader.exec_module(speed)
        report = speed.main(["--section", "e2e", "--quick", "--no-peers", "--threads", "1"])
    finally:
        sys.modules.pop("speed_benchmark", None)
        sys.path.remove(str(ROOT / "benchmarks"))
    run = report["e2e"]["runs"]["kdistill"]
    assert run["steps"] > 0 and math.isfinite(run["heldout_distillation_loss"])
    assert run["peak_anon_mb"] <= run["peak_rss_mb"]
    for setting in ("word embeddings trained", "random batches", "length-sorted", "unpad"):
        assert setting in run["settings"]
    assert "skipped" in report["e2e"]["runs"]["textbrewer"]["error"]
