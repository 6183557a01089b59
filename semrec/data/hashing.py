"""Stable row hashing (splitmix64): the same 64-bit value for the same integers on every machine and run.

Used to hash-partition tables by key columns and to pick deterministic samples.
"""

from __future__ import annotations

import numpy as np

# splitmix64 constants
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint64(30))
    h = h * _M1
    h = h ^ (h >> np.uint64(27))
    h = h * _M2
    return h ^ (h >> np.uint64(31))


def hash_rows(columns: np.ndarray) -> np.ndarray:
    """A stable 64-bit hash per row of a 2-D integer array (same on every machine and run)."""
    cols = np.atleast_2d(np.asarray(columns).T).T if np.ndim(columns) == 1 else np.asarray(columns)
    with np.errstate(over="ignore"):
        h = np.full(cols.shape[0], 0x9E3779B97F4A7C15, dtype=np.uint64)
        for j in range(cols.shape[1]):
            h = _mix(h ^ cols[:, j].astype(np.int64).view(np.uint64))
    return h


def partition_of(columns: np.ndarray, num_partitions: int) -> np.ndarray:
    return (hash_rows(columns) % np.uint64(num_partitions)).astype(np.int32)
