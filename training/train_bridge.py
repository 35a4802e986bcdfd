"""Cold-start rating protocol (PTUPCDR, WSDM 2022) with a validation slice: `cdrec train bridge ptupcdr ...`.

Reads top to bottom: ``selection_view`` keeps only what model selection may see (the train frame and the
VALID cold users' hidden ratings), then source and target MF are pretrained (biases, small init, early
stopping on held-out training ratings), then each cold-start model is fitted with its epochs chosen on the
valid cold users: TGT and CMF (MF baselines), EMCDR (shared bridge fitted by embedding distance) and PTUPCDR
(characteristic encoder + meta network, trained on the target ratings of overlapping training users).
``report_test`` is the only code that reads the test users' hidden ratings, once, after everything is fixed.

Where ours departs from the paper's PTUPCDR, and why (each measured on development seeds, never on the
reported ones): MF has user and item biases started at damped mean deviations (on Douban nearly all that a
cold user's ratings reveal is their rating level, which the bias carries); the characteristic encoder sees
each source item's centred rating beside its embedding; a linear head predicts the target user bias; the
personal bridge sits on a shared linear map of [u_s, b_u^s], started at EMCDR's distance fit and then trained
task-oriented; and the task loss is squared plus absolute error, the two reported metrics, with selection on
their sum. Closest to the paper: ``--no-shared-base --no-rating-aware --no-warm-start --l1 0 --no-select-sum``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from pydantic import Field
from pydantic.dataclasses import dataclass as pydantic_dataclass

from core.sequence import encode_batch
from training import checkpoint
from training.args import MFArgs
from training.data.batches import minibatches
from training.data.splits import ColdStartSplit
from training.evaluation import rating_metrics
from training.fit import FitResult, epoch_of, fit
from training.fit_mf import cmf_rows, train_rating_mf
from training.models.bridge import (
    EMCDR,
    PTUPCDR,
    EMCDRConfig,
    PTUPCDRConfig,
    distance_loss,
    rating_loss,
)
from training.models.mf import MF

Rows = tuple[np.ndarray, np.ndarray, np.ndarray]  # users, items, ratings
Predict = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (users, items) -> predicted ratings


@pydantic_dataclass
class BridgeArgs:
    """PTUPCDR's and EMCDR's options (`cdrec train bridge ptupcdr`); ``mf``: the MF pretraining's (--mf.dim ...)."""

    mf: MFArgs = Field(default_factory=MFArgs, description="the source and target MF pretraining")
    max_len: int = Field(100, ge=1, description="most recent source ratings the characteristic encoder reads")
    epochs: int = Field(40, ge=1, description="most PTUPCDR epochs (EMCDR: 5x)")
    patience: int = Field(4, ge=1, description="epochs without a better valid error before stopping")
    lr: float = Field(3e-3, gt=0, description="Adam learning rate of the bridges")
    bias_lr: float = Field(1e-2, gt=0, description="learning rate of PTUPCDR's user-bias head")
    weight_decay: float = Field(0.0, ge=0, description="Adam weight decay of the bridges")
    batch_size: int = Field(32, ge=1, description="users per PTUPCDR step")
    hidden: int = Field(64, ge=1, description="hidden size of the characteristic encoder and meta network")
    emcdr_hidden: int = Field(0, ge=0, description="EMCDR's mapping: 0 = linear, else an MLP this wide")
    shared_base: bool = Field(True, description="the personal bridge sits on a shared linear map")
    rating_aware: bool = Field(True, description="the characteristic encoder sees each source item's rating")
    l1: float = Field(1.0, ge=0, description="weight of the absolute error in PTUPCDR's task loss")
    select_sum: bool = Field(True, description="select PTUPCDR's epoch on valid RMSE + MAE instead of RMSE")
    warm_start: bool = Field(True, description="start PTUPCDR's shared map at EMCDR's")
    bias_init: bool = Field(True, description="start the user-bias head at its least-squares fit")
    seed: int = Field(0, description="seed of the split, the weights and the batches (the MF pretraining's too)")


@dataclass
class ColdView:
    """Everything model selection may see: no test user appears anywhere in it."""

    source: str
    target: str
    n_users: int
    n_source_items: int
    n_target_items: int
    train: pd.DataFrame
    valid: Rows  # the valid cold users' hidden target ratings


def rows_of(frame: pd.DataFrame, domain: str | None = None) -> Rows:
    sub = frame if domain is None else frame[frame["domain"] == domain]
    return (
        sub["user"].to_numpy(np.int64, copy=True),
        sub["item"].to_numpy(np.int64, copy=True),
        sub["rating"].to_numpy(np.float32, copy=True),
    )


