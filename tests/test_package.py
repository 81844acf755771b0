"""The package itself: what ``import kdistill`` gives, as its docstring says."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def test_import_kdistill_gives_methods_losses_and_the_run_functions():
    # A fresh interpreter: in this one, other tests have imported kdistill.methods already.
    code = ("import kdistill, inspect\n"
            "assert 'tinybert' in kdistill.methods.METHODS and 'kl' in kdistill.losses.LOSSES\n"
            "from kdistill import load_config, plan, run\n"
            "assert run is kdistill.run and inspect.isfunction(run) and inspect.isfunction(plan)\n"
            "from kdistill.config import load_config as loader\n"
            "assert load_config is loader\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
