"""Pretraining the domain models of the bridges, and the MF baselines of the cold-start rating protocol.

* ``train_rating_mf``: explicit-rating MF with biases (squared error + L2), Adam, early stopping on a
  validation RMSE. TGT is this on the target training ratings; CMF is this on both domains' ratings with one
  shared user table (source item ids shifted after the target's, see ``cmf_rows``).
* ``train_softmax_mf``: implicit-feedback MF (sampled softmax), early stopping on held-out full-softmax loss.

Validation is a callable the caller builds: a held-out slice of the training ratings when pretraining, the
valid cold users when the model itself is being selected. Test users never reach this module.
Run through `cdrec train bridge` or `python -m bench.cold_start`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from pydantic import Field
from pydantic.dataclasses import dataclass as pydantic_dataclass
from pydantic_settings import CliSuppress
from tqdm.auto import tqdm

from training.models.mf import MF, MFConfig, rating_loss, sampled_softmax_loss, softmax_loss


@pydantic_dataclass
class MFArgs:
    """Options of the MF pretraining (bridge ptupcdr's --mf.*)."""

    dim: int = Field(32, ge=1, description="MF embedding size")
    lr: float = Field(3e-3, gt=0, description="Adam learning rate")
    reg: float = Field(0.2, ge=0, description="L2 weight")
    epochs: int = Field(60, ge=1, description="most epochs")
    patience: int = Field(4, ge=1, description="epochs without a better held-out error before stopping")
    batch_size: int = Field(1024, ge=1, description="ratings per step")
    init_std: float = Field(0.01, gt=0, description="std of the initial embeddings")
    bias_damping: float = Field(
        5.0, ge=0, description="biases start at damped mean deviations (items first, then users)"
    )
    # `cdrec train bridge ptupcdr` sets it to its --seed: no flag of its own
    seed: CliSuppress[int] = Field(0, description="seed of the MF weights and batches")


@dataclass
class Stopped:
    best_epoch: int
    best: float  # the validation value at best_epoch (lower is better)
    history: list[float]


def fit_min(
    model: torch.nn.Module,
    train_epoch: Callable[[int], float],
    validate: Callable[[], float],
    epochs: int,
    patience: int,
    desc: str,
    start_valid: bool = False,
) -> Stopped:
    """Train until ``validate()`` (lower is better) stops improving; leave ``model`` at its best weights.
    ``start_valid``: the untrained (warm-started) weights are a candidate too, as epoch -1."""
    best, best_epoch, best_state, waited, history = float("inf"), -1, None, 0, []
    if start_valid:
        model.eval()
        with torch.no_grad():
            best = float(validate())
        best_state = copy.deepcopy(model.state_dict())
    bar = tqdm(range(epochs), desc=desc, unit="epoch", leave=False)
    for epoch in bar:
        model.train()
        loss = train_epoch(epoch)
        model.eval()
        with torch.no_grad():
            value = float(validate())
        history.append(value)
        bar.set_postfix(loss=f"{loss:.4f}", valid=f"{value:.4f}")
        if value < best:
            best, best_epoch, waited = value, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            waited += 1
            if waited >= patience:
                break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return Stopped(best_epoch, best, history)


def minibatches(arrays: list[np.ndarray], batch_size: int, rng: np.random.Generator) -> Iterator[list[torch.Tensor]]:
    """Aligned mini-batches of every array (rows shuffled) as tensors."""
    order = rng.permutation(len(arrays[0]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        yield [torch.as_tensor(a[idx]) for a in arrays]


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
) -> tuple[MF, Stopped]:
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

    def train_epoch(epoch: int) -> float:
        total, n = 0.0, 0
        for u, i, r in minibatches(arrays, args.batch_size, rng):
            loss = rating_loss(model, u, i, r, args.reg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, n = total + loss.item(), n + 1
        return total / max(1, n)

    return model, fit_min(model, train_epoch, check, args.epochs, args.patience, desc)


def sampler(items: np.ndarray, n_items: int, power: float = 0.75) -> torch.Tensor:
    """log q over ids 0..n_items: counts^power (+1 smoothing), never padding. For sampled negatives."""
    counts = np.bincount(items, minlength=n_items + 1).astype(np.float64) + 1.0
    q = counts**power
    q[0] = 0.0
    q /= q.sum()
    return torch.as_tensor(np.log(np.maximum(q, 1e-30)), dtype=torch.float32)


def train_softmax_mf(
    users: np.ndarray,
    items: np.ndarray,
    n_users: int,
    n_items: int,
    args: MFArgs,
    negatives: int = 2048,
    desc: str = "mf",
) -> tuple[MF, Stopped]:
    """Implicit-feedback MF trained by sampled softmax (shared popularity-sampled negatives, log-Q corrected);
    5% of the rows held out for early stopping on the full-catalogue cross-entropy."""
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    fit_idx, held = holdout(len(users), 0.05, args.seed)
    model = MF(MFConfig(n_users, n_items, args.dim, 0.0, args.init_std))
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    arrays = [users[fit_idx], items[fit_idx]]
    log_q = sampler(items[fit_idx], n_items)
    q = log_q.exp()
    hu, hi = torch.as_tensor(users[held]), torch.as_tensor(items[held])

    def train_epoch(epoch: int) -> float:
        total, n = 0.0, 0
        for u, i in minibatches(arrays, args.batch_size, rng):
            neg = torch.multinomial(q, negatives, replacement=True)
            loss = sampled_softmax_loss(model.user_vectors(u), model.item_vectors(), i, neg, log_q)
            loss = loss + args.reg * model.user(u).pow(2).sum(-1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, n = total + loss.item(), n + 1
        return total / max(1, n)

    def held_loss() -> float:
        return float(softmax_loss(model, hu, hi, 0.0))

    return model, fit_min(model, train_epoch, held_loss, args.epochs, args.patience, desc)


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
