"""The code trie and trie-constrained decoding (semrec.decoding): built from a token table, equal to brute-force
prefix checks, beam search that returns only real items, each once, and the same constraint inside a Hugging
Face model's generate."""

import itertools

import numpy as np
import pyarrow as pa
import pytest
import torch

from semrec.decoding import CodeTrie, beam_search, beam_search_reference
from semrec.errors import InputError
from semrec.tokenizers.collisions import assign_suffix


def _catalogue(n=80, levels=3, size=4, seed=0):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, size, (n, levels))
    ids = rng.choice(10_000, n, replace=False) + 1
    suffix, _ = assign_suffix(ids, codes)
    return ids, np.c_[codes, suffix]


def _step(batch: int, levels: int, width: int, seed: int = 0, peaked: float = 1.0):
    """A deterministic stand-in for a model: log-probs that depend on the row, the level and the prefix."""
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(batch, levels, 7, width, generator=g) * peaked

    def step(level, prefixes, rows):
        h = (prefixes * torch.arange(1, level + 1)).sum(1) % 7 if level else torch.zeros(len(rows), dtype=torch.long)
        return torch.log_softmax(table[rows, level, h], -1)

    return step


def test_trie_lookup_and_allowed_equal_a_brute_force_prefix_check():
    ids, codes = _catalogue()
    trie = CodeTrie.build(ids, codes)
    assert (trie.lookup(codes) == ids).all()
    assert trie.depth_start[-1] - trie.leaf_start == len(ids)
    rows = {tuple(r) for r in codes.tolist()}
    for level in range(codes.shape[1]):
        for prefix in itertools.product(range(trie.sizes[0]), repeat=level):
            expected = sorted({r[level] for r in rows if r[:level] == prefix})
            assert trie.allowed(prefix).tolist() == expected, prefix
    absent = [r for r in itertools.product(*(range(s) for s in trie.sizes)) if r not in rows][:20]
    assert (trie.lookup(np.array(absent)) == -1).all()


def test_trie_refuses_duplicate_sequences_ids_and_codes_beyond_the_codebook():
    ids, codes = _catalogue(20)
    with pytest.raises(InputError, match=f"items ({ids[3]} and {ids[3] + 100_000}|{ids[3] + 100_000} and {ids[3]}) share the code sequence"):
        CodeTrie.build(np.r_[ids, ids[3] + 100_000], np.r_[codes, codes[3:4]])
    with pytest.raises(InputError, match=f"item {ids[0]} appears more than once"):
        CodeTrie.build(np.r_[ids, ids[0]], np.r_[codes, [[9, 9, 9, 9]]])
    with pytest.raises(InputError, match="level 1, >= its codebook size 4"):
        CodeTrie.build(ids[:2], np.array([[0, 1, 0, 0], [0, 4, 0, 0]]), sizes=[4, 4, 4, 4])


def test_trie_saves_and_memory_maps_to_the_same_answers(tmp_path):
    ids, codes = _catalogue()
    trie = CodeTrie.build(ids, codes)
    loaded = CodeTrie.load(trie.save(tmp_path / "trie"))
    assert isinstance(loaded.key, np.memmap) and loaded.sizes == trie.sizes and loaded.nbytes == trie.nbytes
    assert (loaded.lookup(codes) == ids).all()
    step = _step(3, 4, 8)
    assert np.array_equal(beam_search(loaded, step, 3, 10)[0], beam_search(trie, step, 3, 10)[0])
    with pytest.raises(InputError, match="not a saved code trie"):
        CodeTrie.load(tmp_path)


def _token_table(path, ids, codes, suffix, sizes):
    from semrec.data.io import write_table
    from semrec.schemas import token_table_schema

    schema = token_table_schema(sizes, {"table": "token_table", "quantizer_id": "test", "codebook_sizes": sizes})
    cols = [pa.array(ids, pa.int64())] + [pa.array(codes[:, j], schema.field(f"c{j}").type) for j in range(len(sizes))]
    cols.append(pa.array(suffix, pa.uint16()))
    (path / "token_table").mkdir(parents=True)
    half = len(ids) // 2  # two files: the trie is read file by file
    t = pa.Table.from_arrays(cols, schema=schema)
    write_table(t.slice(0, half), path / "token_table" / "part-00000.parquet")
    write_table(t.slice(half), path / "token_table" / "part-00001.parquet")
    return path


