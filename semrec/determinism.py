"""Reproducible torch sections: same seed and inputs give bit-identical results, at any thread count.

``reproducible(seed)`` seeds a private copy of torch's RNG (the caller's global RNG state is restored
on exit) and switches on ``torch.use_deterministic_algorithms`` for the section. On CPU the
nondeterminism it removes is the multi-threaded accumulation of index_put / embedding gradients (two
RQ-VAE fits at 2 threads differed without it; with it, 2-thread and 1-thread fits are identical and
the fit is ~20% faster, measured in ``tests/test_determinism.py`` and the README).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import torch


@contextmanager
def reproducible(seed: int, device: str | torch.device = "cpu") -> Iterator[None]:
    device = torch.device(device)
    cuda = [device.index or 0] if device.type == "cuda" else []
    if cuda:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # required by deterministic cuBLAS
    enabled, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
