"""TIGER-style generative retrieval on Amazon Beauty (issue 12): full-catalogue Recall / NDCG from the trained
model, next to TIGER's published Beauty numbers and semrec's SASRec `id` full ranking on the same S3-Rec
leave-one-out split (bench_seqrec's run, read from results/seqrec.json). Two protocols from one decoded list:
TIGER's (nothing dropped) against TIGER, and with each user's earlier items dropped from the list (SASRec's full
ranking excludes the history) against SASRec.

Inputs are bench_seqrec's: out/bench_seqrec/data/beauty.parquet and the hybrid RQ-VAE 3 x 256 token table
out/bench_seqrec/tokens/beauty-hybrid-256 (codes + collision suffix = 4 tokens per item); run bench_seqrec's
Beauty token step first. On 2 CPU cores the budget is `EPOCHS` epochs of ~514 steps, in-process, batches grouped
by history length, warm-up + cosine learning rate (TIGER trains ~200k steps of 256 on a GPU, d = 128 with 4 + 4
layers; here d = 64 with 2 + 2, ~20k steps), so this is a floor of what the model does, not a reproduction
(97 min on 2 cores):

    pytest benchmarks/bench_generative.py -s
"""

import json
from pathlib import Path

import pytest
from benchlib import RESULTS, write_result

from semrec.pipelines.train_generative import main

pytestmark = [pytest.mark.slow, pytest.mark.realdata]
SEQ = Path("out/bench_seqrec")
WORK = Path("out/bench_generative")
EPOCHS = 40
COLS = ("Recall@5", "Recall@10", "Recall@20", "NDCG@5", "NDCG@10", "NDCG@20")
TIGER = {"Recall@5": 0.0454, "Recall@10": 0.0648, "NDCG@5": 0.0321, "NDCG@10": 0.0384}


def _evaluate_published(out: Path, n_items: int, data: Path, tokens: Path) -> dict:
    """Test metrics of the model a run published in ``out``, evaluated in this process."""
    from semrec.models.generative import from_pretrained
    from semrec.train.generative import GenerativeFamily

    cfg = json.loads((out / "effective_config.json").read_text())
    cfg.update({"n_items": n_items, "sequences": str(data), "tokens": str(tokens)})
    sums = GenerativeFamily(cfg).evaluate(from_pretrained(out / "model"), "test", 0, 1, True)
    return {k: v / sums["count"] for k, v in sums.items() if k != "count"}


def test_tiger_style_on_beauty(benchmark, ray_local):
    data, tokens = SEQ / "data" / "beauty.parquet", SEQ / "tokens" / "beauty-hybrid-256"
    if not (data.exists() and (tokens / "token_table").exists()):
        pytest.skip(f"run bench_seqrec's Beauty data and token steps first ({data}, {tokens})")
    out = WORK / "beauty"
    args = ["--sequences", str(data), "--tokens", str(tokens), "--dataset", "beauty", "--output", str(out),
            "--overwrite", "--run_dir", str(WORK / "ray_train"), "--run_name", "beauty-tiger",
            "--train.epochs", str(EPOCHS), "--train.batch_size", "256", "--train.lr", "3e-3", "--train.patience", "6",
            "--train.lr_schedule", "cosine", "--train.warmup_steps", "300", "--train.group_by_length", "50",
            "--train.num_workers", "0", "--train.threads", "2",
            "--eval.beam", "20", "--eval.valid_fraction", "0.2", "--model.max_items", "20", "--model.dim", "64",
            "--model.heads", "4", "--model.ffn", "256", "--model.encoder_layers", "2", "--model.decoder_layers", "2"]
    if not (out / "metrics.json").exists():
        benchmark.pedantic(lambda: main(args), rounds=1, iterations=1)
    report = json.loads((out / "metrics.json").read_text())
    m = {k[5:]: v for k, v in report["metrics"].items() if k.startswith("test_")}
    if "nohist_Recall@10" not in m:  # published before the history-excluded metrics: evaluate its model again
        again = _evaluate_published(out, report["items"], data, tokens)
        assert again["Recall@10"] == pytest.approx(m["Recall@10"])  # the same model, the same TIGER-protocol numbers
        m.update({k: v for k, v in again.items() if k.startswith("nohist_")})
    benchmark.extra_info.update(m)
    sas = json.loads((RESULTS / "seqrec.json").read_text()) if (RESULTS / "seqrec.json").exists() else {}
    sid = next((r["metrics"] for k, r in sas.items() if k.startswith("beauty-id")), {})
    lines = [f"Beauty, leave-one-out, full catalogue ({report['items']:,} items, {report['users']:,} users); "
             f"TIGER-style encoder-decoder ({report['params']:,} parameters), {report['epochs_run']} epochs on 2 CPU "
             f"cores (best {report['best_epoch'] + 1}), beam {report['beam']} through the code trie.", "",
             "| model | Recall@5 | Recall@10 | Recall@20 | NDCG@5 | NDCG@10 | NDCG@20 |", "|---|---|---|---|---|---|---|",
             *(f"| semrec TIGER-style{label} (measured) | " + " | ".join(f"{m[p + k]:.4f}" for k in COLS) + " |"
               for label, p in (("", ""), (", history excluded", "nohist_")) if p + COLS[0] in m),
             f"| TIGER (paper, Table) | {TIGER['Recall@5']} | {TIGER['Recall@10']} | - | {TIGER['NDCG@5']} | "
             f"{TIGER['NDCG@10']} | - |"]
    if sid:
        lines.append(f"| semrec SASRec id, full ranking, history excluded (bench_seqrec) | - | "
                     f"{sid.get('test_full_HIT@10', float('nan')):.4f} | {sid.get('test_full_HIT@20', float('nan')):.4f} | - | "
                     f"{sid.get('test_full_NDCG@10', float('nan')):.4f} | {sid.get('test_full_NDCG@20', float('nan')):.4f} |")
    write_result("generative_beauty", "\n".join(lines))
