"""Ray start-up and the standard job entry point (settings, logging, clean errors, exit codes)."""

from __future__ import annotations

import logging
import os
import sys
from typing import Callable

from semrec.config import load_settings, path_values
from semrec.config.settings import JobSettings, RaySettings
from semrec.data.io import TRANSIENT_IO_ERRORS
from semrec.errors import ConfigError, find_semrec_error, user_message

log = logging.getLogger("semrec")
# an overloaded machine (seen with 4 local Rays on 2 cores) can miss the raylet's 30 s start-up deadline
LOCAL_START_ATTEMPTS = 3
IDLE_WORKER_KEEP_MS = 10_000  # in-process Ray: how long idle task workers are kept (Ray's default 1 s)
LOCAL_WORKER_SETUP = "semrec.pipelines.worker_setup.quiet_local_worker"  # in-process Ray only (no dashboard there)


def init_ray(rs: RaySettings) -> None:
    """Connect to ``rs.address`` / ``RAY_ADDRESS`` (set by ``ray job submit``), else start an in-process Ray."""
    # 2-core machines: 32 footer-reader actors make small-file reads crawl (shared/notes).
    os.environ.setdefault("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", "2")
    import ray

    if ray.is_initialized():
        return
    address = rs.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        for attempt in range(1, LOCAL_START_ATTEMPTS + 1):
            try:
                ray.init(address="local", num_cpus=rs.num_cpus, include_dashboard=False,
                         object_store_memory=rs.object_store_mb * 1024 * 1024, log_to_driver=True,
                         # idle task workers above the soft limit (= CPUs) live 10 s, not 1 s: each Ray Data
                         # execution of a streamed epoch (train pass, validation) then reuses them instead of
                         # starting new Python processes (a 2-worker streamed test: 33-35 s against 41-56 s)
                         _system_config={"idle_worker_killing_time_threshold_ms": IDLE_WORKER_KEEP_MS},
                         runtime_env={"worker_process_setup_hook": LOCAL_WORKER_SETUP})
                break
            except Exception as e:  # Ray raises a bare Exception when its raylet misses a fixed 30 s deadline
                if "timed out during startup" not in str(e) or attempt == LOCAL_START_ATTEMPTS:
                    raise
                log.warning("local Ray did not start in time (machine busy?); retrying (%d/%d)",
                            attempt + 1, LOCAL_START_ATTEMPTS)
                ray.shutdown()
    import ray.data

    logging.getLogger("ray.data.dataset").addFilter(_NoFalseHangWarning())
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = True
    ctx.raise_original_map_exception = True  # our InputErrors reach the driver as themselves
    ctx.use_datasource_v2 = use_parquet_v2()
    # transient errors of local / network filesystems (NFS, FUSE-mounted buckets) are retried per block, like
    # the cloud-storage errors Ray Data retries by default
    ctx.retried_io_errors = list(dict.fromkeys([*ctx.retried_io_errors, *TRANSIENT_IO_ERRORS]))
    log.info("ray: %s CPUs, address %s", ray.cluster_resources().get("CPU"), address or "in-process")


def use_parquet_v2() -> bool:
    """Whether ``read_parquet`` takes Ray Data's V2 datasource: only when ``RAY_DATA_USE_DATASOURCE_V2`` says so
    (``1`` / ``true``). V2, Ray 2.60's default, starts its footer-reader actors -- new worker processes -- on
    every execution of a read, and a streamed epoch executes its read twice per training worker (training
    pass, validation): on 2 cores each execution cost ~2.7 s against ~0.15 s through V1 (the same 513 rows
    read five times), and a 2-worker streamed training run took 105 s against 38 s, with the same metrics.
    Both datasources retry ``DataContext.retried_io_errors`` per read task; semrec passes explicit file lists,
    so nothing needs V2's ``ignore_missing_paths`` / ``skip_paths``."""
    return os.environ.get("RAY_DATA_USE_DATASOURCE_V2", "0").strip().lower() in ("1", "true")


