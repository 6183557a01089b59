"""Full-ranking evaluation at 1M items: the streamed top-k / rank (semrec.eval.metrics.stream_full_ranking)
against the dense batch x N score matrix, side by side in one run: peak memory above the baseline and
time. (Equality with the dense computation is tested in tests/test_eval_metrics.py.)"""

import gc
import time

import numpy as np
import psutil
import torch

from semrec.eval.metrics import stream_full_ranking
from benchlib import PeakRSS, write_result

N_ITEMS, D, BATCH, BLOCK, K = 1_000_000, 64, 1024, 65_536, 20
MB = 1024 ** 2


def dense(users, items, targets, histories):
    scores = users @ items.T  # (BATCH, N + 1): the matrix the streamed path never builds
    t = scores.gather(1, targets[:, None])
    for row, h in enumerate(histories):
        scores[row, torch.from_numpy(h)] = float("-inf")
    scores[:, 0] = float("-inf")
    scores[torch.arange(len(targets)), targets] = t[:, 0]
    ranks = (scores >= t).sum(1) - 1
    top = scores.topk(K, dim=1)
    return ranks.numpy(), top.indices.numpy()


def measure(fn):
    gc.collect()
    base = psutil.Process().memory_info().rss
    with PeakRSS(interval=0.005, children=False) as peak:
        t0 = time.perf_counter()
        out = fn()
        secs = time.perf_counter() - t0
    return out, (peak.peak_single - base) / MB, secs


def test_streamed_full_ranking_memory_at_1m_items(benchmark):
    g = torch.Generator().manual_seed(0)
    items = torch.randn(N_ITEMS + 1, D, generator=g)
    users = torch.randn(BATCH, D, generator=g)
    targets = torch.randint(1, N_ITEMS + 1, (BATCH,), generator=g)
    rng = np.random.default_rng(0)
    histories = [rng.integers(1, N_ITEMS + 1, size=30) for _ in range(BATCH)]
    lookup = lambda ids: items[ids]  # noqa: E731
    (s_ranks, s_top, _), s_mb, s_s = measure(
        lambda: stream_full_ranking(users, lookup, N_ITEMS, targets, histories, k=K, block=BLOCK))
    (_, q_top, _), q_mb, q_s = measure(  # a quarter of the catalogue: the streamed peak does not depend on N
        lambda: stream_full_ranking(users, lookup, N_ITEMS // 4, None, histories, k=K, block=BLOCK))
    (d_ranks, d_top), d_mb, d_s = measure(lambda: dense(users, items, targets, histories))
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    assert (s_ranks == d_ranks).all()  # random floats: no ties, so the dense ranks are the same numbers
    bound_mb = BATCH * (BLOCK + BATCH + K) * 4 / MB  # one float32 score block (+ the targets' columns + top-k)
    dense_mb = BATCH * (N_ITEMS + 1) * 4 / MB
    info = {"items": N_ITEMS, "batch": BATCH, "block": BLOCK, "streamed_peak_mb": round(s_mb, 1),
            "streamed_s": round(s_s, 2), "streamed_quarter_catalogue_peak_mb": round(q_mb, 1),
            "dense_peak_mb": round(d_mb, 1), "dense_s": round(d_s, 2),
            "block_bound_mb (formula)": round(bound_mb, 1), "dense_matrix_mb (formula)": round(dense_mb, 1)}
    benchmark.extra_info.update(info)
    write_result("full_ranking", "\n".join([
        f"Full ranking of {BATCH:,} users against {N_ITEMS:,} items (d={D}), {torch.get_num_threads()} threads; "
        "peak RSS above the baseline, measured:", "",
        "| path | peak memory (MB) | seconds |", "|---|---|---|",
        f"| streamed, blocks of {BLOCK:,} | {s_mb:,.0f} | {s_s:.2f} |",
        f"| streamed, a quarter of the items ({N_ITEMS // 4:,}) | {q_mb:,.0f} | {q_s:.2f} |",
        f"| dense batch x N matrix | {d_mb:,.0f} | {d_s:.2f} |", "",
        f"Formula: one score block is {bound_mb:,.0f} MB; the dense matrix {dense_mb:,.0f} MB (the dense path's "
        "peak adds the comparison mask and top-k buffers of that size)."]))
    # a few block-sized temporaries (the score block, its comparison mask, top-k's buffers), whatever N is
    assert s_mb < 6 * bound_mb and s_mb < 1.5 * max(q_mb, bound_mb) and s_mb < d_mb / 5
