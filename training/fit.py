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

from pydantic import Field
from pydantic.dataclasses import dataclass as pydantic_dataclass
from torch import nn
from tqdm.auto import tqdm

from training import checkpoint

SELECT_ON = "NDCG@10"


@pydantic_dataclass
class SeqArgs:
    """The options every sequence trainer shares (SASRec, GURU, CDSRec, UniSRec, DSS); each trainer's args model
    extends it (a subclass may redeclare a field to change its default; the field keeps its place). These
    defaults are the only ones: `cdrec train` reads its flags from these fields (training/config.py), and the
    recorded bench results were measured with them (batch 128, lr 3e-3)."""

    epochs: int = Field(30, ge=1, description="most training epochs")
    patience: int = Field(3, ge=1, description="epochs without a better validation NDCG@10 before stopping")
    batch_size: int = Field(128, ge=1, description="training rows per step")
    lr: float = Field(3e-3, ge=0, description="AdamW learning rate")
    dim: int = Field(64, ge=1, description="embedding and hidden size")
    layers: int = Field(2, ge=1, description="encoder layers")
    heads: int = Field(2, ge=1, description="attention heads per layer")
    dropout: float = Field(0.2, ge=0, lt=1, description="dropout in the encoder")
    max_len: int = Field(
        50, ge=1, description="longest history read, most recent items kept (env: CDREC_DATA__MAX_LEN)"
    )
    seed: int = Field(0, description="seed of the weights, the batches, the negatives (and of `--data synthetic`)")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    negatives: int = Field(2048, ge=0, description="shared sampled negatives per batch (0: full softmax)")


@pydantic_dataclass
class NextItemArgs(SeqArgs):
    """Next-item trainers on one domain's sequences with popularity-sampled negatives (SASRec, DSS)."""

    neg_power: float = Field(
        1.0, ge=0, description="negatives drawn by popularity ** neg_power (0: uniform), logQ-corrected"
    )


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
