import numpy as np
import pyarrow.parquet as pq

from semrec.data.synthetic import World, item_shard, sequence_shard, write_catalogue, write_sequences


def test_item_shards_are_deterministic_and_topic_structured():
    w = World(seed=3, topics=8, embedding_dim=16)
    a, b = item_shard(w, 1, 401), item_shard(w, 1, 401)
    assert a.equals(b)
    assert a.column("item_id").to_pylist() == list(range(1, 401))
    cats = a.column("categories").to_pylist()
    assert all(c[0] == f"topic-{i % 8}" for i, c in zip(range(1, 401), cats))
    # items of the same topic share words, so their titles overlap more than across topics
    words = [set(t.split()) for t in a.column("title").to_pylist()]
    same = np.mean([len(words[i] & words[i + 8]) for i in range(100)])
    diff = np.mean([len(words[i] & words[i + 1]) for i in range(100)])
    assert same > diff + 0.5
    x = np.stack(a.column("embedding").to_numpy(zero_copy_only=False))
    assert np.allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)
    assert item_shard(World(seed=4, topics=8), 1, 50).column("title") != a.slice(0, 49).column("title")


def test_sequences_reference_items_of_followed_topics():
    w = World(seed=1, topics=16)
    t = sequence_shard(w, 1, 301, n_items=1000)
    seqs = t.column("item_ids").to_pylist()
    flat = np.concatenate(seqs)
    assert flat.min() >= 1 and flat.max() <= 1000 and min(map(len, seqs)) >= 3
    assert np.mean([len({i % 16 for i in s}) for s in seqs]) <= 3  # each user follows 1-3 topics


def test_sharded_writers(ray_local, tmp_path):
    files = write_catalogue(tmp_path / "items", 2500, seed=0, rows_per_shard=1000, with_text=False, embedding_dim=8)
    assert [f.name for f in files] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    t = pq.read_table(tmp_path / "items")
    assert t.num_rows == 2500 and sorted(t.column("item_id").to_pylist()) == list(range(1, 2501))
    again = write_catalogue(tmp_path / "again", 2500, seed=0, rows_per_shard=1000, with_text=False, embedding_dim=8)
    assert all(f.read_bytes() == g.read_bytes() for f, g in zip(files, again))
    write_sequences(tmp_path / "seq", 700, 2500, seed=0, rows_per_shard=300)
    assert pq.read_table(tmp_path / "seq").num_rows == 700
