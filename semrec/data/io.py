"""Reading validated Parquet inputs; Parquet writing and manifests. (Publishing an output atomically, and
what ``--output`` may replace, is ``semrec.data.output``.)"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from semrec.errors import InputError

MANIFEST = "_MANIFEST.json"


def parquet_files(path: str | Path, what: str = "input") -> list[Path]:
    """The Parquet files of a file-or-directory input, sorted; clear error when there are none."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} not found: {p}")
    if p.is_file():
        files = [p]
    else:
        files = sorted(x for x in p.rglob("*.parquet") if not any(part.startswith((".", "_")) for part in x.relative_to(p).parts))
    if not files:
        raise InputError(f"{what} {p}: no .parquet files found")
    return files


def read_schema(file: Path) -> pa.Schema:
    try:
        return pq.read_schema(file)
    except Exception as e:  # pyarrow raises several types for corrupt/non-parquet files
        raise InputError(f"{file}: cannot read Parquet file ({type(e).__name__}: {e})") from None


def count_rows(files: list[Path]) -> int:
    n = 0
    for f in files:
        try:
            n += pq.ParquetFile(f).metadata.num_rows
        except Exception as e:
            raise InputError(f"{f}: cannot read Parquet footer ({type(e).__name__}: {e})") from None
    return n


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while b := fh.read(chunk):
            h.update(b)
    return h.hexdigest()


def write_manifest(directory: Path, **extra) -> dict:
    """Write ``_MANIFEST.json``: per-file rows/bytes/sha256 plus ``extra`` (config, counts...)."""
    files = []
    total = 0
    for f in sorted(directory.rglob("*.parquet")):
        rows = pq.ParquetFile(f).metadata.num_rows
        total += rows
        files.append({"path": str(f.relative_to(directory)), "rows": rows, "bytes": f.stat().st_size,
                      "sha256": sha256_file(f)})
    manifest = {"rows": total, "files": files, **extra}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def write_table(table: pa.Table, path: Path, **kwargs) -> None:
    """Parquet with zstd, statistics, and no pandas metadata: deterministic bytes for equal tables."""
    pq.write_table(table, path, compression="zstd", **kwargs)
