"""User sequences for sequential recommendation: loading, leave-one-out split, frozen negatives.

Protocol (S3-Rec): for a user sequence s (1-based item ids, 0 = padding), train on s[:-2]
(next-item targets), validate on s[-2] given s[:-2], test on s[-1] given s[:-1]. Sampled
evaluation ranks the target among 99 negatives drawn uniformly from items the user never
interacted with; the negatives are drawn once per (dataset, seed), stored as Parquet and reused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from semrec.data.io import parquet_files, read_table, write_table
from semrec.errors import InputError
from semrec.schemas import decode_metadata, encode_metadata

MIN_LENGTH = 3


@dataclass
class Sequences:
    user_ids: np.ndarray  # (U,) int64
    items: list[np.ndarray]  # chronological item ids per user
    n_items: int  # item ids are 1..n_items

    def __len__(self) -> int:
        return len(self.user_ids)


def load_sequences(path: str | Path, n_items: int | None = None) -> Sequences:
    """Read ``user_sequences`` Parquet; refuse sequences shorter than 3 and unknown item ids."""
    files = parquet_files(path, "user_sequences")
    t = read_table(files, "user_sequences", columns=["user_id", "item_ids"])
    users = t.column("user_id").to_numpy()
    items = [np.asarray(x, dtype=np.int64) for x in t.column("item_ids").to_pylist()]
    order = np.argsort(users, kind="stable")
    users, items = users[order], [items[i] for i in order]
    for u, s in zip(users, items):
        if len(s) < MIN_LENGTH:
            raise InputError(f"{path}: user {u} has {len(s)} items; leave-one-out needs at least {MIN_LENGTH}")
    flat = np.concatenate(items)
    if flat.min() < 1:
        bad = next(u for u, s in zip(users, items) if s.min() < 1)
        raise InputError(f"{path}: user {bad} has item id < 1 (ids are 1-based, 0 is padding)")
    max_id = int(flat.max())
    if n_items is not None and max_id > n_items:
        bad = next(u for u, s in zip(users, items) if s.max() > n_items)
        raise InputError(f"{path}: user {bad} has item id {max_id} outside the catalogue 1..{n_items}")
    return Sequences(users, items, n_items or max_id)


def sample_negatives(seqs: Sequences, k: int = 99, seed: int = 0) -> np.ndarray:
    """(U, k) items each user never interacted with, uniform without replacement, deterministic."""
    if seqs.n_items - 1 < k:
        raise InputError(f"cannot draw {k} negatives from a catalogue of {seqs.n_items} items")
    rng = np.random.default_rng(seed)
    out = np.empty((len(seqs), k), dtype=np.int64)
    for row, s in enumerate(seqs.items):
        seen = set(s.tolist())
        if seqs.n_items - len(seen) < k:
            raise InputError(f"user {seqs.user_ids[row]} has interacted with too many items to draw {k} negatives")
        chosen: list[int] = []
        taken = set()
        while len(chosen) < k:
            for c in rng.integers(1, seqs.n_items + 1, size=2 * k).tolist():
                if c not in seen and c not in taken:
                    taken.add(c)
                    chosen.append(c)
                    if len(chosen) == k:
                        break
        out[row] = chosen
    return out


def write_negatives(path: Path, user_ids: np.ndarray, negatives: np.ndarray, **meta) -> None:
    table = pa.table({"user_id": pa.array(user_ids, pa.int64()),
                      "negatives": pa.array(list(negatives), pa.list_(pa.int64()))})
    write_table(table.replace_schema_metadata(encode_metadata({"table": "negatives", **meta})), path)


def read_negatives(path: Path, seqs: Sequences) -> np.ndarray:
    t = read_table(path, "negatives")
    by_user = dict(zip(t.column("user_id").to_pylist(), t.column("negatives").to_pylist()))
    missing = [u for u in seqs.user_ids[:5].tolist() if u not in by_user]
    if missing or len(by_user) < len(seqs):
        raise InputError(f"{path}: negatives missing for users {missing or '(some)'}")
    return np.asarray([by_user[u] for u in seqs.user_ids.tolist()], dtype=np.int64)


def frozen_negatives(cache_dir: Path, dataset: str, seqs: Sequences, k: int = 99, seed: int = 0) -> np.ndarray:
    """Negatives for (dataset, seed): drawn once, stored at ``cache_dir/<dataset>-seed<seed>.parquet``, reused."""
    path = Path(cache_dir) / f"{dataset}-seed{seed}-k{k}.parquet"
    if path.exists():
        meta = decode_metadata(pq.read_schema(path))
        if meta.get("n_items") != seqs.n_items or meta.get("users") != len(seqs):
            raise InputError(f"{path}: drawn for another version of {dataset} (n_items/users differ); delete it")
        return check_negatives(path, read_negatives(path, seqs), seqs)
    neg = sample_negatives(seqs, k, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    write_negatives(tmp, seqs.user_ids, neg, dataset=dataset, seed=seed, k=k, n_items=seqs.n_items, users=len(seqs))
    tmp.rename(path)
    return neg


def s3rec_negatives(path: str | Path, seqs: Sequences) -> np.ndarray:
    """S3-Rec ``<name>_sample.txt``: ``user neg_1 ... neg_99`` per line (LastFM's official file)."""
    path = Path(path)
    rows = {}
    with open(path) as fh:
        for lineno, line in enumerate(fh, 1):
            parts = line.split()
            if not parts:
                continue
            try:
                rows[int(parts[0])] = [int(x) for x in parts[1:]]
            except ValueError:
                raise InputError(f"{path}:{lineno}: expected integers") from None
    missing = [u for u in seqs.user_ids.tolist() if u not in rows]
    if missing:
        raise InputError(f"{path}: no negatives for users {missing[:5]}")
    lists = [rows[u] for u in seqs.user_ids.tolist()]
    if len({len(r) for r in lists}) > 1:
        raise InputError(f"{path}: users have different numbers of negatives "
                         f"({sorted({len(r) for r in lists})})")
    return check_negatives(path, np.asarray(lists, dtype=np.int64), seqs)


def check_negatives(path: Path, neg: np.ndarray, seqs: Sequences) -> np.ndarray:
    """Refuse evaluation negatives outside the catalogue or in the user's own sequence (official or cached)."""

    def refuse(bad: np.ndarray, what: str) -> None:
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise InputError(f"{path}: negative item {neg[row, col]} of user {seqs.user_ids[row]} is {what}")

    refuse((neg < 1) | (neg > seqs.n_items), f"outside the catalogue 1..{seqs.n_items}")
    refuse(NegativeSampler(seqs).seen(np.arange(len(seqs)), neg), "in that user's own sequence")
    return neg


def left_pad(seqs: list[np.ndarray], max_len: int) -> np.ndarray:
    """(U, max_len) int64, each row the last ``max_len`` items right-aligned, 0-padded on the left."""
    out = np.zeros((len(seqs), max_len), dtype=np.int64)
    for row, s in enumerate(seqs):
        s = s[-max_len:]
        if len(s):
            out[row, max_len - len(s):] = s
    return out


def train_arrays(seqs: Sequences, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """S3-Rec training example per user: input s[:-2][:-1], next-item targets s[:-2][1:]."""
    train = [s[:-2] for s in seqs.items]
    return left_pad([t[:-1] for t in train], max_len), left_pad([t[1:] for t in train], max_len)


def eval_arrays(seqs: Sequences, max_len: int, split: str,
                rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(histories, targets) of the users ``rows`` (default all): valid = s[:-2] -> s[-2]; test = s[:-1] -> s[-1]."""
    if split not in ("valid", "test"):
        raise ValueError(f"split must be valid or test, got {split!r}")
    cut = 2 if split == "valid" else 1
    items = seqs.items if rows is None else [seqs.items[u] for u in rows]
    return left_pad([s[:-cut] for s in items], max_len), np.array([s[-cut] for s in items], dtype=np.int64)


class NegativeSampler:
    """Uniform training negatives outside each user's whole sequence (vectorised, seeded)."""

    def __init__(self, seqs: Sequences):
        self.n_items = seqs.n_items
        base = np.int64(seqs.n_items + 1)
        self.keys = np.unique(np.concatenate([np.full(len(s), u, dtype=np.int64) * base + s
                                              for u, s in enumerate(seqs.items)]))
        self.base = base

    def seen(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        k = users[:, None] * self.base + items
        pos = np.searchsorted(self.keys, k)
        return self.keys[np.minimum(pos, len(self.keys) - 1)] == k

    def sample(self, users: np.ndarray, shape_like: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        neg = rng.integers(1, self.n_items + 1, size=shape_like.shape)
        for _ in range(100):
            bad = self.seen(users, neg)
            if not bad.any():
                break
            neg[bad] = rng.integers(1, self.n_items + 1, size=int(bad.sum()))
        return np.where(shape_like > 0, neg, 0)
