"""Acceptance on real data: Amazon Beauty titles (12,101 items) -> RQ-VAE 3x256, hybrid distance, + suffix."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from semrec.data.adapters import beauty_items
from semrec.data.io import write_table
from semrec.pipelines.tokenize_items import main
from helpers import shared

pytestmark = [pytest.mark.slow, pytest.mark.realdata]  # ~5 min on 2 cores: a benchmark-suite run, not CI


def test_beauty_every_item_gets_a_unique_code_sequence(ray_local, tmp_path):
    items = beauty_items(shared("amazon_beauty"))["items"]
    write_table(items, tmp_path / "items.parquet")
    out = tmp_path / "beauty_tokens"
    # 7 Beauty titles are empty: embed them as "item <id>" rather than failing
    code = main(["--items", str(tmp_path / "items.parquet"), "--output", str(out), "--encoder.empty_text", "id",
                 "--quantizer.kind", "rqvae", "--quantizer.levels", "3",
                 "--quantizer.codebook_size", "256", "--quantizer.distance", "hybrid"])
    assert code == 0
    t = pq.read_table(out / "token_table")
    assert t.num_rows == 12101
    keys = np.stack([t.column(c).to_numpy() for c in ("c0", "c1", "c2", "suffix")], axis=1)
    assert len(np.unique(keys, axis=0)) == 12101
    report = json.loads((out / "report.json").read_text())
    assert report["quantizer"]["distances"] == ["cosine", "cosine", "euclidean"]
    for level in report["levels"]:
        assert level["utilisation"] >= 0.9, report["levels"]
    assert report["collisions"]["collision_rate"] < 0.1
    assert report["collisions"]["largest_group"] == int(t.column("suffix").to_numpy().max()) + 1
