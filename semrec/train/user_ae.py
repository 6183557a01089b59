"""The UIST user autoencoder as a family of the shared training engine (``semrec.train.engine``).

Rows: the fit sample of users written by ``tokenize_users`` (a deterministic hash sample, small by
construction), held by every worker. Users are split by a hash of their id into train, valid (early
stopping) and test (the reconstruction the job reports); an epoch's order is a permutation keyed by
(seed, epoch) and global batch k is split over the ranks, as in the other families.

Example of a user: the last ``max_len`` items, left-padded; targets are each position's item codes
(or the item id, ``target="items"``). Metric: the share of code heads predicted right (``code_acc``);
``exact``: positions whose every head is right.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import torch

from semrec.data.hashing import hash_rows
from semrec.data.seqbatch import left_pad
from semrec.data.sequences import load_sequences
from semrec.data.tokens import load_text_embeddings, load_token_codes
from semrec.models.user_ae import build_user_autoencoder

SPLIT_SALT = 11  # the train / valid / test split of the fit users (fixed: another salt is another split)


def split_users(user_ids: np.ndarray, fraction: float) -> dict[str, np.ndarray]:
    """Rows of the train / valid / test users: valid and test each ~``fraction``, by a hash of the user id."""
    u = hash_rows(np.stack([np.full(len(user_ids), SPLIT_SALT, np.int64), user_ids.astype(np.int64)], axis=1))
    cut = np.uint64(fraction * 2.0**64)
    return {"valid": np.flatnonzero(u < cut), "test": np.flatnonzero((u >= cut) & (u < cut * np.uint64(2))),
            "train": np.flatnonzero(u >= cut * np.uint64(2))}


def item_inputs(config: dict) -> tuple[np.ndarray, list[int], np.ndarray | None]:
    """(item codes (n_items + 1, K), codebook sizes, text embeddings or None) from the item tokenizer output."""
    tokens, n_items = Path(config["item_tokens"]), config["n_items"]
    codes, sizes = load_token_codes(tokens, n_items, use_suffix=False)
    text = None
    if config["model"]["item_repr"] == "text":
        text = load_text_embeddings(Path(config.get("item_embeddings") or tokens / "item_embeddings"), n_items)
    return codes, sizes, text


def model_spec(config: dict, sizes: list[int], text_dim: int | None) -> dict:
    m = config["model"]
    return {"n_items": config["n_items"], "item_repr": m["item_repr"], "codebook_sizes": sizes, "target": m["target"],
            "item_dim": int(text_dim) if text_dim is not None else m["item_dim"], "hidden": m["hidden"],
            "layers": m["layers"], "heads": m["heads"], "max_len": m["max_len"], "dropout": m["dropout"]}


class UserAEFamily:
    metric = "code_acc"

    def __init__(self, config: dict):
        self.config, self.t = config, config["train"]
        self.max_len = config["model"]["max_len"]
        self.codes, sizes, self.text = item_inputs(config)
        self.spec = model_spec(config, sizes, None if self.text is None else self.text.shape[1])
        seqs = load_sequences(config["fit_users_path"], config["n_items"], 1, "a user token")
        self.rows = seqs.rows
        self.splits = split_users(self.rows.user_ids, config["valid_fraction"])

    def build(self):
        return build_user_autoencoder(self.spec, torch.from_numpy(self.codes),
                                      None if self.text is None else torch.from_numpy(self.text))

    def examples(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        b = self.rows.take(rows)
        ids = left_pad(b.flat, b.offsets[:-1], b.lengths, self.max_len)
        return ids, (self.codes[ids] if self.spec["target"] == "codes" else ids[..., None])

    def batches(self, epoch: int, rank: int, world: int):
        train, gbs = self.splits["train"], self.t["batch_size"]
        order = train[np.random.default_rng([self.t["seed"], epoch]).permutation(len(train))]
        for start in range(0, len(order), gbs):
            yield self.examples(order[start:start + gbs][rank::world])

    def empty_batch(self):
        return self.examples(np.zeros(0, dtype=np.int64))

    def size(self, batch) -> int:
        return int((batch[0] > 0).sum())

    def loss(self, model, batch) -> torch.Tensor:
        device = next(model.parameters()).device
        ids, targets = (torch.from_numpy(a).to(device) for a in batch)
        return model(ids, targets, reduction="sum")

    @torch.no_grad()
    def evaluate(self, model, split: str, rank: int, world: int, final: bool) -> dict:
        was = model.training
        model.eval()
        device = next(model.parameters()).device
        rows = self.splits[split][rank::world]
        out = {"head_correct": 0.0, "exact": 0.0, "loss": 0.0, "count": 0}
        for i in range(0, len(rows), 1024):
            ids, targets = (torch.from_numpy(a).to(device) for a in self.examples(rows[i:i + 1024]))
            for k, v in model.reconstruction(ids, targets).items():
                out[k] += v
        model.train(was)
        return out

    def finalize(self, sums: dict, count: float) -> dict[str, float]:
        n = max(count, 1.0)
        return {"code_acc": sums["head_correct"] / n, "exact": sums["exact"] / n, "loss": sums["loss"] / n,
                "positions": count}


def train_loop(config: dict) -> None:
    """Ray Train worker entry point: the user autoencoder on the shared engine."""
    import ray.train

    from semrec.train.engine import fit

    ctx = ray.train.get_context()
    fit(partial(UserAEFamily, config), config["train"], ctx.get_world_rank(), ctx.get_world_size())
