"""SASRec (Kang & McAuley, ICDM 2018): the single-domain sequential baseline.

``SASRec.forward(seq)`` is the serving signature: (B, T) int64 left-padded item ids -> (B, D) user vector,
the hidden state at the most recent position; scores are dot products with ``item_vectors()``. Training uses
``sequence_loss``: full-softmax cross-entropy of the next item at every real position (no sampled negatives).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from training.models.layers import EncoderConfig, SequenceEncoder


@dataclass
class SASRecConfig:
    n_items: int  # real items; ids 1..n_items, 0 = padding
    dim: int = 64
    layers: int = 2
    heads: int = 2
    dropout: float = 0.2
    max_len: int = 50


class SASRec(nn.Module):
    def __init__(self, cfg: SASRecConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.item_emb = nn.Embedding(cfg.n_items + 1, cfg.dim, padding_idx=0)
        nn.init.normal_(self.item_emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        enc = EncoderConfig(cfg.dim, cfg.layers, cfg.heads, cfg.dropout, cfg.max_len)
        self.encoder = SequenceEncoder(enc, causal=True)

    def config_dict(self) -> dict[str, object]:
        return asdict(self.cfg)

    def hidden(self, seq: torch.Tensor) -> torch.Tensor:
        """(B, T) -> (B, T, D) hidden state at every position."""
        pad = seq == 0
        x = self.item_emb(seq) * (self.cfg.dim**0.5)
        return self.encoder(x, pad)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """Serving tower: (B, T) item ids -> (B, D) user vector."""
        return self.hidden(seq)[:, -1, :]

    def item_vectors(self) -> torch.Tensor:
        """(n_items + 1, D) item vectors; row 0 is padding."""
        return self.item_emb.weight

    def score(self, seq: torch.Tensor) -> torch.Tensor:
        return self(seq) @ self.item_vectors().T  # (B, N+1)


def sequence_loss(model: SASRec, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-item cross-entropy over the full catalogue at every position whose label is a real item."""
    h = model.hidden(inputs)  # (B, T, D)
    real = labels > 0
    logits = h[real] @ model.item_vectors().T  # (M, N+1), M = real positions
    logits[:, 0] = -1e9
    return F.cross_entropy(logits, labels[real])
