"""Metrics over the FULL item set of the target domain (no sampled negatives), DESIGN §2.

Ranking: given one score per item (column 0 is padding and never ranked), the target's rank counts every
eligible item that scores higher **or equal** (ties are broken against the target, so a constant scorer gets
no credit). Items of the user's target-domain history are excluded from the ranking, as the service excludes
seen items, except the target itself (a repeated purchase is still a correct prediction).

HR@k = 1[rank < k], NDCG@k = 1[rank < k] / log2(rank + 2), MRR = 1 / (rank + 1), with rank 0-based.

Diversity of the top-k lists (``top_k_items`` excludes every history item, as the service's seen filter does),
against ONE fixed reference for all models, the items' sentence vectors (``diversity_metrics``):
intra-list diversity ``ILD@k`` = mean over users of 1 - mean pairwise cosine of the list's items;
``coverage@k`` = distinct items in all lists / catalogue size; ``repeat@k`` = the share of a list that lies
among the ``neighbours`` nearest items (cosine) of the user's last history item (users with a history only).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from training.data.batches import encode_histories
from training.data.splits import Examples

ScoreFn = Callable[[Examples], torch.Tensor]  # examples -> (B, n_items + 1) scores, column 0 = padding


def mask_history(scores: torch.Tensor, exclude: Sequence[np.ndarray]) -> None:
    """In place: column 0 (padding) and each row's ``exclude`` items to -inf. scores (B, N+1)."""
    scores[:, 0] = -torch.inf
    counts = [len(items) for items in exclude]
    if sum(counts):  # one scatter for the whole batch instead of a Python loop over rows
        rows = torch.repeat_interleave(torch.arange(len(counts)), torch.as_tensor(counts))
        cols = torch.as_tensor(np.concatenate([np.asarray(i, dtype=np.int64) for i in exclude]))
        scores[rows, cols] = -torch.inf


def ranks_from_scores(scores: torch.Tensor, targets: torch.Tensor, exclude: Sequence[np.ndarray]) -> torch.Tensor:
    """0-based rank of each target among eligible items. scores (B, N+1), targets (B,)."""
    scores = scores.detach().float().clone()
    target_scores = scores.gather(1, targets.view(-1, 1))  # (B, 1)
    mask_history(scores, exclude)
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


@torch.no_grad()
def top_k_items(score_fn: ScoreFn, examples: Examples, k: int = 10, batch_size: int = 512) -> np.ndarray:
    """(N, k) item ids recommended to each example's user (history excluded), in ``examples`` order."""
    out = np.zeros((len(examples), k), dtype=np.int64)
    for start in range(0, len(examples), batch_size):
        idx = np.arange(start, min(start + batch_size, len(examples)))
        batch = examples.subset(idx)
        scores = score_fn(batch).detach().float().clone()
        mask_history(scores, batch.target_hist)
        out[idx] = scores.topk(k, dim=1).indices.numpy()
    return out


def diversity_metrics(
    tops: np.ndarray, last_items: np.ndarray, vectors: np.ndarray, neighbours: int = 10
) -> dict[str, float]:
    """ILD@k, coverage@k and repeat@k (module docstring) of top-k lists ``tops`` (N, k); ``last_items`` (N,)
    the users' last history items (0 = none); ``vectors`` (n_items + 1, E) the reference item vectors."""
    k = tops.shape[1]
    v = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    lists = v[tops]  # (N, k, E)
    sims = lists @ lists.transpose(0, 2, 1)  # (N, k, k)
    mean_pair = (sims.sum(axis=(1, 2)) - np.trace(sims, axis1=1, axis2=2)) / (k * (k - 1))
    out = {f"ILD@{k}": float((1 - mean_pair).mean()), f"coverage@{k}": len(np.unique(tops)) / (len(v) - 1)}
    has = last_items > 0
    if has.any():
        near = v[last_items[has]] @ v.T  # (M, N+1)
        near[:, 0] = -np.inf
        near[np.arange(len(near)), last_items[has]] = -np.inf  # an item is not its own neighbour
        nn_ids = np.argpartition(-near, neighbours, axis=1)[:, :neighbours]  # (M, neighbours)
        hits = (tops[has][:, :, None] == nn_ids[:, None, :]).any(axis=2)  # (M, k)
        out[f"repeat@{k}"] = float(hits.mean())
    return out


def rating_metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """MAE and RMSE of rating predictions."""
    pred, truth = np.asarray(pred, np.float64), np.asarray(truth, np.float64)
    if pred.shape != truth.shape or pred.size == 0:
        raise ValueError(f"need equal non-empty shapes, got {pred.shape} and {truth.shape}")
    err = pred - truth
    return {"MAE": float(np.abs(err).mean()), "RMSE": float(np.sqrt((err**2).mean()))}


# --------------------------------------------------------------------------- scorers: Examples -> (B, N + 1) scores


def sequence_scorer(model: torch.nn.Module, max_len: int, n_target: int | None = None, merged: bool = False) -> ScoreFn:
    """A one-sequence model with ``score(seq) -> (B, vocab + 1)`` (SASRec, DSS, UniSRec): the target history, or
    with ``merged`` the merged two-domain one (target ids first); columns beyond ``n_target`` dropped."""
    keep = None if n_target is None else n_target + 1

    def score(ex: Examples) -> torch.Tensor:
        hist = ex.merged_hist(n_target) if merged and n_target is not None else ex.target_hist
        out: torch.Tensor = model.score(encode_histories(hist, max_len))  # type: ignore[operator]
        return out if keep is None else out[:, :keep]

    return score


def two_domain_scorer(model: torch.nn.Module, max_len: int, n_target: int) -> ScoreFn:
    """A ``(target_seq, source_seq) -> user vector`` tower (GURU, CDSRec) against its ``item_vectors()``."""

    def score(ex: Examples) -> torch.Tensor:
        # each side is trimmed of its all-padding columns; the towers do not need equal lengths
        t, s = encode_histories(ex.target_hist, max_len), encode_histories(ex.source_hist, max_len)
        out: torch.Tensor = model(t, s) @ model.item_vectors()[: n_target + 1].T  # type: ignore[operator]
        return out

    return score
