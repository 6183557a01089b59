"""Per-user caches of DMQN's candidate-independent state and the scorer that reads them.

A cache is built by ``jobs/build_cache.py`` as Parquet (``user_cache/``: user_id, ``state`` =
fixed_size_list<float16|float32, T*d> of the HSTU output, ``sizes`` = fixed_size_list<uint16, T>, the
behaviours in each cluster, 0 = empty) with a manifest naming the model version
(``semrec.models.artefact.model_version``: a hash of the weights). Stores behind one interface,
``get(user_ids) -> (states (n, T, d) float32, sizes (n, T) float32, found (n,))``:

- ``MemmapStore`` (the embedded default): the states as one memory-mapped ``.npy`` and an open-addressing
  hash table of user ids (linear probing, load factor <= 0.5), so a lookup is O(1) expected with no server;
  it refuses a model version other than the one it was built from;
- ``RedisStore``: the same rows in any Redis-protocol server, one key per user with the model version in
  it (``<prefix>:<version>:<user_id>``), so a new model never reads an old model's rows.

``Scorer`` scores ``(user_id, candidate item ids)`` from a store; on a miss it computes the state from
the raw sequence when given one, and says which path it took.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from semrec.data.hashing import hash_rows
from semrec.errors import InputError

STORE_META = "store.json"
SIZE_DTYPE = np.dtype("<u2")  # cluster sizes as stored: little-endian uint16 (also the bytes Redis holds)
SIZES_FORMAT = "uint16"  # in a Redis cache's meta key: its values end with the sizes (absent before 2026-12-07)


class StaleCache(InputError):
    """A cache built by another model version than the one serving."""


def _hash(keys: np.ndarray) -> np.ndarray:
    return hash_rows(np.asarray(keys, dtype=np.int64)[:, None])


def build_slots(keys: np.ndarray) -> np.ndarray:
    """An open-addressing table (capacity a power of two >= 2 x keys) of row indices into ``keys``, -1 = empty,
    filled in vectorised rounds: each pending key claims its current probe slot, the first claimant of a
    free slot wins, the others move one slot on. Every slot between a key's hash and its own is occupied, so
    linear-probing lookups find it."""
    cap = 1 << max(4, int(2 * len(keys) - 1).bit_length())
    table = np.full(cap, -1, dtype=np.int64)
    pos = (_hash(keys) & np.uint64(cap - 1)).astype(np.int64)
    pending = np.arange(len(keys))
    while len(pending):
        slot = pos[pending]
        free = table[slot] == -1
        won_slots, first = np.unique(slot[free], return_index=True)
        winners = pending[free][first]
        table[won_slots] = winners
        lost = np.ones(len(pending), dtype=bool)
        lost[np.flatnonzero(free)[first]] = False
        pending = pending[lost]
        pos[pending] = (pos[pending] + 1) & (cap - 1)
    return table


def lookup(table: np.ndarray, keys: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Row of each query in ``keys`` (-1 when absent), by linear probing of ``table``."""
    cap = len(table)
    q = np.asarray(queries, dtype=np.int64)
    pos = (_hash(q) & np.uint64(cap - 1)).astype(np.int64)
    out = np.full(len(q), -2, dtype=np.int64)  # -2: unresolved
    active = np.arange(len(q))
    while len(active):
        r = table[pos[active]]
        hit = (r >= 0) & (keys[np.maximum(r, 0)] == q[active])
        empty = r == -1
        out[active[hit]] = r[hit]
        out[active[empty]] = -1
        active = active[~hit & ~empty]
        pos[active] = (pos[active] + 1) & (cap - 1)
    return out


def _sizes(table, path) -> np.ndarray:
    """(rows, T) cluster sizes of a ``user_cache`` Parquet table, as stored (uint16)."""
    if "sizes" not in table.column_names:
        raise InputError(f"{path}: no 'sizes' column (a cache built by an older semrec): rebuild it with "
                         "jobs/build_cache.py")
    col = table.column("sizes").combine_chunks()
    return col.values.to_numpy(zero_copy_only=False).astype(SIZE_DTYPE).reshape(len(table), col.type.list_size)


