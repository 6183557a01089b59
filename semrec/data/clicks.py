"""Click impressions with item text, built from behaviour sequences (MIND-like; UIST Table 2 data).

Per user with chronological items s (length n):

- a fixed **history** H = s[:h], h = max(1, ceil(n * history_fraction)) (or h = n - impressions for long
  sequences: every earlier behaviour is history): what every user representation
  (user ID aside) is computed from — the user encoder in the CTR model, the cached z and the user tokens
  of ``tokenize_users`` — so no representation sees an impression's click;
- one **impression** per later position p >= h: the real item s[p] (click, label 1) and ``negatives``
  items the user never interacted with (label 0), drawn from a hash of (seed, user, p), distinct;
- the last impression of each user is the **test** impression, the earlier ones are training
  impressions (users with n - h < 2 have a test impression only).

Feature ids of the two fields (the ID paradigms' inputs): ``user`` = the user's row in the history table
(0..U-1), ``item`` = U + item_id.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from semrec.data.seqbatch import RowBatch, _outside
from semrec.errors import InputError
from semrec.schemas import CTR_SAMPLES, USER_SEQUENCES, encode_metadata


def build_clicks(rows: RowBatch, n_items: int, negatives: int = 4, history_fraction: float = 0.5,
                 seed: int = 0, impressions: int | None = None) -> dict[str, pa.Table]:
    """``rows`` sorted by user id -> {"histories": user_sequences, "train": ctr_samples, "test": ctr_samples}.
    ``impressions``: the last N items of each user are impressions (history = the rest, at least 1 item)
    instead of the ``history_fraction`` split."""
    if len(rows) == 0:
        raise InputError("no users to build impressions from")
    n = rows.lengths
    if (n < 2).any():
        i = int(np.argmax(n < 2))
        raise InputError(f"user {rows.user_ids[i]} has {n[i]} items: an impression needs a history of >= 1 item")
    if n_items - n.max() < negatives:
        raise InputError(f"a catalogue of {n_items} items leaves fewer than {negatives} negatives for user "
                         f"{rows.user_ids[int(np.argmax(n))]} ({n.max()} items)")
    h = np.maximum(1, n - impressions if impressions else np.ceil(n * history_fraction).astype(np.int64))
    h = np.minimum(h, n - 1)  # at least the test impression
    starts = rows.offsets[:-1]
    hist = RowBatch(rows.user_ids, np.concatenate([[0], np.cumsum(h)]).astype(np.int64),
                    rows.flat[np.repeat(starts, h) + (np.arange(h.sum()) - np.repeat(np.cumsum(h) - h, h))])
    count = n - h
    user_row = np.repeat(np.arange(len(rows)), count)
    position = np.repeat(h, count) + (np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count))
    clicked = rows.flat[starts[user_row] + position]
    per_imp = rows.take(user_row)  # one row per impression: negatives avoid the user's whole sequence
    neg = _outside(per_imp, n_items, (seed, 5), position[:, None] * negatives + np.arange(negatives)[None, :],
                   distinct=True)
    cand = np.concatenate([clicked[:, None], neg], axis=1)  # (I, 1 + k): the click first
    is_test = position == n[user_row] - 1
    u = len(rows)
    meta = {"table": "ctr_samples", "n_features": u + n_items + 1, "fields": ["user", "item"],
            "n_items": n_items, "n_users": u, "negatives": negatives, "history_fraction": history_fraction,
            "impressions": impressions, "seed": seed}

    def samples(mask: np.ndarray) -> pa.Table:
        imp = np.flatnonzero(mask)
        k = cand.shape[1]
        users = np.repeat(user_row[imp], k)
        items = cand[imp].ravel()
        labels = np.tile(np.r_[1, np.zeros(k - 1)], len(imp)).astype(np.int8)
        feats = np.stack([users, u + items], axis=1).ravel()
        t = pa.table({"label": pa.array(labels, pa.int8()),
                      "features": pa.ListArray.from_arrays(np.arange(0, 2 * len(users) + 1, 2, dtype=np.int32),
                                                           pa.array(feats, pa.int64())),
                      "impression_id": pa.array(np.repeat(imp, k), pa.int64()),
                      "user_id": pa.array(rows.user_ids[users], pa.int64()),
                      "item_id": pa.array(items, pa.int64())}, schema=CTR_SAMPLES.schema())
        return t.replace_schema_metadata(encode_metadata(meta))

    hist_table = pa.table({"user_id": pa.array(hist.user_ids, pa.int64()),
                           "item_ids": pa.ListArray.from_arrays(pa.array(hist.offsets.astype(np.int32)),
                                                                pa.array(hist.flat, pa.int64()))},
                          schema=USER_SEQUENCES.schema(with_optional=False))
    return {"histories": hist_table, "train": samples(~is_test), "test": samples(is_test)}


def clicks_from(inputs: list, negatives: int, history_fraction: float, seed: int,
                min_rating: int | None = None, impressions: int | None = None) -> dict[str, pa.Table]:
    """``prepare_data --format clicks``: the inputs are earlier prepare_data output folders (or a
    user_sequences path): their ``user_sequences``, or with ``min_rating`` their ``interactions`` of label
    >= min_rating in time order; their ``items`` give the catalogue size and are passed through for the
    item tokenizer."""
    from pathlib import Path

    import pyarrow.compute as pc

    from semrec.data.io import parquet_files, read_table
    from semrec.data.sequences import load_sequences

    def find(name: str) -> Path | None:
        return next((Path(p) / name for p in inputs if (Path(p) / name).exists()), None)

    if not inputs:
        raise InputError("format clicks: give --input, prepare_data output folder(s) with user_sequences (or "
                         "interactions) and optionally items")
    src = Path(inputs[0])
    items_dir = find("items")
    items = read_table(parquet_files(items_dir, "items"), "items") if items_dir else None
    if min_rating is not None:
        if find("interactions") is None:
            raise InputError(f"--min_rating: no interactions/ folder in {', '.join(map(str, inputs))}")
        t = read_table(parquet_files(find("interactions"), "interactions"), "interactions",
                       columns=["user_id", "item_id", "timestamp", "label"])
        t = t.filter(pc.greater_equal(t.column("label"), min_rating))
        t = t.take(pc.sort_indices(t, [("user_id", "ascending"), ("timestamp", "ascending"), ("item_id", "ascending")]))
        users, starts = np.unique(t.column("user_id").to_numpy(), return_index=True)
        rows = RowBatch(users.astype(np.int64), np.append(starts, t.num_rows).astype(np.int64),
                        t.column("item_id").to_numpy().astype(np.int64))
        rows = rows.take(np.flatnonzero(rows.lengths >= 2))
    else:
        seq = find("user_sequences") or src
        rows = load_sequences(seq, None, 2, "an impression").rows
    n_items = int(pc.max(items.column("item_id")).as_py()) if items is not None else int(rows.flat.max())
    if rows.flat.max() > n_items:
        raise InputError(f"{src}: item id {rows.flat.max()} is outside the items table (1..{n_items})")
    out = build_clicks(rows, n_items, negatives, history_fraction, seed, impressions)
    if items is not None:
        out["items"] = items
    return out
