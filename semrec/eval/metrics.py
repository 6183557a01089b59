"""Ranking metrics (S3-Rec protocol).

rank r = 0-based position of the ground truth among the candidates. Ties between the ground
truth and other candidates are broken pessimistically by default (every tied candidate ranks
above the ground truth): optimistic tie-breaking inflates the numbers of models whose items
share representations (e.g. collided semantic IDs). HIT@k = mean[r < k],
NDCG@k = mean[(r < k) / log2(r + 2)], MRR = mean[1 / (r + 1)].
"""

from __future__ import annotations

from typing import Callable, Literal

import numpy as np
import torch

from semrec.errors import SemrecError

Ties = Literal["pessimistic", "optimistic"]


def ranks_sampled(scores: np.ndarray | torch.Tensor, ties: Ties = "pessimistic") -> np.ndarray:
    """``scores[:, 0]`` is the ground truth, ``scores[:, 1:]`` the sampled negatives."""
    s = torch.as_tensor(scores)
    check_finite(s, "sampled-candidate scores")
    target = s[:, :1]
    others = s[:, 1:]
    better = (others > target) if ties == "optimistic" else (others >= target)
    return better.sum(dim=1).cpu().numpy()


class NonFiniteScores(SemrecError):
    """The model produced NaN/inf scores (diverged training); ranking them would silently mislead."""


def check_finite(scores: torch.Tensor, what: str, row_offset: int = 0) -> None:
    if not torch.isfinite(scores).all():
        row = int((~torch.isfinite(scores)).any(dim=1).nonzero()[0, 0]) + row_offset
        raise NonFiniteScores(f"{what}: non-finite (NaN/inf) scores for evaluation row {row}; the model diverged "
                              f"(lower --train.lr, check the inputs)")


