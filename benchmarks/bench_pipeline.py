"""Embedding stage of tokenize_items (Ray Data: row-group pieces -> actor pool reading and embedding them -> write;
`embed_items`, the job's own code and defaults) vs a bare single-process loop with the same encoder, on the same synthetic catalogues, in one
run with the paths interleaved (machines are noisy).

Both sides start cold and include the same work: the bare loop is a fresh Python process (imports, model load,
read each file, embed, write Parquet), the pipeline's actor imports and loads the same model in its own process.
Two catalogue sizes show the fixed start-up cost (actors importing and loading the model) against the rate."""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from semrec.config.settings import EncoderSettings, RaySettings
from semrec.data.synthetic import write_catalogue
from semrec.pipelines.runtime import resolve_actor_pool
from semrec.pipelines.tokenize_items import embed_items, rows_per_call
from benchlib import write_result

SIZES = (2000, 6000)
ROUNDS = 2

BARE = """
import sys, time
import pyarrow as pa, pyarrow.parquet as pq
from semrec.data.items import compose_texts
from semrec.encoders.text import SentenceEncoder
from semrec.pipelines.udfs import embeddings_array
files, out, fields, call, rows, max_length, threads = sys.argv[1].split(","), sys.argv[2], sys.argv[3].split(","), \\
    *map(int, sys.argv[4:8])
enc = SentenceEncoder(None, max_length=max_length, batch_size=rows, threads=threads)
for i, f in enumerate(files):
    parts = []
    for b in pq.ParquetFile(f).iter_batches(batch_size=call):
        parts.append(pa.table({"item_id": b.column("item_id"), "embedding": embeddings_array(enc.encode(
            compose_texts(b, fields)))}))
    pq.write_table(pa.concat_tables(parts), f"{out}/part-{i:05d}.parquet")
"""


def _embeddings(folder) -> np.ndarray:
    t = pq.read_table(folder).sort_by("item_id")
    col = t.column("embedding").combine_chunks()
    return col.flatten().to_numpy().reshape(len(t), -1)


@pytest.mark.slow
def test_ray_data_vs_bare_loop(benchmark, ray_local, tmp_path):

    e = EncoderSettings()
    # the job's default on this 2-CPU local Ray (one 1-thread actor per CPU), and one actor with both threads
    configs = {"2 actors (default)": resolve_actor_pool(RaySettings()),
               "1 actor": resolve_actor_pool(RaySettings(actors=1))}
    assert configs["2 actors (default)"].actors == 2, "this benchmark is written for a 2-CPU local Ray"
    threads = {k: rs.threads for k, rs in configs.items()}
    times = {(n, p): [] for n in SIZES for p in ["bare", *configs]}
    run = 0
    catalogues = {}
    for n in SIZES:
        write_catalogue(tmp_path / f"items{n}", n, seed=0, rows_per_shard=750)
        catalogues[n] = sorted(str(p) for p in (tmp_path / f"items{n}").glob("*.parquet"))

    def bare(files, out):
        out.mkdir()
        subprocess.run([sys.executable, "-c", BARE, ",".join(files), str(out), ",".join(e.text_fields),
                        str(rows_per_call(e)), str(e.batch_size), str(e.max_length), "2"], check=True)

    def pipeline(files, out, path):
        embed_items([Path(f) for f in files], e, configs[path], out)

    outputs = {}
    for r in range(ROUNDS):
        for n in SIZES:
            for path in ["bare", *configs]:
                run += 1
                out = tmp_path / f"out{run}"
                t0 = time.perf_counter()
                if path == "bare":
                    bare(catalogues[n], out)
                else:
                    pipeline(catalogues[n], out, path)
                times[(n, path)].append(time.perf_counter() - t0)
                outputs[(n, path)] = out
    # the same embeddings either way (the encoder's fixed forward shapes make them independent of batching)
    ref = _embeddings(outputs[(SIZES[0], "bare")])
    for p in configs:
        np.testing.assert_array_equal(_embeddings(outputs[(SIZES[0], p)]), ref)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)

    labels = {p: f"Ray Data, {p}: {rs.cpus_per_actor:g} CPU and {rs.threads} thread(s) each, read fused into the "
                 f"actors, write tasks" for p, rs in configs.items()}
    markdown, info = render(times, labels, rows_per_call(e), e.batch_size)
    benchmark.extra_info.update({"threads": threads, **info})
    write_result("pipeline", markdown)
    n2 = SIZES[-1]
    assert info[f"2 actors (default)_ratio_{n2}"] >= 0.9, info


def render(times: dict, labels: dict, call: int, rows: int) -> tuple[str, dict]:
    """The result table from the measured seconds per (size, path): best of the rounds, items/s, ratio to bare."""
    sizes = sorted({n for n, _ in times})
    paths = list(dict.fromkeys(p for _, p in times))
    best = {k: min(v) for k, v in times.items()}
    info = {"sizes": sizes, "rounds": len(next(iter(times.values()))), "rows_per_call": call,
            "seconds": {f"{n}/{p}": [round(x, 2) for x in v] for (n, p), v in times.items()}}
    lines = []
    for p in paths:
        cells = []
        for n in sizes:
            ratio = best[(n, "bare")] / best[(n, p)]
            info[f"{p}_ratio_{n}"] = round(ratio, 3)
            cells.append(f"{n / best[(n, p)]:.1f} ({ratio:.3f}x)")
        label = "bare loop, one process, 2 torch threads" if p == "bare" else labels[p]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    markdown = "\n".join([
        f"Embedding synthetic catalogues with the bundled MiniLM on 2 cores: tokenize_items' embedding stage "
        f"(`embed_items`, {call:,} rows per call, {rows}-row forward passes) vs a bare loop with the same encoder. "
        f"Both start cold (imports and model load included). Best of {info['rounds']} interleaved rounds; items/s "
        f"and (in brackets) the ratio to the bare loop.", "",
        "| path | " + " | ".join(f"{n:,} items" for n in sizes) + " |",
        "|---|" + "---|" * len(sizes), *lines, "",
        "All seconds (every round): " + json.dumps(info["seconds"])])
    return markdown, info
