"""UIST Table 2 paradigms through train_ctr on synthetic click impressions: each learns the planted
user-topic affinity, reports nDCG@5 and representation bytes; inputs that do not fit together fail clearly."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from semrec.data.clicks import build_clicks
from semrec.data.io import write_manifest, write_table
from semrec.data.sequences import load_sequences
from semrec.data.synthetic import write_sequences
from semrec.models.ctr.paradigms import from_pretrained
from semrec.pipelines.train_ctr import main
from semrec.schemas import token_table_schema
from test_tokenize_users import item_tokens

N_ITEMS, TOPICS = 400, 8
SMALL = ["--model.embedding_dim", "8", "--model.hidden", "[32]", "--model.hidden2", "[16]", "--model.gate_hidden",
         "[16]", "--model.max_len", "10", "--model.encoder_dropout", "0", "--train.epochs", "4",
         "--train.batch_size", "256", "--train.lr", "3e-3", "--train.patience", "4",
         "--train.num_workers", "0"]  # in-process: the paradigms are the subject, not the worker group


def _vectors(ids, x, key):
    return pa.table({key: pa.array(ids, pa.int64()),
                     "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.astype(np.float32).ravel()), x.shape[1])})


@pytest.fixture(scope="module")
def clicks(ray_local, tmp_path_factory):
    d = tmp_path_factory.mktemp("clicks")
    write_sequences(d / "seqs", 600, N_ITEMS, seed=4, rows_per_shard=600, mean_length=12, topics=TOPICS)
    rows = load_sequences(d / "seqs", N_ITEMS, 2).rows
    for name, t in build_clicks(rows, N_ITEMS, 4, 0.5, seed=0).items():
        (d / name).mkdir()
        write_table(t, d / name / "part-00000.parquet")
    item_tokens(d / "tokens", N_ITEMS)  # c0 = the item's topic
    rng = np.random.default_rng(0)
    ids = np.arange(1, N_ITEMS + 1)
    centres = rng.normal(size=(TOPICS, 12))
    (d / "tokens" / "item_embeddings").mkdir()
    write_table(_vectors(ids, centres[ids % TOPICS] + 0.3 * rng.normal(size=(N_ITEMS, 12)), "item_id"),
                d / "tokens" / "item_embeddings" / "part-0.parquet")
    # user tokens / z standing in for tokenize_users (tested on its own): the history's topic mix
    hist = pq.read_table(d / "histories")
    users = hist.column("user_id").to_numpy()
    mix = np.stack([np.bincount(np.asarray(h) % TOPICS, minlength=TOPICS) / len(h)
                    for h in hist.column("item_ids").to_pylist()])
    (d / "users" / "user_token_table").mkdir(parents=True)
    (d / "users" / "user_embeddings").mkdir()
    sizes = [TOPICS, 4]
    meta = {"table": "user_token_table", "codebook_sizes": sizes}
    schema = token_table_schema(sizes, meta, key="user_id")
    write_table(pa.Table.from_arrays([pa.array(users, pa.int64()), pa.array(mix.argmax(1), pa.uint8()),
                                      pa.array(users % 4, pa.uint8())], schema=schema),
                d / "users" / "user_token_table" / "part-00000.parquet")
    write_manifest(d / "users" / "user_token_table", codebook_sizes=sizes, item_quantizer_id="itemq-1")
    write_table(_vectors(users, mix, "user_id"), d / "users" / "user_embeddings" / "part-0.parquet")
    return d


def run(d, out, paradigm, *extra):
    args = ["--train_data", d / "train", "--test_data", d / "test", "--histories", d / "histories",
            "--item_tokens", d / "tokens", "--user_tokens", d / "users", "--paradigm", paradigm,
            "--output", out, "--run_dir", out.parent / "runs", *SMALL, *extra]
    return main([str(a) for a in args])


def test_clicks_layout(clicks):
    train, test = pq.read_table(clicks / "train"), pq.read_table(clicks / "test")
    for t in (train, test):
        labels = t.column("label").to_numpy().reshape(-1, 5)
        assert (labels[:, 0] == 1).all() and (labels[:, 1:] == 0).all()  # click + 4 negatives per impression
    assert len(np.unique(test.column("user_id").to_numpy())) == test.num_rows // 5  # one test impression a user
    hist = {u: set(h) for u, h in zip(*pq.read_table(clicks / "histories").to_pydict().values())}
    imp_items = train.to_pydict()
    seqs = {u: set(s) for u, s in zip(*pq.read_table(clicks / "seqs").to_pydict().values())}
    for u, item, y in zip(imp_items["user_id"], imp_items["item_id"], imp_items["label"]):
        assert (item in seqs[u]) == bool(y)  # negatives come from outside the user's whole sequence
    assert all(len(h) >= 1 for h in hist.values())


@pytest.mark.parametrize("paradigm,base", [("id-id", "dcn"), ("id-enc", "deepfm"), ("emb-enc", "finalmlp"),
                                           ("emb-cached", "dcn"), ("ist", "dcn"), ("uist", "dcn"),
                                           ("uist", "finalmlp")])
def test_paradigm_learns_the_topic_affinity(clicks, tmp_path, paradigm, base):
    out = tmp_path / "out"
    assert run(clicks, out, paradigm, "--model.name", base) == 0
    report = json.loads((out / "metrics.json").read_text())
    m = report["metrics"]
    # a user clicks items of its own topics; negatives are uniform. The ID-item paradigms have no content to
    # generalise from (4 short epochs), so their floor is lower.
    assert m["test_AUC"] > (0.58 if paradigm.startswith("id") else 0.7), m
    assert 0.2 < m["test_nDCG@5"] <= 1 and report["paradigm"] == paradigm
    assert report["item_bytes"] > 0 and report["user_bytes"] > 0
    model = from_pretrained(out / "model")
    assert model.paradigm == paradigm
    if paradigm == "uist":  # codes stored at their table width
        assert model.item_codes.dtype == torch.uint8 and model.user_codes.dtype == torch.uint8


def test_token_paradigms_hold_less_than_id_paradigms(clicks, tmp_path):
    from semrec.models.ctr.paradigms import build_paradigm

    spec = {"base": {"model": "dcn", "hidden": [16]}, "n_items": 100_000, "n_users": 100_000, "dim": 16,
            "item_sizes": [256] * 3, "user_sizes": [256] * 3, "encoder": {"layers": 1, "heads": 1, "max_len": 10,
                                                                        "dropout": 0.0}}
    ids = build_paradigm({**spec, "paradigm": "id-id"}).representation_bytes()
    uist = build_paradigm({**spec, "paradigm": "uist"}).representation_bytes()
    assert ids == {"item_bytes": 100_001 * 16 * 4, "user_bytes": 100_000 * 16 * 4}
    # codes: 3 bytes per row; tables: 3 x 256 x 16 floats
    assert uist == {"item_bytes": 100_001 * 3 + 3 * 256 * 16 * 4, "user_bytes": 100_000 * 3 + 3 * 256 * 16 * 4}


def test_inputs_that_do_not_fit_fail_clearly(clicks, tmp_path, capsys):
    other = item_tokens(tmp_path / "other_tokens", N_ITEMS, qid="itemq-2")
    rc = main([str(a) for a in ["--train_data", clicks / "train", "--test_data", clicks / "test", "--histories",
                                clicks / "histories", "--item_tokens", other, "--user_tokens", clicks / "users",
                                "--paradigm", "uist", "--output", tmp_path / "o", *SMALL]])
    err = capsys.readouterr().err
    assert rc != 0 and "built over item quantizer itemq-1, --item_tokens comes from quantizer itemq-2" in err, err
    # NaN in the frozen item embeddings names the item
    bad = tmp_path / "nan_emb"
    bad.mkdir()
    x = np.ones((N_ITEMS, 12))
    x[41, 3] = np.nan
    write_table(_vectors(np.arange(1, N_ITEMS + 1), x, "item_id"), bad / "part-0.parquet")
    rc = main([str(a) for a in ["--train_data", clicks / "train", "--test_data", clicks / "test", "--histories",
                                clicks / "histories", "--item_embeddings", bad, "--paradigm", "emb-enc",
                                "--output", tmp_path / "o", "--run_dir", tmp_path / "runs", *SMALL]])
    err = capsys.readouterr().err
    assert rc != 0 and "NaN or inf in the embedding of item_id [42]" in err, err
    assert not (tmp_path / "o").exists()
    # samples without user / item fields
    rc = main([str(a) for a in ["--train_data", clicks / "histories", "--test_data", clicks / "test",
                                "--histories", clicks / "histories", "--paradigm", "id-id", "--output", tmp_path / "o"]])
    assert rc != 0


def test_ndcg_sums_match_a_per_impression_loop():
    from semrec.train.ctr import ndcg_sums

    rng = np.random.default_rng(0)
    imp = np.repeat(np.arange(200), 5)
    labels = np.tile([1, 0, 0, 0, 0], 200).astype(np.float32)
    scores = rng.integers(0, 4, size=1000).astype(np.float64)  # many ties: pessimistic
    total, n = ndcg_sums(imp, labels, scores)
    ref = 0.0
    for i in range(200):
        s = scores[i * 5:(i + 1) * 5]
        rank = 1 + int((s[1:] >= s[0]).sum())
        ref += 1 / np.log2(rank + 1)
    assert n == 200 and total == pytest.approx(ref)


@pytest.mark.realdata
def test_movielens_clicks_use_ratings_of_4_and_more(tmp_path):
    from helpers import shared

    from semrec.pipelines.prepare_data import main as prepare

    assert prepare(["--format", "movielens", "--input", str(shared("movielens_100k")), "--output",
                    str(tmp_path / "ml")]) == 0
    assert prepare(["--format", "clicks", "--input", str(tmp_path / "ml"), "--min_rating", "4", "--output",
                    str(tmp_path / "clicks")]) == 0
    inter = pq.read_table(tmp_path / "ml" / "interactions").to_pandas()
    liked = set(zip(inter.user_id[inter.label >= 4], inter.item_id[inter.label >= 4]))
    test = pq.read_table(tmp_path / "clicks" / "test").to_pandas()
    clicks = test[test.label == 1]
    assert len(clicks) == test.user_id.nunique() == pq.read_table(tmp_path / "clicks" / "histories").num_rows
    assert all((u, i) in liked for u, i in zip(clicks.user_id, clicks.item_id))
    assert pq.read_table(tmp_path / "clicks" / "items").num_rows == 1682


def test_last_validation_split_holds_out_each_users_last_training_impression(clicks, tmp_path):
    from semrec.data.ctr import CTRData, load_ctr
    from semrec.errors import InputError
    from semrec.train.ctr import split_rows

    data = load_ctr(clicks / "train")
    keep, held = split_rows(data, 0.5, "last")
    assert len(keep) + len(held) == len(data) and not np.intersect1d(keep, held).size
    df = pq.read_table(clicks / "train").to_pandas()
    per_user = df.groupby("user_id").impression_id.agg(["max", "nunique"])
    held_imp = df.iloc[held].groupby("user_id").impression_id.unique()
    # whole impressions, one per held user: that user's last, and only users keeping another for training
    assert all(len(v) == 1 and v[0] == per_user.loc[u, "max"] and per_user.loc[u, "nunique"] >= 2
               for u, v in held_imp.items())
    assert (df.iloc[held].groupby("impression_id").size() == 5).all()
    eligible = (per_user["nunique"] >= 2).sum()
    assert 0.35 * eligible < len(held_imp) < 0.65 * eligible  # a hashed half of the users
    assert np.array_equal(held, split_rows(data, 0.5, "last")[1])  # fixed
    no_imp = CTRData(data.features, data.labels, data.n_features, data.fields)
    with pytest.raises(InputError, match="needs impression ids and a user field.*no impression_id column"):
        split_rows(no_imp, 0.5, "last")
    out = tmp_path / "out"
    assert run(clicks, out, "id-id", "--valid_split", "last", "--valid_fraction", "0.5") == 0
    assert json.loads((out / "effective_config.json").read_text())["valid_split"] == "last"
    assert json.loads((out / "metrics.json").read_text())["rows_valid"] == len(held)
