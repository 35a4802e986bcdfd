"""Popularity: every user gets the target domain's most interacted items in the training data. CrossCooccurrence:
cross-domain item-to-item counts on top of it, UserKNN: the target items of the training users whose source
histories look most like the user's (two non-neural checks of the cold-start signal)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from scipy import sparse
from sklearn.preprocessing import normalize

from training.data.splits import Examples
from training.evaluation import evaluate_ranking


class Popularity:
    def __init__(self, train: pd.DataFrame, domain: str, n_items: int) -> None:
        items = train.loc[train["domain"] == domain, "item"].to_numpy()
        self.counts = np.bincount(items, minlength=n_items + 1).astype(np.float32)
        self.counts[0] = 0.0

    def score(self, examples: Examples) -> torch.Tensor:
        return torch.as_tensor(self.counts).expand(len(examples), -1)

    def top(self, k: int) -> np.ndarray:
        return np.argsort(-self.counts[1:], kind="stable")[:k] + 1


class CrossCooccurrence:
    """Cross-domain item-to-item counts, a non-neural check of how much the source history says about the
    target item: C[a, o] = training users with source item a and target item o. A history h scores target
    item o by log(1 + pop_o) + w * log(1 + sum_{a in h} C[a, o] / (1 + pop_o)^alpha); w = 0 is popularity.
    ``select`` picks (w, alpha) on examples (the valid cold users).

    ``order_decay`` = d counts ordered transitions instead: each time a training user's source item a comes g
    positions before their target item o in the interleaved sequence, C[a, o] gains d^(g - 1) (pairs where o comes
    first count nothing)."""

    def __init__(self, train: pd.DataFrame, source: str, target: str, n_source: int, n_target: int,
                 order_decay: float | None = None) -> None:
        if order_decay is not None and not 0 < order_decay <= 1:
            raise ValueError(f"order_decay must be in (0, 1], got {order_decay}")
        cols = ["user", "item"] if order_decay is None else ["user", "item", "order"]
        src = train.loc[train["domain"] == source, cols].drop_duplicates()
        dst = train.loc[train["domain"] == target, cols].drop_duplicates()
        pairs = src.merge(dst, on="user", suffixes=("_s", "_t"))
        if order_decay is None:
            weights = np.ones(len(pairs))
        else:
            gap = (pairs["order_t"] - pairs["order_s"]).to_numpy()
            pairs, weights = pairs[gap > 0], order_decay ** (gap[gap > 0] - 1.0)
        keys, inverse = np.unique(pairs["item_s"].to_numpy() * (n_target + 1) + pairs["item_t"].to_numpy(),
                                  return_inverse=True)
        counts = np.bincount(inverse, weights=weights, minlength=len(keys))
        index = torch.as_tensor(np.stack([keys % (n_target + 1), keys // (n_target + 1)]))
        self.cooc_t = torch.sparse_coo_tensor(index, torch.as_tensor(counts, dtype=torch.float32),
                                              (n_target + 1, n_source + 1), check_invariants=True).coalesce()
        dst = dst[["user", "item"]].drop_duplicates()
        pop = np.bincount(dst["item"].to_numpy(), minlength=n_target + 1).astype(np.float32)
        pop[0] = 0.0
        self.pop = torch.as_tensor(pop)
        self.w, self.alpha = 1.0, 0.0

    def counts(self, examples: Examples) -> torch.Tensor:
        """(B, N + 1) sum over each history's distinct source items of their co-occurrence rows."""
        hist = torch.zeros(self.cooc_t.shape[1], len(examples))  # (n_source + 1, B) distinct-item indicators
        for col, h in enumerate(examples.source_hist):
            hist[torch.as_tensor(h[h > 0], dtype=torch.int64), col] = 1.0
        return torch.sparse.mm(self.cooc_t, hist).T

    def score(self, examples: Examples) -> torch.Tensor:
        return self.score_with(self.w, self.alpha)(examples)

    def select(self, examples: Examples, metric: str = "NDCG@10", ws: Sequence[float] = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0),
               alphas: Sequence[float] = (0.0, 0.5)) -> float:
        """Set (w, alpha) to the pair with the best ``metric`` on ``examples`` (ties: the smaller w, closer to
        popularity); returns that value."""
        best = max((evaluate_ranking(self.score_with(w, a), examples)[metric], -w, a) for w in ws for a in alphas)
        self.w, self.alpha = -best[1], best[2]
        return best[0]

    def score_with(self, w: float, alpha: float) -> Callable[[Examples], torch.Tensor]:
        def score(examples: Examples) -> torch.Tensor:
            return torch.log1p(self.pop)[None] + w * torch.log1p(self.counts(examples) / (1.0 + self.pop) ** alpha)

        return score


