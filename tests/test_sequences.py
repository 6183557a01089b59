import numpy as np
import pyarrow as pa
import pytest

from semrec.data.io import write_table
from semrec.data.sequences import (NegativeSampler, Sequences, eval_arrays, frozen_negatives, left_pad,
                                   load_sequences, sample_negatives, s3rec_negatives, train_arrays)
from semrec.errors import InputError
from helpers import shared


def _seqs(rows, n_items=20):
    return Sequences(np.arange(1, len(rows) + 1), [np.array(r) for r in rows], n_items)


def test_leave_one_out_split():
    s = _seqs([[1, 2, 3, 4, 5], [6, 7, 8]])
    inp, tgt = train_arrays(s, max_len=4)
    assert inp.tolist() == [[0, 0, 1, 2], [0, 0, 0, 0]]
    assert tgt.tolist() == [[0, 0, 2, 3], [0, 0, 0, 0]]  # a 3-item user has no training position
    h, t = eval_arrays(s, 4, "valid")
    assert h.tolist() == [[0, 1, 2, 3], [0, 0, 0, 6]] and t.tolist() == [4, 7]
    h, t = eval_arrays(s, 4, "test")
    assert h.tolist() == [[1, 2, 3, 4], [0, 0, 6, 7]] and t.tolist() == [5, 8]
    assert left_pad([np.arange(1, 10)], 3).tolist() == [[7, 8, 9]]


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


def test_training_negatives_avoid_the_users_items():
    s = _seqs([[1, 2, 3, 4], [5, 6, 7]], n_items=9)
    sampler = NegativeSampler(s)
    pos = np.array([[0, 2, 3], [0, 0, 6]])
    neg = sampler.sample(np.array([0, 1]), pos, np.random.default_rng(0))
    assert neg[0, 0] == 0 and neg[1, 0] == 0 and neg[1, 1] == 0
    assert not set(neg[0][neg[0] > 0]) & {1, 2, 3, 4} and not set(neg[1][neg[1] > 0]) & {5, 6, 7}


def test_bad_sequences(tmp_path):
    write_table(pa.table({"user_id": pa.array([1, 2], pa.int64()),
                          "item_ids": pa.array([[1, 2, 3], [4, 5]], pa.list_(pa.int64()))}), tmp_path / "short.parquet")
    with pytest.raises(InputError, match="user 2 has 2 items"):
        load_sequences(tmp_path / "short.parquet")
    write_table(pa.table({"user_id": pa.array([1], pa.int64()),
                          "item_ids": pa.array([[1, 2, 99]], pa.list_(pa.int64()))}), tmp_path / "unknown.parquet")
    with pytest.raises(InputError, match="user 1 has item id 99 outside the catalogue 1..10"):
        load_sequences(tmp_path / "unknown.parquet", n_items=10)


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
