"""SASRec training on Ray Train with per-epoch checkpoints, early stopping and resume.

Every worker loads the (small) sequence table itself and trains on its shard of users
(``users[rank::world]``); gradients are averaged by DDP (gloo on CPU, NCCL on GPU). Validation runs on
every worker over all users (identical weights give identical metrics, so early stopping agrees);
rank 0 reports a checkpoint per epoch: model, optimizer, torch RNG state, epoch, best metric and
the best model so far. Shuffling and negatives are drawn from generators keyed by (seed, epoch), so
a run resumed from a checkpoint replays exactly what an uninterrupted run would have done.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from semrec.data.io import parquet_files, read_table
from semrec.data.sequences import NegativeSampler, Sequences, eval_arrays, load_sequences, train_arrays
from semrec.errors import InputError
from semrec.eval.metrics import ranking_metrics, ranks_sampled, stream_full_ranking
from semrec.models.item_repr import IDItems, JointSemanticItems, SemanticItems, UnifiedItems
from semrec.models.sasrec import SASRec
from semrec.schemas import decode_metadata

log = logging.getLogger("semrec.train")
STATE_FILE = "state.pt"
META_FILE = "checkpoint.json"


# ----------------------------------------------------------------------------- assets
@dataclass
class Assets:
    seqs: Sequences
    codes: np.ndarray | None = None  # (n_items + 1, L), row 0 = padding
    codebook_sizes: list[int] | None = None
    text: np.ndarray | None = None  # (n_items + 1, D)
    quantizer_dir: Path | None = None


def load_token_codes(tokens: Path, n_items: int, use_suffix: bool) -> tuple[np.ndarray, list[int]]:
    files = parquet_files(Path(tokens) / "token_table", "token table")
    meta = decode_metadata(pq.read_schema(files[0]))
    sizes = list(meta.get("codebook_sizes") or [])
    for f in files[1:]:
        if decode_metadata(pq.read_schema(f)).get("codebook_sizes") != sizes:
            raise InputError(f"{f}: codebook sizes differ from {files[0]} ({sizes}): mixed token tables")
    if not sizes:
        raise InputError(f"{files[0]}: no semrec.codebook_sizes metadata (not a semrec token table)")
    t = read_table(files, "token table")
    ids = t.column("item_id").to_numpy()
    cols = [f"c{j}" for j in range(len(sizes))]
    if use_suffix:
        cols.append("suffix")
        sizes = sizes + [int(t.column("suffix").to_numpy().max()) + 1]
    codes = np.zeros((n_items + 1, len(cols)), dtype=np.int64)
    covered = np.zeros(n_items + 1, dtype=bool)
    keep = (ids >= 1) & (ids <= n_items)
    for j, c in enumerate(cols):
        codes[ids[keep], j] = t.column(c).to_numpy()[keep]
    covered[ids[keep]] = True
    missing = np.flatnonzero(~covered[1:]) + 1
    if len(missing):
        raise InputError(f"{tokens}/token_table does not cover {len(missing)} of the {n_items} items "
                         f"(e.g. item ids {missing[:5].tolist()})")
    for j, size in enumerate(sizes):
        if codes[:, j].max() >= size:
            raise InputError(f"{tokens}/token_table: column {cols[j]} has code {codes[:, j].max()} >= "
                             f"codebook size {size} from its metadata")
    return codes, sizes


def load_text_embeddings(path: Path, n_items: int) -> np.ndarray:
    files = parquet_files(path, "item embeddings")
    t = read_table(files, "item embeddings")
    ids = t.column("item_id").to_numpy()
    col = t.column("embedding").combine_chunks()
    x = col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), col.type.list_size).astype(np.float32)
    out = np.zeros((n_items + 1, x.shape[1]), dtype=np.float32)
    covered = np.zeros(n_items + 1, dtype=bool)
    keep = (ids >= 1) & (ids <= n_items)
    out[ids[keep]] = x[keep]
    covered[ids[keep]] = True
    missing = np.flatnonzero(~covered[1:]) + 1
    if len(missing):
        raise InputError(f"{path} does not cover item ids {missing[:5].tolist()}")
    return out


def load_assets(cfg: dict) -> Assets:
    seqs = load_sequences(cfg["sequences"], n_items=cfg.get("n_items"))
    m = cfg["model"]
    assets = Assets(seqs)
    if m["mode"] in ("semantic", "unified"):
        assets.codes, assets.codebook_sizes = load_token_codes(Path(cfg["tokens"]), seqs.n_items, m["use_suffix"])
    if m["mode"] == "joint":
        assets.text = load_text_embeddings(Path(cfg.get("embeddings") or Path(cfg["tokens"]) / "item_embeddings"),
                                           seqs.n_items)
        assets.quantizer_dir = Path(cfg["tokens"]) / "quantizer"
    return assets


def build_model(cfg: dict, assets: Assets) -> SASRec:
    m = cfg["model"]
    n, d = assets.seqs.n_items, m["hidden"]
    if m["mode"] == "id":
        items = IDItems(n, d)
    elif m["mode"] == "semantic":
        items = SemanticItems(torch.from_numpy(assets.codes), assets.codebook_sizes, d)
    elif m["mode"] == "unified":
        items = UnifiedItems(SemanticItems(torch.from_numpy(assets.codes), assets.codebook_sizes, d - m["id_dim"]),
                             n, m["id_dim"])
    else:
        from semrec.quant import RQVAE, load_quantizer
        from semrec.quant.distances import resolve_distances

        q = load_quantizer(assets.quantizer_dir)
        if not isinstance(q, RQVAE):
            raise InputError(f"{assets.quantizer_dir}: joint mode needs an rqvae quantizer, found {q.kind}")
        if q.fitted_["input_dim"] != assets.text.shape[1]:
            raise InputError(f"{assets.quantizer_dir}: quantizer input dim {q.fitted_['input_dim']} != item "
                             f"embedding dim {assets.text.shape[1]}")
        spec = m["distance"] or q.distance_names
        if isinstance(spec, str) and "," in spec:
            spec = [x.strip() for x in spec.split(",")]
        try:
            dist = resolve_distances(spec, q.levels)
        except ValueError as e:
            raise InputError(f"model.distance: {e}") from None
        items = UnifiedItems(JointSemanticItems(torch.from_numpy(assets.text), q.module, dist, d - m["id_dim"],
                                                beta=m["beta"]), n, m["id_dim"])
    return SASRec(items, hidden=d, layers=m["layers"], heads=m["heads"], max_len=m["max_len"], dropout=m["dropout"])


# ----------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model: SASRec, seqs: Sequences, negatives: np.ndarray, split: str, max_len: int, ties: str,
             full_ranking: bool, batch_size: int = 1024, device: str = "cpu",
             item_block: int = 65_536) -> dict[str, float]:
    """Sampled metrics (target + its user's negatives) and, with ``full_ranking``, the rank among all items
    with each user's entire history excluded (the target always competes), streamed over item blocks."""
    model.eval()
    hist, targets = eval_arrays(seqs, max_len, split)
    cut = 2 if split == "valid" else 1
    cand = np.concatenate([targets[:, None], negatives], axis=1)
    sampled, full = [], []
    for i in range(0, len(hist), batch_size):
        h = torch.from_numpy(hist[i:i + batch_size]).to(device)
        sampled.append(ranks_sampled(model.score(h, torch.from_numpy(cand[i:i + batch_size]).to(device)), ties))
        if full_ranking:
            tg = torch.from_numpy(targets[i:i + batch_size]).to(device)
            whole = [s[:-cut] for s in seqs.items[i:i + batch_size]]
            ranks, _, _ = stream_full_ranking(model.user_states(h), model.items, seqs.n_items, tg, whole,
                                              k=20, block=item_block, ties=ties)
            full.append(ranks)
    out = ranking_metrics(np.concatenate(sampled), ks=(1, 5, 10), ndcg_ks=(5, 10))
    if full_ranking:
        out.update(ranking_metrics(np.concatenate(full), ks=(10, 20), ndcg_ks=(10, 20), prefix="full_"))
        out.pop("full_MRR")
    model.train()
    return out


# ----------------------------------------------------------------------------- Ray Train loop
def _unwrap(model):
    return model.module if hasattr(model, "module") else model


def _state_dict(model) -> dict:
    return {k: v.detach().cpu().clone() for k, v in _unwrap(model).state_dict().items()}


def train_loop(config: dict) -> None:
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    t = config["train"]
    torch.set_num_threads(t["threads"])
    torch.manual_seed(t["seed"])
    assets = load_assets(config)
    seqs = assets.seqs
    negatives = np.load(config["negatives_npy"])
    max_len = config["model"]["max_len"]
    model = build_model(config, assets)
    model = ray.train.torch.prepare_model(model) if world > 1 else model.to(ray.train.torch.get_device())
    device = next(model.parameters()).device
    opt = torch.optim.Adam(model.parameters(), lr=t["lr"], betas=(0.9, 0.999), weight_decay=t["weight_decay"])
    start, best, best_epoch, bad, best_state = 0, -1.0, -1, 0, None
    clock, prior_s = time.perf_counter(), 0.0  # training time summed over every process of a resumed run

    ckpt = ray.train.get_checkpoint()
    if ckpt:
        with ckpt.as_directory() as d:
            state = torch.load(Path(d) / STATE_FILE, weights_only=True)
        _unwrap(model).load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        start, best, best_epoch, bad = state["epoch"] + 1, state["best"], state["best_epoch"], state["bad"]
        best_state = state["best_model"]
        prior_s = float(state.get("train_s", 0.0))

    inputs, targets = train_arrays(seqs, max_len)
    sampler = NegativeSampler(seqs)
    local_bs = max(1, t["batch_size"] // world)
    for epoch in range(start, t["epochs"]):
        rng = np.random.default_rng([t["seed"], epoch])
        order = rng.permutation(len(seqs))[rank::world]
        steps = math.ceil(len(order) / local_bs)
        if t["max_steps_per_epoch"]:
            steps = min(steps, t["max_steps_per_epoch"])
        total = 0.0
        model.train()
        for step in range(steps):
            users = order[step * local_bs:(step + 1) * local_bs]
            pos = targets[users]
            neg = sampler.sample(users, pos, np.random.default_rng([t["seed"], epoch, rank, step]))
            batch = [torch.from_numpy(a).to(device) for a in (inputs[users], pos, neg)]
            loss = model(*batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item()
        metrics = evaluate(_unwrap(model), seqs, negatives, "valid", max_len, config["ties"], False, device=device)
        metrics = {f"valid_{k}": v for k, v in metrics.items()}
        metrics.update({"epoch": epoch, "train_loss": total / max(steps, 1)})
        score = metrics["valid_NDCG@10"]
        if score > best:
            best, best_epoch, bad, best_state = score, epoch, 0, _state_dict(model)
        else:
            bad += 1
        metrics.update({"best_valid_NDCG@10": best, "best_epoch": best_epoch})
        stop = bad >= t["patience"] or epoch == t["epochs"] - 1
        if stop:  # final metrics of the best epoch's weights, on a copy (the checkpoint keeps the live state)
            best_model = copy.deepcopy(_unwrap(model))
            best_model.load_state_dict(best_state)
            test = evaluate(best_model, seqs, negatives, "test", max_len, config["ties"], config["full_ranking"],
                            device=device)
            valid = evaluate(best_model, seqs, negatives, "valid", max_len, config["ties"],
                             config["full_ranking"], device=device)
            metrics.update({f"test_{k}": v for k, v in test.items()})
            metrics.update({f"final_valid_{k}": v for k, v in valid.items()})
            metrics["done"] = True
        train_s = prior_s + time.perf_counter() - clock
        metrics["train_s"] = round(train_s, 1)
        with tempfile.TemporaryDirectory() as d:
            checkpoint = None
            if rank == 0:
                torch.save({"model": _state_dict(model), "optimizer": opt.state_dict(), "torch_rng": torch.get_rng_state(),
                            "epoch": epoch, "best": best, "best_epoch": best_epoch, "bad": bad,
                            "best_model": best_state, "train_s": train_s}, Path(d) / STATE_FILE)
                (Path(d) / META_FILE).write_text(json.dumps({"epoch": epoch, "done": stop, **{
                    k: v for k, v in metrics.items() if isinstance(v, (int, float))}}))
                checkpoint = ray.train.Checkpoint.from_directory(d)
            ray.train.report(metrics, checkpoint=checkpoint)
        if stop:
            break

