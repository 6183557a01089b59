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
    """(n_items + 1, D) float32 item vectors, row 0 zeros."""
    ids, x = _vectors(path, "item_id")
    out = np.zeros((n_items + 1, x.shape[1]), dtype=np.float32)
    covered = np.zeros(n_items + 1, dtype=bool)
    keep = (ids >= 1) & (ids <= n_items)
    out[ids[keep]] = x[keep]
    covered[ids[keep]] = True
    missing = np.flatnonzero(~covered[1:]) + 1
    if len(missing):
        raise InputError(f"{path} does not cover item ids {missing[:5].tolist()}")
    return out


def _vectors(path: Path, key: str) -> tuple[np.ndarray, np.ndarray]:
    t = read_table(parquet_files(path, f"{key[:-3]} embeddings"), f"{key[:-3]} embeddings", columns=[key, "embedding"])
    ids = t.column(key).to_numpy()
    col = t.column("embedding").combine_chunks()
    x = col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), col.type.list_size).astype(np.float32)
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise InputError(f"{path}: NaN or inf in the embedding of {key} {ids[bad][:5].tolist()}")
    return ids, x


def load_user_vectors(path: Path, user_ids: np.ndarray) -> np.ndarray:
    """(U, D) float32: the ``user_embeddings`` row of each of ``user_ids`` (z of tokenize_users)."""
    ids, x = _vectors(path, "user_id")
    return x[_lookup(ids, user_ids, path, "user_id")]


def load_user_codes(path: Path, user_ids: np.ndarray) -> tuple[np.ndarray, list[int], dict]:
    """((U, K) codes of each of ``user_ids``, codebook sizes, the table's metadata) from a user token table."""
    files = parquet_files(path, "user token table")
    meta = decode_metadata(pq.read_schema(files[0]))
    sizes = list(meta.get("codebook_sizes") or [])
    if not sizes or meta.get("table") != "user_token_table":
        raise InputError(f"{files[0]}: not a semrec user token table (metadata table={meta.get('table')!r})")
    t = read_table(files, "user token table")
    ids = t.column("user_id").to_numpy()
    codes = np.stack([t.column(f"c{j}").to_numpy().astype(np.int64) for j in range(len(sizes))], axis=1)
    return codes[_lookup(ids, user_ids, path, "user_id")], sizes, meta


def _lookup(ids: np.ndarray, wanted: np.ndarray, path: Path, key: str) -> np.ndarray:
    order = np.argsort(ids, kind="stable")
    pos = np.minimum(np.searchsorted(ids[order], wanted), max(len(ids) - 1, 0))
    found = (ids[order][pos] == wanted) if len(ids) else np.zeros(len(wanted), bool)
    if not found.all():
        raise InputError(f"{path}: no row for {key} {wanted[~found][:5].tolist()} ({int((~found).sum())} missing)")
    return order[pos]


def token_table_info(tokens: Path) -> dict:
    """n_items (the largest item id), codebook sizes and quantizer id of a tokenize_items output folder."""
    files = parquet_files(Path(tokens) / "token_table", "item token table")
    meta = decode_metadata(pq.read_schema(files[0]))
    if not meta.get("codebook_sizes"):
        raise InputError(f"{files[0]}: no semrec.codebook_sizes metadata (not a semrec token table)")
    return {"n_items": _max_id(files, "item_id"), "codebook_sizes": list(meta["codebook_sizes"]),
            "quantizer_id": meta.get("quantizer_id")}


def _max_id(files: list[Path], column: str) -> int:
    """The largest ``column`` value from the Parquet footers' row-group statistics (no data read; a file
    written without statistics falls back to reading that column of that file)."""
    import pyarrow.compute as pc

    best = 0
    for f in files:
        md = pq.ParquetFile(f).metadata
        idx = md.schema.to_arrow_schema().get_field_index(column)
        for g in range(md.num_row_groups):
            st = md.row_group(g).column(idx).statistics
            if st is None or not st.has_min_max:
                best = max(best, int(pc.max(read_table([f], "token table", columns=[column]).column(column)).as_py() or 0))
                break
            best = max(best, int(st.max))
    return best
