"""Amazon Beauty titles (12,101 items, bundled MiniLM embeddings): RQVAE-euclidean, RQVAE-hybrid,
ResidualKMeans and PCAKMeans side by side -- per-level utilisation, collision rate before the
suffix, reconstruction MSE, wall time. RQ-VAE rows are averaged over three seeds."""

import time

import numpy as np
import pytest
import torch

from semrec.data.adapters import beauty_items
from semrec.data.items import compose_texts
from semrec.encoders.text import SentenceEncoder
from semrec.quant import PCAKMeans, RQVAE, ResidualKMeans
from helpers import shared
from benchlib import write_result

pytestmark = [pytest.mark.slow, pytest.mark.realdata]
SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def beauty_embeddings():
    items = beauty_items(shared("amazon_beauty"))["items"]
    torch.set_num_threads(2)
    return SentenceEncoder(max_length=64, batch_size=64).encode(compose_texts(items, empty_text="id"))


def _row(make, x, seeds):
    runs = []
    for seed in seeds:
        t = time.perf_counter()
        q = make(seed).fit(x)
        wall = time.perf_counter() - t
        m = q.evaluate(x)
        runs.append({"util": [lv["utilisation"] for lv in m["levels"]],
                     "collision": m["collisions"]["collision_rate"], "largest": m["collisions"]["largest_group"],
                     "mse": m["reconstruction_mse"], "wall": wall})
    return {"util": np.mean([r["util"] for r in runs], axis=0).tolist(),
            "collision": float(np.mean([r["collision"] for r in runs])),
            "collision_range": (min(r["collision"] for r in runs), max(r["collision"] for r in runs)),
            "largest": max(r["largest"] for r in runs), "mse": float(np.mean([r["mse"] for r in runs])),
            "wall": float(np.mean([r["wall"] for r in runs])), "seeds": len(seeds)}


def test_quantizer_comparison_on_beauty(benchmark, beauty_embeddings):
    x = beauty_embeddings
    configs = {
        "RQVAE 3x256, euclidean": (lambda s: RQVAE(distance="euclidean", seed=s), SEEDS),
        "RQVAE 3x256, cosine": (lambda s: RQVAE(distance="cosine", seed=s), SEEDS),
        "RQVAE 3x256, hybrid (cos, cos, euc)": (lambda s: RQVAE(distance="hybrid", seed=s), SEEDS),
        "ResidualKMeans 3x256": (lambda s: ResidualKMeans(seed=s), SEEDS),
        "PCAKMeans 3 positions x 256 (384 -> 3 x 128 -> PCA 64)": (lambda s: PCAKMeans(positions=3, seed=s), SEEDS),
    }
    rows = {}
    for name, (make, seeds) in configs.items():
        if name.startswith("RQVAE 3x256, hybrid"):
            rows[name] = benchmark.pedantic(_row, args=(make, x, seeds), rounds=1, iterations=1)
        else:
            rows[name] = _row(make, x, seeds)
    benchmark.extra_info.update({"items": len(x), "rows": rows})
    md = [f"Amazon Beauty, {len(x):,} items, MiniLM-L6 title embeddings (d=384); mean of {len(SEEDS)} seeds; "
          "fit on all items, 2 CPU cores.", "",
          "| quantizer | utilisation per level | collision rate before suffix (min-max) | largest group "
          "| reconstruction MSE | fit wall s |", "|---|---|---|---|---|---|"]
    for name, r in rows.items():
        util = " / ".join(f"{u:.1%}" for u in r["util"])
        lo, hi = r["collision_range"]
        md.append(f"| {name} | {util} | {r['collision']:.2%} ({lo:.2%}-{hi:.2%}) | {r['largest']} | "
                  f"{r['mse']:.2e} | {r['wall']:.1f} |")
    hybrid, euclid = rows["RQVAE 3x256, hybrid (cos, cos, euc)"], rows["RQVAE 3x256, euclidean"]
    cosine = rows["RQVAE 3x256, cosine"]
    fewer = hybrid["collision"] < euclid["collision"]
    md.append(f"\nTargets: hybrid uses >= 90% of the codes at every level: "
              f"{'met' if min(hybrid['util']) >= 0.9 else 'NOT met'}; hybrid collides less than euclidean: "
              f"{'met' if fewer else 'NOT met'} ({hybrid['collision']:.2%} vs {euclid['collision']:.2%}); "
              f"hybrid collides less than cosine-only (the paper's Table 2 claim): "
              f"{'met' if hybrid['collision'] < cosine['collision'] else 'NOT met'} "
              f"({hybrid['collision']:.2%} vs {cosine['collision']:.2%}).")
    benchmark.extra_info["hybrid_collides_less_than_euclidean"] = fewer
    benchmark.extra_info["hybrid_collides_less_than_cosine"] = hybrid["collision"] < cosine["collision"]
    write_result("beauty_quantizers", "\n".join(md))
    # the utilisation target is a hard requirement; the collision comparison is reported (see README)
    assert min(hybrid["util"]) >= 0.9
