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


from semrec.config import write_effective
from semrec.config.settings import EncoderSettings, RaySettings, TokenizeItemsSettings
from semrec.data.io import count_rows, input_read_errors, parquet_files, parquet_pieces, read_schema
from semrec.data.output import job_output
from semrec.errors import InputError
from semrec.schemas import ITEMS, check_embedding_schema, check_schema
from semrec.pipelines.codes import check_unique_ids, quantize
from semrec.pipelines.udfs import EmbedItemPieces

log = logging.getLogger("semrec.tokenize_items")
ROWS_PER_PARTITION = 2_000_000


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


# ----------------------------------------------------------------------------- the embedding stage
def rows_per_call(e: EncoderSettings) -> int:
    """Rows handed to one ``SentenceEncoder.encode`` call (one Ray Data batch). The encoder buckets a call's
    texts by token length and pads each bucket to whole forward passes of ``e.batch_size`` rows, so a larger
    call wastes fewer padded rows: 1,024 rows embed ~15% faster than 256 on 2 cores (bench_pipeline.py)."""
    return max(e.batch_size * 16, 1024)


def embed_items(files: list[Path], e: EncoderSettings, rs: RaySettings, out_dir: Path) -> None:
    """items Parquet files -> (item_id, embedding) Parquet at ``out_dir``: one Ray Data execution of row-group
    pieces -> actor pool (read + embed fused, the model loaded once per actor: ``EmbedItemPieces``) -> write.
    ``rs`` is the resolved actor pool (``check_actor_budget``).
    Pieces, not Ray Data's Parquet read: that read hands a small catalogue to the actor pool as one bundle, so
    a second actor idled, and its list/read tasks ran beside the model (bench_pipeline.py)."""
    import ray.data

    pieces = parquet_pieces(files, min_pieces=2 * rs.actors, min_rows=rows_per_call(e))  # every actor busy
    names = set(read_schema(files[0]).names)
    columns = ["item_id", *[f for f in e.text_fields if f in names]]
    ray.data.from_items(pieces, override_num_blocks=max(1, min(len(pieces), 1000))).map_batches(
        EmbedItemPieces, batch_format="pyarrow", batch_size=1,
        fn_constructor_args=(str(e.model_path) if e.model_path else None, e.text_fields, e.empty_text,
                             e.batch_size, e.max_length, e.dtype, e.device, rs.threads),
        fn_constructor_kwargs={"rows_per_call": rows_per_call(e), "columns": columns},
        compute=ray.data.ActorPoolStrategy(size=rs.actors), num_cpus=rs.cpus_per_actor,
        num_gpus=rs.gpus_per_actor or None, max_restarts=rs.actor_restarts,
    ).write_parquet(str(out_dir))


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
    rs = check_actor_budget(s.ray)  # the actor pool resolved for this cluster
    threads = rs.threads
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
        check_unique_ids(items_ds, work / "ids", partitions, str(items_path), "item_id")
        emb_dir = (stage / "item_embeddings") if s.keep_embeddings else (work / "item_embeddings")
        t0 = time.perf_counter()
        embed_items(files, s.encoder, rs, emb_dir)
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
                         str(emb_path), "item_id")
    emb_ds = ray.data.read_parquet([str(f) for f in emb_files])
    log.info("%d items, embedding dim %d, %d partitions", n, dim, partitions)

    quant = quantize(emb_ds, n, s.quantizer, s.seed, s.fit_sample, stage, work, partitions, "item_id", rs, threads,
                     s.plots)
    shutil.rmtree(work, ignore_errors=True)
    timings.update(quant.pop("timings"))
    timings["total_s"] = time.perf_counter() - t_start
    report = {"items": n, "embedding_dim": dim, **quant, "timings": {k: round(v, 3) for k, v in timings.items()}}
    (stage / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    write_effective(s, stage / "effective_config.json")
    return report


def main(argv: list[str] | None = None) -> int:
    from semrec.pipelines.runtime import job_main

    return job_main(TokenizeItemsSettings, run, "tokenize_items", argv)
