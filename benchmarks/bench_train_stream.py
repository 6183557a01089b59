"""SASRec training from streamed Ray Data shards (``--train.source stream``) on synthetic tables, and the
streamed source against the in-memory one at Beauty size, side by side in one run.

- scale: 1M and 10M users (mean length 20, 1M items), one epoch on 1 worker: the training pass's
  examples/s per worker and the peak RSS of the Ray Train worker process (the table is never held:
  RSS should stay flat when the users grow 10x). Validation runs on a fixed 1% hash sample of the users
  (``--eval.valid_fraction``), the final test on every user (sampled metrics; full ranking off).
- Beauty size (22,363 users, 12,101 items, mean length ~9, the paper's SASRec shapes): memory and
  stream sources alternate, 4 epochs each, twice; examples/s of the training pass per worker in each
  run's last epoch, median (the run keeps its 2 newest checkpoints, which hold the epoch metrics).

`pytest benchmarks/bench_train_stream.py -s` (about an hour on 2 cores); tables land in
benchmarks/results/train_stream.md.
"""

import json
import statistics
from pathlib import Path

import pytest
from benchlib import PeakRSS, write_result

from semrec.data.synthetic import write_sequences
from semrec.pipelines.train_seqrec import main

pytestmark = pytest.mark.slow
TINY = ["--model.hidden", "16", "--model.layers", "1", "--model.heads", "1", "--model.max_len", "20",
        "--train.batch_size", "4096", "--train.epochs", "1", "--no-eval.full_ranking", "--eval.valid_fraction", "0.01"]
BEAUTY = ["--model.hidden", "64", "--model.layers", "2", "--model.heads", "2", "--model.max_len", "50",
          "--train.batch_size", "256", "--train.epochs", "4", "--no-eval.full_ranking"]
SCALE: dict[str, dict] = {}
DATA = Path("out/bench_train_stream")
MB = 2**20


def _table(name: str, users: int, items: int, seed: int, rows_per_shard: int, mean_length: int) -> Path:
    """A synthetic user_sequences table, generated once under out/ (the same bytes for the same arguments)."""
    data = DATA / name
    if not (data / "_DONE").exists():
        write_sequences(data, users, items, seed=seed, rows_per_shard=rows_per_shard, mean_length=mean_length)
        (data / "_DONE").write_text(f"{users} users, {items} items, seed {seed}\n")
    return data


def _train(data: Path, work: Path, name: str, extra: list[str]) -> dict:
    out = work / name
    args = ["--sequences", str(data), "--output", str(out), "--run_dir", str(work / "runs"), "--run_name", name,
            "--eval.negatives_dir", str(work / "negatives"), "--dataset", "synthetic", "--overwrite", *extra]
    with PeakRSS(interval=0.5, title="RayTrainWorker") as rss:
        assert main(args) == 0
    metas = sorted((json.loads(p.read_text()) for p in (work / "runs" / name).glob("**/checkpoint.json")),
                   key=lambda m: m["epoch"])
    report = json.loads((out / "metrics.json").read_text())
    return {"report": report, "epochs": metas, "worker_peak_rss_mb": round(rss.peak_titled / MB),
            "all_processes_peak_rss_mb": round(rss.peak_total / MB)}


