"""user_sequences -> user autoencoder -> z for every user -> quantizer -> user token table (UIST §2.1).

1. validate the table with Ray Data tasks (bounded memory): a user with no items, or an item id the item
   token table does not cover, stops the job naming its file and user;
2. train the autoencoder (``semrec.train.user_ae``) on a deterministic hash sample of ``fit_users`` users
   with Ray Train (the shared engine: multi-worker, checkpoints, resume), or reuse ``--user_encoder``;
3. stream every user through an actor pool (one encoder per actor) to z;
4. fit the quantizer on a deterministic sample of z, assign codes with an actor pool, write the table
   from hash partitions of the code tuple (``semrec.pipelines.codes``, shared with tokenize_items).

Output folder (published atomically; an earlier output at the same path stays until success):

    <output>/user_token_table/part-NNNNN.parquet  user_id, c0..c{K-1} (uint8|uint16)
    <output>/user_token_table/_MANIFEST.json      rows, files with sha256, quantizer id, item quantizer id
    <output>/user_encoder/                        config.json + model.safetensors (the autoencoder)
    <output>/quantizer/                           config.json + weights.safetensors
    <output>/user_embeddings/                     z per user (user_id, embedding), when keep_embeddings
    <output>/report.json, <output>/plots/*.png, <output>/effective_config.json
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path

from semrec.config import write_effective
from semrec.config.settings import TokenizeUsersSettings
from semrec.data.io import count_rows, input_read_errors, parquet_files, read_schema
from semrec.data.output import job_output
from semrec.errors import InputError
from semrec.pipelines.codes import check_unique_ids, quantize, sample_batch
from semrec.data.tokens import token_table_info
from semrec.schemas import USER_SEQUENCES, check_embedding_schema, check_schema

log = logging.getLogger("semrec.tokenize_users")
ROWS_PER_PARTITION = 2_000_000


def check_encoder(encoder_dir: Path, items: dict) -> dict:
    """The saved encoder's config, refused when it was trained on other item tokens than the ones given."""
    try:
        cfg = json.loads((Path(encoder_dir) / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{encoder_dir}/config.json: cannot read the user encoder ({e})") from None
    if cfg.get("architecture") != "UserAutoencoder":
        raise InputError(f"{encoder_dir}: not a user encoder (architecture {cfg.get('architecture')!r})")
    if cfg["codebook_sizes"] != items["codebook_sizes"] or cfg["n_items"] != items["n_items"]:
        raise InputError(f"{encoder_dir}: trained on item tokens of {len(cfg['codebook_sizes'])} levels "
                         f"{cfg['codebook_sizes']} over {cfg['n_items']} items, but --item_tokens has "
                         f"{len(items['codebook_sizes'])} levels {items['codebook_sizes']} over {items['n_items']} "
                         f"items: tokenize with the item tokens the encoder was trained on, or retrain it")
    if cfg.get("item_quantizer_id") and items["quantizer_id"] and cfg["item_quantizer_id"] != items["quantizer_id"]:
        raise InputError(f"{encoder_dir}: trained on item quantizer {cfg['item_quantizer_id']}, --item_tokens "
                         f"comes from quantizer {items['quantizer_id']} (codes mean other things): retrain the encoder")
    return cfg


def run(s: TokenizeUsersSettings) -> dict:
    inputs = [s.sequences, s.item_tokens, s.item_embeddings, s.user_encoder, s.run_dir, s.config]
    with job_output(s.output, "tokenize_users", inputs, s.overwrite) as stage:
        with input_read_errors(parquet_files(s.sequences, "user_sequences"), "user_sequences"):
            report = tokenize(s, stage)
    out = Path(s.output).absolute()
    rec = report["encoder"]["reconstruction"]
    print(f"{report['users']:,} users -> {len(report['quantizer']['codebook_sizes'])} codes each; held-out code "
          f"accuracy {rec.get('test_code_acc', float('nan')):.4f}, unique tuples "
          f"{report['collisions']['unique_tuples']:,}")
    print(f"user token table: {out / 'user_token_table'}\nreport:           {out / 'report.json'}\n"
          f"user encoder:     {out / 'user_encoder'}")
    return report


def train_encoder(s: TokenizeUsersSettings, ds, n_users: int, items: dict, stage: Path, work: Path) -> dict:
    """Fit the autoencoder on a hash sample of users with Ray Train; save it to ``stage/user_encoder``."""
    from semrec.models.user_ae import build_user_autoencoder, save_pretrained
    from semrec.train.launch import best_state, check_cpus, default_run_name, launch, worker_config
    from semrec.train.user_ae import model_spec, train_loop

    frac = min(1.0, s.fit_users / n_users)
    fit_dir = work / "fit_users"
    ds.map_batches(sample_batch, fn_kwargs={"seed": s.seed, "keep_fraction": frac, "key": "user_id"},
                   batch_format="pyarrow").write_parquet(str(fit_dir))
    fit_rows = count_rows(parquet_files(fit_dir, "fit users"))
    if fit_rows < 2:
        raise InputError(f"{s.sequences}: the fit sample has {fit_rows} users (raise --fit_users)")
    cfg = worker_config(s, ("sequences", "item_tokens", "item_embeddings", "user_encoder"))
    cfg.update({"n_items": items["n_items"], "fit_users_path": str(fit_dir.absolute())})
    check_cpus(s.train)
    name = s.run_name or default_run_name("user-ae", {
        "sequences": str(Path(s.sequences).absolute()), "item_quantizer": items["quantizer_id"],
        "model": cfg["model"], "settings": cfg["train"], "fit_users": s.fit_users, "seed": s.seed,
        "valid_fraction": s.valid_fraction})
    result = launch(train_loop, cfg, s.train, s.run_dir, name, s.resume, "code_acc")
    final = result.metrics
    spec = {**model_spec(cfg, items["codebook_sizes"], items["text_dim"]), "item_quantizer_id": items["quantizer_id"]}
    save_pretrained(build_user_autoencoder(spec), stage / "user_encoder", best_state(result.checkpoint))
    return {"trained": True, "run_name": name, "fit_users": fit_rows, "best_epoch": final["best_epoch"],
            "epochs_run": final["epoch"] + 1, "train_s": final["train_s"], "spec": spec,
            "reconstruction": {k: v for k, v in final.items() if k.startswith(("test_", "final_valid_"))}}


def tokenize(s: TokenizeUsersSettings, stage: Path) -> dict:
    import ray.data

    from semrec.data.sequences import scan_sequences
    from semrec.pipelines.runtime import check_actor_budget, init_ray
    from semrec.pipelines.udfs import EncodeUsers

    t_start, timings = time.perf_counter(), {}
    files = parquet_files(s.sequences, "user_sequences")
    for f in files:  # cheap checks before Ray starts
        check_schema(read_schema(f), USER_SEQUENCES, str(f))
    items = token_table_info(s.item_tokens)
    items["text_dim"] = None
    if s.model.item_repr == "text":
        emb = parquet_files(s.item_embeddings or Path(s.item_tokens) / "item_embeddings", "item_embeddings")
        items["text_dim"] = check_embedding_schema(read_schema(emb[0]), str(emb[0]))
    reuse = check_encoder(s.user_encoder, items) if s.user_encoder else None
    init_ray(s.ray)
    rs, work = check_actor_budget(s.ray), stage / "_work"
    threads = rs.threads

    t0 = time.perf_counter()
    n_users, _ = scan_sequences(files, items["n_items"], 1, "a user token")
    ds = ray.data.read_parquet([str(f) for f in files]).select_columns(["user_id", "item_ids"])
    partitions = s.partitions or max(1, math.ceil(n_users / ROWS_PER_PARTITION))
    check_unique_ids(ds, work / "ids", partitions, str(s.sequences), "user_id")
    timings["validate_s"] = time.perf_counter() - t0
    log.info("%d users over %d items (item codes %s)", n_users, items["n_items"], items["codebook_sizes"])

    t0 = time.perf_counter()
    if reuse is None:
        encoder = train_encoder(s, ds, n_users, items, stage, work)
    else:
        shutil.copytree(s.user_encoder, stage / "user_encoder")
        encoder = {"trained": False, "from": str(Path(s.user_encoder).absolute()), "reconstruction": {},
                   "spec": {k: v for k, v in reuse.items() if k not in ("architecture", "format_version")}}
    timings["encoder_fit_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    emb_dir = (stage / "user_embeddings") if s.keep_embeddings else (work / "user_embeddings")
    ds.context.execution_options.preserve_order = True  # the same batches every run: same seed => same bytes
    encode = ds.map_batches(EncodeUsers, batch_format="pyarrow", batch_size=rs.batch_size,
                            fn_constructor_args=(str(stage / "user_encoder"), threads, s.embedding_dtype),
                            compute=ray.data.ActorPoolStrategy(size=rs.actors), num_cpus=rs.cpus_per_actor,
                            max_restarts=rs.actor_restarts)
    encode.write_parquet(str(emb_dir))
    timings["encode_users_s"] = time.perf_counter() - t0
    emb_files = parquet_files(emb_dir, "user_embeddings")
    if count_rows(emb_files) != n_users:
        raise InputError(f"the encoding stage wrote {count_rows(emb_files)} rows for {n_users} users")

    quant = quantize(ray.data.read_parquet([str(f) for f in emb_files]), n_users, s.quantizer, s.seed, s.fit_sample,
                     stage, work, partitions, "user_id", rs, threads, s.plots,
                     manifest={"item_quantizer_id": items["quantizer_id"], "user_encoder": encoder["spec"]})
    shutil.rmtree(work, ignore_errors=True)
    timings.update(quant.pop("timings"))
    timings["total_s"] = time.perf_counter() - t_start
    report = {"users": n_users, "items": items["n_items"], "item_codebook_sizes": items["codebook_sizes"],
              "item_quantizer_id": items["quantizer_id"], "z_dim": encoder["spec"]["hidden"], "encoder": encoder,
              **quant, "users_per_s": round(n_users / timings["encode_users_s"], 1),
              "timings": {k: round(v, 3) for k, v in timings.items()}}
    (stage / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    write_effective(s, stage / "effective_config.json")
    return report


def main(argv: list[str] | None = None) -> int:
    from semrec.pipelines.runtime import job_main

    return job_main(TokenizeUsersSettings, run, "tokenize_users", argv)
