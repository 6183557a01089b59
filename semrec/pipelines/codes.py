"""Steps shared by the item and user tokenization jobs: the deterministic fit sample of an embedding
table, and the writing of one hash partition (of the code tuple) of a token table."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)

from semrec.data.hashing import hash_rows
from semrec.data.io import parquet_files, read_schema, write_manifest, write_table
from semrec.data.partition import hash_partition, map_partitions, read_partition, retry_lost
from semrec.errors import InputError
from semrec.pipelines.udfs import EncodeCodes, embedding_matrix
from semrec.quant import load_quantizer
from semrec.quant.metrics import counts_stats, group_size_stats
from semrec.schemas import token_table_schema
from semrec.tokenizers.collisions import assign_suffix

MAX_SUFFIX = 65_535
log = logging.getLogger("semrec.tokenize")


def _duplicates_in_partition(k: int, directory: Path, key: str) -> list[int]:
    ids = read_partition(directory).column(key)
    if ids.null_count:
        return [-1]
    u, c = np.unique(ids.to_numpy(), return_counts=True)
    return u[c > 1][:5].tolist()


def check_unique_ids(ds, work: Path, num_partitions: int, where: str, key: str) -> None:
    """Refuse null or duplicate ``key`` values in a Dataset (hash-partitioned, so any size), naming ``where``."""
    hash_partition(ds.select_columns([key]), [key], work, num_partitions)
    dups = sorted(x for v in map_partitions(work, _duplicates_in_partition, key).values() for x in v)
    shutil.rmtree(work, ignore_errors=True)
    if -1 in dups:
        raise InputError(f"{where}: null {key}")
    if dups:
        raise InputError(f"{where}: duplicate {key} {dups[:5]} (ids must be unique)")


def _sample_mask(ids: np.ndarray, seed: int, keep_fraction: float) -> np.ndarray:
    h = hash_rows(np.stack([ids, np.full_like(ids, seed)], axis=1))
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53) < keep_fraction


def sample_batch(batch: pa.Table, seed: int, keep_fraction: float, key: str) -> pa.Table:
    return batch.filter(pa.array(_sample_mask(batch.column(key).to_numpy(), seed, keep_fraction)))


def fit_sample(ds, n_rows: int, size: int, seed: int, key: str) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic sample of ~``size`` rows of an embedding Dataset, chosen by a hash of (``key``, seed),
    ordered by ``key``: (ids, (n, d) float32)."""
    frac = min(1.0, size / max(n_rows, 1))
    tables = retry_lost(lambda: [
        b for b in ds.map_batches(sample_batch, fn_kwargs={"seed": seed, "keep_fraction": frac, "key": key},
                                  batch_format="pyarrow").iter_batches(batch_format="pyarrow", batch_size=None)
        if b.num_rows], "reading the fit sample")
    if not tables:
        raise InputError("the fit sample is empty")
    t = pa.concat_tables(tables)
    t = t.take(pa.compute.sort_indices(t, [(key, "ascending")]))
    return t.column(key).to_numpy(), embedding_matrix(t.combine_chunks(), key=key)


def code_partition(k: int, directory: Path, table_dir: str, codebook_sizes: list[int], metadata: dict,
                   key: str) -> dict:
    """One hash partition of the code tuple -> ``table_dir/part-<k>.parquet``, rows ordered by ``key``.
    Item tables (``key`` item_id) get the collision suffix; user tables do not. Returns the row count,
    the group-size histogram (``hist[s]`` = tuples shared by exactly s rows) and per-level code counts."""
    t = read_partition(directory)
    levels = len(codebook_sizes)
    ids = t.column(key).to_numpy()
    codes = np.stack([t.column(f"c{j}").to_numpy() for j in range(levels)], axis=1)
    suffix, hist = assign_suffix(ids, codes)
    order = np.argsort(ids, kind="stable")
    schema = token_table_schema(codebook_sizes, metadata, key=key)
    cols = [pa.array(ids[order], pa.int64())]
    cols += [pa.array(codes[order, j], schema.field(f"c{j}").type) for j in range(levels)]
    if key == "item_id":
        if suffix.max(initial=0) > MAX_SUFFIX:
            raise InputError(f"{len(hist) - 1} items share one code tuple: more than a uint16 suffix holds "
                             f"(the quantizer collapsed; raise levels/codebook size)")
        cols.append(pa.array(suffix[order].astype(np.uint16), pa.uint16()))
    write_table(pa.Table.from_arrays(cols, schema=schema), Path(table_dir) / f"part-{k:05d}.parquet")
    counts = [np.bincount(codes[:, j].astype(np.int64), minlength=codebook_sizes[j]) for j in range(levels)]
    return {"rows": len(ids), "hist": hist, "counts": counts}


