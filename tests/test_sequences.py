import numpy as np
import pyarrow as pa
import pytest

from semrec.data.io import write_table
from semrec.data.seqbatch import RowBatch, eval_examples, eval_negatives, rank_rows, train_examples
from semrec.data.sequences import Sequences, frozen_negatives, load_sequences, sample_negatives, s3rec_negatives
from semrec.errors import InputError
from helpers import shared


def _seqs(rows, n_items=20):
    return Sequences(np.arange(1, len(rows) + 1), [np.array(r) for r in rows], n_items)


def test_leave_one_out_split():
    s = _seqs([[1, 2, 3, 4, 5], [6, 7, 8]])
    inp, tgt, neg = train_examples(s.rows, 4, 20, seed=0, epoch=0)
    assert inp.tolist() == [[0, 0, 1, 2], [0, 0, 0, 0]]
    assert tgt.tolist() == [[0, 0, 2, 3], [0, 0, 0, 0]]  # a 3-item user has no training position
    assert ((neg > 0) == (tgt > 0)).all()
    h, t = eval_examples(s.rows, 4, "valid")
    assert h.tolist() == [[0, 1, 2, 3], [0, 0, 0, 6]] and t.tolist() == [4, 7]
    h, t = eval_examples(s.rows, 4, "test")
    assert h.tolist() == [[1, 2, 3, 4], [0, 0, 6, 7]] and t.tolist() == [5, 8]
    long = _seqs([list(range(1, 10))])
    assert eval_examples(long.rows, 3, "test")[0].tolist() == [[6, 7, 8]]  # the last max_len items


def test_rows_from_arrow_slices_and_memory_agree():
    """A streamed block (an Arrow slice) gives the same rows, examples and negatives as the table in memory."""
    rng = np.random.default_rng(1)
    s = _seqs([rng.integers(1, 51, size=rng.integers(3, 30)) for _ in range(40)], 50)
    table = pa.table({"user_id": pa.array(s.user_ids, pa.int64()),
                      "item_ids": pa.array([x.tolist() for x in s.items], pa.list_(pa.int64()))})
    block = RowBatch.from_arrow(table.slice(10, 20))
    mem = s.batch(np.arange(10, 30))
    for a, b in zip(train_examples(block, 8, 50, 3, 7), train_examples(mem, 8, 50, 3, 7)):
        np.testing.assert_array_equal(a, b)
    # a user's negatives depend on (seed, epoch, user) only, not on the batch it comes in
    one = train_examples(s.batch(np.array([12])), 8, 50, 3, 7)[2]
    np.testing.assert_array_equal(one[0], train_examples(mem, 8, 50, 3, 7)[2][2])
    assert not (train_examples(mem, 8, 50, 3, 8)[2] == train_examples(mem, 8, 50, 3, 7)[2]).all()
    parts = [rank_rows(s.user_ids, r, 3) for r in range(3)]
    assert sorted(np.concatenate(parts).tolist()) == list(range(40)) and all(len(p) for p in parts)


def test_hashed_negatives_avoid_the_users_items():
    rng = np.random.default_rng(0)
    s = _seqs([rng.choice(np.arange(1, 121), size=rng.integers(3, 20), replace=False) for _ in range(300)], 120)
    _, tgt, neg = train_examples(s.rows, 25, 120, seed=1, epoch=0)
    ev = eval_negatives(s.rows, 99, 120, seed=5)
    for row, items in enumerate(s.items):
        seen = set(items.tolist())
        assert not set(neg[row][tgt[row] > 0].tolist()) & seen and (neg[row][tgt[row] == 0] == 0).all()
        assert len(set(ev[row].tolist())) == 99 and not set(ev[row].tolist()) & seen
    assert ev.min() >= 1 and ev.max() <= 120
    np.testing.assert_array_equal(ev[7:9], eval_negatives(s.batch(np.array([7, 8])), 99, 120, seed=5))
    with pytest.raises(InputError, match="too many items"):
        eval_negatives(_seqs([list(range(1, 30))], 120).rows, 99, 120, seed=5)


