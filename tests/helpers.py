"""Shared test helpers and fixtures (imported by tests/conftest.py and benchmarks/conftest.py)."""

import json
import os
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SEMREC_SHARED_DATA", ROOT.parent / "shared" / "data"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", "2")


def shared(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test with a clear reason when it is absent."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real dataset not available: {p} (../shared/data is absent on this machine)")
    return p


@pytest.fixture(scope="session")
def ray_local():
    """One in-process Ray for the whole session (2 CPUs, small object store)."""
    import ray

    from semrec.config.settings import RaySettings
    from semrec.pipelines.runtime import init_ray

    init_ray(RaySettings(num_cpus=2, object_store_mb=500))
    yield ray
    ray.shutdown()


# "(RayTrainWorker pid=12, ip=...)", "(MapWorker(MapBatches(EncodeCodes)) pid=12)" (an actor name with
# parentheses) and "(pid=gcs_server)", each maybe wrapped in an ANSI colour
_RAY_WORKER_LINE = re.compile(r"^(\x1b\[[0-9;]*m)?\((?:\S+ )?pid=\w+[^)]*\)")
_PROGRESS_BAR = re.compile(r"^[^:|]+: +\d+%\|")  # Ray Data's tqdm bars, e.g. "Parquet dataset sampling:  0%|"


def own_lines(stderr: str) -> list[str]:
    """The lines a job printed itself: Ray forwards its worker processes' logs (prefixed "(Name pid=N)")
    to the driver's stderr, and those carry Ray's own noise (e.g. a thread interrupted at shutdown, or an
    earlier job's actor that was still starting when its dataset finished), and Ray Data's progress bars."""
    return [line for line in stderr.strip().splitlines()
            if line.strip() and not _RAY_WORKER_LINE.match(line) and not _PROGRESS_BAR.match(line)]


def manifest_digests(out: Path, table: str = "token_table") -> list[tuple[str, str]]:
    """(path, sha256) of every file a published table's ``_MANIFEST.json`` lists: equal lists = byte-identical."""
    return [(f["path"], f["sha256"]) for f in json.loads((out / table / "_MANIFEST.json").read_text())["files"]]


def clustered(n: int = 3000, d: int = 32, centres: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, d))
    return (c[rng.integers(0, centres, n)] + 0.3 * rng.normal(size=(n, d))).astype(np.float32)


def embeddings_table(x: np.ndarray, ids=None) -> pa.Table:
    ids = np.arange(1, len(x) + 1) if ids is None else np.asarray(ids)
    return pa.table({"item_id": pa.array(ids, pa.int64()),
                     "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), x.shape[1])})
