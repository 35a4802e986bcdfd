"""Hand-computed goldens for the ranking and rating metrics."""

import math

import numpy as np
import pytest
import torch

from training.evaluation import metrics_from_ranks, ranks_from_scores, rating_metrics


def test_metrics_from_ranks_golden() -> None:
    # ranks 0, 2, 15: HR@10 = 2/3; NDCG@10 = (1/log2(2) + 1/log2(4) + 0)/3 = (1 + 0.5)/3; MRR = (1 + 1/3 + 1/16)/3
    m = metrics_from_ranks(np.array([0, 2, 15]), ks=(10, 20))
    assert m["HR@10"] == pytest.approx(2 / 3)
    assert m["NDCG@10"] == pytest.approx(0.5)
    assert m["HR@20"] == pytest.approx(1.0)
    assert m["NDCG@20"] == pytest.approx((1 + 0.5 + 1 / math.log2(17)) / 3)
    assert m["MRR"] == pytest.approx((1 + 1 / 3 + 1 / 16) / 3)


def test_rank_counts_only_eligible_items() -> None:
    # items 1..5 (0 = padding). target 3 scores 0.5; items 1 (0.9) and 4 (0.7) beat it, but item 1 is history.
    scores = torch.tensor([[9.0, 0.9, 0.1, 0.5, 0.7, 0.2]])
    assert ranks_from_scores(scores, torch.tensor([3]), [np.array([])]).tolist() == [2]
    assert ranks_from_scores(scores, torch.tensor([3]), [np.array([1])]).tolist() == [1]


def test_padding_column_is_never_ranked() -> None:
    scores = torch.tensor([[100.0, 0.1, 0.2]])
    assert ranks_from_scores(scores, torch.tensor([2]), [np.array([])]).tolist() == [0]


def test_ties_are_broken_against_the_target() -> None:
    scores = torch.zeros(1, 6)
    assert ranks_from_scores(scores, torch.tensor([2]), [np.array([])]).tolist() == [4]


def test_target_in_history_is_still_ranked() -> None:
    scores = torch.tensor([[0.0, 0.3, 0.9, 0.1]])
    assert ranks_from_scores(scores, torch.tensor([2]), [np.array([2, 1])]).tolist() == [0]


def test_nan_target_score_ranks_last() -> None:
    scores = torch.tensor([[0.0, 0.3, float("nan"), 0.1]])
    assert ranks_from_scores(scores, torch.tensor([2]), [np.array([])]).tolist() == [2]


def test_rating_metrics_golden() -> None:
    m = rating_metrics(np.array([3.0, 4.0, 5.0]), np.array([4.0, 4.0, 2.0]))
    assert m["MAE"] == pytest.approx(4 / 3)
    assert m["RMSE"] == pytest.approx(math.sqrt(10 / 3))
    with pytest.raises(ValueError):
        rating_metrics(np.array([]), np.array([]))


def test_diversity_metrics_golden() -> None:
    from training.evaluation import diversity_metrics

    # items 1, 2 point one way, items 3, 4 another (orthogonal); 5 is between
    vectors = np.array([[0, 0], [1, 0], [1, 0], [0, 1], [0, 1], [1, 1]], dtype=np.float64)
    tops = np.array([[1, 2], [1, 3]])
    out = diversity_metrics(tops, np.array([2, 0]), vectors, neighbours=1)
    assert out["ILD@2"] == pytest.approx(((1 - 1) + (1 - 0)) / 2)
    assert out["coverage@2"] == pytest.approx(3 / 5)
    assert out["repeat@2"] == pytest.approx(1 / 2)  # item 2's nearest other item is 1: half of user 0's list


def test_top_k_items_never_recommends_history_or_padding() -> None:
    from training.data.splits import Examples
    from training.evaluation import top_k_items

    ex = Examples(np.arange(2), np.array([1, 1]), [np.array([4, 3]), np.array([], dtype=np.int64)], [np.array([])] * 2)
    scores = torch.tensor([[9.0, 1, 2, 3, 4, 5], [9.0, 1, 2, 3, 4, 5]])
    tops = top_k_items(lambda b: scores[: len(b)], ex, k=2)
    assert tops.tolist() == [[5, 2], [5, 4]]
