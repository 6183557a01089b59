"""The sequential family (SASRec with id / semantic / unified / joint items) on the shared training engine
(``semrec.train.engine``): its assets (sequences, token codes, text embeddings), its batches, loss and
sharded evaluation. Checkpoints, resume, early stopping and the worker group are the engine's.

Every worker still loads the sequence table into memory (fine at the sizes of the published datasets);
streaming it through Ray Data shards is the next step of the engine work.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from semrec.data.io import parquet_files, read_table
from semrec.data.sequences import NegativeSampler, Sequences, eval_arrays, load_sequences, train_arrays
from semrec.errors import InputError
from semrec.eval.metrics import metric_sums, ranks_sampled, stream_full_ranking
from semrec.models.sasrec import SASRec, build_sasrec
from semrec.schemas import decode_metadata



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
    """The model of the settings ``cfg`` over ``assets``; ``model.config`` is what ``save_pretrained`` writes."""
    m = cfg["model"]
    spec = {"n_items": assets.seqs.n_items, "mode": m["mode"], "hidden": m["hidden"], "layers": m["layers"],
            "heads": m["heads"], "max_len": m["max_len"], "dropout": m["dropout"],
            "id_dim": m["id_dim"] if m["mode"] in ("unified", "joint") else 0}
    if m["mode"] in ("semantic", "unified"):
        spec["codebook_sizes"] = assets.codebook_sizes
        return build_sasrec(spec, codes=torch.from_numpy(assets.codes))
    if m["mode"] == "id":
        return build_sasrec(spec)
    from semrec.quant import RQVAE, load_quantizer
    from semrec.quant.distances import resolve_distances

    q = load_quantizer(assets.quantizer_dir)
    if not isinstance(q, RQVAE):
        raise InputError(f"{assets.quantizer_dir}: joint mode needs an rqvae quantizer, found {q.kind}")
    if q.fitted_["input_dim"] != assets.text.shape[1]:
        raise InputError(f"{assets.quantizer_dir}: quantizer input dim {q.fitted_['input_dim']} != item "
                         f"embedding dim {assets.text.shape[1]}")
    names = m["distance"] or q.distance_names
    if isinstance(names, str) and "," in names:
        names = [x.strip() for x in names.split(",")]
    try:
        names = [d.name for d in resolve_distances(names, q.levels)]
    except ValueError as e:
        raise InputError(f"model.distance: {e}") from None
    spec.update({"codebook_sizes": q.codebook_sizes, "text_dim": int(assets.text.shape[1]),
                 "rqvae_hidden": list(q.params["hidden"]), "latent_dim": q.params["latent_dim"],
                 "distances": names, "beta": m["beta"]})
    return build_sasrec(spec, text=torch.from_numpy(assets.text), rqvae=q.module)


# ----------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model: SASRec, seqs: Sequences, negatives: np.ndarray, split: str, max_len: int, ties: str,
             full_ranking: bool, rows: np.ndarray | None = None, batch_size: int = 1024, device: str = "cpu",
             item_block: int = 65_536) -> dict[str, float]:
    """Metric sums over the users ``rows`` (default: all) and their ``count``: sampled metrics (target + the
    user's negatives) and, with ``full_ranking``, the rank among all items with the user's entire history
    excluded (the target always competes), streamed over item blocks."""
    was_training = model.training
    model.eval()
    rows = np.arange(len(seqs)) if rows is None else rows
    hist, targets = eval_arrays(seqs, max_len, split, rows)
    cut = 2 if split == "valid" else 1
    cand = np.concatenate([targets[:, None], negatives[rows]], axis=1)
    sampled, full = [], []
    for i in range(0, len(rows), batch_size):
        h = torch.from_numpy(hist[i:i + batch_size]).to(device)
        sampled.append(ranks_sampled(model.score(h, torch.from_numpy(cand[i:i + batch_size]).to(device)), ties))
        if full_ranking:
            tg = torch.from_numpy(targets[i:i + batch_size]).to(device)
            whole = [seqs.items[u][:-cut] for u in rows[i:i + batch_size]]
            ranks, _, _ = stream_full_ranking(model.user_states(h), model.items, seqs.n_items, tg, whole,
                                              k=20, block=item_block, ties=ties)
            full.append(ranks)
    empty = np.zeros(0, dtype=np.int64)
    out = metric_sums(np.concatenate(sampled) if sampled else empty, ks=(1, 5, 10), ndcg_ks=(5, 10))
    if full_ranking:
        out.update(metric_sums(np.concatenate(full) if full else empty, ks=(10, 20), ndcg_ks=(10, 20),
                               prefix="full_", mrr=False))
    model.train(was_training)
    return out


# ----------------------------------------------------------------------------- the family on the engine
class SeqRecFamily:
    """SASRec with id / semantic / unified / joint items, as a family of ``semrec.train.engine``.

    Each epoch's user order is a permutation keyed by (seed, epoch); global batch k holds users
    ``order[k*B:(k+1)*B]`` and their training negatives are drawn for the whole global batch from
    (seed, epoch, k), and rank r takes every world-th of its users. So every rank runs the same number
    of steps, and the examples and negatives of a step do not depend on the number of workers.
    Evaluation: rank r evaluates users r, r + world, ...
    """

    metric = "NDCG@10"

    def __init__(self, config: dict):
        self.config, self.t = config, config["train"]
        self.assets = load_assets(config)
        self.seqs = self.assets.seqs
        self.negatives = np.load(config["negatives_npy"])
        self.max_len = config["model"]["max_len"]
        self.inputs, self.targets = train_arrays(self.seqs, self.max_len)
        self.sampler = NegativeSampler(self.seqs)

    def build(self) -> SASRec:
        return build_model(self.config, self.assets)

    def batches(self, epoch: int, rank: int, world: int):
        seed, gbs = self.t["seed"], self.t["batch_size"]
        order = np.random.default_rng([seed, epoch]).permutation(len(self.seqs))
        for step, start in enumerate(range(0, len(order), gbs)):
            users = order[start:start + gbs]
            neg = self.sampler.sample(users, self.targets[users], np.random.default_rng([seed, epoch, step]))
            mine = slice(rank, None, world)
            yield self.inputs[users[mine]], self.targets[users[mine]], neg[mine]

    def empty_batch(self):
        z = np.zeros((0, self.max_len), dtype=np.int64)
        return z, z, z

    def size(self, batch) -> int:
        return int((batch[1] > 0).sum())

    def loss(self, model, batch) -> torch.Tensor:
        device = next(model.parameters()).device
        ids, pos, neg = (torch.from_numpy(a).to(device) for a in batch)
        return model(ids, pos, neg, reduction="sum")

    def evaluate(self, model, split: str, rank: int, world: int, final: bool) -> dict[str, float]:
        device = next(model.parameters()).device
        return evaluate(model, self.seqs, self.negatives, split, self.max_len, self.config["ties"],
                        final and self.config["full_ranking"], rows=np.arange(rank, len(self.seqs), world),
                        device=device)


def train_loop(config: dict) -> None:
    """Ray Train worker entry point: SASRec on the shared engine."""
    import ray.train

    from semrec.train.engine import fit

    ctx = ray.train.get_context()
    fit(SeqRecFamily(config), config["train"], ctx.get_world_rank(), ctx.get_world_size())
