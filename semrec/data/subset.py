"""A smaller real dataset for CPU-budget runs: the ``items`` most interacted items of a user_sequences table,
the sequences restricted to them (users left with fewer than ``min_length`` items dropped), at most ``users``
of those users (a seeded sample), and the items re-numbered 1..M in order of their old ids (the items table,
when given, is restricted and re-numbered the same way)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from semrec.data.io import parquet_files, read_table
from semrec.data.sequences import MIN_LENGTH
from semrec.errors import InputError


def subset(sequences: Path, items: Path | None, n_items: int, users: int, seed: int,
           min_length: int = MIN_LENGTH) -> dict[str, pa.Table]:
    t = read_table(parquet_files(sequences, "user_sequences"), "user_sequences", columns=["user_id", "item_ids"])
    lists = t.column("item_ids").combine_chunks()
    flat = lists.flatten().to_numpy()
    lengths = np.diff(lists.offsets.to_numpy())
    ids, counts = np.unique(flat, return_counts=True)
    keep_items = np.sort(ids[np.lexsort((ids, -counts))[:n_items]])  # most frequent; ties by id
    new_id = np.zeros(int(flat.max()) + 1, dtype=np.int64)
    new_id[keep_items] = np.arange(1, len(keep_items) + 1)
    mapped = new_id[flat]
    rows = np.repeat(np.arange(len(lengths)), lengths)
    kept = mapped > 0
    new_len = np.bincount(rows[kept], minlength=len(lengths))
    ok = np.flatnonzero(new_len >= min_length)
    if users and len(ok) > users:
        ok = np.sort(np.random.default_rng(seed).choice(ok, size=users, replace=False))
    if not len(ok):
        raise InputError(f"{sequences}: no user keeps {min_length} items among the {n_items} most frequent")
    sel = kept & np.isin(rows, ok)
    offsets = np.concatenate([[0], np.cumsum(new_len[ok])])
    out = {"user_sequences": pa.table({
        "user_id": t.column("user_id").take(pa.array(ok)),
        "item_ids": pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(mapped[sel], pa.int64()))})}
    if items is not None:
        it = read_table(parquet_files(items, "items"), "items")
        old = it.column("item_id").to_numpy()
        inside = (old < len(new_id)) & (new_id[np.minimum(old, len(new_id) - 1)] > 0)
        it = it.filter(pa.array(inside))
        it = it.set_column(0, "item_id", pa.array(new_id[it.column("item_id").to_numpy()], pa.int64()))
        out["items"] = it.sort_by("item_id")
    return out
