"""Long end-to-end runs kept out of the CI suite (1.5-2 min each on 2 cores; ~6 min together):

- ``infra/retrain.beauty.toml`` as shipped, on real Beauty data (moved from tests/test_retrain.py);
- train_seqrec on a 3,000-user slice of real Beauty (moved from tests/test_train_seqrec.py);
- the default RQ-VAE on a Beauty-sized catalogue, byte-identical at the default thread count and
  single-threaded (moved from tests/test_determinism.py, which keeps the small 1-vs-2-thread fit test).

They are tests, not measurements: each asserts what it did in the suite. Run them with
``.venv/bin/python -m pytest benchmarks/bench_slow_runs.py -s``; the real-data ones skip with the path when
``../shared/data`` is absent."""

import json
import os
import subprocess
import sys
import time

import pytest
import torch

from helpers import ROOT, manifest_digests, shared
from semrec.data.io import write_table
from semrec.data.synthetic import World, item_shard

pytestmark = pytest.mark.slow

BEAUTY_ITEMS, MINILM_DIM = 12_101, 384  # Amazon Beauty's catalogue size and the bundled encoder's width


@pytest.mark.realdata
def test_the_shipped_beauty_pipeline_end_to_end(ray_local, tmp_path, monkeypatch):
    """infra/retrain.beauty.toml as shipped, on a 600-item catalogue and 2 epochs (the only edits): items ->
    sequential model, promoted; the rerun skips every step."""
    from semrec.pipelines.retrain import main

    shared("amazon_beauty", "Beauty.txt")
    text = (ROOT / "infra" / "retrain.beauty.toml").read_text()
    for old, new in [("items = 100000", "items = 600"), ('"train.epochs" = 200', '"train.epochs" = 2'),
                     ('root = "out/retrain-beauty"', f'root = "{tmp_path / "r"}"'),
                     ('"out/retrain-beauty/negatives"', f'"{tmp_path / "r" / "negatives"}"')]:
        assert old in text
        text = text.replace(old, new)
    config = tmp_path / "beauty.toml"
    config.write_text(text)
    monkeypatch.chdir(ROOT)  # the shipped paths are relative to the project root
    assert main(["run", "--config", str(config)]) == 0
    first = json.loads((tmp_path / "r" / "current" / "run.json").read_text())
    assert [s["status"] for s in first["steps"]] == ["ran"] * 5 and first["gate"]["new"] > 0.1
    time.sleep(1.1)
    t0 = time.perf_counter()
    assert main(["run", "--config", str(config)]) == 0
    second = json.loads((tmp_path / "r" / "current" / "run.json").read_text())
    assert [s["status"] for s in second["steps"]] == ["skipped"] * 5 and time.perf_counter() - t0 < 30


@pytest.mark.realdata
def test_beauty_slice_end_to_end(ray_local, tmp_path):
    """A small real run: 3,000 Beauty users, id mode, a few epochs."""
    from semrec.data.adapters import s3rec_sequences
    from semrec.pipelines.train_seqrec import main

    seqs = s3rec_sequences(shared("amazon_beauty", "Beauty.txt"))["user_sequences"].slice(0, 3000)
    write_table(seqs, tmp_path / "seq.parquet")
    out = tmp_path / "out"
    assert main(["--sequences", str(tmp_path / "seq.parquet"), "--n_items", "12101", "--output", str(out),
                 "--run_dir", str(tmp_path / "runs"), "--eval.negatives_dir", str(tmp_path / "neg"),
                 "--dataset", "beauty3000", "--train.epochs", "8"]) == 0
    m = json.loads((out / "metrics.json").read_text())["metrics"]
    assert m["test_HIT@10"] > 0.2  # well above the 0.10 of a random ranking


def _table_digests(out):
    return manifest_digests(out), json.loads((out / "report.json").read_text())["quantizer"]["id"]


def test_beauty_sized_default_rqvae_is_byte_identical_at_default_threads_and_single_threaded(ray_local, tmp_path):
    from semrec.pipelines.tokenize_items import main as tokenize_main

    emb = tmp_path / "emb"
    emb.mkdir()
    world = World(seed=3, embedding_dim=MINILM_DIM)
    for k, (a, b) in enumerate([(1, 6001), (6001, BEAUTY_ITEMS + 1)]):
        write_table(item_shard(world, a, b, with_text=False), emb / f"part-{k}.parquet")
    # the default RQ-VAE (3 x 256, hybrid distance) for 20 of its 100 epochs, the length at which 2-thread fits
    # differed before the fix (README, Determinism): thread-dependent accumulation changes bits at every step
    args = ["--embeddings", str(emb), "--no-plots", "--quantizer.kind", "rqvae", "--quantizer.epochs", "20"]
    assert torch.get_num_threads() > 1 or os.cpu_count() == 1  # this process runs at the default thread count
    assert tokenize_main([*args, "--output", str(tmp_path / "default")]) == 0
    # then single-threaded, as a `ray job submit` driver runs, in its own process (one after the other: two
    # fits sharing 2 cores spin-wait and take twice as long)
    single = subprocess.run([sys.executable, str(ROOT / "jobs" / "tokenize_items.py"), *args,
                             "--output", str(tmp_path / "single")], cwd=ROOT, capture_output=True, text=True,
                            timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    assert single.returncode == 0, single.stderr[-3000:]
    assert _table_digests(tmp_path / "default") == _table_digests(tmp_path / "single")
    assert (tmp_path / "default" / "quantizer" / "weights.safetensors").read_bytes() == \
        (tmp_path / "single" / "quantizer" / "weights.safetensors").read_bytes()