class _NoFalseHangWarning(logging.Filter):
    """Ray Data warns "no available CPUs ... will hang" whenever ``ray.available_resources()`` reads 0 CPUs at
    the start of an execution: on a busy machine, or just after tasks finished but before their CPUs are
    reported back, with no hang following. semrec's pipelines size their actor pools so that read/write
    tasks always have a CPU (``check_actor_budget``), so the line is a false alarm there."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "will hang unless more CPUs are freed up" not in record.getMessage()


def check_actor_budget(rs: RaySettings) -> RaySettings:
    """The resolved actor pool (``resolve_actor_pool``); refuse pools that would take every CPU: Ray Data's read
    tasks (1 CPU each) would then never be scheduled and the pipeline would hang (measured on 2-core machines)."""
    import ray

    rs = resolve_actor_pool(rs)
    total = ray.cluster_resources().get("CPU", 0)
    need = rs.actors * rs.cpus_per_actor
    if total and need > total - 1:
        raise ConfigError(f"ray.actors x ray.cpus_per_actor = {need:g} CPUs leaves less than 1 of the cluster's "
                          f"{total:g} CPUs for Ray Data's read/write tasks (the pipeline would hang); lower "
                          f"--ray.cpus_per_actor or --ray.actors, and use --ray.threads for more threads per actor")
    return rs


def resolve_actor_pool(rs: RaySettings) -> RaySettings:
    """``rs`` with the actor pool of the embedding/encoding stages filled in (after ``init_ray``).

    On the in-process local Ray the job owns the machine: by default one single-threaded actor per CPU, each
    reserving (CPUs - 1) / actors so that one CPU stays free for Ray Data's tasks. On 2 cores two 1-thread
    actors embed ~1.3x faster than one 2-thread actor, whose threads wait on each other whenever Ray's own
    processes take a core (benchmarks/bench_pipeline.py). On a cluster: 1 actor reserving 1 CPU unless set, and
    as many threads as CPUs reserved."""
    import math

    import ray

    local = not (rs.address or os.environ.get("RAY_ADDRESS"))
    cpus = int(ray.cluster_resources().get("CPU", 1))
    actors = rs.actors or (cpus if local else 1)
    per_actor = rs.cpus_per_actor or ((cpus - 1) / actors if local and cpus > 1 else 1.0)
    threads = rs.threads or (max(1, cpus // actors) if local else max(1, math.ceil(per_actor)))
    return rs.model_copy(update={"actors": actors, "cpus_per_actor": per_actor, "threads": threads})


def in_ray_job() -> bool:
    """Whether this process is the driver of a `ray job submit` job (Ray's job supervisor sets this variable)."""
    return "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ


def refuse_relative_paths_in_ray_job(settings: JobSettings) -> None:
    """A `ray job submit` driver runs in a temporary copy of --working-dir (or in the head's session folder
    without one), never in the submitter's folder: a relative input is looked up there (and data/ is not
    uploaded), a relative output vanishes with the Ray session. Refuse them, naming each."""
    if not in_ray_job():
        return
    rel = [f"--{name} {p}" for name, vals in path_values(settings).items() for p in vals if not p.is_absolute()]
    if rel:
        raise ConfigError(f"relative paths under `ray job submit`: {', '.join(rel)}. This job runs in {os.getcwd()} "
                          f"(a temporary copy of --working-dir), so relative inputs are looked up there and "
                          f"outputs would vanish with the Ray session; give absolute paths on storage every node "
                          f"sees (jobs/submit.py makes them absolute for you)")


def job_main(settings_cls: type[JobSettings], run: Callable[[JobSettings], object], prog: str,
             argv: list[str] | None = None) -> int:
    try:
        settings = load_settings(settings_cls, argv, prog=prog)
        refuse_relative_paths_in_ray_job(settings)
        logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                            stream=sys.stderr)
        run(settings)
        return 0
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; nothing was published", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 -- expected errors become one clear line and an exit code
        err = find_semrec_error(e)
        if err is None:
            raise
        print(f"{prog}: error: {user_message(err)}\nnothing was published", file=sys.stderr)
        return err.exit_code

