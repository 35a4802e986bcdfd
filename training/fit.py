"""The one training loop with early stopping, shared by every trainer (ranking models, MF, the bridges).

Each trainer keeps its own explicit ``train_epoch`` and builds its own validation; ``fit`` runs the epochs,
validates after each, keeps the best weights on ``select`` (validation NDCG@10 by default: maximised; with
``minimize`` an error such as RMSE), stops after ``patience`` epochs without a better value, and writes the
checkpoint (training.checkpoint) when given a path.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from training import checkpoint

SELECT_ON = "NDCG@10"


@dataclass
class FitResult:
    best_epoch: int  # -1: the starting weights (``start_valid``) stayed the best
    valid: dict[str, float]  # the validation metrics of the kept weights
    epoch_s: float  # mean wall time of one training epoch
    history: list[dict[str, float]] = field(default_factory=list)
    checkpoint: Path | None = None


def fit(
    model: nn.Module,
    train_epoch: Callable[[int], float],
    validate: Callable[[], dict[str, float]],
    epochs: int,
    patience: int,
    out: Path | None = None,
    meta: dict[str, Any] | None = None,
    desc: str = "train",
    items: dict[str, checkpoint.Catalogue] | None = None,
    select: str = SELECT_ON,
    minimize: bool = False,
    start_valid: bool = False,
) -> FitResult:
    """Run ``train_epoch`` until ``validate()[select]`` stops improving; leave ``model`` at its best weights.

    ``minimize``: lower is better. ``start_valid``: the weights before training (warm-started) are a candidate
    too, as epoch -1. ``out``: save the best model there with ``meta`` and the ``items`` catalogue.
    """
    sign = -1.0 if minimize else 1.0
    best, best_epoch, best_state, waited = -math.inf, -1, None, 0
    start: dict[str, float] = {}
    if start_valid:
        model.eval()
        with torch.no_grad():
            start = validate()
        best, best_state = sign * start[select], copy.deepcopy(model.state_dict())
    history: list[dict[str, float]] = []
    times: list[float] = []
    bar = tqdm(range(epochs), desc=desc, unit="epoch", leave=False)
    for epoch in bar:
        model.train()
        began = time.perf_counter()
        loss = train_epoch(epoch)
        times.append(time.perf_counter() - began)
        model.eval()
        with torch.no_grad():
            metrics = validate()
        history.append({"epoch": epoch, "loss": loss, **metrics})
        bar.set_postfix({"loss": f"{loss:.4f}", select: f"{metrics[select]:.4f}"})
        if sign * metrics[select] > best:
            best, best_epoch, waited = sign * metrics[select], epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            waited += 1
            if waited >= patience:
                break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    kept = history[best_epoch] if best_epoch >= 0 else start
    valid = {k: v for k, v in kept.items() if k not in ("epoch", "loss")}
    path = None
    if out is not None:
        path = checkpoint.save(out, model, {**(meta or {}), "valid": valid, "best_epoch": best_epoch}, items)
    return FitResult(best_epoch, valid, sum(times) / max(1, len(times)), history, path)


def epoch_of(
    opt: torch.optim.Optimizer, batch_losses: Callable[[], Iterable[torch.Tensor | tuple[torch.Tensor, torch.Tensor]]]
) -> Callable[[int], float]:
    """A ``train_epoch`` for ``fit``: one optimiser step per loss that ``batch_losses()`` yields (or per pair: the
    loss to step on and the one to report, e.g. a batch-weighted loss and the plain one); the mean reported loss."""

    def train_epoch(epoch: int) -> float:
        total, n = 0.0, 0
        for item in batch_losses():
            loss, report = item if isinstance(item, tuple) else (item, item)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, n = total + report.item(), n + 1
        return total / max(1, n)

    return train_epoch
