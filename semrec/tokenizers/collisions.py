"""Deterministic collision suffixes.

Items whose code tuples are identical form a group; inside a group of k items the suffix is
0..k-1 in increasing item id. (codes, suffix) is then unique per item, and the result depends
only on the set of (item_id, codes) pairs, not on row order or partitioning.

At scale the table is first split into hash partitions of the code tuple (every group lands in
one partition, see ``semrec.data.hashing.partition_of``), and each partition is suffixed independently in memory.
"""

from __future__ import annotations

import numpy as np


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
