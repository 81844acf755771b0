"""Tests build tiny models: one torch thread is faster for them and avoids oversubscribing CI's 2 cores."""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def one_thread():
    """Every test runs on one intra-op thread (tiny models on two shared cores: a second thread only
    spins, 10-50x slower), and a test that changes it (a benchmark's --threads) cannot leak that."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
