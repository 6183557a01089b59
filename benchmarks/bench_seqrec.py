"""Experiment suite of the unified semantic + ID paper on real data (hours on 2 CPU cores; not CI).

Every experiment is one `train_seqrec` run with 99 frozen sampled negatives (LastFM: the official
file), leave-one-out, pessimistic ties. Results accumulate in benchmarks/results/seqrec.json and the
table benchmarks/results/seqrec.md (the README reproduces it). Select experiments with -k, e.g.
`pytest benchmarks/bench_seqrec.py -s -k "lastfm or beauty-id"`. Two experiments side by side on 2 cores
(each with one torch thread) finish sooner than one after the other with two threads:
`SEMREC_BENCH_THREADS=1 pytest "benchmarks/bench_seqrec.py::test_experiment[beauty-id]" & ...`.
"""

import json
import os
from pathlib import Path

import pytest
from benchlib import locked_runs, write_result
from helpers import shared

from semrec.data.adapters import s3rec_sequences
from semrec.data.io import write_table
from semrec.pipelines.train_seqrec import results_table

pytestmark = [pytest.mark.slow, pytest.mark.realdata]
WORK = Path("out/bench_seqrec")
BEAUTY_ITEMS = 12101

# LastFM: 1,090 users are 5 steps per epoch; validation stalls from epoch ~7 to ~20 before it climbs
# again (best epochs 114-196), so patience 10 stops inside the stall (HIT@10 0.29).
LASTFM = ["--train.patience", "30"]

# (name, dataset, mode, extra train_seqrec flags, tokenizer flags or None)
EXPERIMENTS = [
    ("lastfm-id", "lastfm", "id", LASTFM, None),
    # LastFM's test split is small (1,090 users): the same run with other training seeds gives its spread
    *[(f"lastfm-id-seed{s}", "lastfm", "id", [*LASTFM, "--train.seed", str(s)], None) for s in (1, 2, 3, 4)],
    ("beauty-id", "beauty", "id", [], None),
    # the same run on 2 Ray Train workers (DDP): the global batch and its negatives are the same as with 1
    ("beauty-id-2workers", "beauty", "id", ["--train.num_workers", "2"], None),
    ("beauty-semantic", "beauty", "semantic", [], ("hybrid", 256)),
    ("beauty-unified", "beauty", "unified", [], ("hybrid", 256)),
    ("beauty-joint", "beauty", "joint", [], ("hybrid", 256)),
    # Table 6: cosine-only vs hybrid codebook search
    ("beauty-unified-cosine", "beauty", "unified", [], ("cosine", 256)),
    # Fig. 7: ID dimensions inside d = 64 (ID dim 0 is exactly beauty-semantic: 3 code embeddings of width 64)
    *[(f"beauty-unified-id{k}", "beauty", "unified", ["--model.id_dim", str(k)], ("hybrid", 256)) for k in (4, 16)],
    # Table 7: codebook sizes
    *[(f"beauty-unified-C{c}", "beauty", "unified", [], ("hybrid", c)) for c in (64, 128, 512, 1024)],
]


def _sequences(dataset: str) -> Path:
    path = WORK / "data" / f"{dataset}.parquet"
    if not path.exists():
        src = shared("lastfm", "LastFM.txt") if dataset == "lastfm" else shared("amazon_beauty", "Beauty.txt")
        path.parent.mkdir(parents=True, exist_ok=True)
        write_table(s3rec_sequences(src)["user_sequences"], path)
    return path


def _tokens(distance: str, codebook: int) -> Path:
    out = WORK / "tokens" / f"beauty-{distance}-{codebook}"
    if not (out / "report.json").exists():
        from semrec.data.adapters import beauty_items
        from semrec.pipelines.tokenize_items import main as tokenize

        items = WORK / "data" / "beauty_items.parquet"
        if not items.exists():
            items.parent.mkdir(parents=True, exist_ok=True)
            write_table(beauty_items(shared("amazon_beauty"))["items"], items)
        emb = WORK / "tokens" / "beauty-hybrid-256" / "item_embeddings"
        source = ["--embeddings", str(emb)] if emb.exists() else ["--items", str(items), "--encoder.empty_text", "id"]
        assert tokenize([*source, "--output", str(out), "--quantizer.distance", distance,
                         "--quantizer.codebook_size", str(codebook)]) == 0
    return out


@pytest.mark.parametrize("name,dataset,mode,extra,tok", EXPERIMENTS, ids=[e[0] for e in EXPERIMENTS])
def test_experiment(benchmark, ray_local, name, dataset, mode, extra, tok):
    from semrec.pipelines.train_seqrec import main

    if tok and tok[1] != 256 or (tok and tok[0] != "hybrid"):
        _tokens("hybrid", 256)  # the embeddings every other token table reuses
    args = ["--sequences", str(_sequences(dataset)), "--output", str(WORK / "runs" / name),
            "--run_dir", str(WORK / "ray_train"), "--run_name", name, "--dataset", dataset,
            "--eval.negatives_dir", str(WORK / "negatives"), "--model.mode", mode,
            "--train.threads", os.environ.get("SEMREC_BENCH_THREADS", "2"), *extra]
    if dataset == "lastfm":
        args += ["--eval.negatives_file", str(shared("lastfm", "LastFM_sample.txt"))]
    else:
        args += ["--n_items", str(BEAUTY_ITEMS)]
    if tok:
        args += ["--tokens", str(_tokens(*tok))]
    assert benchmark.pedantic(main, args=(args,), rounds=1, iterations=1) == 0
    report = json.loads((WORK / "runs" / name / "metrics.json").read_text())
    report["experiment"] = name
    benchmark.extra_info.update({k: report[k] for k in ("metrics", "token_size", "wall_s", "best_epoch")})
    with locked_runs("seqrec", sort_keys=False) as all_reports:  # experiments may run in parallel processes
        all_reports[name] = report
        rows = [dict(r, mode=r["experiment"]) for r in all_reports.values()]
        write_result("seqrec", results_table(rows))
