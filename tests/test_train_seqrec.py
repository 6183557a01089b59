"""train_seqrec on Ray Train: modes, resume after a kill, 2 workers vs 1, bad input (the Beauty slice run is in
benchmarks/bench_slow_runs.py)."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from semrec.data.io import write_table
from semrec.data.synthetic import World, item_shard, sequence_shard
from semrec.models.sasrec import from_pretrained
from semrec.pipelines.train_seqrec import main
from semrec.train.engine import checkpoint_metas, resumable_checkpoints  # skip a checkpoint.json being written
from helpers import ROOT

N_ITEMS = 400
FAST = ["--model.hidden", "32", "--model.max_len", "20", "--model.dropout", "0.2", "--train.batch_size", "128",
        "--eval.full_ranking"]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory, ray_local):
    """600 users over 400 topic-structured items, and a token table for them from tokenize_items."""
    d = tmp_path_factory.mktemp("seqrec")
    world = World(seed=3, topics=16, embedding_dim=32)
    write_table(sequence_shard(world, 1, 601, N_ITEMS, mean_length=10), d / "seq.parquet")
    emb = item_shard(world, 1, N_ITEMS + 1, with_text=False).select(["item_id", "embedding"])
    write_table(emb, d / "emb.parquet")
    from semrec.pipelines.tokenize_items import main as tokenize

    assert tokenize(["--embeddings", str(d / "emb.parquet"), "--output", str(d / "tokens"), "--no-plots",
                     "--quantizer.codebook_size", "16", "--quantizer.latent_dim", "16", "--quantizer.hidden", "[32]",
                     "--quantizer.epochs", "20"]) == 0
    return d


def _args(d: Path, out: Path, *extra) -> list[str]:
    return ["--sequences", str(d / "seq.parquet"), "--output", str(out), "--run_dir", str(d / "runs"),
            "--eval.negatives_dir", str(d / "negatives"), "--dataset", "synthetic", *FAST, *map(str, extra)]


@pytest.mark.parametrize("mode", ["id", "semantic", "unified", "joint"])
def test_modes_train_and_publish(synthetic, tmp_path, mode):
    out = tmp_path / "out"
    extra = ["--model.mode", mode, "--train.epochs", "3", "--train.num_workers", "0"]  # in-process
    extra += ["--tokens", synthetic / "tokens"] if mode != "id" else []
    if mode == "joint":
        extra += ["--embeddings", synthetic / "emb.parquet"]
    assert main(_args(synthetic, out, *extra)) == 0
    report = json.loads((out / "metrics.json").read_text())
    m = report["metrics"]
    for key in ("test_HIT@1", "test_HIT@5", "test_HIT@10", "test_NDCG@5", "test_NDCG@10", "test_MRR",
                "test_full_HIT@10", "test_full_NDCG@20"):
        assert 0.0 <= m[key] <= 1.0
    assert m["test_HIT@10"] > 0.1 + 1e-9  # random ranking of 100 candidates gives 0.10
    assert (out / "model" / "model.safetensors").exists() and (out / "results.md").read_text().count("|") > 20
    # the saved model loads with one call, without the training data, and recommends from a history
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["n_items"] == N_ITEMS and config["mode"] == mode
    assert not [v for v in config.values() if isinstance(v, str) and "/" in v], "no data paths in the artefact"
    model = from_pretrained(out / "model")
    history = [5, 17, 33, 17]
    ids, scores = model.recommend([history, []], k=10)
    assert ids.shape == (2, 10) and not set(ids[0]) & set(history) and (ids > 0).all()
    assert (scores[:, :-1] >= scores[:, 1:]).all()
    assert torch.allclose(model.score(torch.tensor([[0] * 16 + history]), torch.from_numpy(ids[:1])),
                          torch.from_numpy(scores[:1]), atol=1e-5)
    sizes = report["token_size"]
    assert sizes["item_params_trainable"] == sum(p.numel() for p in model.items.parameters())
    if mode == "joint":  # ID part + the whole RQ-VAE + projection train, not the Table-5 arithmetic's L x C x d
        joint = model.items.semantic
        assert sizes["item_params_trainable"] == (N_ITEMS + 1) * 8 + sum(
            p.numel() for m in (joint.rqvae, joint.proj) for p in m.parameters()) > sizes["total"]
    else:
        assert sizes["item_params_trainable"] == sizes["total"]
    if mode == "id":
        assert sizes["total"] == (N_ITEMS + 1) * 32
    elif mode == "semantic":
        assert sizes["total"] == 3 * 16 * 32
    else:
        assert sizes["total"] == (N_ITEMS + 1) * 8 + 3 * 16 * 24


def test_relative_paths_reach_the_workers(synthetic, tmp_path, monkeypatch):
    monkeypatch.chdir(synthetic)  # Ray Train workers run elsewhere: relative inputs must still be found
    out = tmp_path / "out"
    assert main(["--sequences", "seq.parquet", "--tokens", "tokens", "--model.mode", "unified", "--output", str(out),
                 "--run_dir", str(tmp_path / "runs"), "--eval.negatives_dir", str(tmp_path / "neg"), *FAST,
                 "--train.epochs", "1"]) == 0
    assert (out / "metrics.json").exists()


TWO_WORKERS = ["--train.num_workers", "2", "--train.cpus_per_worker", "0.5"]


def resumable(run: Path) -> list[dict]:
    """Metadata of the checkpoints a rerun of the worker run ``run`` resumes from (recorded by Ray Train)."""
    return [m for m, _ in resumable_checkpoints(run, in_process=False)]


def kill_after_epoch(synthetic: Path, tmp_path: Path, args: list[str], run_name: str, epoch: int) -> dict:
    """Run train_seqrec in its own process and SIGKILL it once a resumable checkpoint of ``epoch`` exists;
    returns the newest resumable checkpoint's metadata."""
    cmd = [sys.executable, str(ROOT / "jobs" / "train_seqrec.py"), *args, "--run_name", run_name]
    log = tmp_path / f"{run_name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    deadline = time.time() + 480
    ckpts = synthetic / "runs" / run_name
    epochs = []
    while time.time() < deadline and proc.poll() is None:
        epochs = [m["epoch"] for m in resumable(ckpts)]
        if epochs and max(epochs) >= epoch:
            break
        time.sleep(0.2)
    died = proc.poll()  # None while it still runs
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    why = f"the job exited with rc {died}" if died is not None else "none within 480 s"
    assert epochs, f"no checkpoint ({why}); the job's output ends with:\n{log.read_text()[-3000:]}"
    return max(resumable(ckpts), key=lambda m: m["epoch"])


