"""DSS's intent-aware merge rules (training/models/dss.py ``intent_lists``, ``merged_scores``), the validation
choice among them (training/train_dss.py ``choose_merge``) and the scorer every rule is evaluated with."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from training.data.splits import leave_one_out
from training.data.synthetic import planted_intents, synthetic_interactions
from training.evaluation import evaluate_ranking, top_k_items
from training.models.dss import MERGES, DSSConfig, intent_lists, merged_scores
from training.train_dss import DSSArgs, choose_merge, merge_scorer, train_dss


def _two_intents() -> tuple[torch.Tensor, torch.Tensor]:
    """One user, K = 3 intents over 40 candidates: intent 0 prefers 1..19 (descending), intent 1 prefers 20..39,
    intent 2 (presence below lam) likes 0; presence 0.7 / 0.25 / 0.05. Intent 0 scores above intent 1 on
    every candidate, so the max rule gives intent 0's items only."""
    s = torch.full((1, 3, 40), -10.0)
    s[0, 0, 1:20] = torch.arange(19, 0, -1, dtype=torch.float32) + 100  # 101..119
    s[0, 1, 20:40] = torch.arange(20, 0, -1, dtype=torch.float32)  # 1..20
    s[0, 2, 0] = 1000.0
    return s, torch.tensor([[0.7, 0.25, 0.05]])


def test_max_lets_the_dominant_intent_fill_the_list_and_quota_shares_it_by_presence() -> None:
    s, pi = _two_intents()
    assert set(intent_lists(s, pi, "max", 0.1, 10)[0].tolist()) <= set(range(20)) | {0}
    quota = intent_lists(s, pi, "quota", 0.1, 10)[0].tolist()
    # Sainte-Lague on 0.7 / 0.25 (intent 2 is below lam): 7 + 3 slots, the strongest intent first
    assert sum(1 <= i < 20 for i in quota) == 7 and sum(20 <= i < 40 for i in quota) == 3
    assert quota[0] == 1 and 0 not in quota and len(set(quota)) == 10
    assert quota[:4] == [1, 20, 2, 3]  # slot by slot: 0.7/1, 0.25/1, 0.7/3, 0.7/5 (> 0.25/3)
    rr = intent_lists(s, pi, "round-robin", 0.1, 10)[0].tolist()
    assert rr[:4] == [1, 20, 2, 21] and len(set(rr)) == 10  # turns, strongest intent first


def test_an_intent_whose_best_items_were_taken_moves_on_without_repeats() -> None:
    s = torch.zeros(1, 2, 12)
    s[0, 0] = torch.arange(12, 0, -1, dtype=torch.float32)  # both intents rank 0, 1, 2, ... alike
    s[0, 1] = torch.arange(12, 0, -1, dtype=torch.float32)
    out = intent_lists(s, torch.tensor([[0.5, 0.5]]), "round-robin", 0.1, 10)[0].tolist()
    assert out == list(range(10))


def test_merged_scores_rank_the_list_first_then_the_rest_by_max_and_never_list_an_excluded_item() -> None:
    s, pi = _two_intents()
    excluded = torch.zeros(1, 40, dtype=torch.bool)
    excluded[0, [0, 2]] = True  # padding and a seen item
    scores = merged_scores(s, pi, "quota", 0.1, excluded, length=10)
    lists = intent_lists(s.masked_fill(excluded[:, None], -torch.inf), pi, "quota", 0.1, 10)
    order = scores[0].argsort(descending=True).tolist()
    assert order[:10] == lists[0].tolist() and 2 not in order[:10]
    rest = [i for i in order[10:] if not excluded[0, i]]
    best = s[0].max(dim=0).values
    assert all(best[a] >= best[b] for a, b in itertools.pairwise(rest))  # beyond the list: max order
    torch.testing.assert_close(merged_scores(s, pi, "max", 0.1, excluded), best[None])


def test_choose_merge_takes_the_best_valid_ndcg_among_the_rules_more_diverse_than_the_reference() -> None:
    valid = {
        "max": {"NDCG@10": 0.05, "ILD@10": 0.50, "coverage@10": 0.30},
        "weighted": {"NDCG@10": 0.04, "ILD@10": 0.58, "coverage@10": 0.20},
        "quota": {"NDCG@10": 0.045, "ILD@10": 0.60, "coverage@10": 0.45},
        "round-robin": {"NDCG@10": 0.03, "ILD@10": 0.65, "coverage@10": 0.50},
    }
    assert choose_merge(valid, {"ILD@10": 0.55, "coverage@10": 0.40}) == "quota"
    assert choose_merge(valid, {"ILD@10": 0.90, "coverage@10": 0.40}) == "max"  # none beats it: best NDCG
    assert choose_merge(valid, None) == "max"
    with pytest.raises(ValueError, match="no merge rule"):
        choose_merge({}, None)


def test_a_bad_intent_score_is_refused() -> None:
    with pytest.raises(ValueError, match="intent_score must be one of"):
        DSSConfig(n_items=5, intent_score="mean")


def test_every_rule_scores_a_trained_model_and_quota_spreads_the_top_10_over_more_items() -> None:
    torch.set_num_threads(1)
    data, _ = planted_intents()
    split = leave_one_out(data, "shop")
    common = {"epochs": 3, "patience": 3, "dim": 32, "layers": 1, "max_len": 16, "lr": 1e-2, "negatives": 0}
    model, _, plain = train_dss(split, DSSArgs(**common))  # type: ignore[arg-type]
    model.eval()
    metrics = {rule: evaluate_ranking(merge_scorer(model, 16, rule), split.test) for rule in MERGES}
    # the max rule through the merge scorer is the trainer's own scorer
    assert metrics["max"] == pytest.approx(evaluate_ranking(plain, split.test), abs=1e-6)
    tops = {rule: top_k_items(merge_scorer(model, 16, rule), split.test) for rule in ("max", "quota")}
    for rule, top in tops.items():
        assert all(len(set(row)) == 10 for row in top.tolist()), rule
        for row, hist in zip(top, split.test.target_hist, strict=True):
            assert not set(row.tolist()) & set(np.asarray(hist).tolist()), rule  # the seen filter
    assert len(np.unique(tops["quota"])) >= len(np.unique(tops["max"]))


def test_the_cross_domain_variant_reads_both_histories_and_scores_target_items_only(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    split = leave_one_out(synthetic_interactions(), "music")
    n_target = split.data.n_items("music")
    args = DSSArgs(epochs=1, patience=1, dim=16, layers=1, intents=2, max_len=12, negatives=0)  # type: ignore[call-arg]
    model, _, plain = train_dss(split, args, merged=True)
    assert model.cfg.n_items == n_target + split.data.n_items("book")  # one vocabulary: target ids, then source
    model.eval()
    batch = split.test.subset(np.arange(16))
    for scorer in (plain, merge_scorer(model, 12, "quota", n_target)):
        assert scorer(batch).shape == (16, n_target + 1)  # target items only
    shuffled = merge_scorer(model, 12, "max", n_target)(batch.with_shuffled_sources(np.random.default_rng(0)))
    assert not torch.equal(shuffled, merge_scorer(model, 12, "max", n_target)(batch))  # the source history counts
    with pytest.raises(ValueError, match="bench-only"):
        train_dss(split, args, tmp_path / "xd.pt", merged=True)
