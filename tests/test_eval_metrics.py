import numpy as np
import pytest
import torch

from semrec.eval.metrics import ranking_metrics, ranks_full, ranks_sampled


def test_sampled_ranks_and_metrics_by_hand():
    scores = np.array([
        [0.9, 0.1, 0.2, 0.3],   # target best -> rank 0
        [0.5, 0.9, 0.1, 0.7],   # two above -> rank 2
        [0.1, 0.2, 0.3, 0.4],   # all above -> rank 3
    ])
    r = ranks_sampled(scores)
    assert r.tolist() == [0, 2, 3]
    m = ranking_metrics(r, ks=(1, 3), ndcg_ks=(3,))
    assert m["HIT@1"] == pytest.approx(1 / 3)
    assert m["HIT@3"] == pytest.approx(2 / 3)
    assert m["NDCG@3"] == pytest.approx((1 / np.log2(2) + 1 / np.log2(4)) / 3)
    assert m["MRR"] == pytest.approx((1 + 1 / 3 + 1 / 4) / 3)


def test_ties_are_pessimistic_by_default():
    scores = np.array([[0.5, 0.5, 0.5, 0.1]])  # target tied with two negatives
    assert ranks_sampled(scores).tolist() == [2]
    assert ranks_sampled(scores, ties="optimistic").tolist() == [0]
    # identical representations (collided semantic IDs) must not look perfect
    m = ranking_metrics(ranks_sampled(np.ones((4, 100))), ks=(1, 10), ndcg_ks=(10,))
    assert m["HIT@10"] == 0.0 and m["MRR"] == pytest.approx(0.01)


def test_full_ranking_excludes_history_but_never_the_target():
    scores = torch.tensor([[9.0, 1.0, 5.0, 3.0, 4.0]])  # item 0 is padding
    targets = torch.tensor([3])
    exclude = torch.tensor([[True, False, True, True, False]])  # padding, history item 2, and target 3 (seen before)
    # item 4 (4.0) beats the target (3.0); item 2 is excluded; target not excluded although in history
    exclude_no_target = exclude.clone()
    exclude_no_target[0, 3] = False
    assert ranks_full(scores, targets, exclude_no_target).tolist() == [1]
    assert ranks_full(scores, targets, None).tolist() == [3]  # 9, 5, 4 above