def test_resume_after_kill_with_two_workers_matches_uninterrupted_run(synthetic, tmp_path):
    """Streamed rows (Ray Data shards, hash split per rank), 2 workers: exact resume."""
    common = ["--train.epochs", "2", "--train.patience", "10", "--train.seed", "5", "--train.source", "stream",
              "--train.shuffle_buffer", "200", *TWO_WORKERS]
    assert main(_args(synthetic, tmp_path / "full", *common, "--run_name", "uninterrupted")) == 0
    # killed mid-way in a separate process, then resumed under the same run name
    killed = kill_after_epoch(synthetic, tmp_path, _args(synthetic, tmp_path / "resumed", *common), "killed", 0)
    assert not (tmp_path / "resumed" / "metrics.json").exists(), "the run was supposed to be killed mid-way"
    assert killed["epoch"] == 0  # killed during the second (last) epoch: the resumed run trains it
    assert main(_args(synthetic, tmp_path / "resumed", *common, "--run_name", "killed")) == 0
    full = json.loads((tmp_path / "full" / "metrics.json").read_text())["metrics"]
    report = json.loads((tmp_path / "resumed" / "metrics.json").read_text())
    resumed = report["metrics"]
    assert report["train_s"] > killed["train_s"]  # the training clock carries over the killed process's time
    # every rank's RNG, the optimizer and the data order are restored: the same numbers, not just close ones
    assert resumed["final_valid_NDCG@10"] == pytest.approx(full["final_valid_NDCG@10"], abs=1e-6)
    assert resumed["test_NDCG@10"] == pytest.approx(full["test_NDCG@10"], abs=1e-6)