class MemmapStore:
    """``MemmapStore.build(cache_dir, out_dir)`` once; ``MemmapStore(out_dir, model_version)`` per process."""

    def __init__(self, directory: str | Path, model_version: str | None = None):
        d = Path(directory)
        try:
            self.meta = json.loads((d / STORE_META).read_text())
        except (OSError, ValueError) as e:
            raise InputError(f"{d / STORE_META}: not a user-state store ({e})") from None
        if model_version is not None and self.meta["model_version"] != model_version:
            raise StaleCache(f"{d}: the cache was built by model {self.meta['model_version']}, the serving model "
                             f"is {model_version}: rebuild it with jobs/build_cache.py")
        self.model_version, self.clusters, self.dim = self.meta["model_version"], self.meta["clusters"], self.meta["dim"]
        if not (d / "sizes.npy").exists():
            raise InputError(f"{d}: a store without cluster sizes (built by an older semrec): rebuild it with "
                             "jobs/build_cache.py")
        self.states = np.load(d / "states.npy", mmap_mode="r")
        self.sizes = np.load(d / "sizes.npy", mmap_mode="r")
        self.keys = np.load(d / "keys.npy", mmap_mode="r")
        self.table = np.load(d / "slots.npy", mmap_mode="r")

    @staticmethod
    def build(cache_dir: str | Path, out_dir: str | Path) -> Path:
        """From a ``user_cache/`` Parquet folder, one file at a time (memory: one file's rows)."""
        import pyarrow.parquet as pq

        from semrec.data.io import parquet_files

        cache_dir, out = Path(cache_dir), Path(out_dir)
        manifest = json.loads((cache_dir / "_MANIFEST.json").read_text())
        files = parquet_files(cache_dir, "user_cache")
        n, clusters, width = manifest["rows"], manifest["clusters"], manifest["clusters"] * manifest["dim"]
        out.mkdir(parents=True, exist_ok=True)
        dtype = np.float16 if manifest["dtype"] == "float16" else np.float32
        states = np.lib.format.open_memmap(out / "states.npy", "w+", dtype, (n, width))
        sizes = np.lib.format.open_memmap(out / "sizes.npy", "w+", SIZE_DTYPE, (n, clusters))
        keys = np.empty(n, dtype=np.int64)
        row = 0
        for f in files:
            t = pq.read_table(f)
            k = len(t)
            keys[row:row + k] = t.column("user_id").to_numpy()
            states[row:row + k] = t.column("state").combine_chunks().values.to_numpy(zero_copy_only=False).reshape(k, width)
            sizes[row:row + k] = _sizes(t, f)
            row += k
        states.flush()
        sizes.flush()
        np.save(out / "keys.npy", keys)
        np.save(out / "slots.npy", build_slots(keys))
        (out / STORE_META).write_text(json.dumps({k: manifest[k] for k in ("model_version", "clusters", "dim", "dtype")}
                                                 | {"users": n}, indent=2) + "\n")
        return out

    def get(self, user_ids) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows = lookup(self.table, self.keys, np.atleast_1d(user_ids))
        found = rows >= 0
        r = np.where(found, rows, 0)
        states = np.asarray(self.states[r], dtype=np.float32).reshape(len(r), self.clusters, self.dim)
        sizes = np.asarray(self.sizes[r], dtype=np.float32)
        states[~found], sizes[~found] = 0.0, 0.0  # a miss reads nothing
        return states, sizes, found


class StoreUnavailable(RuntimeError):
    """The store could not be read (e.g. the Redis server went away)."""


