"""Train and evaluate SASRec with ID / semantic / unified / joint item tokens on Ray Train.

Output folder (published atomically):
    metrics.json      final test and validation metrics, wall time of this process, training time summed
                      over resumes (train_s), token sizes
    results.md        one-row markdown results table
    model/            config.json + model.safetensors (the best epoch's weights)
    effective_config.json
Checkpoints live under --run_dir/<run_name>/ (one per epoch); a rerun with the same run name
resumes from the latest one.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from semrec.config import write_effective
from semrec.config.settings import TrainSeqRecSettings
from semrec.data.io import count_rows, parquet_files
from semrec.data.output import job_output
from semrec.data.sequences import frozen_negatives, load_sequences, s3rec_negatives, scan_sequences
from semrec.errors import ConfigError

log = logging.getLogger("semrec.train_seqrec")


def run_name(s: TrainSeqRecSettings) -> str:
    from semrec.train.launch import default_run_name

    return s.run_name or default_run_name(f"seqrec-{s.model.mode}", {
        "sequences": str(Path(s.sequences).absolute()), "tokens": str(s.tokens),
        "model": s.model.model_dump(mode="json"), "train": s.train.model_dump(mode="json")})


def token_sizes(model) -> dict:
    """Item-representation parameter counts: the paper's Table 5 arithmetic (ID rows x ID dims + L x C x
    semantic dims; ``id``, ``semantic``, ``total``), and what the model really trains (``item_params_trainable``:
    joint mode adds the RQ-VAE's encoder, decoder and codebooks and a projection; ``model_params_trainable``)."""
    c = model.config
    d, mode, rows = c["hidden"], c["mode"], c["n_items"] + 1
    if mode == "id":
        id_part, sem = rows * d, 0
    elif mode == "semantic":
        id_part, sem = 0, sum(c["codebook_sizes"]) * d
    else:
        id_part, sem = rows * c["id_dim"], sum(c["codebook_sizes"]) * (d - c["id_dim"])
    count = lambda mod: sum(p.numel() for p in mod.parameters() if p.requires_grad)  # noqa: E731
    return {"id": id_part, "semantic": sem, "total": id_part + sem, "id_only_baseline": rows * d,
            "item_params_trainable": count(model.items), "model_params_trainable": count(model)}


def run(s: TrainSeqRecSettings) -> dict:
    inputs = [s.sequences, s.tokens, s.embeddings, s.eval.negatives_file, s.eval.negatives_dir, s.run_dir, s.config]
    with job_output(s.output, "train_seqrec", inputs, s.overwrite) as stage:
        report = train(s, stage)
    print(results_table([report]))
    print(f"metrics: {Path(s.output).absolute() / 'metrics.json'}")
    return report


def train(s: TrainSeqRecSettings, stage: Path) -> dict:
    """The job's work, written into ``stage`` (published by ``run`` when it returns)."""
    from semrec.models.sasrec import save_pretrained
    from semrec.pipelines.runtime import init_ray
    from semrec.train.launch import best_state, check_cpus, launch, worker_config
    from semrec.train.seqrec import build_model, load_assets, train_loop

    t0 = time.perf_counter()
    cfg = worker_config(s, ("sequences", "tokens", "embeddings"))
    # validate everything a worker will load (clear errors, nothing published)
    files = parquet_files(s.sequences, "user_sequences")
    source = s.train.source
    if source == "auto":
        source = "stream" if count_rows(files) > s.train.memory_max_users and not s.eval.negatives_file else "memory"
    dataset = s.dataset or Path(s.sequences).resolve().parent.name or Path(s.sequences).stem
    if source == "memory":
        seqs = load_sequences(s.sequences, n_items=s.n_items)
        users, n_items = len(seqs), seqs.n_items
        if s.eval.negatives_file:
            negatives = s3rec_negatives(s.eval.negatives_file, seqs)
            neg_source = str(s.eval.negatives_file)
        else:
            negatives = frozen_negatives(s.eval.negatives_dir, dataset, seqs, s.eval.negatives, s.eval.negatives_seed)
            neg_source = f"{s.eval.negatives_dir}/{dataset}-seed{s.eval.negatives_seed}-k{s.eval.negatives}.parquet"
        del seqs
    elif s.eval.negatives_file:
        raise ConfigError("--eval.negatives_file needs --train.source memory (the streamed source hashes its "
                          "evaluation negatives from (seed, user))")
    init_ray(s.ray)
    reads = 0.5 if source == "stream" else 0.0  # Ray Data read tasks next to the workers (2-core deadlock trap)
    check_cpus(s.train, reads, " + 0.5 for the streamed reads" if reads else "")
    if source == "stream":
        users, n_items = scan_sequences(files, s.n_items)
        neg_source = f"hashed from (seed {s.eval.negatives_seed}, user), {s.eval.negatives} per user"
    cfg.update({"n_items": n_items, "source": source})
    assets = load_assets(cfg, n_items)
    model = build_model(cfg, assets)  # model-level errors (dims, quantizer kind, distances) before training
    del assets
    name = run_name(s)
    neg_path = stage / "_negatives.npy"
    datasets, data_config = {}, None
    if source == "memory":
        np.save(neg_path, negatives)
        cfg["negatives_npy"] = str(neg_path)
    else:  # every worker streams the whole table in file order and keeps its users (exact resume)
        import ray.data
        from ray.train import DataConfig

        ds = ray.data.read_parquet([str(f) for f in files], num_cpus=reads).select_columns(["user_id", "item_ids"])
        ds.context.enable_progress_bars = False  # two passes an epoch: the engine's epoch line reports them
        datasets["sequences"] = ds
        options = DataConfig.default_ingest_options()
        options.preserve_order = True
        data_config = DataConfig(datasets_to_split=[], execution_options=options)
    cfg.update({"ties": s.eval.ties, "full_ranking": s.eval.full_ranking})
    result = launch(train_loop, cfg, s.train, s.run_dir, name, s.resume, "NDCG@10", datasets, data_config)
    final = result.metrics
    neg_path.unlink(missing_ok=True)
    metrics = {k: v for k, v in final.items() if k.startswith(("test_", "final_valid_"))}
    report = {"dataset": dataset, "mode": s.model.mode, "users": users, "items": n_items, "source": source,
              "negatives": neg_source, "ties": s.eval.ties, "best_epoch": final["best_epoch"],
              "epochs_run": final["epoch"] + 1, "wall_s": round(time.perf_counter() - t0, 1),
              "train_s": final["train_s"],
              "workers": s.train.num_workers, "run_name": name, "metrics": metrics,
              "token_size": token_sizes(model)}
    (stage / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    (stage / "results.md").write_text(results_table([report]))
    save_pretrained(model, stage / "model", best_state(result.checkpoint))
    write_effective(s, stage / "effective_config.json")
    return report


COLUMNS = ["HIT@1", "HIT@5", "NDCG@5", "HIT@10", "NDCG@10", "MRR", "full_HIT@10", "full_NDCG@10", "full_HIT@20",
           "full_NDCG@20"]


def results_table(reports: list[dict]) -> str:
    head = ("| dataset | mode | " + " | ".join(COLUMNS) +
            " | item params (Table 5 arithmetic / trained) | best epoch | wall s |")
    lines = [head, "|" + "---|" * (len(COLUMNS) + 5)]
    for r in reports:
        vals = [r["metrics"].get(f"test_{c}") for c in COLUMNS]
        cells = " | ".join("-" if v is None else f"{v:.4f}" for v in vals)
        size = r["token_size"]
        trained = size.get("item_params_trainable")  # not recorded by runs before stop 7
        lines.append(f"| {r['dataset']} | {r['mode']} | {cells} | {size['total']:,} / "
                     f"{'-' if trained is None else format(trained, ',')} | {r['best_epoch']} | {r['wall_s']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from semrec.pipelines.runtime import job_main

    return job_main(TrainSeqRecSettings, run, "train_seqrec", argv)
