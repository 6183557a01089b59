"""A real token-authenticated head node (`ray start --head`, via infra/ray_head.py) and `jobs/submit.py`,
exactly as infra/README.md tells a user, next to the in-process Ray this test session already runs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from semrec.data.io import write_table
from helpers import ROOT, clustered, embeddings_table

pytestmark = pytest.mark.cluster
JOB_FLAGS = ["--quantizer.kind", "rkmeans", "--quantizer.codebook_size", "16", "--no-plots",
             "--ray.cpus_per_actor", "0.5"]


def client_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # a fresh shell: no Ray settings
    return {**env, "PYTHONPATH": str(ROOT)}


def run(cmd, cwd, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *map(str, cmd)], cwd=cwd, env=client_env(), capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    d = tmp_path_factory.mktemp("head")
    r = run([ROOT / "infra" / "ray_head.py", "start", "--dir", d, "--num-cpus", "2", "--object-store-mb", "500"],
            cwd=ROOT, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    info = json.loads((d / "head.json").read_text())
    assert oct((d / "auth_token").stat().st_mode & 0o777) == "0o600"
    try:
        yield info
    finally:
        r = run([ROOT / "infra" / "ray_head.py", "stop", "--dir", d], cwd=ROOT, timeout=60)
        assert r.returncode == 0, r.stderr


def test_submit_with_relative_paths_tokenizes_on_an_authenticated_head(head, tmp_path):
    (tmp_path / "data").mkdir()
    write_table(embeddings_table(clustered(n=2000, d=16, seed=2)), tmp_path / "data" / "emb.parquet")
    # relative paths, from the user's own folder: made absolute on the client before submission
    r = run([ROOT / "jobs" / "submit.py", "--address", head["address"], "--token-file", head["token_file"],
             "--", "python", "jobs/tokenize_items.py", "--embeddings", "data/emb.parquet", "--output", "out/tokens",
             *JOB_FLAGS], cwd=tmp_path)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert f"--output {tmp_path / 'out' / 'tokens'}" in r.stdout and "token table:" in r.stdout
    t = pq.read_table(tmp_path / "out" / "tokens" / "token_table")
    assert t.num_rows == 2000
    keys = np.stack([t.column(c).to_numpy() for c in ("c0", "c1", "c2", "suffix")], axis=1)
    assert len(np.unique(keys, axis=0)) == 2000
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")], "no staging or lock left"


def test_submit_tokenizes_users_on_the_head(head, tmp_path):
    """tokenize_users through `ray job submit`: Ray Train fits the autoencoder on the cluster, an actor pool
    encodes every user, the quantizer assigns the codes."""
    from semrec.data.synthetic import World, sequence_shard
    from test_tokenize_users import item_tokens

    (tmp_path / "data" / "seqs").mkdir(parents=True)
    write_table(sequence_shard(World(seed=1, topics=8), 1, 301, 400, mean_length=8),
                tmp_path / "data" / "seqs" / "part-0.parquet")
    item_tokens(tmp_path / "data" / "tokens", 400)
    r = run([ROOT / "jobs" / "submit.py", "--address", head["address"], "--token-file", head["token_file"],
             "--", "python", "jobs/tokenize_users.py", "--sequences", "data/seqs", "--item_tokens", "data/tokens",
             "--output", "out/users", "--run_dir", "out/runs", "--model.hidden", "16", "--model.item_dim", "16",
             "--model.layers", "1", "--train.epochs", "2", "--train.cpus_per_worker", "0.5", *JOB_FLAGS],
            cwd=tmp_path, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert "user token table:" in r.stdout
    t = pq.read_table(tmp_path / "out" / "users" / "user_token_table")
    assert t.num_rows == 300 and t.schema.names[0] == "user_id"


def test_the_head_refuses_clients_without_the_token(head, tmp_path):
    from ray.job_submission import JobSubmissionClient

    with pytest.raises(Exception) as e:  # Ray raises on a 401 from the dashboard
        JobSubmissionClient(head["address"], headers={"Authorization": "Bearer wrong"}).list_jobs()
    assert "401" in str(e.value) or "uthentication" in str(e.value)


def test_a_job_refuses_relative_paths_under_ray_job_submit(head, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    token = Path(head["token_file"]).read_text().strip()
    client = JobSubmissionClient(head["address"], headers={"Authorization": f"Bearer {token}"})
    # plain `ray job submit` semantics: the entrypoint's paths are passed as typed
    job = client.submit_job(entrypoint="python jobs/tokenize_items.py --sample 50 --output out/rel --no-plots",
                            runtime_env={"working_dir": str(ROOT), "excludes": [".venv", ".git", "out", "data"]})
    import time

    deadline = time.time() + 180
    while (status := client.get_job_status(job)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        assert time.time() < deadline
        time.sleep(1)
    logs = client.get_job_logs(job)
    assert status == JobStatus.FAILED and client.get_job_info(job).driver_exit_code == 2, logs[-2000:]
    assert "relative paths under `ray job submit`: --output out/rel" in logs


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


def test_a_lost_worker_node_does_not_lose_the_job(tmp_path):
    """A two-node cluster on this machine (a head, plus `ray start --address` as a second node); the second node
    is SIGKILLed while tokenize_items runs on both (Ray Data spreads its tasks and actors): Ray retries the lost
    tasks, restarts the lost actors on the head (--ray.actor_restarts -1), and the job publishes the same token
    table as a run that lost nothing."""
    import threading
    import time

    d = tmp_path / "head"
    r = run([ROOT / "infra" / "ray_head.py", "start", "--dir", d, "--num-cpus", "2", "--object-store-mb", "300"],
            cwd=ROOT, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    info = json.loads((d / "head.json").read_text())
    try:
        (tmp_path / "data").mkdir()
        x = clustered(n=24000, d=16, seed=4)
        for k in range(8):  # several input blocks, so tasks land on both nodes
            write_table(embeddings_table(x[k * 3000:(k + 1) * 3000], np.arange(k * 3000, (k + 1) * 3000) + 1),
                        tmp_path / "data" / f"part-{k}.parquet")
        flags = [*JOB_FLAGS, "--ray.actors", "2", "--ray.actor_restarts", "-1",
                 "--ray.batch_size", "1000", "--partitions", "4"]

        def submit(out: str) -> subprocess.CompletedProcess:
            return run([ROOT / "jobs" / "submit.py", "--address", info["address"], "--token-file",
                        info["token_file"], "--", "python", "jobs/tokenize_items.py", "--embeddings", "data",
                        "--output", out, *flags], cwd=tmp_path, timeout=600)

        calm_run = submit("out/calm")
        assert calm_run.returncode == 0, (calm_run.stdout + calm_run.stderr)[-3000:]
        r = run([ROOT / "infra" / "ray_head.py", "join", "--dir", d, "--num-cpus", "2", "--object-store-mb", "300"],
                cwd=ROOT, timeout=240)
        assert r.returncode == 0, r.stdout + r.stderr
        result: list = []
        job = threading.Thread(target=lambda: result.append(submit("out/lost")))
        job.start()
        time.sleep(12)  # the codes stage runs on both nodes by now
        r = run([ROOT / "infra" / "ray_head.py", "kill-node", "--dir", d, "--node", "1"], cwd=ROOT, timeout=60)
        assert r.returncode == 0 and "killed 0 " not in r.stdout, r.stdout + r.stderr
        job.join(timeout=600)
        (tmp_path / "lost.log").write_text((result[0].stdout + result[0].stderr) if result else "")
        assert result and result[0].returncode == 0, (result[0].stdout + result[0].stderr)[-4000:] if result else ""
        assert job.is_alive() is False
        calm, lost = (pq.read_table(tmp_path / "out" / n / "token_table").sort_by("item_id") for n in ("calm", "lost"))
        assert lost.num_rows == 24000 and lost.equals(calm)
    finally:
        run([ROOT / "infra" / "ray_head.py", "stop", "--dir", d], cwd=ROOT, timeout=60)
