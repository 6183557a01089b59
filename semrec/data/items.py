"""Item text composition for the embedding stage."""

from __future__ import annotations

from typing import Literal

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
