"""tokenize_items end to end on an in-process Ray: outputs, determinism, readers, bad input."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from semrec.data.io import write_table
from semrec.data.output import OUTPUT_MANIFEST
from semrec.pipelines.tokenize_items import main
from semrec.schemas import decode_metadata
from helpers import ROOT, clustered, embeddings_table, manifest_digests

FAST_RQVAE = ["--quantizer.kind", "rqvae", "--quantizer.codebook_size", "32", "--quantizer.latent_dim", "8",
              "--quantizer.hidden", "[64]", "--quantizer.epochs", "5", "--ray.batch_size", "700"]


@pytest.fixture(scope="module")
def emb_input(tmp_path_factory):
    d = tmp_path_factory.mktemp("emb")
    x = clustered(n=3000, d=32, centres=60, seed=5)
    for k in range(3):  # three files, as a sharded input would be
        write_table(embeddings_table(x[k * 1000:(k + 1) * 1000], np.arange(k * 1000, (k + 1) * 1000) + 1),
                    d / f"part-{k}.parquet")
    return d


def run_job(args, capsys=None) -> int:
    return main([str(a) for a in args])


def read_table(out: Path) -> pa.Table:
    return pq.read_table(out / "token_table")


def test_end_to_end_from_embeddings(ray_local, emb_input, tmp_path):
    out = tmp_path / "tokens"
    assert run_job(["--embeddings", emb_input, "--output", out, "--partitions", "3", *FAST_RQVAE]) == 0
    t = read_table(out)
    assert t.num_rows == 3000
    assert sorted(t.column("item_id").to_pylist()) == list(range(1, 3001))
    assert [t.schema.field(c).type for c in ("c0", "c1", "c2", "suffix")] == [pa.uint8()] * 3 + [pa.uint16()]
    keys = np.stack([t.column(c).to_numpy() for c in ("c0", "c1", "c2", "suffix")], axis=1)
    assert len(np.unique(keys, axis=0)) == 3000, "(codes, suffix) must be unique per item"
    files = sorted((out / "token_table").glob("*.parquet"))
    meta = decode_metadata(pq.read_schema(files[0]))
    assert meta["quantizer"] == "rqvae" and meta["levels"] == 3 and meta["codebook_sizes"] == [32, 32, 32]
    assert meta["distances"] == ["cosine", "cosine", "euclidean"]
    manifest = json.loads((out / "token_table" / "_MANIFEST.json").read_text())
    assert manifest["rows"] == 3000 and len(manifest["files"]) == len(files)
    report = json.loads((out / "report.json").read_text())
    assert report["items"] == 3000 and report["quantizer"]["id"] == meta["quantizer_id"]
    # the report's collision rate is the share of items that needed a non-zero suffix
    assert report["collisions"]["collision_rate"] == pytest.approx((t.column("suffix").to_numpy() > 0).mean())
    assert (out / "plots" / "code_usage.png").stat().st_size > 1000
    assert (out / "plots" / "collision_groups.png").stat().st_size > 1000
    assert json.loads((out / "effective_config.json").read_text())["quantizer"]["codebook_size"] == 32
    assert not list(tmp_path.glob(".tokens.*")), "staging directories must be cleaned up"


def test_token_table_opens_in_duckdb(ray_local, emb_input, tmp_path):
    duckdb = pytest.importorskip("duckdb")
    out = tmp_path / "tokens"
    assert run_job(["--embeddings", emb_input, "--output", out, "--quantizer.kind", "rkmeans",
                    "--quantizer.codebook_size", "16", "--no-plots"]) == 0
    con = duckdb.connect()
    assert con.execute(f"SELECT count(*) FROM '{out}/token_table/*.parquet'").fetchone()[0] == 3000
    assert con.execute(f"SELECT count(DISTINCT (c0, c1, c2, suffix)) FROM '{out}/token_table/*.parquet'").fetchone()[0] == 3000


def test_same_seed_gives_byte_identical_token_table(ray_local, emb_input, tmp_path):
    def digests(out):
        return manifest_digests(out), (out / "quantizer" / "weights.safetensors").read_bytes()

    runs = []
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        assert run_job(["--embeddings", emb_input, "--output", tmp_path / name, "--seed", seed,
                        "--fit_sample", 2000, "--no-plots", *FAST_RQVAE]) == 0
        runs.append(digests(tmp_path / name))
    assert runs[0] == runs[1]
    for f in (tmp_path / "a" / "token_table").glob("*.parquet"):
        assert f.read_bytes() == (tmp_path / "b" / "token_table" / f.name).read_bytes()
    assert runs[0][1] != runs[2][1], "a different seed must give a different quantizer"


def test_items_input_runs_the_bundled_text_encoder(ray_local, tmp_path):
    items = tmp_path / "items.parquet"
    titles = [f"{c} {w}" for c in ("red lipstick", "garden hose", "chess set", "hiking boots") for w in
              ("classic", "deluxe", "mini", "pro", "travel", "kids", "xl", "eco", "gift", "pack")]
    write_table(pa.table({"item_id": pa.array(range(1, 41), pa.int64()), "title": titles,
                          "brand": ["acme"] * 40}), items)
    out = tmp_path / "tokens"
    assert run_job(["--items", items, "--output", out, "--quantizer.kind", "rkmeans",
                    "--quantizer.codebook_size", "4", "--quantizer.levels", "2", "--no-plots"]) == 0
    emb = pq.read_table(out / "item_embeddings")
    assert emb.schema.field("embedding").type == pa.list_(pa.float32(), 384)
    x = np.stack(emb.sort_by("item_id").column("embedding").to_numpy(zero_copy_only=False))
    assert np.allclose(np.linalg.norm(x, axis=1), 1, atol=1e-4)
    # the text encoder puts the same product type closer together than different types
    sims = x @ x.T
    same = np.mean([sims[i, j] for i in range(40) for j in range(40) if i != j and i // 10 == j // 10])
    diff = np.mean([sims[i, j] for i in range(40) for j in range(40) if i // 10 != j // 10])
    assert same > diff + 0.2
    c0 = read_table(out).sort_by("item_id").column("c0").to_numpy()
    # level-0 codes follow the product type for most items
    assert np.mean([np.bincount(c0[g * 10:(g + 1) * 10]).max() for g in range(4)]) >= 7


# ----------------------------------------------------------------------------- bad input
def _items(path, **cols):
    write_table(pa.table(cols), path)
    return path


def _bad_cases(tmp: Path):
    x = clustered(n=200, d=8)
    nan = x.copy()
    nan[123, 2] = np.inf
    garbage = tmp / "garbage.parquet"
    garbage.write_bytes(b"this is not parquet" * 10)
    wrong_type = pa.table({"item_id": pa.array(range(200), pa.int64()),
                           "embedding": pa.array([list(map(float, r)) for r in x], pa.list_(pa.float64()))})
    write_table(wrong_type, tmp / "wrong_type.parquet")
    write_table(embeddings_table(nan), tmp / "nan.parquet")
    write_table(embeddings_table(x, ids=[5] + list(range(1, 200))), tmp / "dup.parquet")
    write_table(embeddings_table(x), tmp / "ok.parquet")
    write_table(embeddings_table(x[:0]), tmp / "empty.parquet")
    corrupt_page(tmp / "corrupt.parquet", embeddings_table(x), "embedding")
    return {
        "missing column": (["--items", _items(tmp / "no_title.parquet", item_id=pa.array([1, 2], pa.int64()),
                                              name=["a", "b"])], "missing required column 'title'"),
        "wrong dtype": (["--embeddings", tmp / "wrong_type.parquet"], "fixed_size_list"),
        "nan in fit sample": (["--embeddings", tmp / "nan.parquet"], "NaN or inf"),
        "nan outside fit sample": (["--embeddings", tmp / "nan.parquet", "--fit_sample", "20"], "item_id [124]"),
        "empty text": (["--items", _items(tmp / "empty_text.parquet", item_id=pa.array([1, 2, 3], pa.int64()),
                                          title=["a", "b", "  "])], "item_id 3 has empty text"),
        "duplicate ids": (["--embeddings", tmp / "dup.parquet"], "duplicate item_id [5]"),
        "codebook too large": (["--embeddings", tmp / "ok.parquet", "--quantizer.codebook_size", "70000"],
                               "65,536"),
        "zero rows": (["--embeddings", tmp / "empty.parquet"], "zero rows"),
        "unreadable file": (["--embeddings", garbage], "cannot read Parquet"),
        "corrupt data page": (["--embeddings", tmp / "corrupt.parquet"],
                              f"{tmp / 'corrupt.parquet'}: cannot read column 'embedding' in row group 0"),
        "missing input": (["--embeddings", tmp / "nope"], "not found"),
        "actor pool would starve readers": (["--embeddings", tmp / "ok.parquet", "--ray.cpus_per_actor", "1.5"],
                                            "the pipeline would hang"),
    }


@pytest.mark.parametrize("case", ["missing column", "wrong dtype", "nan in fit sample", "nan outside fit sample",
                                  "empty text", "duplicate ids", "codebook too large", "zero rows",
                                  "unreadable file", "corrupt data page", "missing input",
                                  "actor pool would starve readers"])
def test_bad_input_fails_clearly_and_keeps_previous_output(ray_local, tmp_path, capsys, case):
    args, message = _bad_cases(tmp_path)[case]
    out = tmp_path / "tokens"
    out.mkdir()
    (out / OUTPUT_MANIFEST).write_text('{"job": "tokenize_items"}')  # an earlier output of this job
    (out / "previous.txt").write_text("an earlier, good output")
    code = run_job([*args, "--output", out, "--quantizer.kind", "rkmeans", "--quantizer.codebook_size", "8",
                    "--no-plots"] if case != "codebook too large" else [*args, "--output", out])
    err = capsys.readouterr().err
    assert code == (2 if case in ("codebook too large", "actor pool would starve readers") else 3), err[-2000:]
    assert message in err, err[-2000:]
    assert sorted(p.name for p in out.iterdir()) == [OUTPUT_MANIFEST, "previous.txt"], "earlier output must stay"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tokens.")], "no staging left behind"


def corrupt_page(path: Path, table: pa.Table, column: str) -> None:
    """Write ``table`` and scramble the first data page of ``column``; the footer stays intact."""
    write_table(table, path, use_dictionary=False)
    meta = pq.ParquetFile(path).metadata.row_group(0).column(table.schema.get_field_index(column))
    data = bytearray(path.read_bytes())
    for i in range(meta.data_page_offset + 2, meta.data_page_offset + 200):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))
    assert pq.read_schema(path).names == table.schema.names  # the footer still reads


def test_corrupt_page_in_a_driver_side_read_names_the_file(tmp_path):
    from semrec.data.io import read_table as read_files
    from semrec.errors import InputError

    corrupt_page(tmp_path / "seq.parquet", pa.table({"user_id": pa.array(range(500), pa.int64()),
                                                     "item_ids": [[1, 2, 3]] * 500}), "item_ids")
    with pytest.raises(InputError, match=r"user_sequences .*seq.parquet: cannot read Parquet data"):
        read_files([tmp_path / "seq.parquet"], "user_sequences")


def test_cli_help_and_exit_code_in_a_subprocess(tmp_path):
    job = ROOT / "jobs" / "tokenize_items.py"
    h = subprocess.run([sys.executable, str(job), "--help"], capture_output=True, text=True, timeout=120)
    assert h.returncode == 0
    for flag in ("--items", "--embeddings", "--sample", "--quantizer.distance", "--quantizer.codebook_size",
                 "--ray.address", "--encoder.model_path", "--config"):
        assert flag in h.stdout
    r = subprocess.run([sys.executable, str(job), "--embeddings", str(tmp_path / "missing"), "--output",
                        str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 3 and "embeddings not found" in r.stderr
    assert not (tmp_path / "o").exists()
    c = subprocess.run([sys.executable, str(job), "--sample", "100", "--quantizer.levels", "0"],
                       capture_output=True, text=True, timeout=120)
    assert c.returncode == 2 and "quantizer.levels" in c.stderr


def test_a_normal_run_logs_no_error_or_hang_lines_and_one_small_sample_warning(tmp_path):
    write_table(embeddings_table(clustered(n=300, d=8)), tmp_path / "emb.parquet")
    r = subprocess.run([sys.executable, str(ROOT / "jobs" / "tokenize_items.py"), "--embeddings",
                        str(tmp_path / "emb.parquet"), "--output", str(tmp_path / "o"), "--quantizer.kind", "rkmeans",
                        "--quantizer.codebook_size", "64", "--no-plots"], capture_output=True, text=True, timeout=300,
                       cwd=tmp_path)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-3000:]
    bad = [line for line in log.splitlines()
           if " ERROR " in line or "] core_worker" in line or " E " in line[:40] or "will hang" in line
           or "please provide at least" in line or "Traceback" in line]
    assert bad == [], "\n".join(bad)
    assert log.count("k-means wants >= 39") == 1, log[-3000:]


def _tree_digest(out: Path) -> dict[str, str]:
    import hashlib

    return {str(f.relative_to(out)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(out.rglob("*")) if f.is_file()}


def test_sigkill_while_writing_leaves_the_previous_publication_and_the_rerun_matches(ray_local, emb_input, tmp_path):
    """A tokenize_items run SIGKILLed while it writes into its staging folder: the earlier publication at the
    same --output is byte-identical afterwards, and the rerun publishes the table an uninterrupted run does."""
    import os
    import signal
    import time

    out = tmp_path / "out"
    common = ["--embeddings", emb_input, "--fit_sample", 2000, "--no-plots", *FAST_RQVAE]
    assert run_job([*common, "--output", out, "--seed", 1]) == 0
    before = _tree_digest(out)
    cmd = [sys.executable, str(ROOT / "jobs" / "tokenize_items.py"), *map(str, common), "--output", str(out),
           "--seed", "2", "--overwrite"]
    with open(tmp_path / "killed.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    deadline, staged = time.time() + 300, []
    while time.time() < deadline and proc.poll() is None:
        # the quantizer is written before the token table: the run is writing its output
        staged = [p for p in tmp_path.glob(".out.staging-*/quantizer/weights.safetensors")]
        if staged:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert staged, f"the run never wrote into its staging folder:\n{(tmp_path / 'killed.log').read_text()[-2000:]}"
    assert _tree_digest(out) == before  # the previous publication, byte for byte
    # the rerun (cleans the dead run's staging folder) publishes what an uninterrupted run publishes
    assert run_job([*common, "--output", out, "--seed", 2, "--overwrite"]) == 0
    assert run_job([*common, "--output", tmp_path / "clean", "--seed", 2]) == 0
    assert not list(tmp_path.glob(".out.staging-*"))
    for f in (tmp_path / "clean" / "token_table").glob("*.parquet"):
        assert f.read_bytes() == (out / "token_table" / f.name).read_bytes()
    assert _tree_digest(out) != before
