"""The CTR family on the shared training engine (``semrec.train.engine``): LR, DCN, DeepFM, FinalMLP over
categorical feature ids (paradigm ``features``), or over (user, item) representations of a UIST Table 2
paradigm (``semrec.models.ctr.paradigms``) on click impressions (``prepare_data --format clicks``).

Rows are held in memory (CTR sample tables of the sizes we test on); each epoch's order is a permutation
keyed by (seed, epoch) and global batch k is split over the ranks, as in the sequential family. The
validation split is a fixed hash of the impression (of the row when the file has no impressions), so an
impression's candidates stay together. Evaluation is sharded by impression; AUC is reduced exactly
through score histograms (``semrec.eval.metrics.score_histograms``) and nDCG@5 is the mean over
impressions of 1 / log2(1 + rank of the click among its candidates) (pessimistic ties).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from semrec.data.ctr import CTRData, hash_split, load_ctr
from semrec.errors import InputError
from semrec.eval.metrics import NonFiniteScores, auc_from_histograms, score_histograms
from semrec.models.ctr.models import build_ctr

SPLIT_SEED = 7  # the hash split of train_data into train / valid (fixed: a changed seed is another dataset)


def split_rows(data: CTRData, fraction: float, mode: str = "hash") -> tuple[np.ndarray, np.ndarray]:
    """(train rows, valid rows). ``hash``: a hash split of the impressions (or of the rows). ``last``: for a
    hashed ``fraction`` of the users, each one's last training impression (the largest impression id, which
    ``prepare_data --format clicks`` numbers in time order per user), so validation sits, like the test, after
    the user's other impressions; users with a single training impression keep it for training."""
    if mode == "last":
        if data.impressions is None or "user" not in data.fields:
            raise InputError(f"--valid_split last needs impression ids and a user field (prepare_data --format "
                             f"clicks); this data has fields {data.fields}"
                             f"{' and no impression_id column' if data.impressions is None else ''}")
        users = data.features[:, data.fields.index("user")]
        pairs = np.unique(np.stack([users, data.impressions], axis=1), axis=0)  # (user, impression), sorted
        per_user = np.bincount(pairs[:, 0], minlength=int(users.max()) + 1)
        last = np.full(len(per_user), -1, dtype=np.int64)
        last[pairs[:, 0]] = pairs[:, 1]  # sorted by impression within a user: the last write is the largest
        held_user = np.zeros(len(per_user), dtype=bool)
        held_user[hash_split(len(per_user), fraction, SPLIT_SEED)[1]] = True
        is_held = held_user[users] & (per_user[users] >= 2) & (data.impressions == last[users])
        return np.flatnonzero(~is_held), np.flatnonzero(is_held)
    if mode != "hash":
        raise ValueError(f"unknown validation split {mode!r}: hash or last")
    if data.impressions is None:
        return hash_split(len(data), fraction, SPLIT_SEED)
    uniq, inverse = np.unique(data.impressions, return_inverse=True)
    _, held = hash_split(int(uniq.max()) + 1, fraction, SPLIT_SEED)
    is_held = np.isin(uniq, held)[inverse]
    return np.flatnonzero(~is_held), np.flatnonzero(is_held)


def ndcg_sums(impressions: np.ndarray, labels: np.ndarray, scores: np.ndarray, k: int = 5) -> tuple[float, int]:
    """(sum over impressions of nDCG@k of the click, impressions): rank = 1 + candidates of the same impression
    scoring >= the click (pessimistic ties); impressions without exactly one click are skipped."""
    if not len(impressions):
        return 0.0, 0
    uniq, inv = np.unique(impressions, return_inverse=True)
    clicks = np.bincount(inv, weights=labels, minlength=len(uniq))
    pos_score = np.full(len(uniq), np.nan)
    pos_score[inv[labels == 1]] = scores[labels == 1]
    beats = (labels == 0) & (scores >= pos_score[inv])
    rank = 1 + np.bincount(inv, weights=beats, minlength=len(uniq))
    ok = clicks == 1
    gain = np.where(rank <= k, 1.0 / np.log2(rank + 1), 0.0)
    return float(gain[ok].sum()), int(ok.sum())


EVAL_ROWS = 65_536  # rows per evaluation forward
EVAL_ELEMENTS = 1 << 21  # rows x history length per evaluation forward

