"""DSS (training/models/dss.py) as a user encoder: the graph of the ``intents`` serving role (models/serving.py).

A DSS user is K intent vectors. With the model's default score, ``max`` over intents (``intent_scores``), the
exported graph is a **K-vector user encoder**: ``(target_seq (B, T), source_seq (B, S)) -> (B, K, D)``, the
source sequence unused (DSS reads the target history only), and the manifest records ``intents = K`` and
``intent_score = "max"``; the service then searches the K queries in one batched FAISS call and merges them
by their best score (service.adapters.faiss_index ``search_intents``). With ``score="weighted"`` an item's score is
``sum_k pi_k <phi_k, e>`` = ``<sum_k pi_k phi_k, e>``: one vector, so that model is exported as an ordinary
single-vector user encoder (``WeightedDSSTower``) and the manifest records no intents; so is a max-trained model
whose inference merge (``DSSConfig.intent_score``) is ``weighted``.

An intent-aware merge (``intent_score`` "quota" or "round-robin", training/models/dss.py ``intent_lists``) needs
each intent's presence pi_k as well as its ranking. Rather than a second graph output (which the encoder,
batcher and refresh cache would all have to carry), the graph outputs ``unit(phi_k) * pi_k`` for the intents
present above the threshold and 0 for the others (``PresenceDSSTower``): a positive scale leaves each intent's
ranking of the items unchanged, a row's norm IS its presence (0: not confident), and the signature stays
``(B, K, D)``, so a cached user is still K * D floats. The manifest records the rule; the service's
``search_intents`` reads the norms back.

``merged_top_k`` is the export side's max-over-intents top-k (parity's top-10 overlap of torch vs onnxruntime
over all K vectors).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch
from torch import nn

from export.towers import ExportError, Graph, declared, graph_from
from training.models.dss import DSS, confident


class DSSTower(nn.Module):
    """DSS with the user-encoder signature: ``(target_seq (B, T), source_seq) -> (B, K, D)`` intent vectors."""

    def __init__(self, model: DSS) -> None:
        super().__init__()
        self.model = model
        self.cfg = model.cfg  # read by ``intent_score`` and the presence tower's threshold

    def forward(self, target_seq: torch.Tensor, source_seq: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(target_seq)  # (B, T) -> (B, K, D); source_seq is unused
        return out

    def item_vectors(self) -> torch.Tensor:
        return self.model.item_vectors()


class WeightedDSSTower(DSSTower):
    """``score="weighted"`` DSS: the presence-weighted sum of the intents, ONE vector (B, D) (module docstring)."""

    def forward(self, target_seq: torch.Tensor, source_seq: torch.Tensor) -> torch.Tensor:
        phi, pi = self.model.intents(target_seq)  # (B, K, D), (B, K)
        return (pi[..., None] * phi).sum(dim=1)  # (B, D)


class PresenceDSSTower(DSSTower):
    """An intent-aware merge's export (module docstring): (B, K, D) rows ``unit(phi_k) * pi_k``, 0 below lam."""

    def forward(self, target_seq: torch.Tensor, source_seq: torch.Tensor) -> torch.Tensor:
        phi, pi = self.model.last_intents(target_seq)  # (B, K, D), (B, K)
        present = pi * confident(pi, self.cfg.lam).to(pi.dtype)  # (B, K): 0 for an intent below the threshold
        return nn.functional.normalize(phi, dim=-1) * present[..., None]


def intent_score(module: nn.Module) -> str:
    """The manifest's ``intent_score`` of an exported K-vector tower: the model's inference merge."""
    cfg = getattr(module, "cfg", None)
    return str(getattr(cfg, "intent_score", "max"))


def is_dss(model: nn.Module) -> bool:
    return isinstance(model, DSS)


def dss_graph(
    model: nn.Module,
    meta: dict[str, Any],
    path: Path | None = None,
    target: str | None = None,
    source: str | None = None,
) -> Graph:
    """A loaded DSS as a user-encoder ``Graph``: K vectors (``intents`` = K) under the max score, one vector under
    the weighted score."""
    spec = declared(model, path or "<model>")
    if not isinstance(model, DSS) or spec.role != "intents":
        raise ExportError(f"{path or '<model>'}: {type(model).__name__} is not a DSS model")
    if spec.intent_score == "weighted":  # one vector: an ordinary user tower
        tower = dataclasses.replace(spec, role="user_tower", module=WeightedDSSTower(model), intents=None)
    else:  # K vectors; an intent-aware merge exports each intent's unit vector times its presence
        aware = spec.intent_score in ("quota", "round-robin", "head3")
        module = PresenceDSSTower(model) if aware else DSSTower(model)
        tower = dataclasses.replace(spec, module=module)
    return graph_from(tower, meta, path, target, source, type(tower.module).__name__)


def merged_top_k(index: faiss.Index, queries: np.ndarray, k: int = 10) -> np.ndarray:
    """(N, K, D) intent vectors -> (N, k) rows ranked by their best score over the K intents (max), through
    ``index``: one search of the N*K queries, then per user the union of its K lists, each row at its best.
    Exact on an exact index: a row in the true top k by best score is in the top k of the intent it scores
    best with (any row above it there is above it overall)."""
    n, n_int, dim = queries.shape
    k = min(k, index.ntotal)
    scores, ids = index.search(np.ascontiguousarray(queries.reshape(n * n_int, dim), dtype=np.float32), k)
    scores, ids = scores.reshape(n, n_int * k), ids.reshape(n, n_int * k)
    out = np.full((n, k), -1, dtype=np.int64)
    for u in range(n):
        best: dict[int, float] = {}
        for row, score in zip(ids[u].tolist(), scores[u].tolist(), strict=True):
            if row >= 0 and score > best.get(row, -np.inf):
                best[row] = score
        ranked = sorted(best, key=lambda r: (-best[r], r))[:k]
        out[u, : len(ranked)] = ranked
    return out