def quantize(emb_ds, n: int, qs, seed: int, sample_size: int, stage: Path, work: Path, partitions: int, key: str,
             rs, threads: int, plots: bool, manifest: dict | None = None) -> dict:
    """Fit the quantizer ``qs`` (QuantizerSettings) on a deterministic sample of the embedding Dataset, save it
    to ``stage/quantizer``, encode every row with an actor pool, and write the token table
    (``stage/token_table`` for items, ``stage/user_token_table`` for users) from hash partitions of the code
    tuple, with its manifest and plots. Returns the report sections (quantizer, levels, collisions,
    fit_sample, the table's size, timings)."""
    import ray.data

    timings = {}
    t0 = time.perf_counter()
    _, x = fit_sample(emb_ds, n, sample_size, seed, key)
    q = qs.build(seed)
    try:
        q.fit(x)
    except ValueError as err:
        raise InputError(f"quantizer: {err}") from None
    qdir = q.save(stage / "quantizer")
    fit_metrics = q.evaluate(x)
    timings["fit_s"] = time.perf_counter() - t0
    fingerprint = q.fingerprint()
    log.info("fitted %s on %d rows in %.1fs (id %s)", q.kind, len(x), timings["fit_s"], fingerprint)

    # assign every row (streaming, one quantizer per actor) into hash partitions of the code tuple
    t0 = time.perf_counter()
    codes_ds = emb_ds.map_batches(EncodeCodes, batch_format="pyarrow", batch_size=rs.batch_size,
                                  fn_constructor_args=(load_quantizer(qdir), threads, key),  # what was published
                                  compute=ray.data.ActorPoolStrategy(size=rs.actors), num_cpus=rs.cpus_per_actor,
                                  max_restarts=rs.actor_restarts)
    hash_partition(codes_ds, [f"c{j}" for j in range(q.levels)], work / "codes", partitions)
    timings["encode_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    name = "token_table" if key == "item_id" else "user_token_table"
    table_dir = stage / name
    table_dir.mkdir()
    meta = {"table": name, "quantizer": q.kind, "quantizer_id": fingerprint, "levels": q.levels,
            "codebook_sizes": q.codebook_sizes, "distances": q.distance_names, "seed": seed}
    results = map_partitions(work / "codes", code_partition, str(table_dir), q.codebook_sizes, meta, key)
    timings["table_s"] = time.perf_counter() - t0
    shutil.rmtree(work / "codes", ignore_errors=True)

    rows = sum(r["rows"] for r in results.values())
    if rows != n:
        raise InputError(f"{name} has {rows} rows for {n} inputs")
    out_files = parquet_files(table_dir, name)
    expected = token_table_schema(q.codebook_sizes, key=key)
    for f in out_files:
        if not read_schema(f).remove_metadata().equals(expected):
            raise InputError(f"{f}: {name} schema mismatch")
    width = max(len(r["hist"]) for r in results.values())
    hist = np.sum([np.pad(r["hist"], (0, width - len(r["hist"]))) for r in results.values()], axis=0)
    level_counts = [np.sum([r["counts"][j] for r in results.values()], axis=0) for j in range(q.levels)]
    table_bytes = sum(f.stat().st_size for f in out_files)
    write_manifest(table_dir, quantizer_id=fingerprint, schema=name, schema_version=1,
                   codebook_sizes=q.codebook_sizes, distances=q.distance_names, seed=seed, **(manifest or {}))
    if plots:
        from semrec.pipelines.report import plot_code_usage, plot_collision_groups

        (stage / "plots").mkdir(exist_ok=True)
        plot_code_usage(level_counts, stage / "plots" / "code_usage.png")
        plot_collision_groups(hist, stage / "plots" / "collision_groups.png")
    return {
        "quantizer": {"kind": q.kind, "id": fingerprint, "codebook_sizes": q.codebook_sizes,
                      "distances": q.distance_names, "fit_rows": int(len(x)), "fitted": q.fitted_},
        "levels": [counts_stats(c) for c in level_counts],
        "collisions": {**group_size_stats(hist, n),
                       "group_size_histogram": {int(k): int(v) for k, v in enumerate(hist) if v}},
        "fit_sample": {"rows": int(len(x)), "reconstruction_mse": fit_metrics["reconstruction_mse"]},
        name: {"files": len(out_files), "bytes": table_bytes, "bytes_per_row": table_bytes / n},
        "timings": timings,
    }
