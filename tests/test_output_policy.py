"""The output policy of every job (semrec.data.output): what --output may replace, the lock, stale leftovers.

Each case here lost a user's data before the policy existed (issue 8, items 1, 2, 4, 5).
"""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from semrec.data.io import write_table
from semrec.data.output import OUTPUT_MANIFEST, job_output
from semrec.errors import ConfigError
from semrec.pipelines.prepare_data import main as prepare_main
from semrec.pipelines.tokenize_items import main as tokenize_main
from helpers import ROOT, clustered, embeddings_table

FAST = ["--quantizer.kind", "rkmeans", "--quantizer.codebook_size", "8", "--no-plots"]


@pytest.fixture()
def emb(tmp_path):
    d = tmp_path / "c" / "emb"
    d.mkdir(parents=True)
    write_table(embeddings_table(clustered(n=300, d=8)), d / "part-0.parquet")
    return d


def snapshot(root):
    return sorted((str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*") if p.is_file())


def tokenize(*args) -> int:
    return tokenize_main([str(a) for a in [*args, *FAST]])


# ----------------------------------------------------------------------------- 1. deleting inputs
@pytest.mark.parametrize("shape", ["output equals input", "output contains input", "output inside input"])
def test_output_never_deletes_or_mixes_with_an_input(emb, tmp_path, capsys, shape):
    (tmp_path / "c" / "README.txt").write_text("unrelated file next to the input")
    output = {"output equals input": emb, "output contains input": tmp_path / "c",
              "output inside input": emb / "tokens"}[shape]
    before = snapshot(tmp_path)
    assert tokenize("--embeddings", emb, "--output", output) == 2
    err = capsys.readouterr().err
    assert f"--output {output}" in err and str(emb) in err, err
    assert snapshot(tmp_path) == before, "nothing may be deleted or written"


def test_overwrite_does_not_allow_deleting_an_input(emb, tmp_path, capsys):
    before = snapshot(tmp_path)
    assert tokenize("--embeddings", emb, "--output", tmp_path / "c", "--overwrite") == 2
    assert "contains the input" in capsys.readouterr().err
    assert snapshot(tmp_path) == before


def test_a_foreign_folder_is_refused_unless_overwrite(emb, tmp_path, capsys):
    projects = tmp_path / "projects"
    (projects / "src").mkdir(parents=True)
    (projects / "src" / "main.py").write_text("print('my work')")
    before = snapshot(tmp_path)
    assert tokenize("--embeddings", emb, "--output", projects) == 2
    assert "not an earlier tokenize_items output" in capsys.readouterr().err
    assert snapshot(tmp_path) == before
    assert tokenize("--embeddings", emb, "--output", projects, "--overwrite") == 0
    assert (projects / "token_table").is_dir() and not (projects / "src").exists()


def test_an_output_of_another_job_is_foreign(emb, tmp_path, capsys):
    other = tmp_path / "prepared"
    assert prepare_main(["--format", "s3rec", "--input", str(_s3rec(tmp_path)), "--output", str(other)]) == 0
    assert json.loads((other / OUTPUT_MANIFEST).read_text())["job"] == "prepare_data"
    assert tokenize("--embeddings", emb, "--output", other) == 2
    assert "is an output of prepare_data" in capsys.readouterr().err


def test_rerun_replaces_its_own_earlier_output(emb, tmp_path):
    out = tmp_path / "tokens"
    assert tokenize("--embeddings", emb, "--output", out) == 0
    assert json.loads((out / OUTPUT_MANIFEST).read_text())["job"] == "tokenize_items"
    (out / "stale-extra.txt").write_text("from the earlier run")
    assert tokenize("--embeddings", emb, "--output", out, "--seed", "1") == 0
    assert not (out / "stale-extra.txt").exists()  # replaced whole, not merged
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tokens")], "no staging, lock or .old left"


# ----------------------------------------------------------------------------- 2. a file at --output
def test_an_existing_file_at_output_is_refused(emb, tmp_path, capsys):
    f = tmp_path / "f.txt"
    f.write_text("keep me")
    assert tokenize("--embeddings", emb, "--output", f, "--overwrite") == 2
    assert "is an existing file" in capsys.readouterr().err
    assert f.read_text() == "keep me"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".f.txt")] == []


