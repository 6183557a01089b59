"""items -> embeddings -> quantizer fit on a sample -> codes for all -> collision suffix -> token table.

Output folder (published atomically; an earlier output at the same path stays until success):

    <output>/token_table/part-NNNNN.parquet   item_id, c0..c{L-1} (uint8|uint16), suffix (uint16)
    <output>/token_table/_MANIFEST.json       rows, files with sha256, quantizer id, config
    <output>/quantizer/                       config.json + weights.safetensors
    <output>/item_embeddings/                 when computed here and keep_embeddings is on
    <output>/report.json, <output>/plots/*.png, <output>/effective_config.json
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from semrec.config import write_effective
from semrec.config.settings import TokenizeItemsSettings
from semrec.data.io import (count_rows, input_read_errors, parquet_files, read_schema, write_manifest,
                            write_table)
from semrec.data.output import job_output
from semrec.data.partition import hash_partition, map_partitions, read_partition
from semrec.errors import InputError
from semrec.quant.metrics import counts_stats, group_size_stats
from semrec.schemas import ITEMS, check_embedding_schema, check_schema, token_table_schema
from semrec.data.hashing import hash_rows
from semrec.tokenizers.collisions import assign_suffix
from semrec.pipelines.udfs import EmbedItems, EncodeCodes, embedding_matrix

log = logging.getLogger("semrec.tokenize_items")
ROWS_PER_PARTITION = 2_000_000
MAX_SUFFIX = 65_535


# ----------------------------------------------------------------------------- validation
def validate_items(files: list[Path]) -> int:
    for f in files:
        check_schema(read_schema(f), ITEMS, str(f))
    return count_rows(files)


def validate_embeddings(files: list[Path]) -> tuple[int, int]:
    dims = {f: check_embedding_schema(read_schema(f), str(f)) for f in files}
    if len(set(dims.values())) > 1:
        raise InputError(f"embedding dimensions differ between files: "
                         f"{ {str(k): v for k, v in list(dims.items())[:4]} }")
    return count_rows(files), next(iter(dims.values()))


def _duplicates_in_partition(k: int, directory: Path) -> list[int]:
    t = read_partition(directory)
    ids = t.column("item_id")
    if ids.null_count:
        return [-1]
    u, c = np.unique(ids.to_numpy(), return_counts=True)
    return u[c > 1][:5].tolist()


def check_unique_ids(ds, work: Path, num_partitions: int, where: str) -> None:
    hash_partition(ds.select_columns(["item_id"]), ["item_id"], work, num_partitions)
    dups = sorted(x for v in map_partitions(work, _duplicates_in_partition).values() for x in v)
    shutil.rmtree(work, ignore_errors=True)
    if -1 in dups:
        raise InputError(f"{where}: null item_id")
    if dups:
        raise InputError(f"{where}: duplicate item_id {dups[:5]} (ids must be unique)")


# ----------------------------------------------------------------------------- fit sample
def _sample_mask(ids: np.ndarray, seed: int, keep_fraction: float) -> np.ndarray:
    h = hash_rows(np.stack([ids, np.full_like(ids, seed)], axis=1))
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53) < keep_fraction


def _sample_batch(batch: pa.Table, seed: int, keep_fraction: float) -> pa.Table:
    return batch.filter(pa.array(_sample_mask(batch.column("item_id").to_numpy(), seed, keep_fraction)))


def fit_sample(ds, n_rows: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic sample of ~``size`` rows chosen by a hash of (item_id, seed), ordered by id."""
    frac = min(1.0, size / max(n_rows, 1))
    tables = [b for b in ds.map_batches(_sample_batch, fn_kwargs={"seed": seed, "keep_fraction": frac},
                                        batch_format="pyarrow").iter_batches(batch_format="pyarrow", batch_size=None)
              if b.num_rows]
    if not tables:
        raise InputError("the fit sample is empty")
    t = pa.concat_tables(tables)
    t = t.take(pa.compute.sort_indices(t, [("item_id", "ascending")]))
    return t.column("item_id").to_numpy(), embedding_matrix(t.combine_chunks())


