"""CTR base models on Frappe (`../shared/data/frappe/`): LR, DCN, DeepFM, FinalMLP trained with
`train_ctr` on the validation file (10% held out by a fixed hash for early stopping), tested on the test
file; 3 training seeds each. Writes benchmarks/results/ctr_frappe.{json,md}.

The public leaderboard (BARS Frappe_x1) trains on the 70% split, 3.5x the rows we have, so its AUCs are
higher and not comparable one to one; they are listed beside ours for orientation only.
"""

import json
import statistics
from pathlib import Path

import pytest
from benchlib import RESULTS, write_result
from helpers import shared

from semrec.data.adapters import libfm_ctr, FRAPPE_FIELDS
from semrec.data.io import write_table
from semrec.pipelines.train_ctr import main

pytestmark = [pytest.mark.slow, pytest.mark.realdata]
WORK = Path("out/bench_ctr")
MODELS = ["lr", "dcn", "deepfm", "finalmlp"]
SEEDS = [1, 2, 3]
LEADERBOARD = {"dcn": 0.9839, "deepfm": 0.9842, "finalmlp": 0.9861}  # BARS, full 7:2:1 split (shared/data README)
RUNS: dict[str, list[dict]] = {}
# LR learns slowly at Adam 1e-3 (valid AUC still rising at the 100-epoch cap: test 0.9172); at 1e-2 it
# converges (best epoch ~24, test 0.9226): the floor gets its best shot
LR_FLAGS = {"lr": ["--train.lr", "0.01"]}


def _data() -> tuple[Path, Path]:
    out = {}
    for split in ("validation", "test"):
        path = WORK / "data" / f"frappe_{split}.parquet"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            write_table(libfm_ctr(shared("frappe", f"frappe.{split}.libfm"), FRAPPE_FIELDS)["ctr_samples"], path)
        out[split] = path
    return out["validation"], out["test"]


@pytest.mark.parametrize("model", MODELS)
def test_frappe(benchmark, ray_local, model):
    train, test = _data()

    def run_all() -> list[dict]:
        reports = []
        for seed in SEEDS:
            out = WORK / "runs" / f"{model}-seed{seed}"
            assert main(["--train_data", str(train), "--test_data", str(test), "--output", str(out), "--overwrite",
                         "--run_dir", str(WORK / "ray_train"), "--run_name", f"frappe-{model}-seed{seed}",
                         "--model.name", model, "--train.seed", str(seed), "--train.threads", "2",
                         *LR_FLAGS.get(model, [])]) == 0
            reports.append(json.loads((out / "metrics.json").read_text()))
        return reports

    reports = benchmark.pedantic(run_all, rounds=1, iterations=1)
    aucs = [r["metrics"]["test_AUC"] for r in reports]
    RUNS[model] = reports
    benchmark.extra_info.update({"test_AUC": aucs, "mean": statistics.mean(aucs)})
    if len(RUNS) == len(MODELS):
        rows, table = {}, ["| model | test AUC (mean ± sd of 3 seeds) | test logloss | best epochs | params | "
                           "BARS leaderboard AUC (70% train split) |", "|---|---|---|---|---|---|"]
        for m in MODELS:
            a = [r["metrics"]["test_AUC"] for r in RUNS[m]]
            ll = [r["metrics"]["test_logloss"] for r in RUNS[m]]
            rows[m] = {"auc": a, "logloss": ll, "best_epochs": [r["best_epoch"] + 1 for r in RUNS[m]],
                       "params": RUNS[m][0]["params"]}
            table.append(f"| {m} | {statistics.mean(a):.4f} ± {statistics.stdev(a):.4f} | {statistics.mean(ll):.4f} | "
                         f"{', '.join(map(str, rows[m]['best_epochs']))} | {rows[m]['params']:,} | "
                         f"{LEADERBOARD.get(m, '-')} |")
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "ctr_frappe.json").write_text(json.dumps(rows, indent=2) + "\n")
        write_result("ctr_frappe", "\n".join(
            ["Frappe: trained on frappe.validation.libfm (57,722 rows; 10% held out for early stopping), tested on "
             "frappe.test.libfm (28,860 rows); embedding 10, DNN 400x3 with batch norm, Adam 1e-3 (LR: 1e-2), batch "
             "4096, embedding L2 0.05 (LR: none), patience 2.",
             "", *table]))
        lr = statistics.mean(rows["lr"]["auc"])
        for m in ("dcn", "deepfm", "finalmlp"):
            assert statistics.mean(rows[m]["auc"]) > lr, (m, rows[m]["auc"], lr)