def test_a_symlink_at_output_is_refused(emb, tmp_path, capsys):
    target = tmp_path / "real"
    target.mkdir()
    (tmp_path / "link").symlink_to(target)
    assert tokenize("--embeddings", emb, "--output", tmp_path / "link") == 2
    assert "is a symlink" in capsys.readouterr().err


def test_output_containing_the_working_directory_is_refused(tmp_path, monkeypatch):
    work = tmp_path / "w" / "repo"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    with pytest.raises(ConfigError, match="contains the working directory"):
        with job_output(tmp_path / "w", "tokenize_items", overwrite=True):
            pass


# ----------------------------------------------------------------------------- 4. concurrent writers
LOCK_HOLDER = """
import sys, time
from semrec.data.output import job_output
with job_output(sys.argv[1], "tokenize_items") as stage:
    (stage / "from_holder.txt").write_text("x")
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_a_second_job_at_the_same_output_fails_at_once_naming_the_holder(emb, tmp_path, capsys):
    out = tmp_path / "tokens"
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(out), "30"], stdout=subprocess.PIPE,
                              text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        t0 = time.perf_counter()
        assert tokenize("--embeddings", emb, "--output", out) == 4
        assert time.perf_counter() - t0 < 10, "must fail at once, not wait for the holder"
        err = capsys.readouterr().err
        assert "is being written by tokenize_items" in err and f"pid {holder.pid}" in err, err
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_is_released_after_success_and_failure(emb, tmp_path):
    out = tmp_path / "tokens"
    with pytest.raises(RuntimeError):
        with job_output(out, "tokenize_items"):
            raise RuntimeError("the job failed")
    assert not out.exists()
    with job_output(out, "tokenize_items") as stage:
        (stage / "a.txt").write_text("a")
    assert (out / "a.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "tokens"]


# ----------------------------------------------------------------------------- 5. leftovers of killed runs
def test_a_killed_run_leaves_staging_that_the_next_run_removes_and_reports(emb, tmp_path, caplog):
    out = tmp_path / "tokens"
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(out), "60"], stdout=subprocess.PIPE,
                              text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert holder.stdout.readline().strip() == "locked"
    holder.kill()  # kill -9 mid-run: its staging folder stays behind
    holder.wait()
    stale = [p for p in tmp_path.iterdir() if p.name.startswith(".tokens.staging-")]
    assert len(stale) == 1 and (stale[0] / "from_holder.txt").exists()
    with caplog.at_level("WARNING", logger="semrec.output"):
        assert tokenize("--embeddings", emb, "--output", out) == 0
    assert not stale[0].exists()
    assert f"removed {stale[0]}" in caplog.text and "did not finish" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "tokens"]


def test_an_output_moved_aside_by_a_killed_publish_is_restored(tmp_path):
    out = tmp_path / "tokens"
    aside = tmp_path / ".tokens.old-deadbeef"  # killed between "old aside" and "new in"
    aside.mkdir()
    (aside / OUTPUT_MANIFEST).write_text('{"job": "tokenize_items"}')
    (aside / "previous.txt").write_text("the only copy of the previous output")
    with pytest.raises(RuntimeError):
        with job_output(out, "tokenize_items"):
            raise RuntimeError("this run fails too")
    assert (out / "previous.txt").read_text() == "the only copy of the previous output"
    assert not aside.exists()


def _s3rec(tmp_path):
    rng = np.random.default_rng(0)
    f = tmp_path / "tiny.txt"
    f.write_text("".join(f"{u} " + " ".join(map(str, rng.integers(1, 30, size=6))) + "\n" for u in range(1, 21)))
    return f
