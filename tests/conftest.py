"""Tests build tiny models: one torch thread is faster for them and avoids oversubscribing CI's 2 cores."""

import torch

torch.set_num_threads(1)
