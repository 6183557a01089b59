"""Train and evaluate a CTR model (LR, DCN, DeepFM, FinalMLP) on ``ctr_samples`` with the shared Ray Train
engine: early stopping on the validation AUC of a fixed hash split of ``--train_data``, test on
``--test_data``.

Output folder (published atomically):
    metrics.json      test and final validation AUC / logloss, best epoch, wall time, training time
    model/            config.json + model.safetensors (the best epoch's weights)
    effective_config.json
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from semrec.config import write_effective
from semrec.config.settings import TrainCTRSettings
from semrec.data.output import job_output


def paradigm_spec(s: TrainCTRSettings, meta: dict) -> dict:
    """The ``build_paradigm`` spec of ``s.paradigm`` over click samples (``meta``: their semrec.* metadata),
    read from the inputs' metadata and schemas only; refuses inputs that do not fit together."""
    from semrec.data.tokens import token_table_info
    from semrec.errors import InputError
    from semrec.models.ctr.paradigms import ITEM_SIDE, USER_SIDE

    if "n_users" not in meta:
        raise InputError(f"{s.train_data}: paradigm {s.paradigm} needs click samples with user and item fields "
                         f"(prepare_data --format clicks), this file has none (fields {meta.get('fields')})")
    p = s.paradigm
    base = s.model.spec(0, 2)
    for k in ("n_features", "n_fields", "embedding_dim"):
        base.pop(k)
    m = s.model
    spec = {"paradigm": p, "base": base, "n_items": int(meta["n_items"]), "n_users": int(meta["n_users"]),
            "dim": m.embedding_dim, "aggregation": m.aggregation,
            "encoder": {"layers": m.encoder_layers, "heads": m.encoder_heads, "max_len": m.max_len,
                        "dropout": m.encoder_dropout}}
    if m.category_features and USER_SIDE[p] != "target":
        raise InputError(f"--model.category_features applies to din / sim-hard / dmqn / dmqn-simple, not {p}")
    if USER_SIDE[p] == "target":
        spec["long"] = {"codebooks": m.codebooks, "codewords": m.codewords, "hstu_layers": m.hstu_layers,
                        "heads": m.hstu_heads, "dropout": m.encoder_dropout, "tau0": m.tau0, "tau_min": m.tau_min,
                        "anneal_steps": m.anneal_steps, "cluster_sizes": m.cluster_sizes, "ctam": m.ctam,
                        "top_k": m.top_k,
                        "din_hidden": m.din_hidden, "categories": 0}
        if m.category_features:
            from semrec.data.items import load_item_categories

            items = s.items or Path(s.histories).parent / "items"
            spec["long"]["categories"] = int(load_item_categories(items, spec["n_items"]).max()) + 1
    item_q = None
    if ITEM_SIDE[p] == "tokens":
        info = token_table_info(s.item_tokens)
        if info["n_items"] < spec["n_items"]:
            raise InputError(f"{s.item_tokens}/token_table covers items 1..{info['n_items']}, the click samples "
                             f"have items up to {spec['n_items']}")
        spec["item_sizes"], item_q = info["codebook_sizes"], info["quantizer_id"]
    if ITEM_SIDE[p] == "text":
        spec["text_dim"] = _dim(s.item_embeddings or Path(s.item_tokens) / "item_embeddings", "item_embeddings")
    if USER_SIDE[p] == "tokens":
        table = Path(s.user_tokens) / "user_token_table"
        manifest = json.loads((table / "_MANIFEST.json").read_text()) if (table / "_MANIFEST.json").exists() else {}
        if not manifest.get("codebook_sizes"):
            raise InputError(f"{table}: no _MANIFEST.json with codebook_sizes (not a tokenize_users output)")
        spec["user_sizes"] = manifest["codebook_sizes"]
        if item_q and manifest.get("item_quantizer_id") and manifest["item_quantizer_id"] != item_q:
            raise InputError(f"{table}: the user tokens were built over item quantizer "
                             f"{manifest['item_quantizer_id']}, --item_tokens comes from quantizer {item_q}: "
                             f"tokenize the users with these item tokens")
    if USER_SIDE[p] == "cached":
        spec["z_dim"] = _dim(Path(s.user_tokens) / "user_embeddings", "user_embeddings")
    return spec


def _dim(path: Path, what: str) -> int:
    from semrec.data.io import parquet_files, read_schema
    from semrec.schemas import check_embedding_schema

    first = parquet_files(path, what)[0]
    return check_embedding_schema(read_schema(first), str(first), "user_id" if what.startswith("user") else "item_id")


