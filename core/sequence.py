"""The one sequence encoder: a raw history of item ids -> a fixed-length padded int64 array.

Offline trainers, the ONNX export parity check, the service and the refresh job all call these functions, so
a user's history is turned into model input the same way everywhere (DESIGN §7.9).

Conventions (pinned by tests/core/test_sequence.py):
* id 0 is padding and is never a real item: item ids are contiguous ints starting at 1 per domain;
* padding goes on the LEFT, so the most recent item is always the last column (position ``max_len - 1``);
* when a history is longer than ``max_len`` the OLDEST items are dropped: the most recent ``max_len`` kept.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt

PAD_ID = 0

IntArray = npt.NDArray[np.int64]


def encode_sequence(history: Iterable[int], max_len: int) -> IntArray:
    """Encode one history (oldest first) into a left-padded array of shape ``(max_len,)``."""
    if max_len <= 0:
        raise ValueError(f"max_len must be positive, got {max_len}")
    items = np.fromiter(history, dtype=np.int64)
    if items.size and int(items.min()) < 0:
        raise ValueError("item ids must be non-negative (0 is padding)")
    out = np.zeros(max_len, dtype=np.int64)
    kept = items[-max_len:]
    if kept.size:
        out[max_len - kept.size :] = kept
    return out


def encode_batch(histories: Sequence[Iterable[int]], max_len: int) -> IntArray:
    """Encode many histories into a ``(B, max_len)`` array; row b is ``encode_sequence(histories[b])``."""
    out = np.zeros((len(histories), max_len), dtype=np.int64)
    for row, history in enumerate(histories):
        out[row] = encode_sequence(history, max_len)
    return out


def sequence_length(encoded: IntArray) -> IntArray:
    """Number of real (non-padding) items per row of an encoded batch (or of one encoded row)."""
    return np.asarray((encoded != PAD_ID).sum(axis=-1), dtype=np.int64)


TRIM_STEP = 8  # trimmed lengths are multiples of it: few distinct shapes, so onnxruntime's per-shape plans stay few


def trim_padding(encoded: IntArray, step: int = TRIM_STEP) -> IntArray:
    """A left-padded (B, T) batch without the leading columns that are padding in every row: its last
    ``n`` columns, ``n`` the longest row's length rounded up to a multiple of ``step`` (at least ``step``,
    at most T). Feed it only to a graph whose output does not depend on leading padding (the manifest's
    ``trims_padding``, measured at export): the encoder then runs over the real items, not ``max_len``."""
    T = encoded.shape[-1]
    real = np.flatnonzero((encoded != PAD_ID).any(axis=0))
    n = T - int(real[0]) if real.size else 1
    n = min(T, -(-n // step) * step)
    return encoded if n == T else np.ascontiguousarray(encoded[:, T - n :])