def test_a_resumed_run_whose_epoch_cap_is_reached_evaluates_its_best_checkpoint(synthetic, tmp_path, capsys):
    """In-process (--train.num_workers 0): the engine's own checkpoints resume a killed run; Ray Train's
    restore of a worker run is the 2-worker test above."""
    common = ["--train.patience", "50", "--train.seed", "6", "--train.num_workers", "0"]
    killed = kill_after_epoch(synthetic, tmp_path, _args(synthetic, tmp_path / "o", "--train.epochs", "50", *common),
                              "capped", 2)
    assert killed["epoch"] >= 2
    # Ray Train cannot restore an in-process run on workers: said, not silently started over
    assert main(_args(synthetic, tmp_path / "o", "--train.epochs", 2, *common, "--run_name", "capped",
                      "--train.num_workers", "1")) != 0
    assert "was trained in-process (--train.num_workers 0)" in capsys.readouterr().err
    # cap the run below what it has trained (e.g. it was taking too long): the newest complete checkpoint
    # (epoch >= 2 here) already reaches the cap of 2
    assert main(_args(synthetic, tmp_path / "o", "--train.epochs", 2, *common, "--run_name", "capped")) == 0
    report = json.loads((tmp_path / "o" / "metrics.json").read_text())
    restored = {m["epoch"]: m for m in (json.loads(p.read_text()) for p in
                                        (synthetic / "runs" / "capped").glob("**/checkpoint.json"))}
    assert report["epochs_run"] >= 2
    restored = restored[report["epochs_run"] - 1]
    assert report["best_epoch"] == restored["best_epoch"]
    assert report["metrics"]["final_valid_NDCG@10"] == pytest.approx(restored["best_NDCG@10"], abs=1e-9)
    assert 0 < report["metrics"]["test_HIT@10"] <= 1


@pytest.mark.parametrize("source", ["memory", "stream"])
def test_two_workers_finish_when_users_split_unevenly_over_batches(tmp_path, ray_local, capsys, source):
    world = World(seed=4, topics=8)
    write_table(sequence_shard(world, 1, 514, 200, mean_length=8), tmp_path / "seq.parquet")  # 513 users
    out = tmp_path / "out"
    args = ["--sequences", str(tmp_path / "seq.parquet"), "--output", str(out), "--run_dir", str(tmp_path / "runs"),
            "--eval.negatives_dir", str(tmp_path / "neg"), "--dataset", "u513", "--model.hidden", "16",
            "--model.max_len", "10", "--train.batch_size", "256", "--train.epochs", "2", "--train.source", source,
            *TWO_WORKERS]
    # memory: global batches of 256, 256 and 1 user, so rank 1 runs an empty third step; stream: the
    # ranks' hash shares differ in size, so one rank runs out first
    assert main(args) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["users"] == 513 and report["workers"] == 2 and report["epochs_run"] == 2
    assert report["source"] == source
    assert "2/2" in capsys.readouterr().err  # the driver's progress bar reached the last epoch


