"""user_sequences + a DMQN model -> every user's candidate-independent state (the ICIM output), cached.

1. cheap checks before Ray: the sequences' schema; the model folder is a dmqn / dmqn-simple ParadigmCTR;
2. validation with Ray Data tasks: a user with no behaviours, or an item id outside the model's catalogue,
   stops the job naming the file and user; duplicate users are refused;
3. an actor pool (one model per actor) reads row-group pieces and computes the states (``udfs.UserStatePieces``)
   in input order;
4. ``user_cache/`` + ``_MANIFEST.json`` (model_version, clusters, dim, dtype) and, with ``--memmap``,
   ``store/`` (``semrec.serve.cache.MemmapStore``), published atomically.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from semrec.config import write_effective
from semrec.config.settings import BuildCacheSettings
from semrec.data.io import (count_rows, input_read_errors, parquet_files, parquet_pieces, ray_block_bytes, read_schema,
                            write_manifest)
from semrec.data.output import job_output
from semrec.errors import InputError
from semrec.schemas import USER_SEQUENCES, check_schema

ROWS_PER_PARTITION = 2_000_000
MAX_CLUSTER_SIZE = 65_535  # uint16 sizes in the cache


def check_model(model_dir: Path) -> dict:
    try:
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{model_dir}/config.json: cannot read the model ({e})") from None
    if cfg.get("architecture") != "ParadigmCTR" or cfg.get("paradigm") not in ("dmqn", "dmqn-simple"):
        raise InputError(f"{model_dir}: not a DMQN model (architecture {cfg.get('architecture')!r}, paradigm "
                         f"{cfg.get('paradigm')!r}); only dmqn / dmqn-simple have a cacheable user state")
    if cfg["encoder"]["max_len"] > MAX_CLUSTER_SIZE:  # a cluster holds at most max_len behaviours
        raise InputError(f"{model_dir}: max_len {cfg['encoder']['max_len']} behaviours per user; the cache stores "
                         f"cluster sizes as uint16 (at most {MAX_CLUSTER_SIZE})")
    return cfg


def run(s: BuildCacheSettings) -> dict:
    with job_output(s.output, "build_cache", [s.model, s.sequences, s.config], s.overwrite) as stage:
        with input_read_errors(parquet_files(s.sequences, "user_sequences"), "user_sequences"):
            report = build(s, stage)
    print(f"{report['users']:,} user states ({report['bytes_per_user']:,} bytes each) of model "
          f"{report['model_version']} -> {Path(s.output).absolute() / 'user_cache'}")
    return report


def build(s: BuildCacheSettings, stage: Path) -> dict:
    import ray.data

    from semrec.data.sequences import scan_sequences
    from semrec.models.artefact import model_version
    from semrec.pipelines.codes import check_unique_ids
    from semrec.pipelines.runtime import check_actor_budget, init_ray
    from semrec.pipelines.udfs import UserStatePieces

    t0 = time.perf_counter()
    files = parquet_files(s.sequences, "user_sequences")
    for f in files:
        check_schema(read_schema(f), USER_SEQUENCES, str(f))
    cfg = check_model(s.model)
    version = model_version(s.model)
    init_ray(s.ray)
    rs = check_actor_budget(s.ray)
    with ray_block_bytes():  # bounded blocks: flat memory per process whatever the table size
        n_users, _ = scan_sequences(files, cfg["n_items"], 1, "a cached user state")
        ds = ray.data.read_parquet([str(f) for f in files]).select_columns(["user_id", "item_ids"])
        check_unique_ids(ds, stage / "_work" / "ids", s.partitions or max(1, math.ceil(n_users / ROWS_PER_PARTITION)),
                         str(s.sequences), "user_id")
        t1 = time.perf_counter()
        pieces = parquet_pieces(files, min_pieces=2 * rs.actors, min_rows=rs.batch_size)  # every actor busy
        states = ray.data.from_items(pieces, override_num_blocks=max(1, min(len(pieces), 1000)))
        states.context.execution_options.preserve_order = True
        states.map_batches(UserStatePieces, batch_format="pyarrow", batch_size=1,
                           fn_constructor_args=(str(Path(s.model).absolute()), rs.threads, s.dtype),
                           fn_constructor_kwargs={"rows_per_call": rs.batch_size},
                           compute=ray.data.ActorPoolStrategy(size=rs.actors, max_tasks_in_flight_per_actor=1),
                           num_cpus=rs.cpus_per_actor, max_restarts=rs.actor_restarts
                           ).write_parquet(str(stage / "user_cache"))
    encode_s = time.perf_counter() - t1
    if count_rows(parquet_files(stage / "user_cache", "user_cache")) != n_users:
        raise InputError(f"the state stage wrote fewer rows than the {n_users} users")
    clusters, dim = cfg["long"]["codebooks"] * cfg["long"]["codewords"], cfg["dim"]
    write_manifest(stage / "user_cache", model_version=version, clusters=clusters, dim=dim, dtype=s.dtype,
                   model=str(Path(s.model).absolute()))
    if s.memmap:
        from semrec.serve.cache import MemmapStore

        MemmapStore.build(stage / "user_cache", stage / "store")
    report = {"users": n_users, "model_version": version, "clusters": clusters, "dim": dim, "dtype": s.dtype,
              "bytes_per_user": clusters * dim * (2 if s.dtype == "float16" else 4) + 2 * clusters,
              "users_per_s": round(n_users / encode_s, 1), "actors": rs.actors, "threads_per_actor": rs.threads,
              "timings": {"validate_s": round(t1 - t0, 3), "states_s": round(encode_s, 3),
                          "total_s": round(time.perf_counter() - t0, 3)}}
    import shutil

    shutil.rmtree(stage / "_work", ignore_errors=True)
    (stage / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    write_effective(s, stage / "effective_config.json")
    return report


def main(argv: list[str] | None = None) -> int:
    from semrec.pipelines.runtime import job_main

    return job_main(BuildCacheSettings, run, "build_cache", argv)
