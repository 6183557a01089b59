"""The sequential family (SASRec with id / semantic / unified / joint items) on the shared training engine
(``semrec.train.engine``): its assets (token codes, text embeddings), its rows, batches, loss and sharded
evaluation. Checkpoints, resume, early stopping and the worker group are the engine's.

Rows come from one of two sources behind one interface (``rows_source``), and every example is built by
the same code (``semrec.data.seqbatch``):

- ``memory`` (small data): every worker holds the table; an epoch's order is a permutation keyed by
  (seed, epoch), global batch k holds users ``order[kB:(k+1)B]`` and rank r takes every world-th of them,
  so the examples of a step do not depend on the number of workers; evaluation uses the frozen
  negatives file (the published protocol, e.g. LastFM's official one).
- ``stream`` (any size): the ``user_sequences`` Dataset given to ``TorchTrainer(datasets=...)``; every
  worker streams it in file order and keeps the users that hash to its rank (a deterministic split, so a
  resumed run sees exactly the batches of an uninterrupted one), shuffling them in a bounded buffer keyed
  by (seed, epoch, rank); evaluation streams its users the same way with 99 negatives hashed from
  (seed, user). No process holds the table.
"""

from __future__ import annotations

from functools import partial
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from semrec.data.seqbatch import (RowBatch, eval_examples, eval_negatives, histories, rank_rows, sample_rows,
                                  shuffled_batches, train_examples)
from semrec.data.sequences import load_sequences
from semrec.data.tokens import load_text_embeddings, load_token_codes
from semrec.errors import InputError
from semrec.eval.metrics import metric_sums, ranks_sampled, stream_full_ranking
from semrec.models.sasrec import SASRec, build_sasrec



# ----------------------------------------------------------------------------- assets
@dataclass
class Assets:
    """Per-item model inputs (sized by the catalogue, never by the users)."""

    n_items: int
    codes: np.ndarray | None = None  # (n_items + 1, L), row 0 = padding
    codebook_sizes: list[int] | None = None
    text: np.ndarray | None = None  # (n_items + 1, D)
    quantizer_dir: Path | None = None


def load_assets(cfg: dict, n_items: int) -> Assets:
    m = cfg["model"]
    assets = Assets(n_items)
    if m["mode"] in ("semantic", "unified"):
        assets.codes, assets.codebook_sizes = load_token_codes(Path(cfg["tokens"]), n_items, m["use_suffix"])
    if m["mode"] == "joint":
        assets.text = load_text_embeddings(Path(cfg.get("embeddings") or Path(cfg["tokens"]) / "item_embeddings"),
                                           n_items)
        assets.quantizer_dir = Path(cfg["tokens"]) / "quantizer"
    return assets


