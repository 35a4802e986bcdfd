"""Pretraining the domain models of the bridges, and the MF baselines of the cold-start rating protocol.

* ``train_rating_mf``: explicit-rating MF with biases (squared error + L2), Adam, early stopping on a
  validation RMSE. TGT is this on the target training ratings; CMF is this on both domains' ratings with one
  shared user table (source item ids shifted after the target's, see ``cmf_rows``).
* ``train_softmax_mf``: implicit-feedback MF (sampled softmax), early stopping on held-out full-softmax loss.

Validation is a callable the caller builds: a held-out slice of the training ratings when pretraining, the
valid cold users when the model itself is being selected. Test users never reach this module.
Used by the bridges' trainers (training.train_bridge, training.train_bridge_inductive) and bench.cold_start.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch

from training.args import MFArgs
from training.data.batches import minibatches
from training.data.negatives import smoothed_log_q
from training.fit import FitResult, epoch_of, fit
from training.models.mf import MF, MFConfig, rating_loss, sampled_softmax_loss, softmax_loss


def holdout(n: int, frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random (train, held-out) row indices for early stopping of a pretraining run."""
    perm = np.random.default_rng(seed + 7919).permutation(n)
    k = max(1, round(frac * n))
    return np.sort(perm[k:]), np.sort(perm[:k])


def rmse_of(model: MF, users: np.ndarray, items: np.ndarray, ratings: np.ndarray) -> Callable[[], float]:
    u, i, r = (torch.as_tensor(a) for a in (users, items, ratings.astype(np.float32)))

    def rmse() -> float:
        return float(((model(u, i) - r) ** 2).mean().sqrt())

    return rmse


@torch.no_grad()
def init_biases(model: MF, users: np.ndarray, items: np.ndarray, ratings: np.ndarray, damping: float) -> None:
    """Start b_i and b_u at damped mean deviations, so training refines a good baseline predictor."""
    mu = model.cfg.global_mean
    n_items = model.item_bias.weight.shape[0]
    b_i = np.bincount(items, ratings - mu, n_items) / (np.bincount(items, minlength=n_items) + damping)
    rest = ratings - mu - b_i[items]
    n_users = model.user_bias.weight.shape[0]
    b_u = np.bincount(users, rest, n_users) / (np.bincount(users, minlength=n_users) + damping)
    model.item_bias.weight.copy_(torch.as_tensor(b_i, dtype=torch.float32)[:, None])
    model.user_bias.weight.copy_(torch.as_tensor(b_u, dtype=torch.float32)[:, None])


def train_rating_mf(
    users: np.ndarray,
    items: np.ndarray,
    ratings: np.ndarray,
    n_users: int,
    n_items: int,
    args: MFArgs,
    validate: Callable[[MF], Callable[[], float]] | None = None,
    desc: str = "mf",
) -> tuple[MF, FitResult]:
    """Explicit-rating MF. Without ``validate``, 5% of the rows are held out for early stopping."""
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    ratings = ratings.astype(np.float32)
    if validate is None:
        fit_idx, held = holdout(len(users), 0.05, args.seed)
    else:
        fit_idx, held = np.arange(len(users)), np.zeros(0, dtype=np.int64)
    cfg = MFConfig(n_users, n_items, args.dim, float(ratings[fit_idx].mean()), args.init_std)
    model = MF(cfg)
    init_biases(model, users[fit_idx], items[fit_idx], ratings[fit_idx], args.bias_damping)
    check = validate(model) if validate is not None else rmse_of(model, users[held], items[held], ratings[held])
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    arrays = [users[fit_idx], items[fit_idx], ratings[fit_idx]]

    def batch_losses() -> Iterator[torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
        for u, i, r in minibatches(arrays, args.batch_size, rng):
            loss = rating_loss(model, u, i, r, args.reg)
            yield loss

    train_epoch = epoch_of(opt, batch_losses)

    return model, fit(model, train_epoch, lambda: {"rmse": check()}, args.epochs, args.patience, desc=desc,
                      select="rmse", minimize=True)


def train_softmax_mf(
    users: np.ndarray,
    items: np.ndarray,
    n_users: int,
    n_items: int,
    args: MFArgs,
    negatives: int = 2048,
    desc: str = "mf",
) -> tuple[MF, FitResult]:
    """Implicit-feedback MF trained by sampled softmax (shared popularity-sampled negatives, log-Q corrected);
    5% of the rows held out for early stopping on the full-catalogue cross-entropy."""
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    fit_idx, held = holdout(len(users), 0.05, args.seed)
    model = MF(MFConfig(n_users, n_items, args.dim, 0.0, args.init_std))
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    arrays = [users[fit_idx], items[fit_idx]]
    log_q = smoothed_log_q(items[fit_idx], n_items)
    q = log_q.exp()
    hu, hi = torch.as_tensor(users[held]), torch.as_tensor(items[held])

    def batch_losses() -> Iterator[torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
        for u, i in minibatches(arrays, args.batch_size, rng):
            neg = torch.multinomial(q, negatives, replacement=True)
            loss = sampled_softmax_loss(model.user_vectors(u), model.item_vectors(), i, neg, log_q)
            loss = loss + args.reg * model.user(u).pow(2).sum(-1).mean()
            yield loss

    train_epoch = epoch_of(opt, batch_losses)

    def held_loss() -> float:
        return float(softmax_loss(model, hu, hi, 0.0))

    return model, fit(model, train_epoch, lambda: {"held_out_ce": held_loss()}, args.epochs, args.patience,
                      desc=desc, select="held_out_ce", minimize=True)


def cmf_rows(
    target: tuple[np.ndarray, np.ndarray, np.ndarray],
    source: tuple[np.ndarray, np.ndarray, np.ndarray],
    n_target_items: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Both domains' (users, items, ratings) in one item space: target ids 1..Nt, source ids Nt+1..Nt+Ns."""
    return (
        np.concatenate([target[0], source[0]]),
        np.concatenate([target[1], source[1] + n_target_items]),
        np.concatenate([target[2], source[2]]),
    )
