"""Quality metrics shared by all quantizers: utilisation, perplexity, collisions, reconstruction."""

from __future__ import annotations

import numpy as np


def level_stats(codes: np.ndarray, codebook_sizes: list[int]) -> list[dict]:
    out = []
    for level, size in enumerate(codebook_sizes):
        counts = np.bincount(codes[:, level].astype(np.int64), minlength=size)
        out.append(counts_stats(counts))
    return out


def counts_stats(counts: np.ndarray) -> dict:
    """Utilisation (share of codes used) and perplexity (exp of the usage entropy) of one level."""
    total = counts.sum()
    p = counts[counts > 0] / max(total, 1)
    return {"codebook_size": int(len(counts)), "used": int((counts > 0).sum()),
            "utilisation": float((counts > 0).mean()),
            "perplexity": float(np.exp(-(p * np.log(p)).sum())) if total else 0.0}


def collision_stats(codes: np.ndarray) -> dict:
    """collision_rate = share of items whose code tuple was already taken (= items with suffix > 0)."""
    n = codes.shape[0]
    _, sizes = np.unique(codes, axis=0, return_counts=True)
    return group_size_stats(np.bincount(sizes), n)


def group_size_stats(size_hist: np.ndarray, n: int) -> dict:
    """From a histogram ``size_hist[k] = number of code tuples shared by exactly k items``."""
    sizes = np.arange(len(size_hist))
    unique = int(size_hist.sum())
    return {"items": int(n), "unique_tuples": unique,
            "collision_rate": float(1 - unique / n) if n else 0.0,
            "colliding_items": int((size_hist[2:] * sizes[2:]).sum()),
            "largest_group": int(sizes[size_hist > 0].max()) if unique else 0}


def reconstruction_mse(x: np.ndarray, x_hat: np.ndarray) -> float:
    return float(np.mean((x.astype(np.float64) - x_hat.astype(np.float64)) ** 2))
