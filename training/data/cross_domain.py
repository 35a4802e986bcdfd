"""Cross-domain training arrays: each user's target items aligned in time with their source items (GURU, CDSRec).

``cross_domain_arrays`` turns a split's training frame into one row per user (target inputs and outputs, the
source items strictly before the row's last target item, and for every target column the source column that
precedes it in time); ``bucketed_batches`` serves rows of similar length together, trimmed to their longest row.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from training.data.splits import NextItemSplit


@dataclass
class CrossDomainArrays:
    """One row per user, columns left padded to ``max_len``.

    ``target_in[:, c]`` is the target item before ``target_out[:, c]`` (0 when the predicted item is the user's
    first target item: the prediction then rests on the source domain alone); ``source_idx[:, c]`` is the
    column of ``source_in`` holding the last source item strictly before ``target_out[:, c]`` in time, or -1.
    """

    target_in: np.ndarray  # (N, L)
    target_out: np.ndarray  # (N, L)
    source_in: np.ndarray  # (N, L) source items strictly before the row's last target_out item
    source_idx: np.ndarray  # (N, L)
    length: np.ndarray  # (N,) real columns of the longer of the two
    users: np.ndarray  # (N,) the user of each row
    target_order: np.ndarray  # (N, L) order (time) of each target_out item, -1 at padding


def cross_domain_arrays(split: NextItemSplit, max_len: int, predict_first: bool = True) -> CrossDomainArrays:
    assert split.source is not None, "cross-domain training needs exactly two domains"
    train = split.train.sort_values(["user", "order"], kind="stable")
    users, items, orders = (train[c].to_numpy() for c in ("user", "item", "order"))
    is_target = (train["domain"] == split.target).to_numpy()
    cuts = np.flatnonzero(np.diff(users)) + 1
    rows, row_users = [], []
    for u, it, od, tg in zip(
        users[np.r_[0, cuts]], np.split(items, cuts), np.split(orders, cuts), np.split(is_target, cuts), strict=True
    ):
        t_items, t_ord, s_items, s_ord = it[tg], od[tg], it[~tg], od[~tg]
        prev = np.concatenate([[0], t_items[:-1]]) if predict_first else t_items[:-1]
        out, out_ord = (t_items, t_ord) if predict_first else (t_items[1:], t_ord[1:])
        prev, out, out_ord = prev[-max_len:], out[-max_len:], out_ord[-max_len:]
        if len(out) == 0:
            continue
        before = s_ord < out_ord[-1]
        s_win, s_win_ord = s_items[before][-max_len:], s_ord[before][-max_len:]
        count = np.searchsorted(s_win_ord, out_ord, side="left")  # source items strictly before each target
        idx = np.where(count > 0, max_len - len(s_win) + count - 1, -1)
        rows.append((prev, out, s_win, idx, out_ord))
        row_users.append(u)
    n = len(rows)
    # target_in, target_out, source_in padded with 0; source_idx, target_order with -1
    arrays = [np.full((n, max_len), 0 if k < 3 else -1, np.int64) for k in range(5)]
    length = np.zeros(n, np.int64)
    for r, row in enumerate(rows):
        for a, values in zip(arrays, row, strict=True):
            if len(values):
                a[r, max_len - len(values) :] = values
        length[r] = max(len(row[1]), len(row[2]))
    t_in, t_out, s_in, s_idx, t_ord = arrays
    return CrossDomainArrays(t_in, t_out, s_in, s_idx, length, np.asarray(row_users, np.int64), t_ord)


def bucketed_batches(
    data: CrossDomainArrays, batch_size: int, rng: np.random.Generator
) -> Iterator[tuple[torch.Tensor, ...]]:
    """Batches of rows of similar length, trimmed to their longest row (positions count from the first real
    item, so dropping leading all-padding columns changes nothing but the cost); batch order shuffled."""
    order = np.lexsort((rng.random(len(data.length)), data.length))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    L = data.target_in.shape[1]
    for b in rng.permutation(len(batches)):
        idx = batches[b]
        keep = max(1, int(data.length[idx].max()))
        src_idx = data.source_idx[idx, -keep:]
        src_idx = np.where(src_idx >= 0, src_idx - (L - keep), -1)
        yield tuple(
            torch.as_tensor(a) for a in (data.target_in[idx, -keep:], data.target_out[idx, -keep:],
                                         data.source_in[idx, -keep:], src_idx)
        )
