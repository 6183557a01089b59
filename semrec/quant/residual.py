"""Residual quantization assignment shared by every residual quantizer.

``assign_reference`` is the plain-PyTorch definition; ``assign_fast`` uses faiss and is what
``encode`` runs. ``tests/test_quant.py`` checks that they agree.
"""

from __future__ import annotations

import numpy as np
import torch

from semrec.quant.distances import Distance


def assign_reference(z: torch.Tensor, codebooks: list[torch.Tensor], distances: list[Distance]) -> torch.Tensor:
    r = z
    codes = []
    for cb, dist in zip(codebooks, distances):
        idx = dist.assign(r, cb)
        codes.append(idx)
        r = r - cb[idx]
    return torch.stack(codes, dim=1)


def assign_fast(z: np.ndarray, codebooks: list[np.ndarray], distances: list[Distance]) -> np.ndarray:
    r = np.ascontiguousarray(z, dtype=np.float32).copy()
    codes = np.empty((r.shape[0], len(codebooks)), dtype=np.int64)
    for level, (cb, dist) in enumerate(zip(codebooks, distances)):
        idx = dist.search(r, cb)
        codes[:, level] = idx
        r -= cb[idx]
    return codes


def reconstruct(codes: np.ndarray, codebooks: list[np.ndarray]) -> np.ndarray:
    out = np.zeros((codes.shape[0], codebooks[0].shape[1]), dtype=np.float32)
    for level, cb in enumerate(codebooks):
        out += cb[codes[:, level]]
    return out
