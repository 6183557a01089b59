"""The TIGER-style generative recommender (semrec.models.generative, jobs/train_generative.py) on synthetic
sequences: trains on the shared engine, decodes only real items over the whole catalogue, saves and loads back
to the same test metrics, refuses bad inputs."""

import json

import numpy as np
import pyarrow as pa
import pytest
import torch

from semrec.models.generative import GenerativeRetrieval


def test_teacher_forced_loss_equals_the_sum_of_the_decoding_steps():
    torch.manual_seed(0)
    model = GenerativeRetrieval([4, 5, 3], dim=16, heads=2, encoder_layers=1, decoder_layers=1, ffn=32, dropout=0.0,
                                max_items=6).eval()
    hist = torch.randint(0, 3, (3, 6, 3))
    hist[0, :4] = -1  # left padding
    target = torch.tensor([[1, 4, 2], [0, 0, 0], [3, 2, 1]])
    with torch.no_grad():
        loss = model(hist, target)
        memory, pad = model.encode(hist)
        steps = sum(-model.next_logp(memory, pad, target[:, :lv]).gather(1, target[:, lv:lv + 1]).sum()
                    for lv in range(3))
    torch.testing.assert_close(loss, steps, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="row 1 has an empty history"):
        model.encode(torch.full((2, 6, 3), -1).index_fill_(0, torch.tensor([0]), 1))


