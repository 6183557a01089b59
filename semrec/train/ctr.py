"""The CTR family (LR, DCN, DeepFM, FinalMLP over categorical feature ids) on the shared training engine
(``semrec.train.engine``). Rows are held in memory (CTR sample tables of the sizes we test on); each
epoch's order is a permutation keyed by (seed, epoch) and global batch k is split over the ranks, as
in the sequential family. Evaluation is sharded; AUC is reduced exactly through score histograms
(``semrec.eval.metrics.score_histograms``)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from semrec.data.ctr import hash_split, load_ctr
from semrec.eval.metrics import NonFiniteScores, auc_from_histograms, score_histograms
from semrec.models.ctr.layers import FeatureEmbedding
from semrec.models.ctr.models import build_ctr

SPLIT_SEED = 7  # the hash split of train_data into train / valid (fixed: a changed seed is another dataset)


class CTRFamily:
    metric = "AUC"

    def __init__(self, config: dict):
        self.config, self.t = config, config["train"]
        data = load_ctr(config["train_data"], config["n_features"])
        keep, held = hash_split(len(data), config["valid_fraction"], SPLIT_SEED)
        self.splits = {"train": data.take(keep), "valid": data.take(held),
                       "test": load_ctr(config["test_data"], config["n_features"])}

    def build(self):
        return build_ctr(self.config["model_spec"])

    def batches(self, epoch: int, rank: int, world: int):
        train, gbs = self.splits["train"], self.t["batch_size"]
        order = np.random.default_rng([self.t["seed"], epoch]).permutation(len(train))
        for start in range(0, len(order), gbs):
            mine = order[start:start + gbs][rank::world]
            yield train.features[mine], train.labels[mine]

    def empty_batch(self):
        return np.zeros((0, self.splits["train"].features.shape[1]), np.int64), np.zeros(0, np.float32)

    def size(self, batch) -> int:
        return len(batch[1])

    def loss(self, model, batch) -> torch.Tensor:
        """Summed BCE + the embedding L2 penalty weighted by this rank's rows: after the engine's scaling by
        world / global rows and DDP's mean over ranks, that is mean BCE + penalty, however rows split."""
        device = next(model.parameters()).device
        x, y = (torch.from_numpy(a).to(device) for a in batch)
        loss = F.binary_cross_entropy_with_logits(model(x), y, reduction="sum")
        l2 = self.config["model"]["embedding_l2"]
        if l2:
            tables = [m.table.weight for m in model.modules() if isinstance(m, FeatureEmbedding)]
            loss = loss + len(y) * l2 / 2 * sum(w.pow(2).sum() for w in tables)
        return loss

    @torch.no_grad()
    def evaluate(self, model, split: str, rank: int, world: int, final: bool) -> dict:
        was = model.training
        model.eval()
        data = self.splits[split]
        rows = np.arange(rank, len(data), world)
        device = next(model.parameters()).device
        logloss, pos, neg = 0.0, 0.0, 0.0
        for i in range(0, len(rows), 65_536):
            r = rows[i:i + 65_536]
            logits = model(torch.from_numpy(data.features[r]).to(device))
            if not torch.isfinite(logits).all():
                bad = int(r[int((~torch.isfinite(logits)).nonzero()[0, 0])])
                raise NonFiniteScores(f"{split} CTR logits: non-finite (NaN/inf) for {split} row {bad}; the model "
                                      f"diverged (lower --train.lr, check the inputs)")
            y = torch.from_numpy(data.labels[r]).to(device)
            logloss += float(F.binary_cross_entropy_with_logits(logits, y, reduction="sum"))
            p, n = score_histograms(data.labels[r], torch.sigmoid(logits).cpu().numpy())
            pos, neg = pos + p, neg + n
        model.train(was)
        if not len(rows):
            pos, neg = score_histograms(np.zeros(0), np.zeros(0))
        return {"logloss": logloss, "pos_hist": pos, "neg_hist": neg, "count": len(rows)}

    def finalize(self, sums: dict, count: float) -> dict[str, float]:
        return {"AUC": auc_from_histograms(sums["pos_hist"], sums["neg_hist"]),
                "logloss": sums["logloss"] / max(count, 1.0)}


def train_loop(config: dict) -> None:
    """Ray Train worker entry point: a CTR model on the shared engine."""
    import ray.train

    from semrec.train.engine import fit

    ctx = ray.train.get_context()
    fit(CTRFamily(config), config["train"], ctx.get_world_rank(), ctx.get_world_size())
