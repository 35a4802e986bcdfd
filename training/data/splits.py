"""Splits (DESIGN §2): leave-one-out in time order for ranking, and the PTUPCDR cold-start split.

Leave-one-out for target domain ``d``: every user with at least ``min_len`` items in ``d`` gives a **test**
example (their last ``d`` item) and a **valid** example (their second last). An example's histories hold only
what happened strictly before the predicted item, in both domains, so nothing after the prediction point
leaks in. Training data is every interaction strictly before a user's valid item (all of it for users who
are not evaluated).

Cold start: a random ``beta`` of the users active in both domains have their whole target history hidden from
training; a ``valid_frac`` slice of them is for model selection, the rest is test. Selection code only ever
receives the train frame and the valid slice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from training.data.interactions import Interactions


@dataclass
class Examples:
    """Prediction examples: for row i, predict ``targets[i]`` in the target domain of user ``users[i]``."""

    users: np.ndarray  # (N,) int64
    targets: np.ndarray  # (N,) int64 internal target-domain item ids
    target_hist: list[np.ndarray]  # target-domain items strictly before the prediction, oldest first
    source_hist: list[np.ndarray]  # source-domain items strictly before the prediction, oldest first
    target_order: list[np.ndarray] | None = None  # the orders (time) of target_hist's items
    source_order: list[np.ndarray] | None = None  # the orders (time) of source_hist's items

    def __len__(self) -> int:
        return len(self.users)

    def subset(self, idx: np.ndarray) -> Examples:
        return Examples(
            self.users[idx],
            self.targets[idx],
            [self.target_hist[i] for i in idx],
            [self.source_hist[i] for i in idx],
            None if self.target_order is None else [self.target_order[i] for i in idx],
            None if self.source_order is None else [self.source_order[i] for i in idx],
        )

    def with_shuffled_sources(self, rng: np.random.Generator) -> Examples:
        """The same users and targets with their source histories (and orders) permuted among them: scored on
        these, a model that reads something of each user's own history does worse than on the originals."""
        perm = rng.permutation(len(self))
        out = self.subset(np.arange(len(self)))
        out.source_hist = [self.source_hist[i] for i in perm]
        if self.source_order is not None:
            out.source_order = [self.source_order[i] for i in perm]
        return out

    def merged_hist(self, source_offset: int) -> list[np.ndarray]:
        """Both domains' histories interleaved in time; source ids shifted by ``source_offset``."""
        assert self.target_order is not None and self.source_order is not None
        out = []
        for t, s, to, so in zip(
            self.target_hist, self.source_hist, self.target_order, self.source_order, strict=True
        ):
            items = np.concatenate([t, s + source_offset])
            out.append(items[np.argsort(np.concatenate([to, so]), kind="stable")])
        return out


@dataclass
class NextItemSplit:
    data: Interactions
    target: str
    source: str | None
    train: pd.DataFrame  # rows of data.frame usable for training (all domains)
    valid: Examples
    test: Examples

    def train_sequences(self, domain: str) -> dict[int, np.ndarray]:
        """user -> that user's training items of ``domain`` in time order."""
        sub = self.train[self.train["domain"] == domain].sort_values(["user", "order"], kind="stable")
        return {int(u): g["item"].to_numpy() for u, g in sub.groupby("user", sort=True)}


def _examples(
    rows: list[tuple[int, int, int]],
    seqs: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]],
    target: str,
    source: str | None,
) -> Examples:
    empty = np.zeros(0, dtype=np.int64)
    users, targets, t_hist, s_hist, t_ord, s_ord = [], [], [], [], [], []
    for user, item, cut in rows:
        users.append(user)
        targets.append(item)
        t_items, t_orders = seqs[target][user]
        t_hist.append(t_items[t_orders < cut])
        t_ord.append(t_orders[t_orders < cut])
        if source is not None and user in seqs[source]:
            s_items, s_orders = seqs[source][user]
            s_hist.append(s_items[s_orders < cut])
            s_ord.append(s_orders[s_orders < cut])
        else:
            s_hist.append(empty)
            s_ord.append(empty)
    return Examples(np.asarray(users, np.int64), np.asarray(targets, np.int64), t_hist, s_hist, t_ord, s_ord)


