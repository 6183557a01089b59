"""Reading validated Parquet inputs; Parquet writing and manifests. (Publishing an output atomically, and
what ``--output`` may replace, is ``semrec.data.output``.)"""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from semrec.errors import InputError, exception_chain

# errors of local and network filesystems (NFS, FUSE-mounted buckets) worth retrying: Ray Data retries them per
# block (``init_ray`` adds them to ``DataContext.retried_io_errors``), ``read_row_group`` per row group
TRANSIENT_IO_ERRORS = ["Input/output error", "Stale file handle", "Connection reset by peer",
                       "Resource temporarily unavailable", "Connection timed out"]

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


def read_table(files: list[Path] | Path, what: str = "input", columns: list[str] | None = None) -> pa.Table:
    """Read Parquet files in the driver; an unreadable file (corrupt page, truncated, not Parquet) is an
    InputError naming it."""
    tables = []
    for f in [files] if isinstance(files, (str, Path)) else files:
        try:
            tables.append(pq.read_table(f, columns=columns))
        except (OSError, pa.ArrowException) as e:
            raise InputError(f"{what} {f}: cannot read Parquet data ({type(e).__name__}: {_one_line(e)})") from None
    return pa.concat_tables(tables) if len(tables) != 1 else tables[0]


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:300]


def first_unreadable(file: str | Path, batch_rows: int = 65_536) -> str | None:
    """Scan one Parquet file batch by batch (bounded memory); describe the first unreadable part, or None."""
    try:
        pf = pq.ParquetFile(file)
    except Exception as e:  # noqa: BLE001 -- any footer failure is reported as such
        return f"{file}: cannot read Parquet footer ({type(e).__name__}: {_one_line(e)})"
    row = 0
    for rg in range(pf.num_row_groups):
        for name in pf.schema_arrow.names:  # column by column, so the message names the column
            try:
                for _ in pf.iter_batches(batch_size=batch_rows, row_groups=[rg], columns=[name]):
                    pass
            except (OSError, pa.ArrowException) as e:
                return (f"{file}: cannot read column '{name}' in row group {rg} (rows {row:,}-"
                        f"{row + pf.metadata.row_group(rg).num_rows - 1:,}): {type(e).__name__}: {_one_line(e)}")
        row += pf.metadata.row_group(rg).num_rows
    return None


def parquet_pieces(files: list[Path], min_pieces: int = 1, min_rows: int = 1) -> list[dict]:
    """``{"path", "row_group", "start", "rows"}`` pieces covering every row of ``files`` once (from the footers).
    A piece is a row group, or a row range of one when there are fewer than ``min_pieces`` row groups: ranges of
    at least ``min_rows`` rows and at most total / min_pieces, so a catalogue written as one row group still
    feeds ``min_pieces`` workers (each reads its row group and keeps its range: bounded re-reading, since ranges
    are split only until ``min_pieces`` exist)."""
    groups = [(str(f), rg, n) for f in files for rg, n in enumerate(row_group_rows(f)) if n]
    total = sum(n for *_, n in groups)
    size = max(min_rows, -(-total // max(1, min_pieces))) if len(groups) < min_pieces else None
    return [{"path": path, "row_group": rg, "start": start, "rows": min(size or n, n - start)}
            for path, rg, n in groups for start in range(0, n, size or n)]


def row_group_rows(file: Path) -> list[int]:
    md = pq.read_metadata(file)
    return [md.row_group(i).num_rows for i in range(md.num_row_groups)]


def read_row_group(path: str, row_group: int, columns: list[str] | None = None, attempts: int = 3) -> pa.Table:
    """One row group of a Parquet file; a transient filesystem error (``TRANSIENT_IO_ERRORS``: EIO, a stale NFS
    handle, ...) is retried, as Ray Data retries its own reads."""
    import time

    for attempt in range(1, attempts + 1):
        try:
            return pq.ParquetFile(path).read_row_group(row_group, columns=columns)
        except OSError as e:
            if attempt == attempts or not any(t in str(e) for t in TRANSIENT_IO_ERRORS):
                raise
            time.sleep(0.2 * attempt)


def is_read_error(exc: BaseException) -> bool:
    """An OSError / Arrow error anywhere in an exception chain (Ray wraps a read task's error)."""
    return any(isinstance(e, (OSError, pa.ArrowException)) for e in exception_chain(exc))


@contextmanager
def input_read_errors(files: list[Path], what: str) -> Iterator[None]:
    """Turn a failure to read ``files`` inside a Ray Data pipeline into an InputError naming the file, row
    group and column. Ray's error does not name the file, so on a read error the files are scanned (one
    Ray task per file, only on this failure path); an error no scan reproduces is re-raised as it is."""
    try:
        yield
    except InputError:
        raise
    except Exception as e:
        if not is_read_error(e):
            raise
        import ray

        scan = ray.remote(num_cpus=0.5)(first_unreadable)
        found = [m for m in ray.get([scan.remote(str(f)) for f in files]) if m]
        if not found:
            raise
        more = f" (and {len(found) - 1} more unreadable files)" if len(found) > 1 else ""
        raise InputError(f"{what} {found[0]}{more}") from None


STREAM_BLOCK_BYTES = 32 * 2**20  # Ray Data's default target block is 128 MiB


@contextmanager
def ray_block_bytes(nbytes: int = STREAM_BLOCK_BYTES) -> Iterator[None]:
    """Ray Data's target block size for the datasets created and executed inside: Parquet readers take it when
    ``read_parquet`` is called (so a later ``ds.context`` change does not reach them), map stages when they run.
    Smaller blocks bound the memory of every read task and actor (measured in benchmarks/bench_dmqn.py)."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    old, ctx.target_max_block_size = ctx.target_max_block_size, nbytes
    try:
        yield
    finally:
        ctx.target_max_block_size = old


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
