"""What a model serves, declared by the model itself: the ``Serving`` spec export builds its graphs from.

Every exportable model (training/models/*.py) has a ``serving()`` method returning a ``Serving``: its role, the
module export writes as ONNX (whose ``forward`` is exactly the graph's signature and whose ``item_vectors()``
is the item space it scores against), which domains' sequences the graph reads, the output item space and the
longest sequences. A model that cannot be served (it takes user ids, say) raises ``NotServable`` from
``serving()`` with the reason; a model with no ``serving()`` declares nothing and export refuses it. So export
(export/towers.py) needs no duck typing and no branch per model kind, and a new model is one model file (with
its ``serving()``) plus its trainer.

Roles, and the ONNX signature of ``module``:
* ``user_tower``: ``(target_seq (B, T), source_seq (B, S)) -> (B, D)`` in the target item space; a model that
  reads the target history alone wraps itself in ``TargetOnly`` (the source input is accepted and unused).
  With ``text`` set the tower's items come from their text (UniSRec) and export adds the text item graph.
* ``intents``: a K-vector user encoder (DSS): the model reads the target sequence and gives (B, K, D); export
  routes it to export/dss.py, which writes K vectors under ``intent_score="max"`` or their presence-weighted
  sum under ``"weighted"``.
* ``bridge``: ``(source_seq (B, S)) -> (B, D)`` in the target item space (cold start).

Imports torch.nn only (no training code): export reads this module beside the model files.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

Role = Literal["user_tower", "intents", "bridge"]
Reads = Literal["target", "source"]
# how a K-vector user's lists merge (training/models/dss.py ``MERGES``): "weighted" exports one vector
INTENT_SCORES = ("max", "weighted", "quota", "round-robin", "head3")


class NotServable(Exception):
    """Raised by ``serving()`` of a model that has no serving graph; the message says why and what to export."""


@dataclass(frozen=True)
class TextItems:
    """The text half of a text-item model: sentence vectors (B, E) -> item vectors (B, D) of the same space."""

    tower: nn.Module
    text_model: str  # the sentence model whose vectors ``tower`` reads


@dataclass(frozen=True)
class Serving:
    """One model's serving declaration (module docstring)."""

    role: Role
    module: nn.Module  # what export writes: forward = the ONNX signature of ``role``; item_vectors() (N + 1, D)
    reads: tuple[Reads, ...]  # the domains whose sequences the graph reads, in input order
    n_target_items: int  # the output item space: real items of the target domain (ids 1..n)
    max_len: int  # longest sequence of the graph's first input (the target's; a bridge's source)
    n_source_items: int | None = None  # real items of the source domain, when the graph reads source ids
    source_max_len: int | None = None  # longest source sequence of a user tower (None: max_len)
    text: TextItems | None = None  # a text-item model's text tower (role user_tower)
    intents: int | None = None  # K, role intents
    intent_score: str | None = None  # "max" | "weighted" | "quota" | "round-robin" | "head3", role intents

    def __post_init__(self) -> None:
        if self.role == "intents" and (self.intents is None or self.intent_score not in INTENT_SCORES):
            raise ValueError(f"an intents declaration gives intents (K) and an intent_score in {INTENT_SCORES}")
        if ("source" in self.reads) != (self.n_source_items is not None):
            raise ValueError("n_source_items is given exactly when the graph reads the source domain")


class TargetOnly(nn.Module):
    """A model reading one target sequence as a user tower: ``(target_seq, source_seq) -> model(target_seq)``;
    the source input is part of the signature every user tower shares, and unused."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, target_seq: torch.Tensor, source_seq: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(target_seq)  # (B, T) -> (B, D); source_seq is unused
        return out

    def item_vectors(self) -> torch.Tensor:
        out: torch.Tensor = self.model.item_vectors()  # type: ignore[operator]
        return out