# ----------------------------------------------------------------------------- suffix step
def _suffix_partition(k: int, directory: Path, table_dir: str, codebook_sizes: list[int], metadata: dict) -> dict:
    """Suffix one hash partition of the code tuple and write it as ``table_dir/part-<k>.parquet``."""
    t = read_partition(directory)
    levels = len(codebook_sizes)
    ids = t.column("item_id").to_numpy()
    codes = np.stack([t.column(f"c{j}").to_numpy() for j in range(levels)], axis=1)
    suffix, hist = assign_suffix(ids, codes)
    if suffix.max() > MAX_SUFFIX:
        raise InputError(f"{len(hist) - 1} items share one code tuple: more than a uint16 suffix holds "
                         f"(the quantizer collapsed; raise levels/codebook size)")
    order = np.argsort(ids, kind="stable")
    schema = token_table_schema(codebook_sizes, metadata)
    cols = [pa.array(ids[order], pa.int64())]
    cols += [pa.array(codes[order, j], schema.field(f"c{j}").type) for j in range(levels)]
    cols.append(pa.array(suffix[order].astype(np.uint16), pa.uint16()))
    write_table(pa.Table.from_arrays(cols, schema=schema), Path(table_dir) / f"part-{k:05d}.parquet")
    counts = [np.bincount(codes[:, j].astype(np.int64), minlength=codebook_sizes[j]) for j in range(levels)]
    return {"rows": len(ids), "hist": hist, "counts": counts}


# ----------------------------------------------------------------------------- the job
def run(s: TokenizeItemsSettings) -> dict:
    inputs = [s.items, s.embeddings, s.encoder.model_path, s.config]
    with job_output(s.output, "tokenize_items", inputs, s.overwrite) as stage:
        what = "items" if s.items else "embeddings"
        files = parquet_files(s.items or s.embeddings, what) if s.sample is None else []
        with input_read_errors(files, what):  # a corrupt page met by a Ray Data read task names its file
            report = tokenize(s, stage)
    out = Path(s.output).absolute()
    log.info("collision rate before suffix %.4f, largest group %d; utilisation per level %s",
             report["collisions"]["collision_rate"], report["collisions"]["largest_group"],
             [round(l["utilisation"], 3) for l in report["levels"]])
    print(f"token table: {out / 'token_table'}\nreport:      {out / 'report.json'}\n"
          f"quantizer:   {out / 'quantizer'}")
    return report


