"""Metrics over the FULL item set of the target domain (no sampled negatives), DESIGN §2.

Ranking: given one score per item (column 0 is padding and never ranked), the target's rank counts every
eligible item that scores higher **or equal** (ties are broken against the target, so a constant scorer gets
no credit). Items of the user's target-domain history are excluded from the ranking, as the service excludes
seen items, except the target itself (a repeated purchase is still a correct prediction).

HR@k = 1[rank < k], NDCG@k = 1[rank < k] / log2(rank + 2), MRR = 1 / (rank + 1), with rank 0-based.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from training.data.splits import Examples

ScoreFn = Callable[[Examples], torch.Tensor]  # examples -> (B, n_items + 1) scores, column 0 = padding


def ranks_from_scores(scores: torch.Tensor, targets: torch.Tensor, exclude: Sequence[np.ndarray]) -> torch.Tensor:
    """0-based rank of each target among eligible items. scores (B, N+1), targets (B,)."""
    scores = scores.detach().float().clone()
    scores[:, 0] = -torch.inf
    target_scores = scores.gather(1, targets.view(-1, 1))  # (B, 1)
    counts = [len(items) for items in exclude]
    if sum(counts):  # one scatter for the whole batch instead of a Python loop over rows
        rows = torch.repeat_interleave(torch.arange(len(counts)), torch.as_tensor(counts))
        cols = torch.as_tensor(np.concatenate([np.asarray(i, dtype=np.int64) for i in exclude]))
        scores[rows, cols] = -torch.inf
    # the target was possibly excluded as a history item: restore its own score
    scores.scatter_(1, targets.view(-1, 1), target_scores)
    # NaN must never win: a NaN score is treated as the worst possible
    target_scores = torch.nan_to_num(target_scores, nan=-torch.inf)
    better_or_equal = (scores >= target_scores).sum(dim=1) - 1  # minus the target itself
    return better_or_equal


def metrics_from_ranks(ranks: np.ndarray, ks: Sequence[int] = (10, 20)) -> dict[str, float]:
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.size == 0:
        raise ValueError("no examples to evaluate")
    out: dict[str, float] = {}
    for k in ks:
        hit = ranks < k
        out[f"HR@{k}"] = float(hit.mean())
        out[f"NDCG@{k}"] = float((hit / np.log2(ranks + 2)).mean())
    out["MRR"] = float((1.0 / (ranks + 1)).mean())
    return out


@torch.no_grad()
def evaluate_ranking(
    score_fn: ScoreFn, examples: Examples, ks: Sequence[int] = (10, 20), batch_size: int = 512
) -> dict[str, float]:
    """Full-ranking HR@k, NDCG@k and MRR of ``score_fn`` on ``examples``."""
    ranks = []
    # batches of similar history length, so the encoders' padding trim drops most columns
    lengths = np.array([len(t) + len(s) for t, s in zip(examples.target_hist, examples.source_hist, strict=True)])
    order = np.argsort(lengths, kind="stable")
    for start in range(0, len(examples), batch_size):
        idx = order[start : start + batch_size]
        batch = examples.subset(idx)
        scores = score_fn(batch)
        ranks.append(ranks_from_scores(scores, torch.as_tensor(batch.targets), batch.target_hist).numpy())
    return metrics_from_ranks(np.concatenate(ranks), ks)


def rating_metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """MAE and RMSE of rating predictions."""
    pred, truth = np.asarray(pred, np.float64), np.asarray(truth, np.float64)
    if pred.shape != truth.shape or pred.size == 0:
        raise ValueError(f"need equal non-empty shapes, got {pred.shape} and {truth.shape}")
    err = pred - truth
    return {"MAE": float(np.abs(err).mean()), "RMSE": float(np.sqrt((err**2).mean()))}
