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


def run(s: TrainCTRSettings) -> dict:
    inputs = [s.train_data, s.test_data, s.run_dir, s.config]
    with job_output(s.output, "train_ctr", inputs, s.overwrite) as stage:
        report = train(s, stage)
    m = report["metrics"]
    print(f"{s.model.name}: test AUC {m['test_AUC']:.4f}, logloss {m['test_logloss']:.4f} "
          f"(best epoch {report['best_epoch'] + 1})")
    print(f"metrics: {Path(s.output).absolute() / 'metrics.json'}")
    return report


def train(s: TrainCTRSettings, stage: Path) -> dict:
    from semrec.data.ctr import load_ctr
    from semrec.models.ctr.models import build_ctr, save_pretrained
    from semrec.pipelines.runtime import init_ray
    from semrec.train.ctr import train_loop
    from semrec.train.launch import best_state, check_cpus, default_run_name, launch, worker_config

    t0 = time.perf_counter()
    cfg = worker_config(s, ("train_data", "test_data"))
    # validate both files and the model before starting Ray (clear errors, nothing published)
    train_data = load_ctr(s.train_data, s.n_features)
    test_data = load_ctr(s.test_data, s.n_features)
    if train_data.features.shape[1] != test_data.features.shape[1]:
        from semrec.errors import InputError

        raise InputError(f"{s.test_data}: {test_data.features.shape[1]} fields, {s.train_data} has "
                         f"{train_data.features.shape[1]}")
    n_features = s.n_features or max(train_data.n_features, test_data.n_features)
    cfg["n_features"] = n_features
    cfg["model_spec"] = s.model.spec(n_features, train_data.features.shape[1])
    model = build_ctr(cfg["model_spec"])
    sizes = {"rows_train_file": len(train_data), "rows_test": len(test_data), "fields": train_data.fields}
    del train_data, test_data
    init_ray(s.ray)
    check_cpus(s.train)
    name = s.run_name or default_run_name(f"ctr-{s.model.name}", {
        "train": str(Path(s.train_data).absolute()), "test": str(Path(s.test_data).absolute()),
        "model": cfg["model_spec"], "settings": cfg["train"], "valid_fraction": s.valid_fraction})
    result = launch(train_loop, cfg, s.train, s.run_dir, name, s.resume, "AUC")
    final = result.metrics
    report = {"model": s.model.name, **sizes, "n_features": n_features, "best_epoch": final["best_epoch"],
              "epochs_run": final["epoch"] + 1, "wall_s": round(time.perf_counter() - t0, 1),
              "train_s": final["train_s"], "workers": s.train.num_workers, "run_name": name,
              "params": sum(p.numel() for p in model.parameters()),
              "metrics": {k: v for k, v in final.items() if k.startswith(("test_", "final_valid_"))}}
    (stage / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    save_pretrained(model, stage / "model", best_state(result.checkpoint))
    write_effective(s, stage / "effective_config.json")
    return report


def main(argv: list[str] | None = None) -> int:
    from semrec.pipelines.runtime import job_main

    return job_main(TrainCTRSettings, run, "train_ctr", argv)