def _data(tmp_path, n_items=300, users=400, seed=0):
    """Users walk through item blocks: after item i comes i + 1 (mod the catalogue) mostly, so the next item is
    learnable; codes = (i % 8, (i // 8) % 8, i // 64) + suffix 0."""
    from semrec.data.io import write_table
    from semrec.schemas import USER_SEQUENCES, token_table_schema

    rng = np.random.default_rng(seed)
    seqs = []
    for _ in range(users):
        start, length = rng.integers(1, n_items + 1), rng.integers(5, 12)
        seqs.append([(start + k - 1) % n_items + 1 for k in range(length)])
    (tmp_path / "seqs").mkdir()
    write_table(pa.table({"user_id": pa.array(np.arange(1, users + 1), pa.int64()),
                          "item_ids": pa.array(seqs, pa.list_(pa.int64()))},
                         schema=USER_SEQUENCES.schema(with_optional=False)), tmp_path / "seqs" / "part-0.parquet")
    ids = np.arange(1, n_items + 1)
    sizes = [8, 8, int(n_items // 64) + 1]
    schema = token_table_schema(sizes, {"table": "token_table", "quantizer_id": "t", "codebook_sizes": sizes})
    cols = [ids % 8, (ids // 8) % 8, ids // 64]
    (tmp_path / "tok" / "token_table").mkdir(parents=True)
    write_table(pa.Table.from_arrays([pa.array(ids, pa.int64())] + [pa.array(c, schema.field(f"c{j}").type)
                                      for j, c in enumerate(cols)] + [pa.array(np.zeros(n_items), pa.uint16())],
                                     schema=schema), tmp_path / "tok" / "token_table" / "part-0.parquet")
    return tmp_path / "seqs", tmp_path / "tok"


ARGS = ["--model.dim", "32", "--model.heads", "2", "--model.encoder_layers", "1", "--model.decoder_layers", "1",
        "--model.ffn", "64", "--model.max_items", "8", "--train.epochs", "6", "--train.batch_size", "128",
        "--train.lr", "3e-3", "--eval.beam", "20", "--train.num_workers", "0"]  # in-process


def test_train_generative_learns_decodes_real_items_and_reloads_to_the_same_metrics(ray_local, tmp_path):
    from semrec.decoding import CodeTrie
    from semrec.models.generative import from_pretrained
    from semrec.pipelines.train_generative import main
    from semrec.train.generative import GenerativeFamily

    seqs, tok = _data(tmp_path)
    out = tmp_path / "out"
    assert main(["--sequences", str(seqs), "--tokens", str(tok), "--output", str(out), "--run_dir",
                 str(tmp_path / "runs"), *ARGS]) == 0
    report = json.loads((out / "metrics.json").read_text())
    m = report["metrics"]
    assert set(f"test_Recall@{k}" for k in (1, 5, 10, 20)) <= set(m) and "test_NDCG@10" in m
    assert m["test_Recall@20"] > 0.3  # the walk is learnable; random over 300 items would be ~0.07
    assert m["test_Recall@1"] <= m["test_Recall@5"] <= m["test_Recall@10"] <= m["test_Recall@20"] <= 1
    # dropping each user's earlier items from the decoded list only moves targets up
    assert all(m[f"test_nohist_{k}"] >= m[f"test_{k}"] for k in ("Recall@1", "Recall@10", "NDCG@10", "MRR"))
    # the published model and trie give the same test metrics when evaluated again
    model = from_pretrained(out / "model")
    trie = CodeTrie.load(out / "trie")
    assert trie.depth_start[-1] - trie.leaf_start == 300
    cfg = json.loads((out / "effective_config.json").read_text())
    cfg.update({"n_items": 300, "sequences": str(seqs), "tokens": str(tok)})
    cfg["train"]["threads"] = 1
    fam = GenerativeFamily(cfg)
    sums = fam.evaluate(model, "test", 0, 1, True)
    assert sums["Recall@10"] / sums["count"] == pytest.approx(m["test_Recall@10"])
    # a warm start (--train.init_from) begins from the published weights: at a vanishing learning rate one
    # epoch later the weights are the same
    warm = tmp_path / "warm"
    assert main(["--sequences", str(seqs), "--tokens", str(tok), "--output", str(warm), "--run_dir",
                 str(tmp_path / "runs"), *ARGS, "--train.epochs", "1", "--train.lr", "1e-12",
                 "--train.init_from", str(out / "model")]) == 0
    again = from_pretrained(warm / "model").state_dict()
    assert all(torch.allclose(v, again[k], atol=1e-6) for k, v in model.state_dict().items())


def test_a_warm_start_from_a_model_of_another_shape_is_refused(ray_local, tmp_path, capsys):
    from semrec.models.generative import build_generative, save_pretrained
    from semrec.pipelines.train_generative import main

    seqs, tok = _data(tmp_path, n_items=200, users=50)
    other = save_pretrained(build_generative({"sizes": [8, 8, 4], "dim": 16, "heads": 2, "encoder_layers": 1,
                                              "decoder_layers": 1, "ffn": 32, "dropout": 0.1, "max_items": 8,
                                              "n_items": 200}), tmp_path / "small")
    assert main(["--sequences", str(seqs), "--tokens", str(tok), "--output", str(tmp_path / "out"), "--run_dir",
                 str(tmp_path / "runs"), *ARGS, "--train.init_from", str(other)]) != 0
    err = capsys.readouterr().err
    assert f"{other}/model.safetensors: does not fit this model" in err and "shapes differ" in err
    assert not (tmp_path / "out").exists()


def test_train_generative_refuses_bad_inputs_and_publishes_nothing(ray_local, tmp_path, capsys):
    from semrec.data.io import write_table
    from semrec.pipelines.train_generative import main
    from semrec.schemas import token_table_schema

    seqs, tok = _data(tmp_path, n_items=200, users=50)
    dup = tmp_path / "dup" / "token_table"
    dup.mkdir(parents=True)
    sizes = [8, 8, 4]
    schema = token_table_schema(sizes, {"table": "token_table", "quantizer_id": "t", "codebook_sizes": sizes})
    ids = np.arange(1, 201)
    write_table(pa.Table.from_arrays([pa.array(ids, pa.int64()), pa.array(ids % 8, pa.uint8()),
                                      pa.array(np.zeros(200), pa.uint8()), pa.array(np.zeros(200), pa.uint8()),
                                      pa.array(np.zeros(200), pa.uint16())], schema=schema), dup / "part-0.parquet")
    base = ["--sequences", str(seqs), "--output", str(tmp_path / "out"), "--run_dir", str(tmp_path / "runs"), *ARGS]
    assert main([*base, "--tokens", str(tmp_path / "dup")]) != 0
    assert "share the code sequence" in capsys.readouterr().err and not (tmp_path / "out").exists()
    assert main([*base, "--tokens", str(tok), "--n_items", "150"]) != 0  # histories with items outside 1..150
    assert "150" in capsys.readouterr().err and not (tmp_path / "out").exists()
