"""SASRec (Kang & McAuley, ICDM 2018): the single-domain sequential baseline.

``SASRec.forward(seq)`` is the serving signature: (B, T) int64 left-padded item ids -> (B, D) user vector,
the hidden state at the most recent position; scores are dot products with ``item_vectors()``. Training uses
``sequence_loss``: full-softmax cross-entropy of the next item at every real position (no sampled negatives).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from training.models.layers import EncoderConfig, SequenceEncoder, item_embedding
from training.models.serving import Serving, TargetOnly


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
        self.item_emb = item_embedding(cfg.n_items, cfg.dim)
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

    def serving(self) -> Serving:
        """A user tower reading the target history alone (models/serving.py)."""
        return Serving("user_tower", TargetOnly(self), ("target",), self.cfg.n_items, self.cfg.max_len)


def softmax_loss(
    h: torch.Tensor,
    labels: torch.Tensor,
    items: torch.Tensor,
    negatives: int = 0,
    sampler: torch.Tensor | None = None,
    logq: float = 1.0,
) -> torch.Tensor:
    """Next-item cross-entropy of hidden states ``h`` (M, D) against ``labels`` (M,) over item vectors (N+1, D).

    ``h`` may also be (M, K, D), K vectors per row (DSS's intents): an item then scores its best dot product.
    ``negatives=0``: the full catalogue. ``negatives>0``: a sampled softmax over the label and that many items
    shared by the batch, drawn from ``sampler`` (N+1 probabilities; uniform when None) with the logQ
    correction, so the sampled loss is an unbiased stand-in for the full one; accidental hits are masked. On
    CPU the full softmax's exp over M x N logits dominates training, and this is ~N/negatives times cheaper.
    ``logq`` weighs the correction: 1 (True) the full one; 0 (False) drops it, and items are then pushed down in
    proportion to how often they are drawn, a popularity penalty learned into the scores; in between, a part of
    that penalty (DSS's ``DSSArgs.logq``).
    """
    if negatives <= 0 or negatives >= items.shape[0] - 1:
        logits = best_dot(h, items)  # (M, N+1)
        is_pad = torch.arange(items.shape[0], device=h.device) == 0
        # out of place: the max over K vectors needs its output for the backward pass
        return F.cross_entropy(logits.masked_fill(is_pad[None, :], -1e9), labels)
    if sampler is None:
        sampler = torch.ones(items.shape[0], device=h.device)
        sampler[0] = 0
        sampler = sampler / sampler.sum()
    neg = torch.multinomial(sampler, negatives, replacement=True)  # (S,)
    log_q = float(logq) * torch.log(sampler * negatives + 1e-12) if logq else torch.zeros_like(sampler)
    pos = (h * (items[labels] if h.dim() == 2 else items[labels][:, None])).sum(-1)  # (M,) or (M, K)
    pos_logit = (pos if h.dim() == 2 else pos.amax(dim=1)) - log_q[labels]  # (M,)
    neg_logit = best_dot(h, items[neg]) - log_q[neg][None, :]  # (M, S)
    neg_logit = neg_logit.masked_fill(neg[None, :] == labels[:, None], -1e9)
    logits = torch.cat([pos_logit[:, None], neg_logit], dim=1)  # (M, 1 + S)
    return F.cross_entropy(logits, torch.zeros_like(labels))


def best_dot(h: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """(M, D) or (M, K, D) against (S, D) -> (M, S): the dot product, or the best of the K."""
    if h.dim() == 2:
        return h @ items.T
    return torch.einsum("mkd,sd->mks", h, items).amax(dim=1)


def popularity_sampler(labels: np.ndarray, n_items: int, power: float = 0.75) -> torch.Tensor:
    """Negative-sampling distribution ∝ (count + 1) ** power over items 1..n_items (0 never drawn)."""
    counts = np.bincount(labels[labels > 0], minlength=n_items + 1).astype(np.float64) + 1.0
    probs = counts**power
    probs[0] = 0.0
    return torch.as_tensor(probs / probs.sum(), dtype=torch.float32)


def sequence_loss(
    model: SASRec,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    negatives: int = 0,
    sampler: torch.Tensor | None = None,
    n_output: int | None = None,
) -> torch.Tensor:
    """Next-item cross-entropy at every position whose label is a real item (see ``softmax_loss``).

    ``n_output``: only items 1..n_output are candidates (the merged baseline reads both domains' items but
    predicts target items only); labels must then lie in that range.
    """
    h = model.hidden(inputs)  # (B, T, D)
    real = labels > 0
    items = model.item_vectors() if n_output is None else model.item_vectors()[: n_output + 1]
    return softmax_loss(h[real], labels[real], items, negatives, sampler)
