"""Adapters from public recommendation dataset formats to semrec's tables (see schemas/).

Each adapter returns ``{table_name: pa.Table}``; ``jobs/prepare_data.py`` writes them. Errors
name the file and line. Ids keep their dataset numbering (S3-Rec ids are 1-based, 0 = padding);
LETTER/LC-Rec 0-based ids are shifted by +1 so every dataset shares the S3-Rec convention.
"""

from __future__ import annotations

import csv
import json
import logging
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa

from semrec.errors import InputError
from semrec.schemas import INTERACTIONS, ITEMS, USER_SEQUENCES

log = logging.getLogger(__name__)


def _read_json(path: Path):
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: invalid JSON at line {e.lineno} ({e.msg})") from None


def _lines(path: Path, encoding: str = "utf-8"):
    try:
        with open(path, encoding=encoding) as fh:
            yield from enumerate(fh, start=1)
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not {encoding} text ({e})") from None


def _table(spec, columns: dict) -> pa.Table:
    schema = pa.schema([f for f in spec.schema() if f.name in columns])
    return pa.table({f.name: columns[f.name] for f in schema}, schema=schema)


def sequences_table(seqs: dict[int, list[int]], timestamps: dict[int, list[int]] | None = None) -> pa.Table:
    users = sorted(seqs)
    cols = {"user_id": users, "item_ids": [seqs[u] for u in users]}
    if timestamps is not None:
        cols["timestamps"] = [timestamps[u] for u in users]
    return _table(USER_SEQUENCES, cols)


def s3rec_sequences(path: str | Path) -> dict[str, pa.Table]:
    """S3-Rec ``<name>.txt``: ``user item item ...`` per line, chronological, 1-based ids."""
    path = Path(path)
    seqs: dict[int, list[int]] = {}
    for lineno, line in _lines(path):
        parts = line.split()
        if not parts:
            continue
        try:
            ids = [int(x) for x in parts]
        except ValueError:
            raise InputError(f"{path}:{lineno}: expected integers 'user item item ...', got {line.strip()[:80]!r}") from None
        if len(ids) < 2:
            raise InputError(f"{path}:{lineno}: user {ids[0]} has no items")
        if ids[0] in seqs:
            raise InputError(f"{path}:{lineno}: duplicate user id {ids[0]}")
        if min(ids[1:]) < 1:
            raise InputError(f"{path}:{lineno}: item ids must be >= 1 (0 is padding)")
        seqs[ids[0]] = ids[1:]
    if not seqs:
        raise InputError(f"{path}: no sequences")
    return {"user_sequences": sequences_table(seqs)}


def beauty_items(directory: str | Path) -> dict[str, pa.Table]:
    """Amazon Beauty titles: S3-Rec id -> ASIN (datamaps.json) -> global id -> products_lookup.csv name."""
    d = Path(directory)
    id2item = _read_json(d / "datamaps.json")["id2item"]
    asin2gid = _read_json(d / "item_id_to_int.json")
    names: dict[int, str] = {}
    lookup = d / "products_lookup.csv"
    try:
        with open(lookup, encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or not {"global_product_id", "name"} <= set(reader.fieldnames):
                raise InputError(f"{lookup}: expected columns global_product_id, name; found {reader.fieldnames}")
            for row in reader:
                names[int(row["global_product_id"])] = row["name"]
    except FileNotFoundError:
        raise InputError(f"{lookup}: file not found") from None
    ids, titles = [], []
    for sid in sorted(id2item, key=int):
        asin = id2item[sid]
        if asin not in asin2gid:
            raise InputError(f"{d / 'item_id_to_int.json'}: ASIN {asin} (item {sid}) missing")
        title = names.get(asin2gid[asin], "")
        ids.append(int(sid))
        titles.append(title or None)
    empty = sum(t is None for t in titles)
    if empty:
        log.warning("beauty: %d items have an empty title (kept as null)", empty)
    return {"items": _table(ITEMS, {"item_id": ids, "title": titles})}


def letter_dataset(inter_path: str | Path | None = None, item_path: str | Path | None = None) -> dict[str, pa.Table]:
    """LETTER / LC-Rec ``<name>.inter.json`` ({user: [items]}) and ``<name>.item.json``; ids shifted +1."""
    out = {}
    if inter_path:
        raw = _read_json(Path(inter_path))
        out["user_sequences"] = sequences_table({int(u) + 1: [int(i) + 1 for i in items] for u, items in raw.items()})
    if item_path:
        raw = _read_json(Path(item_path))
        ids, cols = [], defaultdict(list)
        for k in sorted(raw, key=int):
            rec = raw[k]
            ids.append(int(k) + 1)
            cols["title"].append(rec.get("title") or None)
            cols["description"].append(rec.get("description") or None)
            cols["brand"].append(rec.get("brand") or None)
            cats = rec.get("categories")
            cols["categories"].append([c.strip() for c in cats.split(",") if c.strip()] if cats else None)
        out["items"] = _table(ITEMS, {"item_id": ids, **cols})
    if not out:
        raise InputError("letter: give an .inter.json and/or an .item.json")
    return out


ML_GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
             "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
             "War", "Western"]