def history_pairs(histories: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(row, item) pairs of every item in each row's whole history (CSR-like, for masking)."""
    rows = np.repeat(np.arange(len(histories)), [len(h) for h in histories])
    items = np.concatenate(histories) if histories else np.zeros(0, np.int64)
    return rows.astype(np.int64), items.astype(np.int64)


@torch.no_grad()
def stream_full_ranking(users: torch.Tensor, item_vectors: Callable[[torch.Tensor], torch.Tensor], n_items: int,
                        targets: torch.Tensor | None, histories: list[np.ndarray], k: int = 20, block: int = 65_536,
                        ties: Ties = "pessimistic") -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """Rank of each target among all items 1..n_items, and each row's top-k, streaming over item blocks.

    ``users`` (B, d) user states; ``item_vectors(ids) -> (len(ids), d)``; ``histories[b]`` every item row b
    has seen, none of which competes (the target always does, even if seen before). Memory is
    O(B x (block + B + k)), never B x n_items. Returns (ranks (B,) or None without targets, top-k ids
    (B, k), top-k scores (B, k)).
    """
    b, device = users.shape[0], users.device
    t_vecs = item_vectors(targets) if targets is not None else users[:0]
    rows, items = (torch.from_numpy(a).to(device) for a in history_pairs(histories))
    if targets is not None:
        keep = items != targets[rows]  # a target seen before still competes
        rows, items = rows[keep], items[keep]
    rank = torch.zeros(b, dtype=torch.long, device=device)
    top_s = torch.full((b, k), float("-inf"), device=device)
    top_i = torch.zeros((b, k), dtype=torch.long, device=device)
    diag = torch.arange(b, device=device)
    for start in range(1, n_items + 1, block):
        end = min(start + block, n_items + 1)
        ids = torch.arange(start, end, device=device)
        # the targets' vectors ride in the same matmul as the block: an item equal to a target (collided
        # semantic IDs) then gets exactly the target's score, and pessimistic ties count it
        both = users @ torch.cat([item_vectors(ids), t_vecs]).T
        check_finite(both, f"scores of items {start}..{end - 1}")
        scores = both[:, :end - start]
        sel = (items >= start) & (items < end)
        scores[rows[sel], items[sel] - start] = float("-inf")  # seen items never compete
        if targets is not None:
            t_scores = both[diag, end - start + diag]
            better = (scores > t_scores[:, None]) if ties == "optimistic" else (scores >= t_scores[:, None])
            in_block = (targets >= start) & (targets < end)
            better[in_block.nonzero()[:, 0], targets[in_block] - start] = False  # the target does not beat itself
            rank += better.sum(dim=1)
        # the block's own top-k first, then a merge with the running top-k: temporaries stay B x 2k
        blk_s, blk_pos = scores.topk(min(k, end - start), dim=1)
        cand_s, cand_i = torch.cat([top_s, blk_s], dim=1), torch.cat([top_i, blk_pos + start], dim=1)
        top_s, pos = cand_s.topk(k, dim=1)
        top_i = cand_i.gather(1, pos)
    return (rank.cpu().numpy() if targets is not None else None), top_i.cpu().numpy(), top_s.cpu().numpy()


MISS = 10**9  # the rank of a target outside a ranked list


def ranks_in_list(items: np.ndarray, targets: np.ndarray,
                  exclude: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """0-based rank of each row's target in its ranked list ``items`` (B, k) (best first; -1 = an empty
    slot), ``MISS`` where the target is not in the list (a miss at every cut-off). With ``exclude`` = (row,
    item) pairs (``history_pairs``), those items are dropped from their row's list first, except the row's own
    target (it always competes, as in ``stream_full_ranking``): the rank among the items left. A generated
    list is then shorter than k, so metrics at cut-offs near k are a lower bound of what a full-catalogue
    ranking with the history excluded would give."""
    items, targets = np.asarray(items), np.asarray(targets)
    hit = items == targets[:, None]
    pos = hit.argmax(1)
    if exclude is not None and len(items):
        rows, seen = (np.asarray(a, dtype=np.int64) for a in exclude)
        keep = seen != targets[rows]
        base = int(max(items.max(), seen.max(initial=0))) + 1  # (row, item) as one int64 key
        keys = np.arange(len(items))[:, None] * base + items
        dropped = np.isin(keys, rows[keep] * base + seen[keep]) & (items >= 0)
        pos = pos - (dropped & (np.arange(items.shape[1]) < pos[:, None])).sum(1)
    return np.where(hit.any(1), pos, MISS)


def metric_sums(ranks: np.ndarray, ks: tuple[int, ...] = (1, 5, 10), ndcg_ks: tuple[int, ...] = (5, 10),
                prefix: str = "", mrr: bool = True) -> dict[str, float]:
    """Per-metric sums over ``ranks`` and their ``count``: what each worker of a sharded evaluation
    contributes (sums add across workers; dividing by the total count gives ``ranking_metrics``)."""
    r = np.asarray(ranks, dtype=np.float64)
    out = {f"{prefix}HIT@{k}": float(np.sum(r < k)) for k in ks}
    out.update({f"{prefix}NDCG@{k}": float(np.sum((r < k) / np.log2(r + 2))) for k in ndcg_ks})
    if mrr:
        out[f"{prefix}MRR"] = float(np.sum(1.0 / (r + 1)))
    out["count"] = float(len(r))
    return out


def ranking_metrics(ranks: np.ndarray, ks: tuple[int, ...] = (1, 5, 10), ndcg_ks: tuple[int, ...] = (5, 10),
                    prefix: str = "") -> dict[str, float]:
    r = np.asarray(ranks, dtype=np.float64)
    out = {f"{prefix}HIT@{k}": float(np.mean(r < k)) for k in ks}
    out.update({f"{prefix}NDCG@{k}": float(np.mean((r < k) / np.log2(r + 2))) for k in ndcg_ks})
    out[f"{prefix}MRR"] = float(np.mean(1.0 / (r + 1)))
    return out


# ----------------------------------------------------------------------------- CTR: AUC that shards reduce
AUC_BINS = 1 << 18


def score_histograms(labels: np.ndarray, probs: np.ndarray, bins: int = AUC_BINS) -> tuple[np.ndarray, np.ndarray]:
    """Counts of positives and negatives per probability bin: sums over shards reduce exactly, and
    ``auc_from_histograms`` gives the AUC of the union (pairs within one bin count one half)."""
    b = np.clip((np.asarray(probs, dtype=np.float64) * bins).astype(np.int64), 0, bins - 1)
    labels = np.asarray(labels) > 0.5
    return (np.bincount(b[labels], minlength=bins).astype(np.float64),
            np.bincount(b[~labels], minlength=bins).astype(np.float64))


def auc_from_histograms(pos: np.ndarray, neg: np.ndarray) -> float:
    p, n = pos.sum(), neg.sum()
    if p == 0 or n == 0:
        return float("nan")
    below = np.cumsum(neg) - neg  # negatives in lower bins
    return float((pos * (below + 0.5 * neg)).sum() / (p * n))


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Exact AUC (Mann-Whitney U with tied scores counting one half): the reference for the histogram one."""
    labels = np.asarray(labels) > 0.5
    scores = np.asarray(scores, dtype=np.float64)
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts  # 0-based rank of each distinct score's first occurrence
    ranks = first[inverse] + (counts[inverse] + 1) / 2.0  # average 1-based rank
    p, n = labels.sum(), (~labels).sum()
    return float((ranks[labels].sum() - p * (p + 1) / 2) / (p * n))
