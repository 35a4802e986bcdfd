"""Popularity: every user gets the target domain's most interacted items in the training data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from training.data.splits import Examples


class Popularity:
    def __init__(self, train: pd.DataFrame, domain: str, n_items: int) -> None:
        items = train.loc[train["domain"] == domain, "item"].to_numpy()
        self.counts = np.bincount(items, minlength=n_items + 1).astype(np.float32)
        self.counts[0] = 0.0

    def score(self, examples: Examples) -> torch.Tensor:
        return torch.as_tensor(self.counts).expand(len(examples), -1)

    def top(self, k: int) -> np.ndarray:
        return np.argsort(-self.counts[1:], kind="stable")[:k] + 1
