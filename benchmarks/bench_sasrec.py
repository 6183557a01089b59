"""SASRec training-step latency on CPU: semrec's written-out block with rand-based dropout
(`semrec.models.layers`) against the plain-PyTorch reference (`nn.TransformerEncoderLayer` +
`nn.Dropout`, which draw their masks with `bernoulli_`), same weights, Beauty's shapes: 12,101 items,
batch 256, length 50, hidden 64, 2 layers, 2 heads, dropout 0.5. Rounds alternate between the two
so the ratio is measured side by side; tests/test_sasrec.py checks the blocks compute the same thing.
"""

import resource
import time

import torch
from torch import nn

from benchlib import write_result
from semrec.models.item_repr import IDItems
from semrec.models.layers import TorchReferenceBlock
from semrec.models.sasrec import SASRec

N_ITEMS, BATCH, LENGTH, HIDDEN, HEADS, DROPOUT = 12_101, 256, 50, 64, 2, 0.5
THREADS = 2


def _models():
    torch.manual_seed(0)
    fast = SASRec(IDItems(N_ITEMS, HIDDEN), hidden=HIDDEN, layers=2, heads=HEADS, max_len=LENGTH, dropout=DROPOUT)
    ref = SASRec(IDItems(N_ITEMS, HIDDEN), hidden=HIDDEN, layers=2, heads=HEADS, max_len=LENGTH, dropout=DROPOUT)
    ref.load_state_dict(fast.state_dict())
    ref.blocks = nn.ModuleList(TorchReferenceBlock(b) for b in fast.blocks)
    ref.drop = nn.Dropout(DROPOUT)
    return fast.train(), ref.train()


def _batch(seed):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, LENGTH + 1, (BATCH, 1), generator=g)  # left-padded histories
    ids = torch.randint(1, N_ITEMS + 1, (BATCH, LENGTH), generator=g)
    ids = ids * (torch.arange(LENGTH)[None] >= LENGTH - lengths)
    pos = torch.randint(1, N_ITEMS + 1, (BATCH, LENGTH), generator=g) * (ids > 0)
    neg = torch.randint(1, N_ITEMS + 1, (BATCH, LENGTH), generator=g) * (ids > 0)
    return ids, pos, neg


def _step(model, opt, batch):
    loss = model(*batch)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


def test_training_step_latency(benchmark):
    torch.set_num_threads(THREADS)
    fast, ref = _models()
    opts = {m: torch.optim.Adam(m.parameters(), lr=1e-3) for m in (fast, ref)}
    batches = [_batch(s) for s in range(4)]
    for m in (fast, ref):  # warm-up
        for b in batches[:2]:
            _step(m, opts[m], b)
    times = {fast: [], ref: []}
    for r in range(12):
        for m in ((fast, ref) if r % 2 == 0 else (ref, fast)):
            t = time.perf_counter()
            _step(m, opts[m], batches[r % len(batches)])
            times[m].append(time.perf_counter() - t)
    benchmark.pedantic(_step, args=(fast, opts[fast], batches[0]), rounds=3, iterations=1)
    med = {m: sorted(v)[len(v) // 2] for m, v in times.items()}
    ratio = med[ref] / med[fast]
    steps_per_epoch = -(-22_363 // BATCH)  # Beauty's users
    info = {"threads": THREADS, "batch": BATCH, "length": LENGTH, "hidden": HIDDEN,
            "step_ms_semrec": round(med[fast] * 1e3, 1), "step_ms_reference": round(med[ref] * 1e3, 1),
            "speedup": round(ratio, 2), "beauty_epoch_s_semrec": round(med[fast] * steps_per_epoch, 1),
            "beauty_epoch_s_reference": round(med[ref] * steps_per_epoch, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "parameter_mb": round(sum(p.numel() for p in fast.parameters()) * 4 / 2**20, 2)}
    benchmark.extra_info.update(info)
    write_result("sasrec_step", "\n".join([
        f"SASRec training step, Beauty shapes (batch {BATCH}, length {LENGTH}, hidden {HIDDEN}, {N_ITEMS:,} items), "
        f"{THREADS} threads, median of 6 alternating rounds:", "",
        "| block | step ms | Beauty epoch s (training only) |", "|---|---|---|",
        f"| semrec `TransformerBlock` + rand dropout | {info['step_ms_semrec']} | {info['beauty_epoch_s_semrec']} |",
        f"| `nn.TransformerEncoderLayer` + `nn.Dropout` (reference) | {info['step_ms_reference']} | "
        f"{info['beauty_epoch_s_reference']} |", "", f"speed-up: {info['speedup']}x"]))
    assert ratio > 1.0, info  # the written-out block exists only because it is faster