def _bad(synthetic: Path, tmp: Path):
    write_table(pa.table({"user_id": pa.array([1, 2], pa.int64()),
                          "item_ids": pa.array([[1, 2, 3, 4], [5, 6]], pa.list_(pa.int64()))}), tmp / "short.parquet")
    write_table(pa.table({"user_id": pa.array([1], pa.int64()),
                          "item_ids": pa.array([[1, 2, 9999]], pa.list_(pa.int64()))}), tmp / "unknown.parquet")
    partial = tmp / "partial_tokens"
    (partial / "token_table").mkdir(parents=True)
    t = pq.read_table(synthetic / "tokens" / "token_table")
    write_table(t.filter(pa.compute.greater(t.column("item_id"), 10)), partial / "token_table" / "part-0.parquet")
    mixed = tmp / "mixed_tokens"
    (mixed / "token_table").mkdir(parents=True)
    files = sorted((synthetic / "tokens" / "token_table").glob("*.parquet"))
    first = pq.read_table(files[0])
    meta = dict(first.schema.metadata)
    meta[b"semrec.codebook_sizes"] = b"[32, 32, 32]"
    write_table(first.replace_schema_metadata(meta), mixed / "token_table" / "part-0.parquet")
    for i, f in enumerate(files[1:]):
        write_table(pq.read_table(f), mixed / "token_table" / f"part-{i + 1}.parquet")
    if len(files) == 1:  # one partition: add a second file with the original metadata
        write_table(pq.read_table(files[0]).slice(0, 0), mixed / "token_table" / "part-9.parquet")
    # a cached negatives file (as frozen_negatives writes it) in which user 1's first negative is its own item
    from semrec.data.sequences import load_sequences, sample_negatives, write_negatives

    seqs = load_sequences(synthetic / "seq.parquet")
    neg = sample_negatives(seqs, 99, 12345)
    neg[0, 0] = seqs.items[0][0]
    (tmp / "poisoned").mkdir()
    write_negatives(tmp / "poisoned" / "synthetic-seed12345-k99.parquet", seqs.user_ids, neg, dataset="synthetic",
                    seed=12345, k=99, n_items=seqs.n_items, users=len(seqs))
    return {
        "unsafe run name": (["--run_name", "../x"], "run_name: Value error, '../x' is not a safe name"),
        "unsafe dataset name": (["--dataset", "a/b"], "dataset: Value error, 'a/b' is not a safe name"),
        "cached negatives hit a seen item": (["--eval.negatives_dir", tmp / "poisoned"],
                                             f"negative item {seqs.items[0][0]} of user 1 is in that user's own"),
        "diverging training gives NaN scores": (["--train.lr", "1e30"], "non-finite (NaN/inf) scores"),
        "short sequence": (["--sequences", tmp / "short.parquet"], "user 2 has 2 items"),
        "short sequence, streamed": (["--sequences", tmp / "short.parquet", "--train.source", "stream"],
                                     f"{tmp / 'short.parquet'}: user 2 has 2 items"),
        "unknown item, streamed": (["--sequences", tmp / "unknown.parquet", "--n_items", str(N_ITEMS),
                                    "--train.source", "stream"], "user 1 has item id 9999 outside"),
        "official negatives with streamed rows": (["--train.source", "stream", "--eval.negatives_file",
                                                   tmp / "short.parquet"], "needs --train.source memory"),
        "unknown item": (["--sequences", tmp / "unknown.parquet", "--n_items", str(N_ITEMS)], "item id 9999"),
        "token table does not cover items": (["--model.mode", "semantic", "--tokens", partial],
                                             "does not cover 10 of the 400 items"),
        "mismatched codebook sizes": (["--model.mode", "semantic", "--tokens", mixed], "codebook sizes differ"),
        "mode without tokens": (["--model.mode", "unified"], "needs --tokens"),
    }


@pytest.mark.parametrize("case", ["unsafe run name", "unsafe dataset name", "cached negatives hit a seen item",
                                  "diverging training gives NaN scores", "short sequence", "unknown item",
                                  "short sequence, streamed", "unknown item, streamed",
                                  "official negatives with streamed rows",
                                  "token table does not cover items", "mismatched codebook sizes",
                                  "mode without tokens"])
def test_bad_input(synthetic, tmp_path, capsys, case):
    extra, message = _bad(synthetic, tmp_path)[case]
    out = tmp_path / "out"
    args = _args(synthetic, out, "--train.epochs", "1")
    if extra[0] == "--sequences":
        args[1] = str(extra[1])
        extra = extra[2:]
    code = main(args + [str(x) for x in extra])
    err = capsys.readouterr().err
    assert code != 0 and message in err, err[-2000:]
    assert "train_seqrec: error: " in err and err.rstrip().endswith("nothing was published"), err[-2000:]
    assert not out.exists()
    assert not (tmp_path.parent / "x").exists()