def test_negatives_avoid_history_and_are_frozen(tmp_path):
    rng = np.random.default_rng(0)
    s = _seqs([rng.choice(np.arange(1, 301), size=rng.integers(3, 60), replace=False) for _ in range(200)], 300)
    neg = frozen_negatives(tmp_path, "toy", s, k=99, seed=1)
    for row, items in zip(neg, s.items):
        assert len(set(row)) == 99 and not set(row) & set(items.tolist())
        assert row.min() >= 1 and row.max() <= 300
    again = frozen_negatives(tmp_path, "toy", s, k=99, seed=1)  # read back from Parquet
    np.testing.assert_array_equal(neg, again)
    np.testing.assert_array_equal(sample_negatives(s, 99, 1), neg)  # same draw from the seed alone
    assert (tmp_path / "toy-seed1-k99.parquet").exists()


def test_bad_sequences(tmp_path):
    write_table(pa.table({"user_id": pa.array([1, 2], pa.int64()),
                          "item_ids": pa.array([[1, 2, 3], [4, 5]], pa.list_(pa.int64()))}), tmp_path / "short.parquet")
    with pytest.raises(InputError, match="user 2 has 2 items"):
        load_sequences(tmp_path / "short.parquet")
    write_table(pa.table({"user_id": pa.array([1], pa.int64()),
                          "item_ids": pa.array([[1, 2, 99]], pa.list_(pa.int64()))}), tmp_path / "unknown.parquet")
    with pytest.raises(InputError, match="user 1 has item id 99 outside the catalogue 1..10"):
        load_sequences(tmp_path / "unknown.parquet", n_items=10)


def test_check_names_the_user_of_the_bad_item_and_scan_batches_agree(tmp_path):
    """RowBatch.check finds the user by offset (empty rows between), and _scan_file gives the same counts,
    max id and first error whatever the batch size."""
    from semrec.data.sequences import _scan_file

    items = [[1, 2], [], [3, 4, 5], [], [6, 7], [8, 9]]
    t = pa.table({"user_id": pa.array([10, 11, 12, 13, 14, 15], pa.int64()),
                  "item_ids": pa.array(items, pa.list_(pa.int64())), "path": ["a.parquet"] * 6})
    rows = RowBatch.from_arrow(t)
    rows.check(9, "x", 0)
    with pytest.raises(InputError, match="x: user 14 has item id 7 outside the catalogue 1..6"):
        rows.check(6, "x", 0)
    bad = pa.table({"user_id": pa.array([1, 2, 3], pa.int64()),
                    "item_ids": pa.array([[4], [], [2, 0]], pa.list_(pa.int64()))})
    with pytest.raises(InputError, match="x: user 3 has item id < 1"):
        RowBatch.from_arrow(bad).check(9, "x", 0)
    write_table(t.drop_columns(["path"]), tmp_path / "a.parquet")
    for size in (1, 2, 4, 100):
        assert _scan_file(str(tmp_path / "a.parquet"), 9, 0, "why", rows=size) == (6, 9, "")
        assert _scan_file(str(tmp_path / "a.parquet"), 8, 0, "why", rows=size)[2] == \
            f"{tmp_path / 'a.parquet'}: user 15 has item id 9 outside the catalogue 1..8"


def test_lastfm_official_negatives(tmp_path):
    from semrec.data.adapters import s3rec_sequences

    write_table(s3rec_sequences(shared("lastfm", "LastFM.txt"))["user_sequences"], tmp_path / "seq.parquet")
    s = load_sequences(tmp_path / "seq.parquet")
    neg = s3rec_negatives(shared("lastfm", "LastFM_sample.txt"), s)
    assert neg.shape == (1090, 99)
    for row, items in zip(neg, s.items):
        assert not set(row.tolist()) & set(items.tolist())


