"""End-to-end tests: whole runs, the demo, and the benchmarks' smoke runs."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def benchmark_module(file: str, name: str) -> Iterator[ModuleType]:
    """``benchmarks/<file>`` imported as module ``name``, with ``benchmarks/`` importable (its siblings:
    ``_common``, ``quality``, ``topk_capture``) while the module is in use."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file runs
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(name, None)
        sys.path.remove(str(ROOT / "benchmarks"))
