"""tokenize_users end to end on an in-process Ray: outputs, determinism, reusing an encoder, bad input."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import manifest_digests, own_lines
from semrec.data.io import write_table
from semrec.data.synthetic import write_sequences
from semrec.models.user_ae import from_pretrained
from semrec.pipelines.tokenize_users import main
from semrec.schemas import decode_metadata, token_table_schema

N_ITEMS, TOPICS = 600, 8
SMALL = ["--model.hidden", "16", "--model.layers", "1", "--model.heads", "1", "--model.item_dim", "16",
         "--model.max_len", "12", "--model.dropout", "0", "--train.epochs", "6", "--train.batch_size", "32",
         "--train.lr", "3e-3", "--valid_fraction", "0.1", "--quantizer.kind", "rkmeans",
         "--quantizer.codebook_size", "8", "--quantizer.levels", "2", "--ray.batch_size", "128", "--no-plots",
         "--train.num_workers", "0"]  # the autoencoder trains in-process (Ray Train local mode)


def item_tokens(path, n_items=N_ITEMS, sizes=(TOPICS, 16), qid="itemq-1"):
    """A tokenize_items-shaped output whose level-0 code is the synthetic item's topic (item id % topics)."""
    ids = np.arange(1, n_items + 1)
    codes = [ids % sizes[0], (ids // sizes[0]) % sizes[1]] + [ids % s for s in sizes[2:]]
    meta = {"table": "token_table", "quantizer_id": qid, "codebook_sizes": list(sizes)}
    schema = token_table_schema(list(sizes), meta)
    cols = [pa.array(ids, pa.int64())] + [pa.array(c, schema.field(f"c{j}").type) for j, c in enumerate(codes)]
    (path / "token_table").mkdir(parents=True)
    write_table(pa.Table.from_arrays(cols + [pa.array(np.zeros(n_items), pa.uint16())], schema=schema),
                path / "token_table" / "part-00000.parquet")
    return path


@pytest.fixture(scope="module")
def data(ray_local, tmp_path_factory):
    d = tmp_path_factory.mktemp("users")
    write_sequences(d / "seqs", 400, N_ITEMS, seed=3, rows_per_shard=150, mean_length=10, topics=TOPICS)
    return {"seqs": d / "seqs", "tokens": item_tokens(d / "tokens")}


def run(data, out, *extra, tmp_path):
    return main([str(a) for a in ["--sequences", data["seqs"], "--item_tokens", data["tokens"], "--output", out,
                                  "--run_dir", tmp_path / "runs", *SMALL, *extra]])


def test_end_to_end_determinism_and_reuse(data, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert run(data, a, tmp_path=tmp_path) == 0
    t = pq.read_table(a / "user_token_table")
    assert t.num_rows == 400 and sorted(t.column("user_id").to_pylist()) == list(range(1, 401))
    assert t.schema.names == ["user_id", "c0", "c1"] and t.schema.field("c0").type == pa.uint8()
    meta = decode_metadata(pq.read_schema(next((a / "user_token_table").glob("*.parquet"))))
    assert meta["table"] == "user_token_table" and meta["codebook_sizes"] == [8, 8]
    manifest = json.loads((a / "user_token_table" / "_MANIFEST.json").read_text())
    assert manifest["rows"] == 400 and manifest["item_quantizer_id"] == "itemq-1"
    report = json.loads((a / "report.json").read_text())
    assert report["users"] == 400 and report["z_dim"] == 16 and report["encoder"]["trained"]
    rec = report["encoder"]["reconstruction"]
    # level 0 is the topic, which z carries: well above chance (1/8 for c0, 1/16 for c1: ~0.09 averaged)
    assert rec["test_code_acc"] > 0.15, rec
    assert 0 < report["levels"][0]["used"] <= 8 and report["collisions"]["items"] == 400
    z = pq.read_table(a / "user_embeddings")
    assert z.num_rows == 400 and z.schema.field("embedding").type == pa.list_(pa.float32(), 16)
    enc = from_pretrained(a / "user_encoder")
    assert enc.config["item_quantizer_id"] == "itemq-1" and enc.config["codebook_sizes"] == [8, 16]
    assert not list(tmp_path.glob(".a.*")), "staging directories must be cleaned up"

    # same seed => byte-identical table (the autoencoder retrained from scratch)
    assert run(data, b, "--run_name", "second", tmp_path=tmp_path) == 0
    assert manifest_digests(a, "user_token_table") == manifest_digests(b, "user_token_table")
    # scoring with the saved encoder gives the same tokens, without training
    c = tmp_path / "c"
    assert run(data, c, "--user_encoder", a / "user_encoder", tmp_path=tmp_path) == 0
    assert manifest_digests(c, "user_token_table") == manifest_digests(a, "user_token_table")
    assert not json.loads((c / "report.json").read_text())["encoder"]["trained"]


def _bad(data, tmp):
    for d in ("empty_user", "unknown_item", "dup_user"):
        (tmp / d).mkdir()
    empty = tmp / "empty_user"
    write_table(pa.table({"user_id": pa.array([1, 2, 3], pa.int64()), "item_ids": [[1, 2], [], [3]]}),
                empty / "part-0.parquet")
    unknown = tmp / "unknown_item"
    write_table(pa.table({"user_id": pa.array([1, 2, 7], pa.int64()), "item_ids": [[1, 2], [5], [3, N_ITEMS + 9]]}),
                unknown / "part-0.parquet")
    dup = tmp / "dup_user"
    write_table(pa.table({"user_id": pa.array([1, 2, 1], pa.int64()), "item_ids": [[1, 2], [5], [3]]}),
                dup / "part-0.parquet")
    return {
        "empty sequence": (["--sequences", empty], "part-0.parquet: user 2 has 0 items; a user token needs at least 1"),
        "item missing from the item tokens": (["--sequences", unknown], f"user 7 has item id {N_ITEMS + 9} outside"),
        "duplicate user": (["--sequences", dup], "duplicate user_id [1]"),
        "encoder of other item tokens": (["--item_tokens", item_tokens(tmp / "t3", sizes=(8, 16, 4)),
                                          "--user_encoder", "ENCODER"], "trained on item tokens of 2 levels [8, 16]"),
    }


@pytest.mark.parametrize("case", ["empty sequence", "item missing from the item tokens", "duplicate user",
                                  "encoder of other item tokens"])
def test_bad_input_fails_clearly_and_publishes_nothing(data, tmp_path, capsys, case):
    args, message = _bad(data, tmp_path)[case]
    if "ENCODER" in args:  # a user encoder trained on the 2-level item tokens
        enc = tmp_path / "enc"
        from semrec.models.user_ae import build_user_autoencoder, save_pretrained

        save_pretrained(build_user_autoencoder({"n_items": N_ITEMS, "item_repr": "codes", "codebook_sizes": [8, 16],
                                                "target": "codes", "item_dim": 8, "hidden": 8, "layers": 1,
                                                "heads": 1, "max_len": 4, "dropout": 0.0}), enc)
        args = [str(enc) if a == "ENCODER" else a for a in args]
    base = {"--sequences": data["seqs"], "--item_tokens": data["tokens"]}
    given = dict(zip(args[::2], args[1::2]))
    argv = [str(x) for k, v in {**base, **given}.items() for x in (k, v)]
    out = tmp_path / "out"
    rc = main(argv + ["--output", str(out), "--run_dir", str(tmp_path / "runs"), *SMALL])
    err = capsys.readouterr().err
    assert rc != 0 and message in err, err
    assert "nothing was published" in err and len(own_lines(err)) <= 3, err
    assert not out.exists() and not list(tmp_path.glob(".out.*"))
