"""Item text composition for the embedding stage; item categories as integer keys."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa

from semrec.errors import InputError

DEFAULT_TEXT_FIELDS = ("title", "brand", "categories", "description")


def compose_texts(batch: pa.Table, fields: list[str] | tuple[str, ...] = DEFAULT_TEXT_FIELDS,
                  empty_text: Literal["error", "id"] = "error", where: str = "items") -> list[str]:
    """One string per row: the non-empty text fields joined by '. ' (list fields joined by ', ').

    ``empty_text="error"`` refuses rows with no text (naming the item id); ``"id"`` uses "item <id>".
    """
    present = [f for f in fields if f in batch.column_names]
    if not present:
        raise InputError(f"{where}: none of the text fields {list(fields)} is a column (found {batch.column_names})")
    cols = [batch.column(f).to_pylist() for f in present]
    ids = batch.column("item_id").to_pylist()
    texts = []
    for i, iid in enumerate(ids):
        parts = []
        for col in cols:
            v = col[i]
            if isinstance(v, list):
                v = ", ".join(x for x in v if x)
            if v and v.strip():
                parts.append(v.strip())
        if not parts:
            if empty_text == "error":
                raise InputError(f"{where}: item_id {iid} has empty text in all of {present} "
                                 f"(fix the row, or pass --encoder.empty_text id to embed 'item <id>')")
            parts.append(f"item {iid}")
        texts.append(". ".join(parts))
    return texts


def load_item_categories(path: str | Path, n_items: int) -> np.ndarray:
    """(n_items + 1,) int32: each item's first category as an integer key (1..), 0 for row 0 and items
    without a category. Refuses item ids outside 1..n_items, naming the file."""
    import pyarrow.compute as pc

    from semrec.data.io import parquet_files, read_table

    files = parquet_files(path, "items")
    t = read_table(files, "items", columns=["item_id", "categories"])
    ids = t.column("item_id").to_numpy()
    bad = (ids < 1) | (ids > n_items)
    if bad.any():
        raise InputError(f"{path}: item_id {int(ids[np.argmax(bad)])} is outside the click samples' catalogue "
                         f"1..{n_items}")
    cats = t.column("categories")
    first = pc.if_else(pc.greater(pc.fill_null(pc.list_value_length(cats), 0), 0),
                       pc.list_element(pc.fill_null(cats, pa.scalar([], cats.type)), 0), None) if len(t) else cats
    codes = pc.dictionary_encode(first).combine_chunks() if len(t) else None
    out = np.zeros(n_items + 1, dtype=np.int32)
    if codes is not None:
        out[ids] = pc.fill_null(pc.add(codes.indices.cast(pa.int32()), 1), 0).to_numpy(zero_copy_only=False)
    return out
