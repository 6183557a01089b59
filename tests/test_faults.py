"""A transient read error in one block of a Ray Data read (and in an embedding actor's own row-group read): retried (``TRANSIENT_IO_ERRORS`` in the DataContext
that ``init_ray`` configures), and the read is complete. The filesystem is a real local one wrapped so that the
first open of one file in a Ray worker process fails once with EIO (a marker file records it across the worker
processes). Through the V1 Parquet datasource that ``init_ray`` selects (``use_parquet_v2``), the footers are
read on the driver and that first worker-side open is the block read, which retries ``retried_io_errors``."""

import errno
import os

import numpy as np
import pyarrow as pa
import pytest
import pyarrow.fs as pafs
from fsspec.implementations.local import LocalFileSystem

from semrec.data.io import write_table


class FlakyOnce(pafs.FSSpecHandler):
    def __init__(self, victim: str, marker: str, driver: int):
        super().__init__(LocalFileSystem())
        self.victim, self.marker, self.driver = victim, marker, driver

    def __reduce__(self):
        return FlakyOnce, (self.victim, self.marker, self.driver)

    def open_input_file(self, path):
        import os

        if path.endswith(self.victim) and os.getpid() != self.driver and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            raise OSError(errno.EIO, "Input/output error", path)
        return super().open_input_file(path)


def test_a_transient_read_error_in_one_block_is_retried(ray_local, tmp_path):
    import sys

    import ray.cloudpickle
    import ray.data

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import tests/
    for k in range(4):
        write_table(pa.table({"item_id": pa.array(np.arange(k * 500, (k + 1) * 500) + 1, pa.int64())}),
                    tmp_path / f"part-{k}.parquet")
    marker = tmp_path / "failed-once"
    fs = pafs.PyFileSystem(FlakyOnce("part-2.parquet", str(marker), os.getpid()))
    paths = [str(tmp_path / f"part-{k}.parquet") for k in range(4)]
    ids = np.sort(np.concatenate([b["item_id"] for b in ray.data.read_parquet(paths, filesystem=fs)
                                  .iter_batches(batch_format="numpy", batch_size=None)]))
    assert marker.exists(), "the read error was never raised"
    assert np.array_equal(ids, np.arange(1, 2001))


def test_the_embedding_actors_retry_a_transient_row_group_read(tmp_path, monkeypatch):
    """tokenize_items' actors read their row groups themselves (``read_row_group``): EIO once is retried, an error
    that is not transient (a corrupt file) is raised at once."""
    import pyarrow.parquet as pq

    from semrec.data import io

    write_table(pa.table({"item_id": pa.array(np.arange(1, 101), pa.int64())}), tmp_path / "a.parquet")
    one = {"path": str(tmp_path / "a.parquet"), "row_group": 0}
    assert io.parquet_pieces([tmp_path / "a.parquet"]) == [{**one, "start": 0, "rows": 100}]
    # one row group and 4 workers: row ranges of >= min_rows that cover every row once
    assert io.parquet_pieces([tmp_path / "a.parquet"], min_pieces=4, min_rows=10) == [
        {**one, "start": s, "rows": 25} for s in (0, 25, 50, 75)]
    assert [p["rows"] for p in io.parquet_pieces([tmp_path / "a.parquet"], min_pieces=4, min_rows=40)] == [40, 40, 20]
    calls = []
    real = pq.ParquetFile

    class Flaky(real):
        def read_row_group(self, *a, **k):
            calls.append(1)
            if len(calls) == 1:
                raise OSError(errno.EIO, "Input/output error")
            return super().read_row_group(*a, **k)

    monkeypatch.setattr(io.pq, "ParquetFile", Flaky)
    t = io.read_row_group(str(tmp_path / "a.parquet"), 0, ["item_id"])
    assert len(calls) == 2 and t.column("item_id").to_pylist() == list(range(1, 101))
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises((OSError, pa.ArrowException)):
        io.read_row_group(str(tmp_path / "bad.parquet"), 0)


def test_reads_take_the_v1_parquet_datasource_unless_the_environment_asks_for_v2(ray_local, monkeypatch):
    import ray.data

    from semrec.pipelines.runtime import use_parquet_v2

    assert ray.data.DataContext.get_current().use_datasource_v2 is False  # what init_ray set
    monkeypatch.delenv("RAY_DATA_USE_DATASOURCE_V2", raising=False)
    assert not use_parquet_v2()
    for value, v2 in [("1", True), ("true", True), ("0", False), ("False", False)]:
        monkeypatch.setenv("RAY_DATA_USE_DATASOURCE_V2", value)
        assert use_parquet_v2() is v2
