"""`ray job submit` against a real local head node (`ray start --head`), as a user would on a cluster."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow.parquet as pq
import pytest

from semrec.data.io import write_table
from helpers import ROOT, clustered, embeddings_table

pytestmark = pytest.mark.cluster
RAY = str(Path(sys.executable).parent / "ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_cluster(marks: list[str]) -> None:
    """Stop only this head node's processes (`ray stop` would also kill other Ray instances)."""
    procs = {p for p in psutil.process_iter(["cmdline"])
             if any(m in a for a in (p.info["cmdline"] or []) for m in marks)}
    for p in list(procs):
        try:
            procs.update(p.children(recursive=True))
        except psutil.NoSuchProcess:
            pass
    live = []
    for p in procs:
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                p.terminate()
                live.append(p)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(live, timeout=3)
    for p in alive:
        p.kill()


@pytest.fixture()
def head_node(tmp_path_factory):
    temp_dir = Path("/tmp") / f"semrec-ray-{os.getpid()}-{_free_port()}"  # short: unix socket paths are limited
    port, dash = _free_port(), _free_port()
    # the job's `python` is the one on the head node's PATH: this virtualenv's, as after `source .venv/bin/activate`
    env = {**os.environ, "RAY_AUTH_MODE": "disabled",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    cmd = [RAY, "start", "--head", f"--port={port}", f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1",
           "--num-cpus=2", "--object-store-memory=500000000", "--disable-usage-stats", f"--temp-dir={temp_dir}",
           # every port of its own: an in-process Ray of the same test session holds the defaults
           f"--ray-client-server-port={_free_port()}", f"--dashboard-agent-listen-port={_free_port()}",
           f"--dashboard-agent-grpc-port={_free_port()}", f"--metrics-export-port={_free_port()}",
           f"--runtime-env-agent-port={_free_port()}", f"--node-manager-port={_free_port()}",
           f"--object-manager-port={_free_port()}"]
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=120)
    try:
        yield f"http://127.0.0.1:{dash}"
    finally:
        _stop_cluster([str(temp_dir), f":{port}"])


def test_ray_job_submit_tokenizes_on_a_head_node(head_node, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    x = clustered(n=2000, d=16, seed=2)
    write_table(embeddings_table(x), tmp_path / "emb.parquet")
    out = tmp_path / "tokens"
    client = JobSubmissionClient(head_node)
    deadline = time.time() + 120
    while True:  # the head's job agent may need a few seconds after `ray start` returns
        try:
            job = submit(client, tmp_path, out)
            break
        except RuntimeError as e:
            if "No available agent" not in str(e) or time.time() > deadline:
                raise
            time.sleep(2)
    deadline = time.time() + 300
    while (status := client.get_job_status(job)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        assert time.time() < deadline, "job did not finish in 5 minutes"
        time.sleep(1)
    logs = client.get_job_logs(job)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    assert "token table:" in logs
    t = pq.read_table(out / "token_table")
    assert t.num_rows == 2000
    keys = np.stack([t.column(c).to_numpy() for c in ("c0", "c1", "c2", "suffix")], axis=1)
    assert len(np.unique(keys, axis=0)) == 2000


def submit(client, tmp_path, out):
    return client.submit_job(
        entrypoint=(f"python jobs/tokenize_items.py --embeddings {tmp_path / 'emb.parquet'} --output {out} "
                    "--quantizer.kind rkmeans --quantizer.codebook_size 16 --no-plots --ray.cpus_per_actor 0.5"),
        runtime_env={"working_dir": str(ROOT), "env_vars": {"RAY_AUTH_MODE": "disabled"},
                     "excludes": [".venv", ".git", "out", "*.egg-info", ".benchmarks", "__pycache__"]},
    )


def test_local_start_retries_a_missed_raylet_deadline(monkeypatch):
    """A busy machine can miss Ray's fixed 30 s raylet start-up deadline; the local start retries."""
    import ray

    from semrec.config.settings import RaySettings
    from semrec.pipelines import runtime

    calls = []

    def flaky_init(**kwargs):
        calls.append(kwargs["address"])
        if len(calls) < runtime.LOCAL_START_ATTEMPTS:
            raise Exception("The current node timed out during startup. This could happen because ...")
        raise RuntimeError("third attempt reached")  # stop here: no real Ray is started

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    monkeypatch.setattr(ray, "init", flaky_init)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(RuntimeError, match="third attempt reached"):
        runtime.init_ray(RaySettings())
    assert calls == ["local"] * runtime.LOCAL_START_ATTEMPTS

    calls.clear()  # any other start-up error is not retried
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(1) or (_ for _ in ()).throw(ValueError("bad")))
    with pytest.raises(ValueError, match="bad"):
        runtime.init_ray(RaySettings())
    assert calls == [1]