def other_domain(data: Interactions, target: str) -> str | None:
    others = [d for d in data.domains if d != target]
    if target not in data.domains:
        raise ValueError(f"unknown target domain {target!r}; the data has {data.domains}")
    return others[0] if len(others) == 1 else None


def leave_one_out(data: Interactions, target: str, min_len: int = 3) -> NextItemSplit:
    """Leave-one-out in time order for ``target`` (the other domain, if exactly one, is the source)."""
    source = other_domain(data, target)
    seqs = {d: data.sequences(d) for d in data.domains}
    valid_rows, test_rows, cut = [], [], {}
    for user, (items, orders) in seqs[target].items():
        if len(items) < min_len:
            continue
        valid_rows.append((user, int(items[-2]), int(orders[-2])))
        test_rows.append((user, int(items[-1]), int(orders[-1])))
        cut[user] = int(orders[-2])
    frame = data.frame
    cuts = frame["user"].map(cut).fillna(np.iinfo(np.int64).max).to_numpy()
    train = frame[frame["order"].to_numpy() < cuts]
    return NextItemSplit(
        data=data,
        target=target,
        source=source,
        train=train,
        valid=_examples(valid_rows, seqs, target, source),
        test=_examples(test_rows, seqs, target, source),
    )


@dataclass
class ColdStartSplit:
    data: Interactions
    source: str
    target: str
    beta: float
    train: pd.DataFrame  # every interaction except the cold users' target-domain ones
    valid_users: np.ndarray  # cold users for model selection
    test_users: np.ndarray  # cold users reported once
    hidden: pd.DataFrame  # the cold users' hidden target-domain rows

    def hidden_rows(self, users: np.ndarray) -> pd.DataFrame:
        return self.hidden[self.hidden["user"].isin(set(users.tolist()))]

    def ranking_examples(self, users: np.ndarray, target: str = "last") -> Examples:
        """For each cold user, one target item to rank from the source items strictly before it: ``"last"``
        their last target item; ``"first"`` their first target item after their first source item (their
        entry into the target domain; users whose target items all come before any source item are left out)."""
        if target not in ("last", "first"):
            raise ValueError(f"target must be 'last' or 'first', got {target!r}")
        seqs = {d: self.data.sequences(d) for d in (self.source, self.target)}
        rows = []
        for u in users.tolist():
            items, orders = seqs[self.target][u]
            if target == "last":
                rows.append((u, int(items[-1]), int(orders[-1])))
                continue
            after = orders > seqs[self.source][u][1].min()
            if after.any():
                j = int(np.argmax(after))
                rows.append((u, int(items[j]), int(orders[j])))
        ex = _examples(rows, seqs, self.target, self.source)
        ex.target_hist = [np.zeros(0, dtype=np.int64) for _ in ex.target_hist]  # hidden: cold in target
        ex.target_order = [np.zeros(0, dtype=np.int64) for _ in ex.target_hist]
        return ex


def cold_start_split(
    data: Interactions, source: str, target: str, beta: float, seed: int = 0, valid_frac: float = 0.1
) -> ColdStartSplit:
    """PTUPCDR protocol: hide all target-domain interactions of a random ``beta`` of overlapping users."""
    if not 0 < beta < 1:
        raise ValueError(f"beta must be in (0, 1), got {beta}")
    frame = data.frame
    src_users = set(frame.loc[frame["domain"] == source, "user"].unique().tolist())
    tgt_users = set(frame.loc[frame["domain"] == target, "user"].unique().tolist())
    overlap = np.array(sorted(src_users & tgt_users), dtype=np.int64)
    if len(overlap) < 10:
        raise ValueError(f"only {len(overlap)} users are in both {source} and {target}: too few for a cold split")
    rng = np.random.default_rng(seed)
    cold = rng.permutation(overlap)[: max(2, round(beta * len(overlap)))]
    n_valid = max(1, round(valid_frac * len(cold)))
    valid_users, test_users = np.sort(cold[:n_valid]), np.sort(cold[n_valid:])
    is_hidden = (frame["domain"] == target).to_numpy() & frame["user"].isin(set(cold.tolist())).to_numpy()
    return ColdStartSplit(
        data=data,
        source=source,
        target=target,
        beta=beta,
        train=frame[~is_hidden],
        valid_users=valid_users,
        test_users=test_users,
        hidden=frame[is_hidden],
    )