@pytest.mark.parametrize("line,error", [
    ("2 7 8 3\n", "negative item 3 of user 2 is in that user's own sequence"),
    ("2 7 8 11\n", "negative item 11 of user 2 is outside the catalogue 1..10"),
    ("2 7 8\n", r"users have different numbers of negatives \(\[2, 3\]\)"),
])
def test_official_negatives_file_is_checked(tmp_path, line, error):
    write_table(pa.table({"user_id": pa.array([1, 2], pa.int64()),
                          "item_ids": pa.array([[1, 2, 3], [3, 4, 5]], pa.list_(pa.int64()))}), tmp_path / "s.parquet")
    seqs = load_sequences(tmp_path / "s.parquet", n_items=10)
    (tmp_path / "ok.txt").write_text("1 7 8 9\n2 7 8 9\n")
    assert s3rec_negatives(tmp_path / "ok.txt", seqs).tolist() == [[7, 8, 9], [7, 8, 9]]
    (tmp_path / "bad.txt").write_text("1 7 8 9\n" + line)
    with pytest.raises(InputError, match=error):
        s3rec_negatives(tmp_path / "bad.txt", seqs)


def test_shuffled_batches_cover_every_user_once_in_bounded_windows():
    from semrec.data.seqbatch import shuffled_batches

    s = _seqs([[1, 2, 3, 4][: 3 + i % 2] for i in range(1000)], 20)
    blocks = [s.batch(np.arange(i, min(i + 64, 1000))) for i in range(0, 1000, 64)]
    batches = list(shuffled_batches(iter(blocks), 48, 200, np.random.default_rng(1)))
    users = np.concatenate([b.user_ids for b in batches])
    assert sorted(users.tolist()) == s.user_ids.tolist()  # every user once
    assert all(len(b) == 48 for b in batches[:-1]) and 0 < len(batches[-1]) <= 48
    assert users[:48].max() <= 264  # the first window holds the first ~200 (+ one block) users only
    assert not (users == s.user_ids).all()  # shuffled
    again = np.concatenate([b.user_ids for b in shuffled_batches(iter(blocks), 48, 200, np.random.default_rng(1))])
    np.testing.assert_array_equal(users, again)  # deterministic in the rng
    for b in batches[:3]:  # rows keep their own items
        for u, a, z in zip(b.user_ids, b.offsets[:-1], b.offsets[1:]):
            assert b.flat[a:z].tolist() == s.items[u - 1].tolist()


def test_length_grouped_batches_cover_every_example_once_with_little_padding():
    from semrec.data.seqbatch import length_grouped_batches

    lengths = np.random.default_rng(0).integers(1, 21, 5000)
    order = np.random.default_rng(1).permutation(5000)
    batches = length_grouped_batches(order, lengths, 64, 10, np.random.default_rng(2))
    assert sorted(np.concatenate(batches).tolist()) == list(range(5000))  # every example once
    assert all(len(b) <= 64 for b in batches) and sum(len(b) < 64 for b in batches) <= -(-5000 // 640)
    padded = lambda bs: sum(len(b) * lengths[b].max() for b in bs)  # noqa: E731 -- tokens a batch pays for
    plain = length_grouped_batches(order, lengths, 64, 0, np.random.default_rng(2))
    assert [b.tolist() for b in plain] == [order[i:i + 64].tolist() for i in range(0, 5000, 64)]
    assert padded(batches) < 0.65 * padded(plain)  # mean length 10.5 of max 20: ~half the padded tokens
    assert len({int(lengths[b].max()) for b in batches[:20]}) > 5  # the batch order is shuffled, not by length
    again = length_grouped_batches(order, lengths, 64, 10, np.random.default_rng(2))
    assert all((a == b).all() for a, b in zip(batches, again))  # deterministic in the rng
