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
    arrays: Sequence[np.ndarray], batch_size: int, rng: np.random.Generator, bucket: bool = True
) -> Iterator[list[torch.Tensor]]:
    """Yield aligned mini-batches of every array, in a random order.

    ``bucket``: rows of similar length (non-padding count of the first array, when it is (N, T)) share a batch, so
    that ``trim_left_padding`` can drop most columns; which batch comes when is still random each epoch.
    """
    n = len(arrays[0])
    if bucket and arrays[0].ndim == 2:
        lengths = (arrays[0] != 0).sum(axis=1)
        order = np.lexsort((rng.random(n), lengths))  # by length, random among equals
        batches = [order[s : s + batch_size] for s in range(0, n, batch_size)]
        for b in rng.permutation(len(batches)):
            yield [torch.as_tensor(a[batches[b]]) for a in arrays]
        return
    order = rng.permutation(n)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        yield [torch.as_tensor(a[idx]) for a in arrays]


def trim_left_padding(*seqs: torch.Tensor) -> list[torch.Tensor]:
    """Drop the columns that are padding in every row of the first (B, T) tensor, from every tensor.

    Sequences are left-padded and the models count positions from the most recent item, so removing
    all-padding columns changes no output (the padding-invariance tests pin that) and saves most of the
    attention cost on short histories.
    """
    longest = int((seqs[0] != 0).sum(dim=1).max()) if seqs[0].numel() else 0
    keep = max(1, longest)
    return [s[:, -keep:] for s in seqs]


def encode_histories(histories: Sequence[np.ndarray], max_len: int) -> torch.Tensor:
    """Encode histories with the one encoder, then trim columns that are padding in every row."""
    return trim_left_padding(torch.as_tensor(encode_batch(histories, max_len)))[0]


def minibatches(arrays: list[np.ndarray], batch_size: int, rng: np.random.Generator) -> Iterator[list[torch.Tensor]]:
    """Aligned mini-batches of every array (rows shuffled, no bucketing) as tensors (MF, the bridges)."""
    order = rng.permutation(len(arrays[0]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        yield [torch.as_tensor(a[idx]) for a in arrays]