class RedisStore:
    """``RedisStore.load(cache_dir, client)`` once per model version; ``RedisStore(client, version)`` to read.
    ``client`` is a ``redis.Redis``. Values are the state bytes (stored dtype) followed by the sizes (uint16)."""

    def __init__(self, client, model_version: str, prefix: str = "semrec:dmqn"):
        self.client, self.model_version, self.prefix = client, model_version, prefix
        meta = self._call(client.get, f"{prefix}:{model_version}:meta")
        if meta is None:
            raise StaleCache(f"Redis has no cache of model {model_version} (key {prefix}:{model_version}:meta): "
                             f"load it with RedisStore.load from a build_cache output of this model")
        m = json.loads(meta)
        if m.get("sizes") != SIZES_FORMAT:
            raise StaleCache(f"Redis holds model {model_version}'s cache without cluster sizes (loaded by an older "
                             f"semrec): rebuild it with jobs/build_cache.py and load it with RedisStore.load")
        self.clusters, self.dim = m["clusters"], m["dim"]
        self.dtype = np.float16 if m["dtype"] == "float16" else np.float32

    @staticmethod
    def holds(client, model_version: str, prefix: str = "semrec:dmqn") -> bool:
        """Whether the server holds a complete cache of ``model_version`` in the current format (raises the
        client's ConnectionError when it cannot be reached)."""
        meta = client.get(f"{prefix}:{model_version}:meta")
        return meta is not None and json.loads(meta).get("sizes") == SIZES_FORMAT

    @staticmethod
    def _call(fn, *args):
        import redis

        try:
            return fn(*args)
        except redis.exceptions.ConnectionError as e:
            raise StoreUnavailable(f"Redis store unavailable: {e}") from e

    @staticmethod
    def load(cache_dir: str | Path, client, prefix: str = "semrec:dmqn", batch: int = 1000) -> str:
        """Write every row of a ``user_cache/`` folder, file by file, in pipelined batches; the meta key
        last, so a reader never sees a half-loaded version. Returns the model version."""
        import pyarrow.parquet as pq

        from semrec.data.io import parquet_files

        cache_dir = Path(cache_dir)
        manifest = json.loads((cache_dir / "_MANIFEST.json").read_text())
        version = manifest["model_version"]
        for f in parquet_files(cache_dir, "user_cache"):
            t = pq.read_table(f)
            ids = t.column("user_id").to_numpy()
            width = manifest["clusters"] * manifest["dim"]
            states = t.column("state").combine_chunks().values.to_numpy(zero_copy_only=False).reshape(len(t), width)
            sizes = _sizes(t, f)
            for a in range(0, len(t), batch):
                pipe = client.pipeline(transaction=False)
                for i in range(a, min(a + batch, len(t))):
                    pipe.set(f"{prefix}:{version}:{int(ids[i])}", states[i].tobytes() + sizes[i].tobytes())
                pipe.execute()
        client.set(f"{prefix}:{version}:meta", json.dumps({k: manifest[k] for k in ("clusters", "dim", "dtype")}
                                                          | {"sizes": SIZES_FORMAT}))
        return version

    def get(self, user_ids) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ids = np.atleast_1d(user_ids)
        values = self._call(self.client.mget, [f"{self.prefix}:{self.model_version}:{int(u)}" for u in ids])
        found = np.array([v is not None for v in values], dtype=bool)
        width = self.clusters * self.dim
        states = np.zeros((len(ids), self.clusters, self.dim), dtype=np.float32)
        sizes = np.zeros((len(ids), self.clusters), dtype=np.float32)
        size = width * np.dtype(self.dtype).itemsize
        for i, v in enumerate(values):
            if v is not None:
                states[i] = np.frombuffer(v[:size], dtype=self.dtype).reshape(self.clusters, self.dim)
                sizes[i] = np.frombuffer(v[size:], dtype=SIZE_DTYPE)
        return states, sizes, found


class Scorer:
    """Click logits of ``(user_id, candidates)`` from a DMQN model folder and a store of its user states."""

    def __init__(self, model_dir: str | Path, store: MemmapStore | RedisStore):
        from semrec.models.artefact import model_version
        from semrec.models.ctr.paradigms import from_pretrained

        self.model = from_pretrained(model_dir)
        if self.model.paradigm not in ("dmqn", "dmqn-simple"):
            raise InputError(f"{model_dir}: a {self.model.paradigm} model has no cacheable user state (dmqn only)")
        self.version = model_version(model_dir)
        if store.model_version != self.version:
            raise StaleCache(f"the store was built by model {store.model_version}, {model_dir} is model "
                             f"{self.version}: rebuild the cache with jobs/build_cache.py")
        self.store, self.n_items = store, self.model.config["n_items"]
        self.max_len = self.model.config["encoder"]["max_len"]

    def score(self, user_id: int, items, history=None) -> tuple[np.ndarray, str]:
        """(logits (C,), "cache" | "computed" | "computed: store unavailable"). A user missing from the cache
        needs ``history`` (item ids in time order), else KeyError; so does any user while the store cannot be
        read (else StoreUnavailable); candidate ids outside 1..n_items are refused."""
        import torch

        items = np.asarray(items, dtype=np.int64).ravel()
        bad = (items < 1) | (items > self.n_items)
        if not len(items) or bad.any():
            raise ValueError(f"candidate item {int(items[np.argmax(bad)]) if len(items) else None} is not in the "
                             f"model's catalogue 1..{self.n_items}")
        h = None
        if history is not None:  # checked whenever sent, read only on a miss
            h = np.asarray(history, dtype=np.int64).ravel()
            bad = (h < 1) | (h > self.n_items)
            if bad.any():
                raise ValueError(f"user {user_id}: history item {int(h[np.argmax(bad)])} is not in the model's "
                                 f"catalogue 1..{self.n_items}")
        try:
            states, sizes, found = self.store.get([user_id])
            miss = "computed"
        except StoreUnavailable:
            if h is None:
                raise
            found, miss = [False], "computed: store unavailable"
        with torch.inference_mode():
            if found[0]:
                clusters, counts, source = torch.from_numpy(states), torch.from_numpy(sizes), "cache"
            else:
                if h is None:
                    raise KeyError(f"user {user_id} is not in the cache and no history was given to compute it")
                if not len(h):
                    raise ValueError(f"user {user_id} is not in the cache and its history is empty: nothing to "
                                     f"compute its state from")
                clusters, counts = self.model.user_state(torch.from_numpy(h[-self.max_len:])[None])
                source = miss
            logits = self.model.score_state(clusters, counts, torch.from_numpy(items)[None])[0]
        return logits.numpy(), source