def _kill_train_worker_after(ckpts: Path, epoch: int, done: threading.Event, killed: list) -> None:
    """SIGKILL the Ray Train worker process once a checkpoint of ``epoch`` exists (the next epoch is running).
    Only this run's workers: descendants of this process (the in-process Ray's raylet is its child) that were
    not Ray Train workers when the watcher started (an actor may start in an older idle worker process, so the
    process's age says nothing). They are looked up before the checkpoint appears: a process scan takes longer
    than an epoch of this small run on a fast machine, which could end the run before the kill."""
    import psutil

    me, workers = os.getpid(), []

    def find() -> list:
        out = []
        for proc in psutil.process_iter(["pid", "cmdline", "name"]):
            title = " ".join(proc.info["cmdline"] or []) + " " + (proc.info["name"] or "")
            with contextlib.suppress(psutil.Error):
                if "RayTrainWorker" in title and any(p.pid == me for p in proc.parents()):
                    out.append(proc)
        return out

    stale = {p.pid for p in find()}
    while not done.is_set():
        workers = [w for w in workers if w.is_running()] or [w for w in find() if w.pid not in stale]
        epochs = [m["epoch"] for m, _ in checkpoint_metas(ckpts)]
        if workers and epochs and max(epochs) >= epoch:
            for w in workers:
                with contextlib.suppress(psutil.Error):
                    w.kill()
                    killed.append(w.pid)
            if killed:
                return
        time.sleep(0.02)


def test_a_killed_training_worker_is_replaced_and_the_run_matches(synthetic, tmp_path):
    """A Ray Train worker process SIGKILLed mid-run: Ray Train (FailureConfig) starts a new worker group, the
    engine resumes it from the latest checkpoint, and the final metrics equal an uninterrupted run's."""
    # 12 epochs: on a fast machine an epoch of this run takes ~0.1 s, and the kill must land before the end
    common = ["--train.epochs", "12", "--train.patience", "12", "--train.seed", "9", "--train.max_failures", "2"]
    assert main(_args(synthetic, tmp_path / "full", *common, "--run_name", "worker-full")) == 0
    done, killed = threading.Event(), []
    watcher = threading.Thread(target=_kill_train_worker_after,
                               args=(synthetic / "runs" / "worker-killed", 1, done, killed), daemon=True)
    watcher.start()
    try:
        assert main(_args(synthetic, tmp_path / "killed", *common, "--run_name", "worker-killed")) == 0
    finally:
        done.set()
        watcher.join(timeout=5)
    assert killed, "no Ray Train worker was killed (the run ended first?)"
    full = json.loads((tmp_path / "full" / "metrics.json").read_text())["metrics"]
    resumed = json.loads((tmp_path / "killed" / "metrics.json").read_text())["metrics"]
    assert resumed["test_NDCG@10"] == pytest.approx(full["test_NDCG@10"], abs=1e-6)
    assert resumed["final_valid_NDCG@10"] == pytest.approx(full["final_valid_NDCG@10"], abs=1e-6)


@pytest.mark.parametrize("user_value", [None, "3"])
def test_launch_makes_the_controller_poll_fast_unless_the_user_set_it(tmp_path, monkeypatch, user_value):
    """Ray Train reads RAY_TRAIN_HEALTH_CHECK_INTERVAL_S when the trainer starts its controller: launch sets it
    (0.25 s; Ray's 2 s kept every finished run waiting ~6.8 s on 2 cores) and leaves a user's value alone."""
    import ray.train.torch

    from semrec.config.settings import TrainSettings
    from semrec.train import launch

    if user_value is None:
        monkeypatch.delenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", raising=False)
    else:
        monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", user_value)
    seen = []

    class Stop(Exception):
        pass

    def trainer(*args, **kwargs):
        seen.append(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"))
        raise Stop

    monkeypatch.setattr(ray.train.torch, "TorchTrainer", trainer)
    with pytest.raises(Stop):
        launch.launch(lambda cfg: None, {}, TrainSettings(), tmp_path, "run", True, "NDCG@10")
    assert seen == [user_value or launch.HEALTH_CHECK_INTERVAL_S]
