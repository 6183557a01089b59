"""Driver side of the engine: start (or resume) a Ray Train run of a family's ``train_loop`` and return its
final metrics and checkpoint. Every training job (train_seqrec, train_ctr, the families to come) calls
``launch``; the worker side is ``semrec.train.engine.fit``."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Callable

from semrec.errors import ConfigError, error_from_report

log = logging.getLogger("semrec.train")
# how often the Ray Train controller polls its workers (Ray's default 2 s): it also sets how long a finished
# run waits before its worker group shuts down. Measured on 2 cores, a 3-epoch run's fit() returned 6.8 s after
# the last report at 2 s and 1.2 s at 0.25 s; the poll is one cheap RPC per worker. A user's value wins.
HEALTH_CHECK_INTERVAL_S = "0.25"


def worker_config(settings, path_keys: tuple[str, ...]) -> dict:
    """The job's settings as the JSON dict each worker gets: torch threads resolved, and the path settings
    ``path_keys`` made absolute (Ray Train workers do not run in the job's working directory)."""
    import math

    cfg = json.loads(settings.model_dump_json())
    cfg["train"]["threads"] = settings.train.threads or max(1, math.ceil(settings.train.cpus_per_worker))
    for key in path_keys:
        if cfg[key] is not None:
            cfg[key] = str(Path(cfg[key]).absolute())
    return cfg


def default_run_name(prefix: str, payload: dict) -> str:
    """``<prefix>-<hash of the settings that define the run>``: the same settings resume the same run."""
    key = json.dumps(payload, sort_keys=True, default=str)
    return f"{prefix}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def run_state(run_dir: Path, in_process: bool = False) -> dict | None:
    """What a rerun under ``run_dir`` starts from: the metadata of a run that stopped on a deterministic error
    (``failed``: never resumed), else of the newest checkpoint it resumes from (``resumable_checkpoints``; a
    finished run's has ``done``), else, when only checkpoints Ray Train never recorded are left, the newest of
    them marked ``unrecorded`` (Ray Train would start over beside them), or None."""
    from semrec.train.engine import checkpoint_metas, resumable_checkpoints

    metas = [meta for meta, _ in checkpoint_metas(run_dir)]
    newest = lambda ms: max(ms, key=lambda m: m.get("epoch", -1))  # noqa: E731
    if failed := [m for m in metas if m.get("failed")]:
        return newest(failed)
    if usable := [meta for meta, _ in resumable_checkpoints(run_dir, in_process)]:
        return newest(usable)
    return {**newest(metas), "unrecorded": True} if metas else None


def check_cpus(train, reserve: float = 0.0, why: str = "") -> None:
    """Refuse a worker group that cannot start (or would starve ``reserve`` CPUs of Ray Data reads)."""
    import ray

    total = ray.cluster_resources().get("CPU", 0)
    need = train.num_workers * train.cpus_per_worker
    if need + reserve > total:
        raise ConfigError(f"train.num_workers x train.cpus_per_worker = {need:g} CPUs{why} but the cluster has "
                          f"{total:g}: lower train.cpus_per_worker (e.g. 0.5)")


def launch(train_loop: Callable[[dict], None], cfg: dict, train, run_dir: Path, name: str, resume: bool,
           metric: str, datasets: dict[str, Any] | None = None, data_config=None):
    """Run ``train_loop(cfg)`` on ``train.num_workers`` Ray Train workers under ``run_dir/name`` (0: in this
    process, Ray Train's local mode: no worker start-up, no recovery from a lost process); a rerun with the
    same name resumes from its newest checkpoint (unless that run finished, or ``resume`` is off).
    Returns the Ray Train result, whose metrics are the final (``done``) report."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from semrec.train.engine import IN_PROCESS_MARKER, KEEP_CHECKPOINTS, LOCAL_RUN_DIR, driver_progress

    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", HEALTH_CHECK_INTERVAL_S)  # read by the controller
    storage = Path(run_dir).absolute()
    in_process = train.num_workers == 0
    # Ray Train restores a run from its snapshot when name + storage_path match; start over when the
    # previous run with this name finished, or when asked to
    state = run_state(storage / name, in_process)
    if state is not None and (not resume or state.get("done") or state.get("unrecorded")):
        log.info("starting %s from scratch (previous run %s)", name, "stopped on an error" if state.get("failed") else
                 "finished" if state.get("done") else "discarded" if not resume else
                 "left no checkpoint Ray Train recorded")
        shutil.rmtree(storage / name)
    elif state is not None:
        if not in_process and any((storage / name).glob(f"*/{IN_PROCESS_MARKER}")):
            raise ConfigError(f"run {name} under {storage} was trained in-process (--train.num_workers 0) and Ray "
                              "Train cannot resume it on workers: resume it with --train.num_workers 0, or start "
                              "over with --resume false or a new --run_name")
        log.info("resuming %s after epoch %d", name, state["epoch"])
    if in_process:  # Ray Train's local mode: the loop runs in this process; the engine keeps the checkpoints
        cfg = {**cfg, "train": {**cfg["train"], LOCAL_RUN_DIR: str(storage / name)}}
        logging.getLogger("ray.train.v2._internal.execution.train_fn_utils").setLevel(logging.WARNING)  # per report
    trainer = TorchTrainer(
        train_loop, train_loop_config=cfg, datasets=datasets or {}, dataset_config=data_config,
        scaling_config=ScalingConfig(num_workers=train.num_workers, use_gpu=train.use_gpu,
                                     resources_per_worker={"CPU": train.cpus_per_worker}),
        run_config=RunConfig(name=name, storage_path=str(storage),
                             checkpoint_config=CheckpointConfig(num_to_keep=KEEP_CHECKPOINTS),
                             failure_config=FailureConfig(max_failures=train.max_failures)))
    with driver_progress(storage / name, train.epochs, metric):
        result = trainer.fit()
    failed = (result.metrics or {}).get("failed")
    if failed:  # a deterministic error every rank agreed on (semrec.train.engine): not retried
        raise error_from_report(failed, result.metrics["error"], int(result.metrics["exit_code"]))
    if not (result.metrics or {}).get("done"):
        raise RuntimeError(f"training ended without final metrics: {result.metrics}")
    return result


def best_state(checkpoint) -> dict:
    """The best epoch's weights from a final checkpoint written by the engine."""
    import torch

    with checkpoint.as_directory() as d:
        return torch.load(Path(d) / "state.pt", weights_only=True)["best_model"]
