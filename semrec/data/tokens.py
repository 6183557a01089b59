"""Per-item inputs read from tokenizer outputs, as dense arrays indexed by item id (row 0 = padding):
token codes from a ``token_table`` and text embeddings from ``item_embeddings``. Both refuse a table that
does not cover every item 1..n_items, naming the table and the missing ids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from semrec.data.io import parquet_files, read_table
from semrec.errors import InputError
from semrec.schemas import decode_metadata


def load_token_codes(tokens: Path, n_items: int, use_suffix: bool) -> tuple[np.ndarray, list[int]]:
    files = parquet_files(Path(tokens) / "token_table", "token table")
    meta = decode_metadata(pq.read_schema(files[0]))
    sizes = list(meta.get("codebook_sizes") or [])
    for f in files[1:]:
        if decode_metadata(pq.read_schema(f)).get("codebook_sizes") != sizes:
            raise InputError(f"{f}: codebook sizes differ from {files[0]} ({sizes}): mixed token tables")
    if not sizes:
        raise InputError(f"{files[0]}: no semrec.codebook_sizes metadata (not a semrec token table)")
    t = read_table(files, "token table")
    ids = t.column("item_id").to_numpy()
    cols = [f"c{j}" for j in range(len(sizes))]
    if use_suffix:
        cols.append("suffix")
        sizes = sizes + [int(t.column("suffix").to_numpy().max()) + 1]
    codes = np.zeros((n_items + 1, len(cols)), dtype=np.int64)
    covered = np.zeros(n_items + 1, dtype=bool)
    keep = (ids >= 1) & (ids <= n_items)
    for j, c in enumerate(cols):
        codes[ids[keep], j] = t.column(c).to_numpy()[keep]
    covered[ids[keep]] = True
    missing = np.flatnonzero(~covered[1:]) + 1
    if len(missing):
        raise InputError(f"{tokens}/token_table does not cover {len(missing)} of the {n_items} items "
                         f"(e.g. item ids {missing[:5].tolist()})")
    for j, size in enumerate(sizes):
        if codes[:, j].max() >= size:
            raise InputError(f"{tokens}/token_table: column {cols[j]} has code {codes[:, j].max()} >= "
                             f"codebook size {size} from its metadata")
    return codes, sizes


def load_text_embeddings(path: Path, n_items: int) -> np.ndarray:
    files = parquet_files(path, "item embeddings")
    t = read_table(files, "item embeddings")
    ids = t.column("item_id").to_numpy()
    col = t.column("embedding").combine_chunks()
    x = col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), col.type.list_size).astype(np.float32)
    out = np.zeros((n_items + 1, x.shape[1]), dtype=np.float32)
    covered = np.zeros(n_items + 1, dtype=bool)
    keep = (ids >= 1) & (ids <= n_items)
    out[ids[keep]] = x[keep]
    covered[ids[keep]] = True
    missing = np.flatnonzero(~covered[1:]) + 1
    if len(missing):
        raise InputError(f"{path} does not cover item ids {missing[:5].tolist()}")
    return out
