"""Ranking metrics (S3-Rec protocol).

rank r = 0-based position of the ground truth among the candidates. Ties between the ground
truth and other candidates are broken pessimistically by default (every tied candidate ranks
above the ground truth): optimistic tie-breaking inflates the numbers of models whose items
share representations (e.g. collided semantic IDs). HIT@k = mean[r < k],
NDCG@k = mean[(r < k) / log2(r + 2)], MRR = mean[1 / (r + 1)].
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

Ties = Literal["pessimistic", "optimistic"]


def ranks_sampled(scores: np.ndarray | torch.Tensor, ties: Ties = "pessimistic") -> np.ndarray:
    """``scores[:, 0]`` is the ground truth, ``scores[:, 1:]`` the sampled negatives."""
    s = torch.as_tensor(scores)
    target = s[:, :1]
    others = s[:, 1:]
    better = (others > target) if ties == "optimistic" else (others >= target)
    return better.sum(dim=1).cpu().numpy()


def ranks_full(scores: torch.Tensor, targets: torch.Tensor, exclude: torch.Tensor | None = None,
               ties: Ties = "pessimistic") -> np.ndarray:
    """Rank of ``targets`` among all items. ``exclude`` (bool, same shape as scores) marks items that
    never compete (padding id 0, items already in the user's history); the target itself never does."""
    s = scores.clone()
    if exclude is not None:
        s = s.masked_fill(exclude, float("-inf"))
    t = s.gather(1, targets[:, None])
    better = (s > t) if ties == "optimistic" else (s >= t)
    better.scatter_(1, targets[:, None], False)
    if exclude is not None:
        better &= ~exclude
    return better.sum(dim=1).cpu().numpy()


def ranking_metrics(ranks: np.ndarray, ks: tuple[int, ...] = (1, 5, 10), ndcg_ks: tuple[int, ...] = (5, 10),
                    prefix: str = "") -> dict[str, float]:
    r = np.asarray(ranks, dtype=np.float64)
    out = {f"{prefix}HIT@{k}": float(np.mean(r < k)) for k in ks}
    out.update({f"{prefix}NDCG@{k}": float(np.mean((r < k) / np.log2(r + 2))) for k in ndcg_ks})
    out[f"{prefix}MRR"] = float(np.mean(1.0 / (r + 1)))
    return out
