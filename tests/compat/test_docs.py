"""Every complete ```python example of docs/compat.md (one that prints what it shows) runs as written."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BLOCKS = [block for block in re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "compat.md").read_text("utf-8"),
                                        flags=re.S) if "print(" in block]


def test_the_textbrewer_classes_have_examples():
    assert any("MultiTaskDistiller(" in block for block in BLOCKS)
    assert any("BasicTrainer(" in block for block in BLOCKS)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_compat_doc_example_runs(index, tmp_path):
    script = tmp_path / f"compat_{index}.py"
    script.write_text(BLOCKS[index], encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip()
    assert list((tmp_path / "runs").iterdir()), "the example saves checkpoints"
