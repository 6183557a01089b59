"""Same seed and settings => the same bits: RQ-VAE fits at one and two threads, run to run (here for the fit,
and for the whole job in test_tokenize_job.py); embeddings independent of batching; fits leave the caller's RNG
alone. Before the fix, two 2-thread RQ-VAE fits already differed. The Beauty-sized whole-job check (default
threads against a single-threaded process, ~1.7 min) is in benchmarks/bench_slow_runs.py."""

import numpy as np
import torch

from semrec.data.synthetic import World, item_shard
from semrec.quant import RQVAE, ResidualKMeans
from helpers import clustered


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
