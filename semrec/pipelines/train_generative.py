"""Train and evaluate the TIGER-style generative recommender on Ray Train (the shared engine).

Output folder (published atomically):
    metrics.json      final test and validation metrics over the whole catalogue (Recall@1/5/10/20,
                      NDCG@5/10/20), beam size, wall and training time
    results.md        one-row markdown results table
    model/            config.json + model.safetensors (the best epoch's weights)
    trie/             the code trie of the token table (memory-mappable; semrec.decoding.CodeTrie.load)
    effective_config.json
Checkpoints live under --run_dir/<run_name>/; a rerun with the same run name resumes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from semrec.config import write_effective
from semrec.config.settings import TrainGenerativeSettings
from semrec.data.output import job_output

COLUMNS = ["Recall@1", "Recall@5", "Recall@10", "Recall@20", "NDCG@5", "NDCG@10", "NDCG@20"]


def run(s: TrainGenerativeSettings) -> dict:
    with job_output(s.output, "train_generative", [s.sequences, s.tokens, s.run_dir, s.config], s.overwrite) as stage:
        report = train(s, stage)
    print(results_table([report]))
    print(f"metrics: {Path(s.output).absolute() / 'metrics.json'}")
    return report


def train(s: TrainGenerativeSettings, stage: Path) -> dict:
    from semrec.data.sequences import load_sequences
    from semrec.models.generative import build_generative, save_pretrained
    from semrec.pipelines.runtime import init_ray
    from semrec.train.generative import load_codes, model_spec, train_loop
    from semrec.train.launch import best_state, check_cpus, default_run_name, launch, worker_config

    t0 = time.perf_counter()
    cfg = worker_config(s, ("sequences", "tokens"))
    # validate what the workers load before starting Ray (clear errors, nothing published)
    seqs = load_sequences(s.sequences, n_items=s.n_items)
    users, n_items = len(seqs), seqs.n_items
    del seqs
    _, sizes, trie = load_codes(str(s.tokens), n_items)
    cfg["n_items"] = n_items
    model = build_generative(model_spec(cfg, sizes))
    init_ray(s.ray)
    check_cpus(s.train)
    name = s.run_name or default_run_name("generative", {
        "sequences": str(Path(s.sequences).absolute()), "tokens": str(Path(s.tokens).absolute()),
        "model": s.model.model_dump(mode="json"), "train": s.train.model_dump(mode="json"),
        "eval": s.eval.model_dump(mode="json")})
    result = launch(train_loop, cfg, s.train, s.run_dir, name, s.resume, "NDCG@10")
    final = result.metrics
    dataset = s.dataset or Path(s.sequences).resolve().parent.name or Path(s.sequences).stem
    report = {"dataset": dataset, "users": users, "items": n_items, "code_levels": sizes, "beam": s.eval.beam,
              "best_epoch": final["best_epoch"], "epochs_run": final["epoch"] + 1,
              "wall_s": round(time.perf_counter() - t0, 1), "train_s": final["train_s"],
              "workers": s.train.num_workers, "run_name": name,
              "params": sum(p.numel() for p in model.parameters()), "trie_bytes": trie.nbytes,
              "metrics": {k: v for k, v in final.items() if k.startswith(("test_", "final_valid_"))}}
    (stage / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    (stage / "results.md").write_text(results_table([report]))
    save_pretrained(model, stage / "model", best_state(result.checkpoint))
    trie.save(stage / "trie")
    write_effective(s, stage / "effective_config.json")
    return report


def results_table(reports: list[dict]) -> str:
    lines = ["| dataset | beam | " + " | ".join(COLUMNS) + " | best epoch | wall s |", "|" + "---|" * (len(COLUMNS) + 4)]
    for r in reports:
        cells = " | ".join(f"{r['metrics'].get(f'test_{c}', float('nan')):.4f}" for c in COLUMNS)
        lines.append(f"| {r['dataset']} | {r['beam']} | {cells} | {r['best_epoch']} | {r['wall_s']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from semrec.pipelines.runtime import job_main

    return job_main(TrainGenerativeSettings, run, "train_generative", argv)
