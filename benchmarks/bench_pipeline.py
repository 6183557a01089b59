"""Embedding stage: Ray Data (class UDF, model loaded once per actor) vs a bare single-process loop
with the same encoder, on the same synthetic catalogue, in one run."""

import time

import pyarrow.parquet as pq
import pytest
import torch

from semrec.data.items import compose_texts
from semrec.data.synthetic import write_catalogue
from semrec.encoders.text import SentenceEncoder
from semrec.pipelines.udfs import EmbedItems
from benchlib import write_result

N = 3000


@pytest.mark.slow
def test_ray_data_vs_bare_loop(benchmark, ray_local, tmp_path):
    import ray.data

    write_catalogue(tmp_path / "items", N, seed=0, rows_per_shard=750)
    files = sorted(str(p) for p in (tmp_path / "items").glob("*.parquet"))

    def bare():
        torch.set_num_threads(2)
        enc = SentenceEncoder(max_length=64, batch_size=64)
        for f in files:
            for b in pq.ParquetFile(f).iter_batches(batch_size=256):
                enc.encode(compose_texts(b))

    def ray_pipeline():
        ray.data.read_parquet(files).map_batches(
            EmbedItems, batch_format="pyarrow", batch_size=256,
            fn_constructor_args=(None, ["title", "brand", "categories"], "error", 64, 64, "float32", "cpu", 2),
            compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1).write_parquet(str(tmp_path / f"emb{time.time()}"))

    t0 = time.perf_counter()
    bare()
    t_bare = time.perf_counter() - t0
    t0 = time.perf_counter()
    benchmark.pedantic(ray_pipeline, rounds=1, iterations=1)
    t_ray = time.perf_counter() - t0
    info = {"items": N, "bare_items_per_s": round(N / t_bare, 1), "ray_items_per_s": round(N / t_ray, 1),
            "ray_over_bare_throughput": round(t_bare / t_ray, 3)}
    benchmark.extra_info.update(info)
    write_result("pipeline", "\n".join([
        f"Embedding {N:,} synthetic items with the bundled MiniLM on 2 cores (model load included in both):", "",
        "| path | items/s |", "|---|---|",
        f"| bare loop, one process, 2 torch threads | {info['bare_items_per_s']} |",
        f"| Ray Data, 1 actor (1 CPU reserved, 2 threads) + read/write tasks | {info['ray_items_per_s']} |",
        f"\nRay / bare throughput: {info['ray_over_bare_throughput']}x"]))
