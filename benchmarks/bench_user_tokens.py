"""User tokenization at scale: `tokenize_users` over synthetic user_sequences tables of 1M and 10M users
(1M items, mean length ~20; the tables of bench_train_stream), side by side in one session.

Each run fits the autoencoder on a 100k-user hash sample (2 epochs, hidden 32, 1 layer, max_len 20), then
encodes every user with one actor and quantizes z (RQ-VAE 3 x 256 fitted on 200k vectors). Measured:
users/s of the encoding stage, wall time, and the peak RSS of any single process (driver, Ray Train
worker, actors, Ray Data tasks) and of all of them together; asserts that the single-process peak at
10M users is at most 1.3x that at 1M (no process holds the table). Writes
benchmarks/results/user_tokens_scale.md with the 100M-user extrapolation (arithmetic, labelled).
`pytest benchmarks/bench_user_tokens.py -s` (hours on 2 cores: the 10M encode dominates).
"""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from benchlib import PeakRSS, write_result

from semrec.data.io import write_table
from semrec.pipelines.tokenize_users import main
from semrec.schemas import token_table_schema

pytestmark = pytest.mark.slow
DATA = Path("out/bench_train_stream")  # the same synthetic tables as the streamed-training benchmark
WORK = Path("out/bench_user_tokens")
N_ITEMS = 1_000_000
RUNS: dict[int, dict] = {}
MB = 2**20


def _item_tokens() -> Path:
    """A token table for the 1M synthetic items: level 0 = the item's topic (id % 64), then hashed levels."""
    out = WORK / "item_tokens"
    if not (out / "token_table" / "part-00000.parquet").exists():
        ids = np.arange(1, N_ITEMS + 1)
        sizes = [64, 256, 256]
        meta = {"table": "token_table", "quantizer_id": "synthetic-topics", "codebook_sizes": sizes}
        schema = token_table_schema(sizes, meta)
        cols = [pa.array(ids, pa.int64()), pa.array(ids % 64, pa.uint8()), pa.array((ids * 7919) % 256, pa.uint8()),
                pa.array((ids // 64) % 256, pa.uint8()), pa.array(np.zeros(N_ITEMS), pa.uint16())]
        (out / "token_table").mkdir(parents=True, exist_ok=True)
        write_table(pa.Table.from_arrays(cols, schema=schema), out / "token_table" / "part-00000.parquet")
    return out


@pytest.mark.parametrize("users", [1_000_000, 10_000_000], ids=["1M", "10M"])
def test_user_tokenization_at_scale(benchmark, ray_local, users):
    from bench_train_stream import _table

    seqs = _table(f"seq{users}", users, N_ITEMS, 0, 500_000, 20)
    out = WORK / f"users{users}"
    args = ["--sequences", str(seqs), "--item_tokens", str(_item_tokens()), "--output", str(out), "--overwrite",
            "--run_dir", str(WORK / "ray_train"), "--run_name", f"users{users}", "--model.hidden", "32",
            "--model.item_dim", "32", "--model.layers", "1", "--model.max_len", "20", "--train.epochs", "2",
            "--train.batch_size", "512", "--fit_users", "100000", "--no-keep_embeddings", "--no-plots",
            "--ray.batch_size", "4096"]

    def job():
        with PeakRSS(interval=0.5) as rss:
            assert main(args) == 0
        return rss

    rss = benchmark.pedantic(job, rounds=1, iterations=1)
    report = json.loads((out / "report.json").read_text())
    m = {"users": users, "users_per_s": report["users_per_s"], "wall_s": report["timings"]["total_s"],
         "encode_users_s": report["timings"]["encode_users_s"], "encoder_fit_s": report["timings"]["encoder_fit_s"],
         "peak_rss_single_mb": round(rss.peak_single / MB), "peak_rss_total_mb": round(rss.peak_total / MB),
         "unique_tuples": report["collisions"]["unique_tuples"],
         "table_bytes_per_user": report["user_token_table"]["bytes_per_row"]}
    benchmark.extra_info.update(m)
    RUNS[users] = m
    if len(RUNS) == 2:
        small, big = RUNS[1_000_000], RUNS[10_000_000]
        md = ["tokenize_users on synthetic tables (1M items, mean length ~20), 1 encoding actor, 2 cores.", "",
              "| users | encode users/s | encode s | encoder fit s | job wall s | peak RSS, one process (MB) | "
              "peak RSS, all (MB) | unique code tuples | table bytes / user |", "|---|---|---|---|---|---|---|---|---|"]
        for r in (small, big):
            md.append(f"| {r['users']:,} | {r['users_per_s']:,.0f} | {r['encode_users_s']:.0f} | "
                      f"{r['encoder_fit_s']:.0f} | {r['wall_s']:.0f} | {r['peak_rss_single_mb']:,} | "
                      f"{r['peak_rss_total_mb']:,} | {r['unique_tuples']:,} | {r['table_bytes_per_user']:.2f} |")
        ratio = big["peak_rss_single_mb"] / small["peak_rss_single_mb"]
        md.append(f"\nPeak single-process RSS 10M / 1M: {ratio:.2f}x. Extrapolation (arithmetic, not measured): "
                  f"100M users at {big['users_per_s']:,.0f} users/s per actor take "
                  f"{1e8 / big['users_per_s'] / 3600:.1f} h / N actors for the encoding stage.")
        write_result("user_tokens_scale", "\n".join(md))
        assert ratio <= 1.3