def selection_view(split: ColdStartSplit) -> ColdView:
    data = split.data
    return ColdView(
        split.source,
        split.target,
        data.n_users,
        data.n_items(split.source),
        data.n_items(split.target),
        split.train,
        rows_of(split.hidden_rows(split.valid_users)),
    )


def source_sequences(
    train: pd.DataFrame, source: str, n_users: int, max_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """(n_users, max_len) left-padded source item ids per user (core.sequence; all-zero without history)
    and the same-shaped ratings of those items (0 at padding)."""
    sub = train[train["domain"] == source].sort_values(["user", "order"], kind="stable")
    seqs: list[np.ndarray] = [np.zeros(0, np.int64)] * n_users
    rates: list[np.ndarray] = [np.zeros(0, np.float32)] * n_users
    for u, g in sub.groupby("user", sort=True):
        seqs[int(u)] = g["item"].to_numpy()
        rates[int(u)] = g["rating"].to_numpy()
    items = encode_batch(seqs, max_len)
    ratings = np.zeros(items.shape, np.float32)
    for row, r in enumerate(rates):  # the same left padding as encode_batch: the most recent max_len kept
        kept = r[-max_len:]
        if len(kept):
            ratings[row, max_len - len(kept) :] = kept
    return items, ratings


def rmse(pred: torch.Tensor, ratings: np.ndarray) -> float:
    return float(((pred - torch.as_tensor(ratings)) ** 2).mean().sqrt())


# --------------------------------------------------------------------------- non-bridge baselines


def mean_predictors(view: ColdView, damping: tuple[float, ...] = (0.0, 2.0, 5.0, 10.0, 25.0)) -> dict[str, np.ndarray]:
    """global-mean: mu of the target training ratings. item-mean: per-item mean shrunk towards mu with the
    damping chosen on valid. Returns (N + 1,) per-item predictions of each."""
    _, items, ratings = rows_of(view.train, view.target)
    mu = float(ratings.mean())
    sums = np.bincount(items, weights=ratings - mu, minlength=view.n_target_items + 1)
    counts = np.bincount(items, minlength=view.n_target_items + 1)
    _, v_items, v_ratings = view.valid

    def item_mean(d: float) -> np.ndarray:
        return mu + sums / np.maximum(counts + d, 1e-9)  # an item without training ratings predicts mu

    best = min(damping, key=lambda d: float(np.mean((item_mean(d)[v_items] - v_ratings) ** 2)))
    return {
        "global-mean": np.full(view.n_target_items + 1, mu),
        "item-mean": item_mean(best),
    }


def train_tgt(view: ColdView, args: BridgeArgs) -> MF:
    u, i, r = rows_of(view.train, view.target)
    vu, vi, vr = view.valid
    model, _ = train_rating_mf(
        u, i, r, view.n_users, view.n_target_items, args.mf,
        validate=lambda m: lambda: rmse(m(torch.as_tensor(vu), torch.as_tensor(vi)), vr), desc="tgt",
    )
    return model


def train_cmf(view: ColdView, args: BridgeArgs) -> MF:
    """One user table for both domains; target item ids 1..Nt, source Nt+1..Nt+Ns."""
    u, i, r = cmf_rows(rows_of(view.train, view.target), rows_of(view.train, view.source), view.n_target_items)
    vu, vi, vr = view.valid
    model, _ = train_rating_mf(
        u, i, r, view.n_users, view.n_target_items + view.n_source_items, args.mf,
        validate=lambda m: lambda: rmse(m(torch.as_tensor(vu), torch.as_tensor(vi)), vr), desc="cmf",
    )
    return model


# --------------------------------------------------------------------------- bridges


def pretrain(view: ColdView, args: BridgeArgs) -> tuple[MF, MF]:
    """Source MF on every source rating, target MF on the non-cold users' target ratings."""
    src, _ = train_rating_mf(*rows_of(view.train, view.source), view.n_users, view.n_source_items, args.mf,
                             desc="mf source")
    tgt, _ = train_rating_mf(*rows_of(view.train, view.target), view.n_users, view.n_target_items, args.mf,
                             desc="mf target")
    return src, tgt


def bridge_users(view: ColdView) -> np.ndarray:
    """Overlapping training users: a source history and target training ratings."""
    t = view.train
    return np.intersect1d(t.loc[t["domain"] == view.source, "user"].unique(),
                          t.loc[t["domain"] == view.target, "user"].unique())


def train_emcdr(view: ColdView, src: MF, tgt: MF, args: BridgeArgs) -> tuple[EMCDR, FitResult]:
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    k = args.mf.dim
    model = EMCDR(EMCDRConfig(view.n_users, view.n_target_items, k, args.emcdr_hidden, tgt.cfg.global_mean))
    with torch.no_grad():
        model.source_users.copy_(src.user_vectors(torch.arange(view.n_users)))
        model.target_items.copy_(tgt.item_vectors())
        model.source_mean.fill_(src.cfg.global_mean)
        goal = torch.cat([tgt.user.weight, tgt.user_bias.weight], dim=-1)  # (n_users, k + 1) = [u_t, b_u^t]
    users = bridge_users(view)
    opt = torch.optim.Adam(model.mapping.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    vu, vi = (torch.as_tensor(a) for a in view.valid[:2])

    def batch_losses() -> Iterator[torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
        for (u,) in minibatches([users], 64, rng):
            loss = distance_loss(model.bridge(u), goal[u])
            yield loss

    train_epoch = epoch_of(opt, batch_losses)

    def valid_rmse() -> float:
        return rmse((model(vu) * model.target_items[vi]).sum(-1), view.valid[2])

    return model, fit(model, train_epoch, lambda: {"rmse": valid_rmse()}, args.epochs * 5, args.patience * 3,
                      desc="emcdr", select="rmse", minimize=True)


@torch.no_grad()
def init_bias_head(model: PTUPCDR, seqs: torch.Tensor, rates: torch.Tensor, rows: Rows, ridge: float = 1.0) -> None:
    """Start the user-bias head at the least-squares fit of the training users' residual ratings on
    [b_u^s, dev_u, 1] (as the MF biases start at damped means): the slow-to-learn part starts in place, so
    validation need not stop the task-oriented training before the bias is learned."""
    u, i, r = (torch.as_tensor(a) for a in rows)
    users, inv = torch.unique(u, return_inverse=True)
    vec = model(users, seqs[users], rates[users])  # (U, k + 2)
    resid = torch.as_tensor(r) - (vec[inv] * model.target_items[i]).sum(-1)  # (R,)
    k = model.cfg.dim
    b_s = model.source_users[users][:, k + 1 :] - model.source_mean
    stats = model.user_stats(b_s, rates[users], seqs[users] == 0)[inv]  # (R, 2)
    x = torch.cat([stats, torch.ones_like(stats[:, :1])], dim=-1).double()  # (R, 3)
    w = torch.linalg.solve(x.T @ x + ridge * torch.eye(3, dtype=x.dtype), x.T @ resid.double()).float()
    model.bias_head.weight[0, -2:] += w[:2]
    model.bias_head.bias += w[2]


def train_ptupcdr(
    view: ColdView, src: MF, tgt: MF, args: BridgeArgs, warm: EMCDR | None = None
) -> tuple[PTUPCDR, FitResult, tuple[np.ndarray, np.ndarray]]:
    """Task-oriented: the bridged target ratings of overlapping training users; returns the source seqs."""
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    k = args.mf.dim
    cfg = PTUPCDRConfig(view.n_users, view.n_source_items, view.n_target_items, k, args.hidden,
                        tgt.cfg.global_mean, shared_base=args.shared_base, rating_aware=args.rating_aware)
    model = PTUPCDR(cfg)
    with torch.no_grad():
        if warm is not None and args.shared_base and isinstance(warm.mapping, torch.nn.Linear):
            model.base.load_state_dict(warm.mapping.state_dict())  # start from EMCDR's shared bridge
        model.source_users.copy_(src.user_vectors(torch.arange(view.n_users)))
        model.source_items.copy_(src.item.weight)
        model.target_items.copy_(tgt.item_vectors())
        model.source_mean.fill_(src.cfg.global_mean)
    seq_np, rate_np = source_sequences(view.train, view.source, view.n_users, args.max_len)
    seqs, rates = torch.as_tensor(seq_np), torch.as_tensor(rate_np)
    u, i, r = rows_of(view.train, view.target)
    users = bridge_users(view)
    keep = np.isin(u, users)
    u, i, r = u[keep], i[keep], r[keep]
    if args.bias_init:
        init_bias_head(model, seqs, rates, (u, i, r))
    order = np.argsort(u, kind="stable")
    rows_by_user = dict(zip(users.tolist(), np.split(order, np.flatnonzero(np.diff(u[order])) + 1), strict=True))
    # the user-bias head is a small linear model that must move far from 0: it gets its own, larger step
    head = list(model.bias_head.parameters())
    rest = [p for n, p in model.named_parameters() if not n.startswith("bias_head.")]
    opt = torch.optim.Adam(
        [{"params": rest}, {"params": head, "lr": args.bias_lr}], lr=args.lr, weight_decay=args.weight_decay
    )
    vu, vi, vr = (torch.as_tensor(a) for a in view.valid)

    def batch_losses() -> Iterator[torch.Tensor]:
        # a batch is a set of users with all their target ratings: one bridge per user, many ratings each
        for (bu,) in minibatches([users], args.batch_size, rng):
            idx = [rows_by_user[x] for x in bu.tolist()]
            rows = torch.as_tensor(np.concatenate(idx))
            which = torch.repeat_interleave(torch.arange(len(idx)), torch.as_tensor([len(x) for x in idx]))
            vec = model(bu, seqs[bu], rates[bu])[which]  # (R, k + 2), one row per rating
            yield rating_loss(vec, model.target_items, torch.as_tensor(i)[rows], torch.as_tensor(r)[rows], args.l1)

    train_epoch = epoch_of(opt, batch_losses)

    def valid_rmse() -> float:
        pred = (model(vu, seqs[vu], rates[vu]) * model.target_items[vi]).sum(-1)
        if args.select_sum:
            err = pred - vr
            return float(err.pow(2).mean().sqrt() + err.abs().mean())
        return rmse(pred, view.valid[2])

    select = "rmse+mae" if args.select_sum else "rmse"
    stopped = fit(model, train_epoch, lambda: {select: valid_rmse()}, args.epochs, args.patience, desc="ptupcdr",
                  select=select, minimize=True)
    return model, stopped, (seq_np, rate_np)


# --------------------------------------------------------------------------- the protocol


@dataclass
class Fitted:
    """The selected models of one split, each a function (users, items) -> predicted ratings."""

    predict: dict[str, Predict]
    valid: dict[str, dict[str, float]]
    models: dict[str, torch.nn.Module]


def fit_all(view: ColdView, args: BridgeArgs) -> Fitted:
    """Fit and select every model of the protocol on ``view`` (train frame + valid cold users only)."""
    means = mean_predictors(view)
    tgt_mf = train_tgt(view, args)
    cmf = train_cmf(view, args)
    src, tgt = pretrain(view, args)
    emcdr, _ = train_emcdr(view, src, tgt, args)
    ptupcdr, _, (seq_np, rate_np) = train_ptupcdr(view, src, tgt, args, emcdr if args.warm_start else None)
    seqs, rates = torch.as_tensor(seq_np), torch.as_tensor(rate_np)

    def bridged(model: EMCDR | PTUPCDR) -> Predict:
        @torch.no_grad()
        def f(u: np.ndarray, i: np.ndarray) -> np.ndarray:
            ut, it = torch.as_tensor(u), torch.as_tensor(i)
            vec = model(ut, seqs[ut], rates[ut]) if isinstance(model, PTUPCDR) else model(ut)
            return (vec * model.item_vectors()[it]).sum(-1).numpy()

        return f

    def mf(model: MF) -> Predict:
        @torch.no_grad()
        def f(u: np.ndarray, i: np.ndarray) -> np.ndarray:
            return model(torch.as_tensor(u), torch.as_tensor(i)).numpy()

        return f

    def table(values: np.ndarray) -> Predict:
        return lambda u, i: values[i]

    predict: dict[str, Predict] = {
        "global-mean": table(means["global-mean"]),
        "item-mean": table(means["item-mean"]),
        "tgt": mf(tgt_mf),
        "cmf": mf(cmf),
        "emcdr": bridged(emcdr),
        "ptupcdr": bridged(ptupcdr),
    }
    vu, vi, vr = view.valid
    valid = {name: rating_metrics(f(vu, vi), vr) for name, f in predict.items()}
    return Fitted(predict, valid, {"tgt": tgt_mf, "cmf": cmf, "emcdr": emcdr, "ptupcdr": ptupcdr})


def report_test(split: ColdStartSplit, fitted: Fitted) -> dict[str, dict[str, float]]:
    """MAE/RMSE of every selected model on the test cold users' hidden target ratings (read once, here)."""
    tu, ti, tr = rows_of(split.hidden_rows(split.test_users))
    return {name: rating_metrics(f(tu, ti), tr) for name, f in fitted.predict.items()}


def run(split: ColdStartSplit, args: BridgeArgs, out: Path | None = None) -> dict[str, object]:
    """`cdrec train bridge ptupcdr`: fit and select on the split, save PTUPCDR and EMCDR (each a checkpoint
    that rebuilds itself, the frozen pretrained tables inside), then report valid and test once."""
    fitted = fit_all(selection_view(split), args)
    test = report_test(split, fitted)
    saved = {}
    if out is not None:
        pair = f"{split.source}__{split.target}"
        for name in ("ptupcdr", "emcdr"):
            meta = {"model": name, "data": split.data.name, "source": split.source, "target": split.target,
                    "beta": split.beta, "seed": args.seed, "max_len": args.max_len, "valid": fitted.valid[name]}
            items = checkpoint.catalogue(split.data, (split.target, split.source))
            saved[name] = str(checkpoint.save(out / f"{name}.{pair}.pt", fitted.models[name], meta, items))
    return {"checkpoints": saved, "valid": fitted.valid, "test": test}