@pytest.mark.parametrize("users", [1_000_000, 10_000_000], ids=["1M", "10M"])
def test_streamed_epoch_at_scale(benchmark, ray_local, tmp_path_factory, users):
    data = _table(f"seq{users}", users, 1_000_000, 0, 500_000, 20)
    work = tmp_path_factory.mktemp(f"run{users}")
    run = benchmark.pedantic(_train, args=(data, work, f"scale{users}", [*TINY, "--train.source", "stream",
                                                                     "--n_items", "1000000"]),
                             rounds=1, iterations=1)
    epoch = run["epochs"][-1]
    m = {"users": users, "examples": epoch["examples"], "train_pass_s": epoch["train_pass_s"],
         "train_examples_per_s_per_worker": epoch["train_examples_per_s_per_worker"],
         "worker_peak_rss_mb": run["worker_peak_rss_mb"], "all_processes_peak_rss_mb": run["all_processes_peak_rss_mb"],
         "wall_s": run["report"]["wall_s"], "test_HIT@10": round(run["report"]["metrics"]["test_HIT@10"], 4)}
    benchmark.extra_info.update(m)
    SCALE[users] = m
    if len(SCALE) == 2:
        small, big = SCALE[1_000_000], SCALE[10_000_000]
        md = ["SASRec (hidden 16, 1 layer, max_len 20, batch 4096), one epoch streamed from Ray Data on 1 worker "
              "(1 CPU; Ray Data reads on the other), 1M items, mean sequence length 20.", "",
              "| users | training examples | training pass s | examples/s per worker | peak RSS, worker (MB) | "
              "peak RSS, all Ray processes (MB) | job wall s | test HIT@10 |", "|---|---|---|---|---|---|---|---|"]
        for r in (small, big):
            md.append(f"| {r['users']:,} | {r['examples']:,} | {r['train_pass_s']} | "
                      f"{r['train_examples_per_s_per_worker']:,.0f} | {r['worker_peak_rss_mb']:,} | "
                      f"{r['all_processes_peak_rss_mb']:,} | {r['wall_s']} | {r['test_HIT@10']} |")
        md.append(f"\nWorker peak RSS 10M / 1M users: {big['worker_peak_rss_mb'] / small['worker_peak_rss_mb']:.2f}x "
                  f"(users 10x); examples/s per worker 10M / 1M: "
                  f"{big['train_examples_per_s_per_worker'] / small['train_examples_per_s_per_worker']:.2f}x.")
        write_result("train_stream_scale", "\n".join(md))
        assert big["worker_peak_rss_mb"] <= 1.3 * small["worker_peak_rss_mb"]


def test_stream_vs_memory_at_beauty_size(benchmark, ray_local, tmp_path_factory):
    data = _table("beauty_sized", 22_363, 12_101, 1, 22_363, 9)
    work = tmp_path_factory.mktemp("beauty_runs")

    def both() -> dict:
        out = {"memory": [], "stream": []}
        for rnd in range(2):
            for source in ("memory", "stream"):
                run = _train(data, work, f"{source}{rnd}", [*BEAUTY, "--train.source", source, "--n_items", "12101"])
                out[source].append(run["epochs"][-1]["train_examples_per_s_per_worker"])  # epoch 4 (1 warms up)
                out[f"{source}_worker_rss_mb"] = max(out.get(f"{source}_worker_rss_mb", 0), run["worker_peak_rss_mb"])
        return out

    r = benchmark.pedantic(both, rounds=1, iterations=1)
    mem, stream = statistics.median(r["memory"]), statistics.median(r["stream"])
    ratio = stream / mem
    benchmark.extra_info.update({"memory_examples_per_s": mem, "stream_examples_per_s": stream, "ratio": ratio,
                                 "memory_worker_rss_mb": r["memory_worker_rss_mb"],
                                 "stream_worker_rss_mb": r["stream_worker_rss_mb"]})
    write_result("train_stream_beauty_size", "\n".join([
        "SASRec at Beauty size (synthetic: 22,363 users, 12,101 items, mean length 9; hidden 64, 2 layers, batch 256), "
        "1 worker: examples/s of the training pass per worker in the last (4th) epoch of each run, two runs per "
        "source alternating memory / stream in one session, median.", "",
        "| source | examples/s per worker | per run | peak RSS, worker (MB) |", "|---|---|---|---|",
        f"| memory | {mem:,.0f} | {', '.join(f'{x:,.0f}' for x in r['memory'])} | {r['memory_worker_rss_mb']:,} |",
        f"| stream (Ray Data) | {stream:,.0f} | {', '.join(f'{x:,.0f}' for x in r['stream'])} | "
        f"{r['stream_worker_rss_mb']:,} |", "",
        f"stream / memory: {ratio:.2f}x (target >= 0.8x)."]))
    assert ratio >= 0.8
