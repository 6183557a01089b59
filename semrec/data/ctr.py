"""CTR samples (``ctr_samples`` tables): labels and fixed-width categorical feature ids, checked."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from semrec.data.hashing import hash_rows
from semrec.data.io import parquet_files, read_table
from semrec.errors import InputError
from semrec.schemas import decode_metadata


@dataclass
class CTRData:
    features: np.ndarray  # (N, F) int64 global feature ids
    labels: np.ndarray  # (N,) float32 in {0, 1}
    n_features: int  # ids are 0..n_features-1 (the largest declared by the files)
    fields: list[str]
    impressions: np.ndarray | None = None  # (N,) impression ids, when the file has them
    meta: dict | None = None  # the file's semrec.* metadata

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, rows: np.ndarray) -> "CTRData":
        imp = self.impressions[rows] if self.impressions is not None else None
        return CTRData(self.features[rows], self.labels[rows], self.n_features, self.fields, imp, self.meta)


def load_ctr(path: str | Path, n_features: int | None = None) -> CTRData:
    """Read ``ctr_samples``; refuse rows of another width, labels other than 0/1 and ids outside the
    vocabulary, naming the file and row."""
    files = parquet_files(path, "ctr_samples")
    meta = decode_metadata(pq.read_schema(files[0]))
    names = pq.read_schema(files[0]).names
    t = read_table(files, "ctr_samples", columns=["label", "features"] + (["impression_id"] if "impression_id" in names
                                                                         else []))
    col = t.column("features").combine_chunks()
    lengths = np.diff(col.offsets.to_numpy())
    if len(lengths) == 0:
        raise InputError(f"{path}: ctr_samples has no rows")
    width = int(lengths[0])
    if (lengths != width).any() or width == 0:
        row = int(np.argmax(lengths != width)) if width else 0
        raise InputError(f"{path}: row {row} has {lengths[row]} features, row 0 has {width} (one id per field)")
    start = col.offsets[0].as_py()
    x = col.values.to_numpy(zero_copy_only=False)[start:start + width * len(col)].reshape(-1, width).astype(np.int64)
    y = t.column("label").to_numpy(zero_copy_only=False)
    bad = (y != 0) & (y != 1)
    if bad.any():
        raise InputError(f"{path}: row {int(np.argmax(bad))} has label {y[np.argmax(bad)]} (expected 0 or 1)")
    n = n_features or int(meta.get("n_features") or x.max() + 1)
    out = (x < 0) | (x >= n)
    if out.any():
        row = int(np.argmax(out.any(axis=1)))
        raise InputError(f"{path}: row {row} has feature id {x[row][out[row]][0]} outside the vocabulary 0..{n - 1}")
    fields = list(meta.get("fields") or [f"f{i}" for i in range(width)])
    imp = t.column("impression_id").to_numpy() if "impression_id" in t.column_names else None
    return CTRData(x, y.astype(np.float32), n, fields, imp, meta)


def hash_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept rows, held-out rows): a fixed hash split of rows 0..n-1 holding out about ``fraction``."""
    h = hash_rows(np.stack([np.full(n, seed, np.int64), np.arange(n, dtype=np.int64)], axis=1))
    held = h < np.uint64(fraction * 2.0**64)
    return np.flatnonzero(~held), np.flatnonzero(held)