def movielens_100k(directory: str | Path) -> dict[str, pa.Table]:
    """u.item (latin-1, '|'-separated) + u.data (tab-separated ratings). Sequences sort by (timestamp, item)."""
    d = Path(directory)
    ids, titles, cats = [], [], []
    for lineno, line in _lines(d / "u.item", encoding="latin-1"):
        f = line.rstrip("\n").split("|")
        if len(f) != 24:
            raise InputError(f"{d / 'u.item'}:{lineno}: expected 24 '|'-separated fields, got {len(f)}")
        ids.append(int(f[0]))
        titles.append(f[1] or None)
        cats.append([g for g, flag in zip(ML_GENRES, f[5:]) if flag == "1"])
    rows = []
    for lineno, line in _lines(d / "u.data"):
        f = line.split()
        if len(f) != 4:
            raise InputError(f"{d / 'u.data'}:{lineno}: expected 'user item rating timestamp'")
        rows.append(tuple(int(x) for x in f))
    rows.sort(key=lambda r: (r[0], r[3], r[1]))
    seqs, ts = defaultdict(list), defaultdict(list)
    for u, i, _, t in rows:
        seqs[u].append(i)
        ts[u].append(t)
    inter = _table(INTERACTIONS, {"user_id": [r[0] for r in rows], "item_id": [r[1] for r in rows],
                                  "timestamp": [r[3] for r in rows], "event": ["rating"] * len(rows),
                                  "label": [r[2] for r in rows]})
    return {"items": _table(ITEMS, {"item_id": ids, "title": titles, "categories": cats}),
            "user_sequences": sequences_table(seqs, ts), "interactions": inter}


def _strip_id(value: str, prefix: str, where: str) -> int:
    if not value.startswith(prefix) or not value[len(prefix):].isdigit():
        raise InputError(f"{where}: expected an id like {prefix}123, got {value!r}")
    return int(value[len(prefix):])


def mind(news_path: str | Path | None = None, behaviors_path: str | Path | None = None) -> dict[str, pa.Table]:
    """MIND news.tsv -> items (N123 -> 123); behaviors.tsv -> labelled impressions + click histories."""
    out = {}
    if news_path:
        p = Path(news_path)
        ids, titles, descs, cats = [], [], [], []
        for lineno, line in _lines(p):
            f = line.rstrip("\n").split("\t")
            if len(f) < 4:
                raise InputError(f"{p}:{lineno}: expected 'id category subcategory title [abstract ...]'")
            ids.append(_strip_id(f[0], "N", f"{p}:{lineno}"))
            cats.append([c for c in f[1:3] if c])
            titles.append(f[3] or None)
            descs.append(f[4] if len(f) > 4 and f[4] else None)
        out["items"] = _table(ITEMS, {"item_id": ids, "title": titles, "description": descs, "categories": cats})
    if behaviors_path:
        p = Path(behaviors_path)
        cols = defaultdict(list)
        histories: dict[int, list[int]] = {}
        for lineno, line in _lines(p):
            f = line.rstrip("\n").split("\t")
            if len(f) != 5:
                raise InputError(f"{p}:{lineno}: expected 5 tab-separated fields, got {len(f)}")
            where = f"{p}:{lineno}"
            imp, user = int(f[0]), _strip_id(f[1], "U", where)
            try:
                ts = int(datetime.strptime(f[2], "%m/%d/%Y %I:%M:%S %p").replace(tzinfo=timezone.utc).timestamp())
            except ValueError:
                raise InputError(f"{where}: bad time {f[2]!r}") from None
            hist = [_strip_id(x, "N", where) for x in f[3].split()]
            if len(hist) > len(histories.get(user, [])):
                histories[user] = hist
            for cand in f[4].split():
                nid, _, label = cand.rpartition("-")
                if label not in ("0", "1"):
                    raise InputError(f"{where}: impression {cand!r} is not 'N<id>-<0|1>'")
                for k, v in (("user_id", user), ("item_id", _strip_id(nid, "N", where)), ("timestamp", ts),
                             ("event", "impression"), ("label", int(label)), ("impression_id", imp)):
                    cols[k].append(v)
        out["interactions"] = _table(INTERACTIONS, cols)
        out["user_sequences"] = sequences_table(histories)
    if not out:
        raise InputError("mind: give a news.tsv and/or a behaviors.tsv")
    return out