class UserKNN:
    """User-based CF across domains: a history's neighbours are the ``k`` training users (those with target-domain
    items) whose source items are most like it, by cosine of IDF-weighted item indicators. Target item o scores
    log(1 + pop_o) + w * log(1 + k * f_o), f_o the neighbours' similarity-weighted share of users who had o (so
    k * f_o counts votes as if every neighbour were equally similar); w = 0 is popularity, an empty history or one
    with no neighbour gets popularity's scores. ``select`` picks (k, w) on examples (the valid cold users)."""

    def __init__(self, train: pd.DataFrame, source: str, target: str, n_users: int, n_source: int,
                 n_target: int) -> None:
        src = train.loc[train["domain"] == source, ["user", "item"]].drop_duplicates()
        dst = train.loc[train["domain"] == target, ["user", "item"]].drop_duplicates()
        neighbours = np.unique(dst["user"].to_numpy())  # only users with target items can vote
        row = np.full(n_users, -1, np.int64)
        row[neighbours] = np.arange(len(neighbours))
        src = src[row[src["user"].to_numpy()] >= 0]
        users_src = sparse.csr_matrix((np.ones(len(src), np.float32), (row[src["user"].to_numpy()], src["item"])),
                                      shape=(len(neighbours), n_source + 1))
        df = np.bincount(src["item"].to_numpy(), minlength=n_source + 1)
        self.idf = np.log((len(neighbours) + 1.0) / (df + 1.0)).astype(np.float32)
        self.users_src_t = normalize(users_src @ sparse.diags(self.idf)).T.tocsr()  # (n_source + 1, U)
        self.votes = sparse.csr_matrix((np.ones(len(dst), np.float32), (row[dst["user"].to_numpy()], dst["item"])),
                                       shape=(len(neighbours), n_target + 1))
        pop = np.asarray(self.votes.sum(0)).ravel()
        pop[0] = 0.0
        self.log_pop = np.log1p(pop).astype(np.float32)
        self.k, self.w = 50, 1.0

    def shares(self, examples: Examples, k: int) -> np.ndarray:
        """(B, N + 1) f_o per example: the similarity-weighted share of its top-``k`` neighbours who had o."""
        hists = [np.unique(h[h > 0]) for h in examples.source_hist]
        rows = np.repeat(np.arange(len(hists)), [len(h) for h in hists])
        cols = np.concatenate(hists) if hists else np.zeros(0, np.int64)
        hist = sparse.csr_matrix((self.idf[cols], (rows, cols)), shape=(len(hists), self.users_src_t.shape[0]))
        sim = (normalize(hist) @ self.users_src_t).toarray()  # (B, U)
        if k < sim.shape[1]:
            kth = -np.partition(-sim, k - 1, axis=1)[:, k - 1 : k]
            sim[sim < kth] = 0.0  # ties at the k-th similarity are all kept
        share = np.asarray((sparse.csr_matrix(sim) @ self.votes).todense())
        return share / np.maximum(sim.sum(1, keepdims=True), 1e-12)

    def score(self, examples: Examples) -> torch.Tensor:
        return self.score_with(self.k, self.w)(examples)

    def score_with(self, k: int, w: float) -> Callable[[Examples], torch.Tensor]:
        def score(examples: Examples) -> torch.Tensor:
            signal = np.log1p(k * self.shares(examples, k)) if w else 0.0
            return torch.as_tensor(self.log_pop[None] + w * signal, dtype=torch.float32).expand(len(examples), -1)

        return score

    def select(self, examples: Examples, metric: str = "NDCG@10", ks: Sequence[int] = (20, 50, 200),
               ws: Sequence[float] = (0.0, 0.5, 1.0, 2.0, 4.0)) -> float:
        """Set (k, w) to the pair with the best ``metric`` on ``examples`` (ties: the smaller w, then the smaller
        k); returns that value."""
        best = max((evaluate_ranking(self.score_with(k, w), examples)[metric], -w, -k) for k in ks for w in ws)
        self.k, self.w = -best[2], -best[1]
        return best[0]
