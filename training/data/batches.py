"""Turning training sequences into padded tensors (through core.sequence, the one encoder)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from core.sequence import encode_batch


def next_item_pairs(seqs: Sequence[np.ndarray], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Shifted (inputs, labels) arrays (N, max_len) for next-item training; sequences shorter than 2 dropped."""
    kept = [s[-(max_len + 1) :] for s in seqs if len(s) >= 2]
    return encode_batch([s[:-1] for s in kept], max_len), encode_batch([s[1:] for s in kept], max_len)


def shuffled_batches(
    arrays: Sequence[np.ndarray], batch_size: int, rng: np.random.Generator
) -> Iterator[list[torch.Tensor]]:
    """Yield aligned mini-batches of every array, in a random order."""
    n = len(arrays[0])
    order = rng.permutation(n)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        yield [torch.as_tensor(a[idx]) for a in arrays]


def encode_histories(histories: Sequence[np.ndarray], max_len: int) -> torch.Tensor:
    return torch.as_tensor(encode_batch(histories, max_len))
