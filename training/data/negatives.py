"""Negative sampling shared by the trainers: which items a sampled softmax contrasts the label with.

* ``NegativeSampler``: ``k`` shared negatives per batch from ``pop_mix`` x training popularity + the rest uniform,
  with their log-probabilities for the logQ correction (GURU, CDSRec);
* ``smoothed_log_q``: log q over item ids from (count + 1) ** power (the MF pretraining and the inductive bridge).

(SASRec's and DSS's popularity ** power sampler lives with SASRec's loss: ``training.models.sasrec``.)
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from training.models.guru import Negatives


class NegativeSampler:
    """Draws ``k`` shared negatives per batch from ``pop_mix`` x training popularity + the rest uniform."""

    def __init__(self, train: pd.DataFrame, domain: str, n_items: int, k: int, pop_mix: float) -> None:
        counts = np.bincount(train.loc[train["domain"] == domain, "item"].to_numpy(), minlength=n_items + 1)
        q = (1 - pop_mix) / n_items + pop_mix * counts / max(1, counts[1:].sum())
        q[0] = 0.0
        self.q = torch.as_tensor(q / q.sum(), dtype=torch.float32)
        self.log_q = torch.log(self.q.clamp(min=1e-12))
        self.k = k

    def __call__(self) -> Negatives | None:
        if self.k <= 0:
            return None
        return Negatives(torch.multinomial(self.q, self.k, replacement=True), self.log_q)


def smoothed_log_q(items: np.ndarray, n_items: int, power: float = 0.75) -> torch.Tensor:
    """log q over ids 0..n_items: counts^power (+1 smoothing), never padding. For sampled negatives."""
    counts = np.bincount(items, minlength=n_items + 1).astype(np.float64) + 1.0
    q = counts**power
    q[0] = 0.0
    q /= q.sum()
    return torch.as_tensor(np.log(np.maximum(q, 1e-30)), dtype=torch.float32)