class ParadigmInputs:
    """Per-row (user row, item id) of click samples and the per-user / per-item tables a paradigm reads."""

    def __init__(self, config: dict):
        from semrec.data.sequences import load_sequences
        from semrec.data.tokens import load_text_embeddings, load_token_codes, load_user_codes, load_user_vectors
        from semrec.models.ctr.paradigms import ITEM_SIDE, USER_SIDE

        spec, p = config["model_spec"], config["paradigm"]
        self.n_users, self.n_items, self.max_len = spec["n_users"], spec["n_items"], spec["encoder"]["max_len"]
        self.histories = load_sequences(config["histories"], self.n_items, 1, "a user representation").rows
        users = self.histories.user_ids
        self.assets: dict[str, torch.Tensor] = {}
        if ITEM_SIDE[p] == "tokens":
            self.assets["item_codes"] = torch.from_numpy(load_token_codes(Path(config["item_tokens"]), self.n_items,
                                                                          use_suffix=False)[0])
        if ITEM_SIDE[p] == "text":
            self.assets["text"] = torch.from_numpy(load_text_embeddings(Path(config["item_embeddings"]), self.n_items))
        if USER_SIDE[p] == "tokens":
            codes, _, _ = load_user_codes(Path(config["user_tokens"]) / "user_token_table", users)
            self.assets["user_codes"] = torch.from_numpy(codes)
        if USER_SIDE[p] == "cached":
            self.assets["z"] = torch.from_numpy(load_user_vectors(Path(config["user_tokens"]) / "user_embeddings", users))
        if p == "sim-hard" or spec.get("long", {}).get("categories"):
            from semrec.data.items import load_item_categories

            self.assets["item_categories"] = torch.from_numpy(load_item_categories(config["items"], self.n_items))
        self.needs_history = USER_SIDE[p] in ("encoder", "target")

    def batch(self, data: CTRData, rows: np.ndarray):
        from semrec.data.seqbatch import left_pad

        users = data.features[rows, 0]
        items = data.features[rows, 1] - self.n_users
        if self.needs_history:
            h = self.histories.take(users)
            hist = left_pad(h.flat, h.offsets[:-1], h.lengths, self.max_len)
        else:
            hist = np.zeros((len(rows), 0), dtype=np.int64)
        return users, items, hist, data.labels[rows]


def epoch_order(users: np.ndarray | None, n: int, seed: int, epoch: int) -> np.ndarray:
    """The rows of an epoch: a permutation keyed by (seed, epoch); with ``users`` (each row's user), the users
    in a random order and each user's rows together (in a random order among themselves)."""
    rng = np.random.default_rng([seed, epoch])
    if users is None or not n:
        return rng.permutation(n)
    rank_of = rng.permutation(int(users.max()) + 1)
    return np.lexsort((rng.permutation(n), rank_of[users]))