def taobao_userbehavior(csv_path: str | Path) -> dict[str, pa.Table]:
    """UserBehavior.csv: ``user,item,category,behavior,timestamp`` (no header) -> interactions,
    user_sequences (time order) and items (``categories`` = [category id]; no text).

    Item ids are made dense, 1..N in the order of the raw ids (the raw catalogue has ids up to ~5M for
    ~55k items in the shared head), so ID tables and sampled negatives cover real items only.
    A truncated *last* line (the shared sample ends mid-row) is dropped with a warning; any other
    malformed line is an error.
    """
    p = Path(csv_path)
    cols = defaultdict(list)
    category: dict[int, int] = {}
    lines = list(_lines(p))
    for lineno, line in lines:
        f = line.rstrip("\n").split(",")
        ok = len(f) == 5 and all(x.isdigit() for x in (f[0], f[1], f[2], f[4])) and f[3] in ("pv", "cart", "fav", "buy")
        if not ok:
            if lineno == len(lines):
                log.warning("%s:%d: dropping truncated last line %r", p, lineno, line.strip())
                continue
            raise InputError(f"{p}:{lineno}: expected 'user,item,category,pv|cart|fav|buy,timestamp', got {line.strip()[:80]!r}")
        cols["user_id"].append(int(f[0]))
        cols["item_id"].append(int(f[1]))
        cols["event"].append(f[3])
        cols["timestamp"].append(int(f[4]))
        category.setdefault(int(f[1]), int(f[2]))
    raw = sorted(category)
    dense = {r: i + 1 for i, r in enumerate(raw)}
    cols["item_id"] = [dense[i] for i in cols["item_id"]]
    inter = _table(INTERACTIONS, cols)
    order = sorted(range(inter.num_rows), key=lambda r: (cols["user_id"][r], cols["timestamp"][r]))
    seqs, ts = defaultdict(list), defaultdict(list)
    for r in order:
        seqs[cols["user_id"][r]].append(cols["item_id"][r])
        ts[cols["user_id"][r]].append(cols["timestamp"][r])
    items = _table(ITEMS, {"item_id": list(range(1, len(raw) + 1)), "title": [None] * len(raw),
                           "categories": [[str(category[r])] for r in raw]})
    return {"interactions": inter, "user_sequences": sequences_table(seqs, ts), "items": items}


def alimama_dmr(path: str | Path, test_every: int = 5) -> dict[str, pa.Table]:
    """Alimama display-ad samples in the DMR layout (267 comma-separated numbers per line: 50 behaviour types,
    their 50 category ids, 50 brand ids, 50 padding-mask values (1 = a real behaviour), 50 match-mask values,
    user id and profile (250-258), ad id, category, campaign, customer, brand, price, pid, click label (266))
    -> ``histories`` / ``train`` / ``test`` in the ``prepare_data --format clicks`` layout, for a long-sequence
    CTR smoke test.

    The behaviour log has categories, not item ids, so the "items" are categories (made dense, 1..N, over the
    behaviours and the ads): a row's history is the categories of its real behaviours and its candidate is
    the ad's category. Each row carries its own history, so each row is its own user (``user_id`` = line
    number) and its own impression of one candidate; every ``test_every``-th line is a test row. AUC only
    (nDCG over one candidate is trivially 1)."""
    from semrec.schemas import CTR_SAMPLES, encode_metadata

    p = Path(path)
    hist, cands, labels = [], [], []
    for lineno, line in _lines(p):
        f = line.strip().split(",")
        try:
            if len(f) != 267:
                raise ValueError(f"{len(f)} fields")
            cats, mask = [int(x) for x in f[50:100]], [int(x) for x in f[150:200]]
            label, cand = int(f[266]), int(f[260])
            if label not in (0, 1):
                raise ValueError(f"label {label}")
        except ValueError as e:
            raise InputError(f"{p}:{lineno}: expected 267 numbers in the DMR layout with a 0/1 label in the "
                             f"last column ({e})") from None
        h = [c for c, m in zip(cats, mask) if m == 1]
        if not h:
            raise InputError(f"{p}:{lineno}: no behaviours (the padding mask, columns 150-199, is all 0)")
        hist.append(h)
        cands.append(cand)
        labels.append(label)
    if not hist:
        raise InputError(f"{p}: no rows")
    raw = sorted({c for h in hist for c in h} | set(cands))
    dense = {r: i + 1 for i, r in enumerate(raw)}
    n, u = len(raw), len(hist)
    users = list(range(1, u + 1))
    hist_table = pa.table({"user_id": pa.array(users, pa.int64()),
                           "item_ids": pa.array([[dense[c] for c in h] for h in hist], pa.list_(pa.int64()))},
                          schema=USER_SEQUENCES.schema(with_optional=False))
    meta = {"table": "ctr_samples", "n_features": u + n + 1, "fields": ["user", "item"], "n_items": n,
            "n_users": u, "negatives": 0, "impressions": None, "source": "alimama-dmr"}

    def samples(rows: list[int]) -> pa.Table:
        items = [dense[cands[r]] for r in rows]
        t = pa.table({"label": pa.array([labels[r] for r in rows], pa.int8()),
                      "features": pa.array([[r, u + i] for r, i in zip(rows, items)], pa.list_(pa.int64())),
                      "impression_id": pa.array(rows, pa.int64()),
                      "user_id": pa.array([users[r] for r in rows], pa.int64()),
                      "item_id": pa.array(items, pa.int64())}, schema=CTR_SAMPLES.schema())
        return t.replace_schema_metadata(encode_metadata(meta))

    test = [r for r in range(u) if r % test_every == test_every - 1]
    train = [r for r in range(u) if r % test_every != test_every - 1]
    return {"histories": hist_table, "train": samples(train), "test": samples(test)}


