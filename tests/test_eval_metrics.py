import numpy as np
import pytest
import torch

from semrec.eval.metrics import (MISS, NonFiniteScores, history_pairs, ranking_metrics, ranks_in_list,
                                 ranks_sampled, stream_full_ranking)


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


def dense_reference(users, items, targets, histories, ties="pessimistic"):
    """Plain dense computation over the whole (B, N+1) score matrix."""
    scores = users @ items.T
    t = scores.gather(1, targets[:, None])
    exclude = torch.zeros_like(scores, dtype=torch.bool)
    exclude[:, 0] = True  # padding
    for row, h in enumerate(histories):
        exclude[row, torch.as_tensor(h, dtype=torch.long)] = True
    exclude[torch.arange(len(targets)), targets] = False  # the target always competes
    better = (scores > t) if ties == "optimistic" else (scores >= t)
    better[torch.arange(len(targets)), targets] = False
    ranks = (better & ~exclude).sum(1).numpy()
    top = scores.masked_fill(exclude, float("-inf")).topk(20, dim=1)
    return ranks, top.indices.numpy(), top.values.numpy()


def test_full_ranking_by_hand_excludes_history_but_never_the_target():
    item_scores = torch.tensor([[0.0], [1.0], [5.0], [3.0], [4.0], [9.0]])  # item i scores item_scores[i]
    users = torch.ones(1, 1)
    # history: items 2 and 5 (both beat the target) and the target 3 itself, seen before
    ranks, top, _ = stream_full_ranking(users, lambda ids: item_scores[ids], 5, torch.tensor([3]),
                                        [np.array([2, 5, 3])], k=2, block=2)
    assert ranks.tolist() == [1]  # only item 4 (4.0) beats the target; 2 and 5 are excluded
    assert top.tolist() == [[4, 3]]


def test_ranks_in_a_decoded_list_with_and_without_the_history_by_hand():
    items = np.array([[7, 2, 9, 4, -1],    # target 9 at position 2; 7 and 2 seen before it
                      [5, 3, 8, -1, -1],   # target 3 at 1; it was seen too, and still competes
                      [1, 2, 6, 8, 10],    # target 11 not in the list: a miss either way
                      [4, 9, 7, 1, 3]])    # target 4 first; 9 seen after it changes nothing
    targets = np.array([9, 3, 11, 4])
    assert ranks_in_list(items, targets).tolist() == [2, 1, MISS, 0]
    seen = history_pairs([np.array([2, 7, 7]), np.array([3, 5]), np.array([1, 2]), np.array([9])])
    assert ranks_in_list(items, targets, seen).tolist() == [0, 0, MISS, 0]
    m = ranking_metrics(ranks_in_list(items, targets, seen), ks=(1,), ndcg_ks=())
    assert m["HIT@1"] == 0.75  # against 0.25 with the history in the list
    # an item id of one row's history never drops the same id from another row
    assert ranks_in_list(items[:2], targets[:2], (np.array([0, 1]), np.array([4, 7]))).tolist() == [2, 1]
    assert ranks_in_list(np.zeros((0, 5), np.int64), np.zeros(0, np.int64), seen).tolist() == []


@pytest.mark.parametrize("ties", ["pessimistic", "optimistic"])
def test_streamed_full_ranking_equals_the_dense_computation(ties):
    g = torch.Generator().manual_seed(0)
    n, b = 1000, 37
    items = torch.randn(n + 1, 8, generator=g)
    items[17] = items[18]  # a tie between two items
    users = torch.randn(b, 8, generator=g)
    targets = torch.randint(1, n + 1, (b,), generator=g)
    targets[0] = 17
    rng = np.random.default_rng(0)
    histories = [rng.integers(1, n + 1, size=rng.integers(0, 120)) for _ in range(b)]  # longer than any max_len
    histories[1] = np.append(histories[1], targets[1].item())  # a repeat: the target was seen before
    ranks, top_i, top_s = stream_full_ranking(users, lambda ids: items[ids], n, targets, histories, k=20,
                                              block=64, ties=ties)
    ref_ranks, ref_i, ref_s = dense_reference(users, items, targets, histories, ties)
    assert ranks.tolist() == ref_ranks.tolist()
    np.testing.assert_allclose(top_s, ref_s, rtol=1e-6)
    assert (top_i == ref_i).mean() > 0.99  # equal up to the order of exactly tied items


def test_non_finite_scores_raise_a_clear_error():
    users = torch.ones(2, 1)
    items = torch.tensor([[0.0], [1.0], [float("nan")], [2.0]])
    with pytest.raises(NonFiniteScores, match="non-finite"):
        stream_full_ranking(users, lambda ids: items[ids], 3, torch.tensor([1, 3]), [np.array([]), np.array([])])
    with pytest.raises(NonFiniteScores, match="evaluation row 1"):
        ranks_sampled(np.array([[0.5, 0.1], [np.nan, 0.2]]))


def test_histogram_auc_matches_the_exact_auc_and_sums_over_shards():
    from semrec.eval.metrics import auc_from_histograms, roc_auc, score_histograms

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 30_000)
    p = 1 / (1 + np.exp(-(3 * y - 1.5 + rng.normal(size=y.size) * 1.2)))  # confident, like a good CTR model
    exact = roc_auc(y, p)
    assert 0.85 < exact < 0.99
    parts = [score_histograms(y[i::3], p[i::3]) for i in range(3)]  # three shards, summed
    pos, neg = sum(a for a, _ in parts), sum(b for _, b in parts)
    assert abs(auc_from_histograms(pos, neg) - exact) < 1e-4
    assert roc_auc([0, 1, 0, 1], [0.1, 0.9, 0.5, 0.5]) == 0.875  # the tie counts one half
    assert roc_auc([1, 0], [0.2, 0.8]) == 0.0