class CTRFamily:
    metric = "AUC"

    def __init__(self, config: dict):
        self.config, self.t = config, config["train"]
        data = load_ctr(config["train_data"], config["n_features"])
        keep, held = split_rows(data, config["valid_fraction"], config.get("valid_split", "hash"))
        self.splits = {"train": data.take(keep), "valid": data.take(held),
                       "test": load_ctr(config["test_data"], config["n_features"])}
        self.inputs = ParadigmInputs(config) if config["paradigm"] != "features" else None

    def build(self):
        if self.inputs is None:
            return build_ctr(self.config["model_spec"])
        from semrec.models.ctr.paradigms import build_paradigm

        return build_paradigm(self.config["model_spec"], self.inputs.assets)

    def _batch(self, data: CTRData, rows: np.ndarray):
        if self.inputs is None:
            return data.features[rows], data.labels[rows]
        return self.inputs.batch(data, rows)

    def batches(self, epoch: int, rank: int, world: int):
        train, gbs = self.splits["train"], self.t["batch_size"]
        order = epoch_order(train.features[:, 0] if self.t.get("group_users") else None, len(train),
                            self.t["seed"], epoch)
        for start in range(0, len(order), gbs):
            yield self._batch(train, order[start:start + gbs][rank::world])

    def empty_batch(self):
        return self._batch(self.splits["train"], np.zeros(0, dtype=np.int64))

    def size(self, batch) -> int:
        return len(batch[-1])

    @staticmethod
    def logits(model, batch) -> torch.Tensor:
        device = next(model.parameters()).device
        return model(*(torch.from_numpy(a).to(device) for a in batch[:-1]))

    def loss(self, model, batch) -> torch.Tensor:
        """Summed BCE + the embedding L2 penalty weighted by this rank's rows: after the engine's scaling by
        world / global rows and DDP's mean over ranks, that is mean BCE + penalty, however rows split."""
        y = torch.from_numpy(batch[-1]).to(next(model.parameters()).device)
        loss = F.binary_cross_entropy_with_logits(self.logits(model, batch), y, reduction="sum")
        l2 = self.config["model"]["embedding_l2"]
        if l2:  # every embedding table (feature ids, ID tables, token tables), not positions
            tables = [m.weight for name, m in model.named_modules()
                      if isinstance(m, nn.Embedding) and not name.endswith("pos")]
            loss = loss + len(y) * l2 / 2 * sum(w.pow(2).sum() for w in tables)
        return loss

    @torch.no_grad()
    def evaluate(self, model, split: str, rank: int, world: int, final: bool) -> dict:
        was = model.training
        model.eval()
        data = self.splits[split]
        if data.impressions is None:
            rows = np.arange(rank, len(data), world)
        else:  # whole impressions per rank (nDCG ranks candidates of one impression)
            rows = np.flatnonzero(data.impressions % world == rank)
        logloss, pos, neg, ndcg, imps = 0.0, 0.0, 0.0, 0.0, 0
        # rows per forward: 65,536, fewer when every row carries a history (a full-sequence model at L = 1,000
        # would otherwise hold ~10^11 activations); the metrics do not depend on the chunking
        hist_len = self.inputs.max_len if self.inputs is not None and self.inputs.needs_history else 0
        chunk = min(EVAL_ROWS, max(256, EVAL_ELEMENTS // max(1, hist_len)))
        cuts = np.arange(chunk, len(rows), chunk)
        if data.impressions is not None:  # chunks end where an impression starts: never cut one in two
            starts = np.append(np.flatnonzero(np.diff(data.impressions[rows]) != 0) + 1, len(rows))
            cuts = np.unique(starts[np.searchsorted(starts, cuts)])
        bounds = np.unique(np.concatenate([[0], cuts, [len(rows)]]))
        for a, b in zip(bounds[:-1], bounds[1:]):
            r = rows[a:b]
            logits = self.logits(model, self._batch(data, r))
            if not torch.isfinite(logits).all():
                bad = int(r[int((~torch.isfinite(logits)).nonzero()[0, 0])])
                raise NonFiniteScores(f"{split} CTR logits: non-finite (NaN/inf) for {split} row {bad}; the model "
                                      f"diverged (lower --train.lr, check the inputs)")
            y = torch.from_numpy(data.labels[r]).to(logits.device)
            logloss += float(F.binary_cross_entropy_with_logits(logits, y, reduction="sum"))
            s = torch.sigmoid(logits).cpu().numpy()
            p, n = score_histograms(data.labels[r], s)
            pos, neg = pos + p, neg + n
            if data.impressions is not None:
                g, c = ndcg_sums(data.impressions[r], data.labels[r], logits.cpu().numpy())
                ndcg, imps = ndcg + g, imps + c
        model.train(was)
        if not len(rows):
            pos, neg = score_histograms(np.zeros(0), np.zeros(0))
        return {"logloss": logloss, "pos_hist": pos, "neg_hist": neg, "ndcg5": ndcg, "impressions": imps,
                "count": len(rows)}

    def finalize(self, sums: dict, count: float) -> dict[str, float]:
        out = {"AUC": auc_from_histograms(sums["pos_hist"], sums["neg_hist"]),
               "logloss": sums["logloss"] / max(count, 1.0)}
        if sums["impressions"]:
            out["nDCG@5"] = sums["ndcg5"] / sums["impressions"]
        return out


def train_loop(config: dict) -> None:
    """Ray Train worker entry point: a CTR model on the shared engine."""
    import ray.train

    from semrec.train.engine import fit

    ctx = ray.train.get_context()
    fit(partial(CTRFamily, config), config["train"], ctx.get_world_rank(), ctx.get_world_size())
