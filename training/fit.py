"""Early stopping on validation NDCG@10, shared by every ranking trainer.

Each trainer script keeps its own explicit loop for one epoch (``train_epoch``) and its own evaluation; this
only decides when to stop, keeps the best weights and writes the checkpoint.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn
from tqdm.auto import tqdm

from training import checkpoint

SELECT_ON = "NDCG@10"


@dataclass
class SeqArgs:
    """The options every sequence trainer shares (SASRec, GURU, CDSRec, UniSRec); each trainer's Args extends
    it (a subclass may redeclare a field to change its default; the field keeps its place)."""

    epochs: int = 30
    patience: int = 3
    batch_size: int = 128
    lr: float = 3e-3
    dim: int = 64
    layers: int = 2
    heads: int = 2
    dropout: float = 0.2
    max_len: int = 50


@dataclass
class FitResult:
    best_epoch: int
    valid: dict[str, float]
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
) -> FitResult:
    """Run ``train_epoch`` until validation NDCG@10 stops improving; leave ``model`` at its best weights."""
    best, best_epoch, best_state, waited = -1.0, -1, None, 0
    history: list[dict[str, float]] = []
    times: list[float] = []
    bar = tqdm(range(epochs), desc=desc, unit="epoch", leave=False)
    for epoch in bar:
        model.train()
        start = time.perf_counter()
        loss = train_epoch(epoch)
        times.append(time.perf_counter() - start)
        model.eval()
        metrics = validate()
        history.append({"epoch": epoch, "loss": loss, **metrics})
        bar.set_postfix(loss=f"{loss:.4f}", ndcg10=f"{metrics[SELECT_ON]:.4f}")
        if metrics[SELECT_ON] > best:
            best, best_epoch, waited = metrics[SELECT_ON], epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            waited += 1
            if waited >= patience:
                break
    bar.close()
    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval()
    valid = {k: v for k, v in history[best_epoch].items() if k not in ("epoch", "loss")}
    path = None
    if out is not None:
        path = checkpoint.save(out, model, {**(meta or {}), "valid": valid, "best_epoch": best_epoch}, items)
    return FitResult(best_epoch, valid, sum(times) / len(times), history, path)