FRAPPE_FIELDS = ["user", "item", "daytime", "weekday", "isweekend", "homework", "cost", "weather", "country", "city"]


def libfm_ctr(path: Path, fields: list[str] | None = None) -> dict[str, pa.Table]:
    """libFM one-hot rows ``label f:1 f:1 ...`` (label 1 click, -1 or 0 non-click) with the same number of
    active features per row, one per field, in field order (Frappe: 10 fields, ids 0..5381) ->
    ``ctr_samples``. The vocabulary size is max id + 1 of this file (give the same ``--n_features`` to
    train and test files through the training job)."""
    from semrec.schemas import CTR_SAMPLES, encode_metadata

    labels, feats, width = [], [], None
    with open(path) as fh:
        for lineno, line in enumerate(fh, 1):
            parts = line.split()
            if not parts:
                continue
            try:
                y = int(float(parts[0]))
                ids = sorted(int(p.split(":")[0]) for p in parts[1:])
            except ValueError:
                raise InputError(f"{path}:{lineno}: expected 'label id:value ...'") from None
            if y not in (1, -1, 0):
                raise InputError(f"{path}:{lineno}: label {parts[0]} is not 1, 0 or -1")
            width = width if width is not None else len(ids)
            if len(ids) != width or not ids:
                raise InputError(f"{path}:{lineno}: {len(ids)} features, the rows before have {width}")
            labels.append(1 if y == 1 else 0)
            feats.append(ids)
    if not labels:
        raise InputError(f"{path}: no rows")
    names = fields if fields and len(fields) == width else [f"f{i}" for i in range(width)]
    table = pa.table({"label": pa.array(labels, pa.int8()), "features": pa.array(feats, pa.list_(pa.int64()))},
                     schema=CTR_SAMPLES.schema(with_optional=False))
    n = max(max(f) for f in feats) + 1
    return {"ctr_samples": table.replace_schema_metadata(encode_metadata({"table": "ctr_samples", "n_features": n,
                                                                         "fields": names}))}


FORMATS = {
    "s3rec": "S3-Rec <name>.txt sequences (--input file)",
    "beauty-items": "Amazon Beauty titles (--input the amazon_beauty folder)",
    "letter": "LETTER/LC-Rec .inter.json and/or .item.json (--input one or both files)",
    "movielens": "MovieLens-100k folder with u.item and u.data",
    "mind": "MIND news.tsv and/or behaviors.tsv (--input one or both files)",
    "taobao": "Taobao UserBehavior.csv",
    "alimama": "Alimama/Taobao display-ad samples in the DMR layout (alimama_sampled_train.txt)",
    "libfm": "libFM one-hot CTR rows, one feature per field (Frappe's frappe.*.libfm)",
}


def convert(fmt: str, inputs: list[Path]) -> dict[str, pa.Table]:
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if not inputs:
        raise InputError(f"format {fmt}: --input is required")
    for p in inputs:
        if not p.exists():
            raise InputError(f"{p}: not found")
    if fmt == "s3rec":
        return s3rec_sequences(inputs[0])
    if fmt == "beauty-items":
        return beauty_items(inputs[0])
    if fmt == "movielens":
        return movielens_100k(inputs[0])
    if fmt == "taobao":
        return taobao_userbehavior(inputs[0])
    if fmt == "alimama":
        return alimama_dmr(inputs[0])
    if fmt == "libfm":
        return libfm_ctr(inputs[0], FRAPPE_FIELDS if "frappe" in inputs[0].name else None)
    by_suffix = {p.name: p for p in inputs}
    if fmt == "letter":
        return letter_dataset(next((p for n, p in by_suffix.items() if n.endswith(".inter.json")), None),
                              next((p for n, p in by_suffix.items() if n.endswith(".item.json")), None))
    news = next((p for p in inputs if p.name in ("news.tsv", "docs.tsv")), None)
    beh = next((p for p in inputs if p.name.startswith("behaviors")), None)
    return mind(news, beh)