def test_trie_from_a_token_table_and_a_table_with_duplicate_sequences_is_refused(tmp_path):
    ids, full = _catalogue(200, size=6)
    tt = _token_table(tmp_path / "ok", ids, full[:, :3], full[:, 3], [6, 6, 6])
    trie = CodeTrie.from_token_table(tt)
    assert trie.sizes[:3] == [6, 6, 6] and trie.sizes[3] == full[:, 3].max() + 1
    assert (trie.lookup(full) == ids).all()
    no_suffix = np.zeros(len(ids), dtype=np.int64)  # collisions left in: two items, one sequence
    bad = _token_table(tmp_path / "dup", ids, full[:, :3], no_suffix, [6, 6, 6])
    with pytest.raises(InputError, match=r"share the code sequence .*\(add the collision suffix\)"):
        CodeTrie.from_token_table(bad)


@pytest.mark.parametrize("beam", [1, 4, 25, 500])
def test_beam_search_equals_the_brute_force_reference(beam):
    ids, codes = _catalogue(60, size=4, seed=1)
    trie = CodeTrie.build(ids, codes)
    step = _step(4, 4, 9, seed=beam)
    items, scores = beam_search(trie, step, 4, beam)
    ref_items, ref_scores = beam_search_reference(ids, codes, step, 4, beam)
    assert np.array_equal(items, ref_items)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-6)
    for row in items:
        found = row[row >= 0]
        assert len(found) == min(beam, len(ids)) and len(set(found.tolist())) == len(found)
        assert np.isin(found, ids).all()
    assert (np.diff(scores[:, :min(beam, len(ids))], axis=1) <= 1e-6).all()  # best first


def test_beam_wider_than_the_items_under_the_favoured_prefix_still_gives_distinct_real_items():
    """The model puts almost all mass on code 0 at every level: few items live under (0, 0, ...), so most of
    a wide beam must come from other prefixes; never a repeat, never a non-item."""
    ids, codes = _catalogue(300, size=4, seed=2)
    trie = CodeTrie.build(ids, codes)
    under = int((codes[:, :2] == 0).all(1).sum())

    def step(level, prefixes, rows):
        logits = torch.zeros(len(rows), max(trie.sizes))
        logits[:, 0] = 20.0
        return torch.log_softmax(logits, -1)

    beam = 3 * under + 5
    items, scores = beam_search(trie, step, 2, beam)
    assert np.array_equal(items, beam_search_reference(ids, codes, step, 2, beam)[0])
    by_item = dict(zip(ids.tolist(), map(tuple, codes.tolist())))
    for row in items:
        found = row[row >= 0]
        assert len(found) == beam and len(set(found.tolist())) == beam and np.isin(found, ids).all()
        assert by_item[int(found[0])][:2] == (0, 0)  # the best item lies under the favoured prefix


def _tiny_lm(vocab: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(cfg).eval()


def test_a_hugging_face_model_generates_only_real_items_under_the_trie():
    from semrec.decoding.hf import CodeVocab, TrieLogitsProcessor, prefix_allowed_tokens_fn

    ids, codes = _catalogue(40, size=4, seed=3)
    trie = CodeTrie.build(ids, codes)
    vocab = CodeVocab(trie.sizes, offset=10)
    model = _tiny_lm(10 + vocab.size)
    prompt = torch.tensor([[1, 5, 6, 7], [1, 8, 8, 3]])
    beams = 8
    kw = dict(max_new_tokens=trie.levels, num_beams=beams, num_return_sequences=beams, do_sample=False,
              pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        out = model.generate(prompt, logits_processor=[TrieLogitsProcessor(trie, vocab, prompt.shape[1])], **kw)
        out2 = model.generate(prompt, prefix_allowed_tokens_fn=prefix_allowed_tokens_fn(trie, vocab, prompt.shape[1]),
                              **kw)
    assert torch.equal(out, out2)  # the two hooks constrain identically
    found = trie.lookup(vocab.codes(out[:, prompt.shape[1]:].numpy()))
    assert (found >= 0).all()  # every generated sequence is an item
    for row in found.reshape(2, beams):
        assert len(set(row.tolist())) == beams  # none repeats
    # unconstrained, the same model emits sequences that are not items
    with torch.no_grad():
        free = model.generate(prompt, **kw)
    assert (trie.lookup(vocab.codes(free[:, prompt.shape[1]:].numpy())) == -1).any()
