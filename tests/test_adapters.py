"""Adapters on the real datasets in ../shared/data (skipped with a reason when absent) and on bad files."""

import numpy as np
import pyarrow.parquet as pq
import pytest

from semrec.data import adapters
from semrec.errors import InputError
from semrec.pipelines.prepare_data import main as prepare_main
from semrec.schemas import INTERACTIONS, ITEMS, USER_SEQUENCES, check_schema
from helpers import shared


def _check(tables):
    specs = {"items": ITEMS, "user_sequences": USER_SEQUENCES, "interactions": INTERACTIONS}
    for name, t in tables.items():
        check_schema(t.schema, specs[name], name)


def test_s3rec_beauty_sequences():
    t = adapters.s3rec_sequences(shared("amazon_beauty", "Beauty.txt"))
    _check(t)
    seqs = t["user_sequences"]
    assert seqs.num_rows == 22363
    lengths = [len(s) for s in seqs.column("item_ids").to_pylist()]
    assert sum(lengths) == 198502 and min(lengths) == 5 and max(lengths) == 204
    assert max(max(s) for s in seqs.column("item_ids").to_pylist()) == 12101


def test_beauty_title_join():
    items = adapters.beauty_items(shared("amazon_beauty"))["items"]
    _check({"items": items})
    assert items.num_rows == 12101
    titles = items.column("title").to_pylist()
    assert titles[0] == "OPI Nail Lacquer, Simmer and Shimmer, 0.5-Fluid Ounce"
    assert titles[1] == "OPI Red Shatter Crackle Nail Polish E55 New"
    assert titles[2] == "SKIN79 The Prestige Beblesh Balm BB Cream Diamond Collection"
    empty = [i + 1 for i, t in enumerate(titles) if t is None]
    assert empty == [495, 1454, 2015, 5336, 7406, 7410, 9178]


def test_letter_scientific_shifts_ids_to_one_based():
    t = adapters.letter_dataset(shared("amazon_scientific", "Scientific.inter.json"),
                                shared("amazon_scientific", "Scientific.item.json"))
    _check(t)
    assert t["user_sequences"].num_rows == 8317 and t["items"].num_rows == 4344
    assert t["items"].column("item_id").to_pylist()[:2] == [1, 2]
    assert sum(len(s) for s in t["user_sequences"].column("item_ids").to_pylist()) == 58492
    first = t["items"].slice(0, 1).to_pylist()[0]
    assert first["title"].startswith("SUPCO SPP6") and first["categories"][0] == "Industrial & Scientific"


def test_letter_yelp_items_match_s3rec_ids():
    t = adapters.letter_dataset(item_path=shared("yelp", "Yelp.item.json"))
    assert t["items"].num_rows == 20033 and t["items"].column("title")[0].as_py() == "The Great Greek"


def test_movielens_sequences_sorted_by_time():
    t = adapters.movielens_100k(shared("movielens_100k"))
    _check(t)
    assert t["items"].num_rows == 1682 and t["interactions"].num_rows == 100000
    assert t["items"].column("title")[0].as_py() == "Toy Story (1995)"
    assert t["items"].column("categories")[0].as_py() == ["Animation", "Children's", "Comedy"]
    seqs = t["user_sequences"]
    assert seqs.num_rows == 943
    for ts in seqs.column("timestamps").to_pylist()[:50]:
        assert ts == sorted(ts)


def test_mind_news_and_impressions():
    t = adapters.mind(shared("mind", "farabi_subset", "news.tsv"), shared("mind", "farabi_subset", "behaviors.tsv"))
    _check(t)
    inter = t["interactions"]
    assert t["items"].num_rows == 2000 and inter.num_rows == 189359
    assert int(np.sum(inter.column("label").to_numpy())) == 7542
    kim = adapters.mind(shared("mind", "kim_tiny", "docs.tsv"))
    assert kim["items"].num_rows == 344


def test_taobao_drops_only_the_truncated_last_line(tmp_path):
    t = adapters.taobao_userbehavior(shared("taobao_userbehavior", "UserBehavior.csv"))
    _check(t)
    assert t["interactions"].num_rows == 84475 and t["user_sequences"].num_rows == 815
    bad = tmp_path / "ub.csv"
    bad.write_text("1,2,3,pv,1511544070\n1,2,3,click,1511544071\n1,2,3,pv,1511544072\n")
    with pytest.raises(InputError, match=r"ub.csv:2"):
        adapters.taobao_userbehavior(bad)


def test_malformed_files_name_file_and_line(tmp_path):
    f = tmp_path / "x.txt"
    f.write_text("1 2 3\n2 4 five\n")
    with pytest.raises(InputError, match=r"x.txt:2: expected integers"):
        adapters.s3rec_sequences(f)
    j = tmp_path / "a.inter.json"
    j.write_text('{"0": [1, 2,')
    with pytest.raises(InputError, match="invalid JSON"):
        adapters.letter_dataset(j)


def test_prepare_data_job_writes_tables(tmp_path):
    src = shared("lastfm", "LastFM.txt")
    assert prepare_main(["--format", "s3rec", "--input", f'["{src}"]', "--output", str(tmp_path / "lastfm")]) == 0
    t = pq.read_table(tmp_path / "lastfm" / "user_sequences")
    assert t.num_rows == 1090 and sum(len(s) for s in t.column("item_ids").to_pylist()) == 52551
    assert (tmp_path / "lastfm" / "_MANIFEST.json").exists()


def test_subset_keeps_the_most_interacted_items_renumbered(tmp_path):
    import pyarrow as pa

    from semrec.data.io import write_table

    # item 7 x4, 2 x3, 5 x3, 9 x3: the 3 most interacted, ties by id: 7, 2, 5 -> renumbered 1 (2), 2 (5), 3 (7)
    seqs = [[7, 5, 9, 2], [7, 5, 9], [7, 5, 9, 4], [7, 2, 8], [1, 2, 3]]
    (tmp_path / "s").mkdir()
    write_table(pa.table({"user_id": pa.array([10, 11, 12, 13, 14], pa.int64()),
                          "item_ids": pa.array(seqs, pa.list_(pa.int64()))}), tmp_path / "s" / "p.parquet")
    (tmp_path / "i").mkdir()
    write_table(pa.table({"item_id": pa.array(range(1, 10), pa.int64()), "title": [f"t{i}" for i in range(1, 10)]}),
                tmp_path / "i" / "p.parquet")
    out = tmp_path / "out"
    assert prepare_main(["--format", "subset", "--input", str(tmp_path / "s"), "--input", str(tmp_path / "i"),
                         "--items", "3", "--output", str(out)]) == 0
    got = pq.read_table(out / "user_sequences").to_pydict()
    # users left with < 3 kept items are dropped; user 10 keeps 7, 5, 2 in order
    assert got == {"user_id": [10], "item_ids": [[3, 2, 1]]}
    assert pq.read_table(out / "items").to_pydict() == {"item_id": [1, 2, 3], "title": ["t2", "t5", "t7"]}
