import numpy as np
import pytest
import torch

from semrec.errors import InputError
from semrec.quant import PCAKMeans, QUANTIZERS, RQVAE, ResidualKMeans, load_quantizer
from semrec.quant import metrics
from semrec.quant.distances import DISTANCES, resolve_distances
from semrec.quant.residual import assign_fast, assign_reference
from helpers import clustered


def test_hybrid_preset_is_cosine_then_euclidean():
    assert [d.name for d in resolve_distances("hybrid", 3)] == ["cosine", "cosine", "euclidean"]
    assert [d.name for d in resolve_distances("euclidean", 2)] == ["euclidean", "euclidean"]
    with pytest.raises(ValueError, match="unknown distance"):
        resolve_distances("manhattan", 2)
    with pytest.raises(ValueError, match="2 entries for 3 levels"):
        resolve_distances(["cosine", "euclidean"], 3)


@pytest.mark.parametrize("name", ["euclidean", "cosine"])
def test_faiss_search_equals_torch_reference(name):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2000, 16)).astype(np.float32)
    cb = rng.normal(size=(64, 16)).astype(np.float32)
    d = DISTANCES[name]
    ref = d.assign(torch.from_numpy(x), torch.from_numpy(cb)).numpy()
    fast = d.search(x, cb)
    assert (ref == fast).mean() > 0.999  # only float near-ties may differ
    scores = d.scores(torch.from_numpy(x), torch.from_numpy(cb)).numpy()
    rows = np.flatnonzero(ref != fast)
    np.testing.assert_allclose(scores[rows, ref[rows]], scores[rows, fast[rows]], atol=1e-4)


def test_residual_assign_fast_equals_reference():
    rng = np.random.default_rng(2)
    z = rng.normal(size=(1500, 8)).astype(np.float32)
    cbs = [rng.normal(size=(32, 8)).astype(np.float32) * s for s in (1.0, 0.5, 0.25)]
    dists = resolve_distances("hybrid", 3)
    ref = assign_reference(torch.from_numpy(z), [torch.from_numpy(c) for c in cbs], dists).numpy()
    assert (assign_fast(z, cbs, dists) == ref).all(axis=1).mean() > 0.995


def test_metrics_hand_computed():
    codes = np.array([[0, 1], [0, 1], [1, 0], [2, 0]])
    lv = metrics.level_stats(codes, [4, 2])
    assert lv[0]["used"] == 3 and lv[0]["utilisation"] == 0.75
    p = np.array([0.5, 0.25, 0.25])
    assert lv[0]["perplexity"] == pytest.approx(np.exp(-(p * np.log(p)).sum()))
    assert lv[1]["perplexity"] == pytest.approx(2.0)
    col = metrics.collision_stats(codes)
    assert col == {"items": 4, "unique_tuples": 3, "collision_rate": 0.25, "colliding_items": 2, "largest_group": 2}


@pytest.mark.parametrize("make", [
    lambda: RQVAE(levels=3, codebook_size=16, latent_dim=8, hidden=[32], epochs=8, batch_size=256, seed=3),
    lambda: ResidualKMeans(levels=3, codebook_size=16, seed=3),
    lambda: ResidualKMeans(levels=2, codebook_size=16, distance="hybrid", seed=3),
    lambda: PCAKMeans(pca_dim=8, codebook_size=16, positions=2, seed=3),
], ids=["rqvae", "rkmeans", "rkmeans-hybrid", "pcakmeans"])
def test_fit_encode_decode_save_load(make, tmp_path):
    x = clustered()
    q = make().fit(x)
    codes = q.encode(x)
    assert codes.shape == (len(x), q.levels) and codes.dtype == np.int64
    assert all((codes[:, j] < s).all() for j, s in enumerate(q.codebook_sizes))
    x_hat = q.decode(codes)
    assert x_hat.shape == x.shape
    m = q.evaluate(x)
    assert m["reconstruction_mse"] < np.var(x)  # better than predicting the mean
    q.save(tmp_path / "q")
    q2 = load_quantizer(tmp_path / "q")
    assert type(q2) is type(q) and q2.fingerprint() == q.fingerprint()
    np.testing.assert_array_equal(q2.encode(x), codes)
    # same seed -> same codes
    np.testing.assert_array_equal(make().fit(x).encode(x), codes)


def test_rqvae_learns_better_than_its_initialisation():
    x = clustered(n=2000, d=32, centres=20)
    short = RQVAE(levels=2, codebook_size=32, latent_dim=8, hidden=[64], epochs=1, seed=0).fit(x)
    long = RQVAE(levels=2, codebook_size=32, latent_dim=8, hidden=[64], epochs=40, seed=0).fit(x)
    assert long.evaluate(x)["reconstruction_mse"] < 0.8 * short.evaluate(x)["reconstruction_mse"]


def test_dead_code_restart_moves_only_unused_codes():
    x = clustered(n=500, d=16)
    q = RQVAE(levels=2, codebook_size=16, latent_dim=4, hidden=[16], epochs=1, seed=0).fit(x)
    cb_before = q.module.codebooks[0].detach().clone()
    usage = torch.tensor([3, 0, 1, 0] + [5] * 12)
    level_input = torch.randn(100, 4)
    n = q.restart_dead_codes(0, usage, level_input, torch.Generator().manual_seed(0))
    after = q.module.codebooks[0].detach()
    assert n == 2
    used = usage > 0
    assert torch.equal(after[used], cb_before[used])
    for row in after[~used]:  # re-seeded to rows of the level input
        assert torch.isclose(level_input, row).all(dim=1).any()


def test_nan_input_is_refused_with_row():
    x = clustered(n=100)
    x[37, 3] = np.nan
    with pytest.raises(InputError, match="row 37"):
        ResidualKMeans(levels=1, codebook_size=4).fit(x)


def test_pcakmeans_accepts_positions_axis():
    x = clustered(n=800, d=24).reshape(800, 3, 8)
    q = PCAKMeans(pca_dim=4, codebook_size=8).fit(x)
    assert q.encode(x).shape == (800, 3) and q.codebook_sizes == [8, 8, 8]
    with pytest.raises(InputError, match="positions"):
        q.encode(x[:, :2])


def test_registry():
    assert set(QUANTIZERS) == {"rqvae", "rkmeans", "pcakmeans"}
