"""Train GURU on both domains of a leave-one-out split: `cdrec train guru --data PATH --target-domain DOMAIN`.

Also holds the cross-domain training arrays that CDSRec trains on. Reads top to bottom: data -> time-aligned
arrays -> length-bucketed batches -> model -> loop (reconstruction + adversarial + alignment) with early
stopping on validation NDCG@10 of the "GUR alone" tower.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from pydantic import Field
from pydantic.dataclasses import dataclass as pydantic_dataclass

from training import checkpoint
from training.data.batches import encode_histories
from training.data.splits import Examples, NextItemSplit
from training.evaluation import evaluate_ranking
from training.fit import FitResult, SeqArgs, fit
from training.models.guru import GURU, GURUConfig, Negatives, guru_losses, reversal_strength


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


def two_domain_scorer(
    model: torch.nn.Module, max_len: int, n_target: int
) -> Callable[[Examples], torch.Tensor]:
    """Examples -> (B, n_target + 1) scores from a ``(target_seq, source_seq)`` tower."""

    def score(ex: Examples) -> torch.Tensor:
        # each side is trimmed of its all-padding columns; the towers do not need equal lengths
        t, s = encode_histories(ex.target_hist, max_len), encode_histories(ex.source_hist, max_len)
        return model(t, s) @ model.item_vectors()[: n_target + 1].T  # type: ignore[operator]

    return score


@pydantic_dataclass
class GURUArgs(SeqArgs):
    """GURU's options (`cdrec train guru`; CDSRec's extend them)."""

    encoder: str = Field("transformer", description="the shared sequence encoder: transformer | lstm")
    adversarial: bool = Field(True, description="train the domain discriminator (adversarial alignment)")
    adv_weight: float = Field(0.1, ge=0, description="weight of the adversarial loss")
    align_weight: float = Field(0.1, ge=0, description="weight of the alignment loss")
    cross: bool = Field(False, description="also decode target items from the source GUR (see guru_losses)")
    loss: str = Field("sampled", description="recommendation loss: sampled | bpr | ce")
    pop_mix: float = Field(1.0, ge=0, le=1, description="share of negatives drawn by popularity (the rest uniform)")


def train_guru(
    split: NextItemSplit, args: GURUArgs, out: Path | None = None
) -> tuple[GURU, FitResult, Callable[[Examples], torch.Tensor]]:
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    assert split.source is not None
    n_target, n_source = split.data.n_items(split.target), split.data.n_items(split.source)
    data = cross_domain_arrays(split, args.max_len)
    samplers = [NegativeSampler(split.train, d, n, args.negatives, args.pop_mix)
                for d, n in ((split.target, n_target), (split.source, n_source))]

    cfg = GURUConfig(n_target, n_source, args.dim, args.layers, args.heads, args.dropout, args.max_len,
                     args.encoder, args.adversarial)
    model = GURU(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    scorer = two_domain_scorer(model, args.max_len, n_target)
    steps_per_epoch = -(-len(data.length) // args.batch_size)
    # length-bucketed batches: weigh each by its real positions so every position counts the same
    per_batch = ((data.target_in != 0).sum() + (data.source_in != 0).sum()) / steps_per_epoch
    step = 0

    def train_epoch(epoch: int) -> float:
        nonlocal step
        total, n = 0.0, 0
        for t_in, t_out, s_in, s_idx in bucketed_batches(data, args.batch_size, rng):
            strength = reversal_strength(step / (args.epochs * steps_per_epoch))
            negs = (samplers[0](), samplers[1]())
            h_t, h_s = model.latents(t_in, 0), model.latents(s_in, 1)
            parts = guru_losses(model, h_t, h_s, t_in, s_in, t_out, s_idx, strength, args.loss, negs,
                                args.cross)
            loss = parts["rec"] + args.adv_weight * parts["adv"] + args.align_weight * parts["align"]
            weight = float((t_in != 0).sum() + (s_in != 0).sum()) / per_batch
            opt.zero_grad(set_to_none=True)
            (weight * loss).backward()
            opt.step()
            total, n, step = total + loss.item(), n + 1, step + 1
        return total / max(1, n)

    meta = {"model": "gur", "data": split.data.name, "target": split.target, "source": split.source,
            "n_target_items": n_target, "args": asdict(args)}
    result = fit(model, train_epoch, lambda: evaluate_ranking(scorer, split.valid), args.epochs, args.patience,
                 out, meta, desc=f"gur {split.target}",
                 items=checkpoint.catalogue(split.data, (split.target, split.source)) if out is not None else None)
    return model, result, scorer
