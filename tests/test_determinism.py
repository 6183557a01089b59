"""Same input, seed and settings => byte-identical token table at the default thread count and single-threaded
(OMP_NUM_THREADS=1, as a `ray job submit` driver runs); run to run at default threads (here for the fit, and
for the whole job in test_tokenize_job.py); embeddings independent of batching; fits leave the caller's RNG
alone. Before the fix, two 2-thread RQ-VAE fits already differed."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from semrec.data.io import write_table
from semrec.data.synthetic import World, item_shard
from semrec.pipelines.tokenize_items import main as tokenize_main
from semrec.quant import RQVAE, ResidualKMeans
from helpers import ROOT, clustered

BEAUTY_ITEMS, MINILM_DIM = 12_101, 384  # Amazon Beauty's catalogue size and the bundled encoder's width


def table_digests(out):
    manifest = json.loads((out / "token_table" / "_MANIFEST.json").read_text())
    return ([(f["path"], f["sha256"]) for f in manifest["files"]],
            json.loads((out / "report.json").read_text())["quantizer"]["id"])


def test_beauty_sized_default_rqvae_is_byte_identical_at_default_threads_and_single_threaded(ray_local, tmp_path):
    emb = tmp_path / "emb"
    emb.mkdir()
    world = World(seed=3, embedding_dim=MINILM_DIM)
    for k, (a, b) in enumerate([(1, 6001), (6001, BEAUTY_ITEMS + 1)]):
        write_table(item_shard(world, a, b, with_text=False), emb / f"part-{k}.parquet")
    # the default RQ-VAE (3 x 256, hybrid distance) for 20 of its 100 epochs, the length at which 2-thread fits
    # differed before the fix (README, Determinism): thread-dependent accumulation changes bits at every step,
    # and 100 epochs twice cost ~4 minutes of CI
    args = ["--embeddings", str(emb), "--no-plots", "--quantizer.kind", "rqvae", "--quantizer.epochs", "20"]
    assert torch.get_num_threads() > 1 or os.cpu_count() == 1  # this process runs at the default thread count
    assert tokenize_main([*args, "--output", str(tmp_path / "default")]) == 0
    # then single-threaded, as a `ray job submit` driver runs, in its own process (one after the other: two
    # fits sharing 2 cores spin-wait and take twice as long)
    single = subprocess.run([sys.executable, str(ROOT / "jobs" / "tokenize_items.py"), *args,
                             "--output", str(tmp_path / "single")], cwd=ROOT, capture_output=True, text=True,
                            timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    assert single.returncode == 0, single.stderr[-3000:]
    assert table_digests(tmp_path / "default") == table_digests(tmp_path / "single")
    assert (tmp_path / "default" / "quantizer" / "weights.safetensors").read_bytes() == \
        (tmp_path / "single" / "quantizer" / "weights.safetensors").read_bytes()


def test_fit_leaves_the_global_rng_alone_and_restores_determinism_flags():
    x = clustered(n=600, d=16)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    expected_next = torch.rand(3)
    torch.set_rng_state(before)
    RQVAE(levels=2, codebook_size=8, latent_dim=4, hidden=[16], epochs=2, seed=9).fit(x)
    ResidualKMeans(levels=2, codebook_size=8).fit(x)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(torch.rand(3), expected_next)
    assert not torch.are_deterministic_algorithms_enabled()


def test_rqvae_fit_is_identical_at_one_and_two_threads():
    x = clustered(n=3000, d=32, centres=50)
    prev = torch.get_num_threads()
    try:
        fps = []
        for threads in (2, 1, 2):
            torch.set_num_threads(threads)
            fps.append(RQVAE(codebook_size=32, latent_dim=8, hidden=[64, 32], epochs=8, seed=1).fit(x).fingerprint())
    finally:
        torch.set_num_threads(prev)
    assert fps[0] == fps[1] == fps[2]


def test_text_embeddings_do_not_depend_on_batch_composition():
    from semrec.data.items import compose_texts
    from semrec.encoders.text import SentenceEncoder

    texts = compose_texts(item_shard(World(seed=0), 1, 161))
    enc = SentenceEncoder(max_length=64, threads=1)
    whole = enc.encode(texts)
    reversed_ = enc.encode(texts[::-1])[::-1]
    chunked = np.concatenate([enc.encode(texts[i:i + 37]) for i in range(0, len(texts), 37)])
    assert np.array_equal(whole, reversed_) and np.array_equal(whole, chunked)
    assert np.allclose(np.linalg.norm(whole, axis=1), 1, atol=1e-5)