def build_model(cfg: dict, assets: Assets) -> SASRec:
    """The model of the settings ``cfg`` over ``assets``; ``model.config`` is what ``save_pretrained`` writes."""
    m = cfg["model"]
    spec = {"n_items": assets.n_items, "mode": m["mode"], "hidden": m["hidden"], "layers": m["layers"],
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


# ----------------------------------------------------------------------------- rows
class MemoryRows:
    """The whole table in this process, with the frozen evaluation negatives (small data)."""

    def __init__(self, config: dict):
        self.seqs = load_sequences(config["sequences"], n_items=config["n_items"])
        self.negatives = np.load(config["negatives_npy"])

    def train_batches(self, epoch: int, rank: int, world: int, batch_size: int, seed: int):
        order = np.random.default_rng([seed, epoch]).permutation(len(self.seqs))
        for start in range(0, len(order), batch_size):
            yield self.seqs.batch(order[start:start + batch_size][rank::world])

    def eval_batches(self, rank: int, world: int, size: int, fraction: float = 1.0):
        rows = np.arange(rank, len(self.seqs), world)
        rows = rows[sample_rows(self.seqs.user_ids[rows], fraction)]
        for i in range(0, len(rows), size):
            yield self.seqs.batch(rows[i:i + size]), self.negatives[rows[i:i + size]]


class StreamRows:
    """This worker's users of the ``sequences`` Dataset shard, streamed (see the module docstring)."""

    def __init__(self, config: dict):
        self.n_items, self.buffer = config["n_items"], config["train"]["shuffle_buffer"]
        self.k, self.neg_seed = config["eval"]["negatives"], config["eval"]["negatives_seed"]
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # 2 executions an epoch; the epoch line reports

    def _rows(self, rank: int, world: int, size: int):
        import ray.train

        shard = ray.train.get_dataset_shard("sequences")
        for table in shard.iter_batches(batch_size=size, batch_format="pyarrow", prefetch_batches=2):
            rows = RowBatch.from_arrow(table)
            yield rows.take(rank_rows(rows.user_ids, rank, world))

    def train_batches(self, epoch: int, rank: int, world: int, batch_size: int, seed: int):
        yield from shuffled_batches(self._rows(rank, world, 4096), -(-batch_size // world), self.buffer,
                                    np.random.default_rng([seed, epoch, rank]))

    def eval_batches(self, rank: int, world: int, size: int, fraction: float = 1.0):
        for rows in self._rows(rank, world, size):
            rows = rows.take(sample_rows(rows.user_ids, fraction))
            if len(rows):
                yield rows, eval_negatives(rows, self.k, self.n_items, self.neg_seed)


def rows_source(config: dict):
    return StreamRows(config) if config["source"] == "stream" else MemoryRows(config)


# ----------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model: SASRec, batches, split: str, max_len: int, ties: str, full_ranking: bool, device: str = "cpu",
             item_block: int = 65_536) -> dict[str, float]:
    """Metric sums over ``batches`` of (rows, sampled negatives) and their ``count``: sampled metrics (target
    + the user's negatives) and, with ``full_ranking``, the rank among all items with the user's entire
    history excluded (the target always competes), streamed over item blocks."""
    was_training = model.training
    model.eval()
    cut = 2 if split == "valid" else 1
    empty = np.zeros(0, dtype=np.int64)
    out = metric_sums(empty, ks=(1, 5, 10), ndcg_ks=(5, 10))
    if full_ranking:
        out.update(metric_sums(empty, ks=(10, 20), ndcg_ks=(10, 20), prefix="full_", mrr=False))

    def add(sums: dict, count: bool = True) -> None:  # running sums: memory stays flat however many users
        for k, v in sums.items():
            if k != "count" or count:
                out[k] += v

    for rows, negatives in batches:
        hist, targets = eval_examples(rows, max_len, split)
        h = torch.from_numpy(hist).to(device)
        cand = np.concatenate([targets[:, None], negatives], axis=1)
        add(metric_sums(ranks_sampled(model.score(h, torch.from_numpy(cand).to(device)), ties),
                        ks=(1, 5, 10), ndcg_ks=(5, 10)))
        if full_ranking:
            ranks, _, _ = stream_full_ranking(model.user_states(h), model.items, model.config["n_items"],
                                              torch.from_numpy(targets).to(device), histories(rows, cut),
                                              k=20, block=item_block, ties=ties)
            add(metric_sums(ranks, ks=(10, 20), ndcg_ks=(10, 20), prefix="full_", mrr=False), count=False)
    model.train(was_training)
    return out


# ----------------------------------------------------------------------------- the family on the engine
class SeqRecFamily:
    """SASRec with id / semantic / unified / joint items, as a family of ``semrec.train.engine``; rows from
    ``rows_source`` (memory or stream), examples and negatives from ``semrec.data.seqbatch``."""

    metric = "NDCG@10"

    def __init__(self, config: dict):
        self.config, self.t = config, config["train"]
        self.n_items, self.max_len = config["n_items"], config["model"]["max_len"]
        self.assets = load_assets(config, self.n_items)
        self.rows = rows_source(config)

    def build(self) -> SASRec:
        return build_model(self.config, self.assets)

    def batches(self, epoch: int, rank: int, world: int):
        seed = self.t["seed"]
        for rows in self.rows.train_batches(epoch, rank, world, self.t["batch_size"], seed):
            yield train_examples(rows, self.max_len, self.n_items, seed, epoch)

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
        fraction = self.config["eval"]["valid_fraction"] if split == "valid" else 1.0
        return evaluate(model, self.rows.eval_batches(rank, world, 1024, fraction), split, self.max_len, self.config["ties"],
                        final and self.config["full_ranking"], device=device)


def train_loop(config: dict) -> None:
    """Ray Train worker entry point: SASRec on the shared engine."""
    import ray.train

    from semrec.train.engine import fit

    ctx = ray.train.get_context()
    fit(partial(SeqRecFamily, config), config["train"], ctx.get_world_rank(), ctx.get_world_size())
