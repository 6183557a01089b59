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
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq

from semrec.data.io import parquet_files, read_table, write_table
from semrec.data.seqbatch import MIN_LENGTH, RowBatch
from semrec.errors import InputError
from semrec.schemas import decode_metadata, encode_metadata


@dataclass
class Sequences:
    """A user_sequences table in memory (small data): users sorted by id, with their item ids."""

    user_ids: np.ndarray  # (U,) int64
    items: list[np.ndarray]  # chronological item ids per user
    n_items: int  # item ids are 1..n_items

    def __post_init__(self):
        lengths = np.array([len(s) for s in self.items], dtype=np.int64)
        flat = np.concatenate(self.items).astype(np.int64) if self.items else np.zeros(0, np.int64)
        self.rows = RowBatch(np.asarray(self.user_ids, dtype=np.int64),
                             np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), flat)

    def __len__(self) -> int:
        return len(self.user_ids)

    def batch(self, rows: np.ndarray) -> RowBatch:
        return self.rows.take(rows)


def load_sequences(path: str | Path, n_items: int | None = None, min_length: int = MIN_LENGTH,
                   why: str = "leave-one-out") -> Sequences:
    """Read ``user_sequences`` Parquet; refuse sequences shorter than ``min_length`` and unknown item ids."""
    files = parquet_files(path, "user_sequences")
    rows = RowBatch.from_arrow(read_table(files, "user_sequences", columns=["user_id", "item_ids"]))
    rows.check(n_items, str(path), min_length, why)
    order = np.argsort(rows.user_ids, kind="stable")
    rows = rows.take(order)
    items = np.split(rows.flat, rows.offsets[1:-1])
    return Sequences(rows.user_ids, items, n_items or int(rows.flat.max()))


SCAN_BATCH_ITEMS = 4_000_000  # item ids per scan batch (32 MB as int64)


def _scan_file(path: str, n_items: int | None, min_length: int, why: str,
               rows: int | None = None) -> tuple[int, int, str]:
    """(users, max item id, first error) of one Parquet file, read in batches of ``rows`` users (default: about
    SCAN_BATCH_ITEMS item ids, from the file's mean sequence length): a scan task holds one batch plus a row
    group's compressed bytes, whatever the file or table size."""
    f = pq.ParquetFile(path)
    if rows is None:
        md = f.metadata
        leaf = [i for i in range(md.num_columns) if md.schema.column(i).path.startswith("item_ids.")]
        values = sum(md.row_group(g).column(leaf[0]).num_values for g in range(md.num_row_groups)) if leaf else 0
        rows = max(256, int(SCAN_BATCH_ITEMS * md.num_rows / values)) if values else 65_536
    users, max_id = 0, 0
    for batch in f.iter_batches(batch_size=rows, columns=["user_id", "item_ids"]):
        b = RowBatch.from_arrow(pa.Table.from_batches([batch]))
        try:
            b.check(n_items, path, min_length, why)
        except InputError as e:
            return users, max_id, str(e)
        users, max_id = users + len(b), max(max_id, int(b.flat.max()) if len(b.flat) else 0)
    return users, max_id, ""


def scan_sequences(files: list[Path], n_items: int | None, min_length: int = MIN_LENGTH,
                   why: str = "leave-one-out") -> tuple[int, int]:
    """(users, n_items) of a ``user_sequences`` table too large for one process, checked as
    ``load_sequences`` checks it (sequences of >= ``min_length`` items, ids in 1..n_items) by one Ray task per
    file (at most one per CPU in flight), in bounded memory; the first bad row is an InputError naming its file
    and user (the first in file order)."""
    import ray

    scan = ray.remote(num_cpus=1)(_scan_file)
    width = max(1, int(ray.cluster_resources().get("CPU", 1)))
    pending, results = {}, {}
    for i, f in enumerate(files):
        if len(pending) >= width:
            done, _ = ray.wait(list(pending), num_returns=1)
            results[pending.pop(done[0])] = ray.get(done[0])
        pending[scan.remote(str(f), n_items, min_length, why)] = i
    for ref, i in pending.items():
        results[i] = ray.get(ref)
    errors = [results[i][2] for i in sorted(results) if results[i][2]]
    if errors:
        raise InputError(errors[0])
    users = sum(r[0] for r in results.values())
    max_id = max((r[1] for r in results.values()), default=0)
    if users == 0:
        raise InputError(f"{files[0].parent}: user_sequences has no rows")
    return users, n_items or max_id


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
    refuse(seqs.rows.seen(np.arange(len(seqs)), neg, seqs.n_items), "in that user's own sequence")
    return neg
