"""benchmarks/_common.py's memory figures: VmHWM counts file-backed pages, the sampled anonymous
peak does not, and sees a short-lived allocation."""

from __future__ import annotations

import importlib.util
import mmap
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def common():
    spec = importlib.util.spec_from_file_location("benchmark_common", ROOT / "benchmarks" / "_common.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def rss_file_mb() -> float:
    """File-backed resident pages (RssShmem too: on a tmpfs the mapped file's pages count there)."""
    with open("/proc/self/status") as handle:
        return sum(int(line.split()[1]) / 1024 for line in handle if line.startswith(("RssFile:", "RssShmem:")))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_anonymous_peak_sees_a_freed_allocation_but_not_a_mapped_file(common, tmp_path):
    sampler = common.AnonPeak(interval=0.005)
    start = sampler.peak
    block = np.ones(64 * 2**20, dtype=np.uint8)  # 64 MiB of private pages, touched
    time.sleep(0.1)
    del block
    path = tmp_path / "mapped.bin"
    path.write_bytes(b"\1" * (64 * 2**20))
    before_map = rss_file_mb()
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        total = sum(mapped[i] for i in range(0, len(mapped), 4096))  # touch every page
        time.sleep(0.1)
        assert total == 64 * 2**20 // 4096
        assert rss_file_mb() >= before_map + 48  # resident, so in VmRSS and VmHWM, but file-backed
    peak = sampler.stop()
    assert start + 48 <= peak < start + 64 + 48  # the 64 MiB block, not the 64 MiB mapped file too