def tokenize(s: TokenizeItemsSettings, stage: Path) -> dict:
    """The job's work, written into ``stage`` (published by ``run`` when it returns)."""
    import ray.data

    from semrec.pipelines.runtime import check_actor_budget, init_ray

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    # cheap checks (schemas, footers) before Ray starts, so bad input fails in a second
    if s.items is not None:
        n = validate_items(parquet_files(s.items, "items"))
    elif s.embeddings is not None:
        n, dim = validate_embeddings(parquet_files(s.embeddings, "embeddings"))
    if s.sample is None and n == 0:
        raise InputError(f"{s.items or s.embeddings}: zero rows")
    init_ray(s.ray)
    rs = s.ray
    check_actor_budget(rs)
    threads = rs.threads or max(1, math.ceil(rs.cpus_per_actor))
    work = stage / "_work"
    items_path, emb_path = s.items, s.embeddings
    if s.sample:
        from semrec.data.synthetic import write_catalogue

        items_path = stage / "sample_items"
        write_catalogue(items_path, s.sample, seed=s.seed, rows_per_shard=max(1, math.ceil(s.sample / 4)))
        log.info("generated a synthetic catalogue of %d items at %s", s.sample, items_path)

    if items_path is not None:
        files = parquet_files(items_path, "items")
        n = validate_items(files)
        partitions = s.partitions or max(1, math.ceil(n / ROWS_PER_PARTITION))
        items_ds = ray.data.read_parquet([str(f) for f in files])
        check_unique_ids(items_ds, work / "ids", partitions, str(items_path))
        emb_dir = (stage / "item_embeddings") if s.keep_embeddings else (work / "item_embeddings")
        t0 = time.perf_counter()
        e = s.encoder
        items_ds.map_batches(
            EmbedItems, batch_format="pyarrow", batch_size=max(e.batch_size * 4, 256),
            fn_constructor_args=(str(e.model_path) if e.model_path else None, e.text_fields, e.empty_text,
                                 e.batch_size, e.max_length, e.dtype, e.device, threads),
            compute=ray.data.ActorPoolStrategy(size=rs.actors), num_cpus=rs.cpus_per_actor,
            num_gpus=rs.gpus_per_actor or None, max_restarts=rs.actor_restarts,
        ).write_parquet(str(emb_dir))
        timings["embed_s"] = time.perf_counter() - t0
        emb_files = parquet_files(emb_dir, "item_embeddings")
        written = count_rows(emb_files)
        if written != n:
            raise InputError(f"embedding stage wrote {written} rows for {n} items")
        dim = check_embedding_schema(read_schema(emb_files[0]), str(emb_files[0]))
    else:
        emb_files = parquet_files(emb_path, "embeddings")
        partitions = s.partitions or max(1, math.ceil(n / ROWS_PER_PARTITION))
        check_unique_ids(ray.data.read_parquet([str(f) for f in emb_files]), work / "ids", partitions,
                         str(emb_path))
    emb_ds = ray.data.read_parquet([str(f) for f in emb_files])
    log.info("%d items, embedding dim %d, %d partitions", n, dim, partitions)

    # fit on a deterministic sample
    t0 = time.perf_counter()
    sample_ids, x = fit_sample(emb_ds, n, s.fit_sample, s.seed)
    q = s.quantizer.build(s.seed)
    try:
        q.fit(x)
    except ValueError as err:
        raise InputError(f"quantizer: {err}") from None
    qdir = q.save(stage / "quantizer")
    fit_metrics = q.evaluate(x)
    timings["fit_s"] = time.perf_counter() - t0
    fingerprint = q.fingerprint()
    log.info("fitted %s on %d rows in %.1fs (id %s)", q.kind, len(x), timings["fit_s"], fingerprint)

    # assign every item (streaming, one quantizer per actor) into hash partitions of the code tuple
    t0 = time.perf_counter()
    codes_ds = emb_ds.map_batches(EncodeCodes, batch_format="pyarrow", batch_size=rs.batch_size,
                                  fn_constructor_args=(str(qdir), threads),
                                  compute=ray.data.ActorPoolStrategy(size=rs.actors), num_cpus=rs.cpus_per_actor,
                                  max_restarts=rs.actor_restarts)
    hash_partition(codes_ds, [f"c{j}" for j in range(q.levels)], work / "codes", partitions)
    timings["encode_s"] = time.perf_counter() - t0

    # suffix each partition independently
    t0 = time.perf_counter()
    table_dir = stage / "token_table"
    table_dir.mkdir()
    meta = {"table": "token_table", "quantizer": q.kind, "quantizer_id": fingerprint, "levels": q.levels,
            "codebook_sizes": q.codebook_sizes, "distances": q.distance_names, "seed": s.seed}
    results = map_partitions(work / "codes", _suffix_partition, str(table_dir), q.codebook_sizes, meta)
    timings["suffix_s"] = time.perf_counter() - t0
    shutil.rmtree(work, ignore_errors=True)

    # validate and describe
    rows = sum(r["rows"] for r in results.values())
    if rows != n:
        raise InputError(f"token table has {rows} rows for {n} input items")
    out_files = parquet_files(table_dir, "token table")
    expected = token_table_schema(q.codebook_sizes)
    for f in out_files:
        if not read_schema(f).remove_metadata().equals(expected):
            raise InputError(f"{f}: token table schema mismatch")
    width = max(len(r["hist"]) for r in results.values())
    hist = np.sum([np.pad(r["hist"], (0, width - len(r["hist"]))) for r in results.values()], axis=0)
    level_counts = [np.sum([r["counts"][j] for r in results.values()], axis=0) for j in range(q.levels)]
    table_bytes = sum(f.stat().st_size for f in out_files)
    timings["total_s"] = time.perf_counter() - t_start
    report = {
        "items": n,
        "embedding_dim": dim,
        "quantizer": {"kind": q.kind, "id": fingerprint, "codebook_sizes": q.codebook_sizes,
                      "distances": q.distance_names, "fit_rows": int(len(x)), "fitted": q.fitted_},
        "levels": [counts_stats(c) for c in level_counts],
        "collisions": {**group_size_stats(hist, n),
                       "group_size_histogram": {int(k): int(v) for k, v in enumerate(hist) if v}},
        "fit_sample": {"rows": int(len(x)), "reconstruction_mse": fit_metrics["reconstruction_mse"]},
        "token_table": {"files": len(out_files), "bytes": table_bytes, "bytes_per_row": table_bytes / n},
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }
    write_manifest(table_dir, quantizer_id=fingerprint, schema="token_table", schema_version=1,
                   codebook_sizes=q.codebook_sizes, distances=q.distance_names, seed=s.seed)
    (stage / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    if s.plots:
        from semrec.pipelines.report import plot_code_usage, plot_collision_groups

        (stage / "plots").mkdir()
        plot_code_usage(level_counts, stage / "plots" / "code_usage.png")
        plot_collision_groups(hist, stage / "plots" / "collision_groups.png")
    write_effective(s, stage / "effective_config.json")
    return report


def main(argv: list[str] | None = None) -> int:
    from semrec.pipelines.runtime import job_main

    return job_main(TokenizeItemsSettings, run, "tokenize_items", argv)
