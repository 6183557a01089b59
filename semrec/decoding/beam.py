"""Trie-constrained beam search over code sequences: only real items come out, each at most once.

``beam_search(trie, step, batch, beam)`` asks ``step(level, prefixes, rows)`` for the log-probabilities of the
next code of every live beam (``prefixes`` (M, level) the codes so far, ``rows`` (M,) the batch row of each
beam) and keeps, per row, the ``beam`` best children that exist in the trie. A step costs O(beams x fanout)
(the children of the live beams), not O(items). Ties break by prefix order, so results are deterministic.

``beam_search_reference`` is the plain definition the fast path is tested against: at every step each beam's
extension is checked against the whole code table (the O(N)-per-step approach of open implementations).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from semrec.decoding.trie import CodeTrie

Step = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]


def _top_per_row(rows: np.ndarray, scores: np.ndarray, tie: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best scores of each row (row ascending, score descending, ties by ``tie`` ascending).
    ``rows`` must be grouped (ascending). A linear-time partition first keeps, per row, the candidates at or
    above the row's k-th best score (ties included), so only ~k per row are sorted: O(candidates + k log k)."""
    n = len(rows)
    counts = np.bincount(rows)
    width = int(counts.max()) if n else 0
    if width > 2 * k:
        pos = np.arange(n) - np.repeat(np.cumsum(counts) - counts, counts)
        dense = np.full((len(counts), width), -np.inf)
        dense[rows, pos] = scores
        threshold = np.partition(dense, width - k, axis=1)[:, width - k]
        sub = np.flatnonzero(scores >= threshold[rows])
        return sub[_top_per_row(rows[sub], scores[sub], tie[sub], k)]
    order = np.lexsort((tie, -scores, rows))
    r = rows[order]
    first = np.searchsorted(r, r, side="left")
    rank = np.arange(len(r)) - first
    return order[rank < k]


def beam_search(trie: CodeTrie, step: Step, batch: int, beam: int) -> tuple[np.ndarray, np.ndarray]:
    """(items (batch, beam) int64, -1 where a row has fewer than ``beam`` items; scores (batch, beam) float32,
    -inf there), best first."""
    nodes = np.zeros(batch, dtype=np.int64)
    rows = np.arange(batch, dtype=np.int64)
    scores = np.zeros(batch, dtype=np.float64)
    prefixes = np.zeros((batch, 0), dtype=np.int64)
    for level in range(trie.levels):
        logp = step(level, torch.from_numpy(prefixes), torch.from_numpy(rows))
        parent, codes, child = trie.expand(nodes)
        cand = scores[parent] + logp.detach().to(torch.float64).numpy()[parent, codes]
        crow = rows[parent]
        keep = _top_per_row(crow, cand, child, beam)  # ties: prefix order (= node id)
        nodes, rows, scores = child[keep], crow[keep], cand[keep]
        prefixes = np.concatenate([prefixes[parent[keep]], codes[keep, None]], axis=1)
    items = np.full((batch, beam), -1, dtype=np.int64)
    out = np.full((batch, beam), -np.inf, dtype=np.float32)
    first = np.searchsorted(rows, rows, side="left")
    rank = np.arange(len(rows)) - first
    items[rows, rank] = trie.item_of(nodes)
    out[rows, rank] = scores
    return items, out


def beam_search_reference(item_ids: np.ndarray, codes: np.ndarray, step: Step, batch: int,
                          beam: int) -> tuple[np.ndarray, np.ndarray]:
    """The same search with every extension checked against the whole (N, L) code table."""
    codes = np.asarray(codes)
    levels, width = codes.shape[1], int(codes.max()) + 1
    results = []
    for row in range(batch):
        beams = [((), 0.0)]
        for level in range(levels):
            prefixes = torch.tensor([list(p) for p, _ in beams], dtype=torch.long).reshape(len(beams), level)
            logp = step(level, prefixes, torch.full((len(beams),), row, dtype=torch.long)).to(torch.float64)
            cands = []
            for b, (p, s) in enumerate(beams):
                for c in range(min(width, logp.shape[1])):
                    ext = p + (c,)
                    if any(tuple(int(x) for x in r[:level + 1]) == ext for r in codes):  # O(N) prefix check
                        cands.append((ext, s + float(logp[b, c])))
            cands.sort(key=lambda x: (-x[1], x[0]))
            beams = cands[:beam]
        by_codes = {tuple(int(x) for x in r): int(i) for r, i in zip(codes, item_ids)}
        results.append([(by_codes[p], s) for p, s in beams])
    items = np.full((batch, beam), -1, dtype=np.int64)
    scores = np.full((batch, beam), -np.inf, dtype=np.float32)
    for row, res in enumerate(results):
        for k, (i, s) in enumerate(res):
            items[row, k], scores[row, k] = i, s
    return items, scores
