"""Deterministic collision suffixes.

Items whose code tuples are identical form a group; inside a group of k items the suffix is
0..k-1 in increasing item id. (codes, suffix) is then unique per item, and the result depends
only on the set of (item_id, codes) pairs, not on row order or partitioning.

At scale the table is first split into hash partitions of the code tuple (every group lands in
one partition, see ``partition_of``), and each partition is suffixed independently in memory.
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


def assign_suffix(item_ids: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised suffix. Returns (suffix aligned with the input rows, group-size histogram).

    ``hist[k]`` = number of distinct code tuples shared by exactly k items.
    """
    n = len(item_ids)
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(1, dtype=np.int64)
    codes = np.asarray(codes)
    keys = [item_ids] + [codes[:, j] for j in range(codes.shape[1] - 1, -1, -1)]
    order = np.lexsort(keys)  # primary: c0, then c1..., last: item_id
    sc = codes[order]
    new_group = np.ones(n, dtype=bool)
    new_group[1:] = (sc[1:] != sc[:-1]).any(axis=1)
    starts = np.flatnonzero(new_group)
    group_start = np.maximum.accumulate(np.where(new_group, np.arange(n), 0))
    suffix = np.empty(n, dtype=np.int64)
    suffix[order] = np.arange(n) - group_start
    sizes = np.diff(np.append(starts, n))
    return suffix, np.bincount(sizes)


def assign_suffix_reference(item_ids, codes) -> np.ndarray:
    """Plain-Python definition used by the tests."""
    groups: dict[tuple, list[int]] = {}
    for i, (iid, c) in enumerate(zip(item_ids, codes)):
        groups.setdefault(tuple(int(v) for v in c), []).append((int(iid), i))
    suffix = np.zeros(len(item_ids), dtype=np.int64)
    for members in groups.values():
        for s, (_, i) in enumerate(sorted(members)):
            suffix[i] = s
    return suffix
