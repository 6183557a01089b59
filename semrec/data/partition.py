"""Hash partitioning through Parquet, so per-key work never gathers rows in the driver.

``hash_partition`` writes a Ray Dataset as hive partitions ``_p=<k>/`` by a stable hash of key
columns (every row with the same key lands in the same partition); ``map_partitions`` runs one
Ray task per partition, each holding only its own partition in memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from semrec.data.hashing import partition_of

PARTITION_COLUMN = "_p"


def _add_partition(batch: pa.Table, keys: list[str], num_partitions: int) -> pa.Table:
    cols = np.stack([batch.column(k).to_numpy() for k in keys], axis=1)
    return batch.append_column(PARTITION_COLUMN, pa.array(partition_of(cols, num_partitions)))


def hash_partition(ds, keys: list[str], out_dir: Path, num_partitions: int) -> None:
    ds.map_batches(_add_partition, fn_kwargs={"keys": keys, "num_partitions": num_partitions},
                   batch_format="pyarrow").write_parquet(str(out_dir), partition_cols=[PARTITION_COLUMN])


def partition_dirs(out_dir: Path) -> dict[int, Path]:
    prefix = f"{PARTITION_COLUMN}="
    return {int(p.name[len(prefix):]): p for p in sorted(Path(out_dir).glob(f"{prefix}*")) if p.is_dir()}


def read_partition(directory: Path) -> pa.Table:
    files = sorted(directory.glob("*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files]) if files else None


def map_partitions(out_dir: Path, fn: Callable[..., Any], *args: Any, num_cpus: float = 1) -> dict[int, Any]:
    """Run ``fn(partition_index, partition_dir, *args)`` as one Ray task per partition."""
    import ray

    remote = ray.remote(num_cpus=num_cpus)(fn)
    parts = partition_dirs(out_dir)
    refs = {k: remote.remote(k, d, *args) for k, d in parts.items()}
    return {k: ray.get(r) for k, r in refs.items()}