def run(s: TrainCTRSettings) -> dict:
    inputs = [s.train_data, s.test_data, s.histories, s.item_tokens, s.item_embeddings, s.user_tokens, s.items,
              s.run_dir, s.config]
    with job_output(s.output, "train_ctr", inputs, s.overwrite) as stage:
        report = train(s, stage)
    m = report["metrics"]
    ndcg = f", nDCG@5 {m['test_nDCG@5']:.4f}" if "test_nDCG@5" in m else ""
    print(f"{s.model.name} ({s.paradigm}): test AUC {m['test_AUC']:.4f}, logloss {m['test_logloss']:.4f}{ndcg} "
          f"(best epoch {report['best_epoch'] + 1})")
    print(f"metrics: {Path(s.output).absolute() / 'metrics.json'}")
    return report


def train(s: TrainCTRSettings, stage: Path) -> dict:
    from semrec.data.ctr import load_ctr
    from semrec.errors import InputError
    from semrec.models.ctr.models import build_ctr, save_pretrained
    from semrec.pipelines.runtime import init_ray
    from semrec.train.ctr import split_rows, train_loop
    from semrec.train.launch import best_state, check_cpus, default_run_name, launch, worker_config

    t0 = time.perf_counter()
    cfg = worker_config(s, ("train_data", "test_data", "histories", "item_tokens", "item_embeddings", "user_tokens",
                            "items"))
    if (s.paradigm == "sim-hard" or s.model.category_features) and cfg["items"] is None:
        cfg["items"] = str(Path(cfg["histories"]).parent / "items")
    # validate both files and the model before starting Ray (clear errors, nothing published)
    train_data = load_ctr(s.train_data, s.n_features)
    test_data = load_ctr(s.test_data, s.n_features)
    if train_data.features.shape[1] != test_data.features.shape[1]:
        raise InputError(f"{s.test_data}: {test_data.features.shape[1]} fields, {s.train_data} has "
                         f"{train_data.features.shape[1]}")
    try:
        rows_valid = len(split_rows(train_data, s.valid_fraction, s.valid_split)[1])
    except InputError as e:
        raise InputError(f"{s.train_data}: {e}") from None
    n_features = s.n_features or max(train_data.n_features, test_data.n_features)
    cfg["n_features"] = n_features
    if s.paradigm == "features":
        cfg["model_spec"] = s.model.spec(n_features, train_data.features.shape[1])
        model = build_ctr(cfg["model_spec"])
    else:
        from semrec.models.ctr.paradigms import build_paradigm

        if cfg["item_embeddings"] is None and cfg["item_tokens"] is not None:
            cfg["item_embeddings"] = str(Path(cfg["item_tokens"]) / "item_embeddings")
        cfg["model_spec"] = paradigm_spec(s, train_data.meta or {})
        model = build_paradigm(cfg["model_spec"])
    sizes = {"rows_train_file": len(train_data), "rows_valid": rows_valid, "rows_test": len(test_data),
             "fields": train_data.fields}
    del train_data, test_data
    init_ray(s.ray)
    check_cpus(s.train)
    name = s.run_name or default_run_name(f"ctr-{s.model.name}-{s.paradigm}", {
        "train": str(Path(s.train_data).absolute()), "test": str(Path(s.test_data).absolute()),
        "model": cfg["model_spec"], "settings": cfg["train"], "valid_fraction": s.valid_fraction,
        **({"valid_split": s.valid_split} if s.valid_split != "hash" else {}),  # run names of hash runs unchanged
        "inputs": [cfg[k] for k in ("histories", "item_tokens", "item_embeddings", "user_tokens", "items")]})
    result = launch(train_loop, cfg, s.train, s.run_dir, name, s.resume, "AUC")
    final = result.metrics
    report = {"model": s.model.name, "paradigm": s.paradigm, **sizes, "n_features": n_features, "best_epoch": final["best_epoch"],
              "epochs_run": final["epoch"] + 1, "wall_s": round(time.perf_counter() - t0, 1),
              "train_s": final["train_s"], "workers": s.train.num_workers, "run_name": name,
              "params": sum(p.numel() for p in model.parameters()),
              **(model.representation_bytes() if hasattr(model, "representation_bytes") else {}),
              "metrics": {k: v for k, v in final.items() if k.startswith(("test_", "final_valid_"))}}
    (stage / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    if s.paradigm == "features":
        save_pretrained(model, stage / "model", best_state(result.checkpoint))
    else:
        from semrec.models.ctr.paradigms import save_pretrained as save_paradigm

        save_paradigm(model, stage / "model", best_state(result.checkpoint))
    write_effective(s, stage / "effective_config.json")
    return report


def main(argv: list[str] | None = None) -> int:
    from semrec.pipelines.runtime import job_main

    return job_main(TrainCTRSettings, run, "train_ctr", argv)
