"""Hash partitioning through Parquet, so per-key work never gathers rows in the driver.

``hash_partition`` writes a Ray Dataset as hive partitions ``_p=<k>/`` by a stable hash of key
columns (every row with the same key lands in the same partition); ``map_partitions`` runs one
Ray task per partition, each holding only its own partition in memory.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from semrec.data.hashing import partition_of

PARTITION_COLUMN = "_p"
LOST_ATTEMPTS = 3
log = logging.getLogger("semrec.data")
T = TypeVar("T")


def lost_worker(exc: BaseException) -> bool:
    """Whether ``exc`` (or anything it wraps) is a worker, actor, node or object lost to the cluster, as opposed
    to an error of the work itself."""
    import ray.exceptions as rx

    from semrec.errors import SemrecError, exception_chain

    lost = (rx.ActorDiedError, rx.NodeDiedError, rx.ObjectLostError, rx.WorkerCrashedError, rx.OwnerDiedError,
            rx.ActorUnavailableError, rx.LocalRayletDiedError)
    chain = list(exception_chain(exc))
    if any(isinstance(e, SemrecError) for e in chain):  # our own input errors are never retried
        return False
    if any(isinstance(e, lost) for e in chain):
        return True
    # a lost actor's error may reach the driver only as text (UnserializableException)
    text = " ".join(str(e) for e in chain if isinstance(e, rx.UnserializableException))
    return any(t.__name__ in text for t in lost)


def retry_lost(fn: Callable[[], T], what: str, cleanup: Callable[[], None] | None = None,
               attempts: int = LOST_ATTEMPTS) -> T:
    """``fn()``, run again (after ``cleanup()``) when a node, worker or actor of the cluster was lost under it
    (Ray retries tasks itself, but a Dataset execution fails as a whole when one of its actors -- a map actor,
    Ray Data's own Parquet footer readers -- dies with its node)."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 -- only lost-cluster errors are retried, the rest re-raised
            if attempt == attempts or not lost_worker(e):
                raise
            log.warning("%s: lost a worker or node of the cluster (%s); retrying (%d/%d)", what,
                        type(e).__name__, attempt + 1, attempts)
            if cleanup is not None:
                cleanup()
    raise AssertionError("unreachable")


def _add_partition(batch: pa.Table, keys: list[str], num_partitions: int) -> pa.Table:
    cols = np.stack([batch.column(k).to_numpy() for k in keys], axis=1)
    return batch.append_column(PARTITION_COLUMN, pa.array(partition_of(cols, num_partitions)))


def hash_partition(ds, keys: list[str], out_dir: Path, num_partitions: int) -> None:
    """Write ``ds`` into ``out_dir`` as hash partitions (rewritten from scratch if the cluster loses a node)."""
    retry_lost(lambda: ds.map_batches(_add_partition, fn_kwargs={"keys": keys, "num_partitions": num_partitions},
                                      batch_format="pyarrow").write_parquet(str(out_dir),
                                                                            partition_cols=[PARTITION_COLUMN]),
               f"partitioning into {out_dir}", cleanup=lambda: shutil.rmtree(out_dir, ignore_errors=True))


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
