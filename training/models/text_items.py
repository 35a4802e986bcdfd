"""UniSRec's item encoder from text vectors (Hou et al., KDD 2022, §2.2): parametric whitening + MoE adapter.

A frozen sentence encoder gives every item a text vector x (text_dim). Each of G experts whitens it with its own
learned bias and projection, ``e_g = (x - b_g) W_g`` (text_dim -> D), and a softmax gate over x mixes them:
``v = sum_g softmax(x G + noise)_g e_g``. The gate noise (std = softplus(x W_noise) + eps, as in the paper's
noisy gating) is drawn only in training mode; dropout on x is also training-only. ``forward`` is pure tensor
maths (no branch on data values), so the adapter exports to ONNX as the item tower of a new item.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class TextItemsConfig:
    text_dim: int = 384  # the sentence encoder's output size
    dim: int = 64  # item / user vector size
    experts: int = 8  # G
    dropout: float = 0.2  # on the text vector before whitening (training only)
    gate_noise: float = 1e-2  # minimum std of the gate noise (training only)


class MoEAdapter(nn.Module):
    """(..., text_dim) text vectors -> (..., D) item representations (not normalised)."""

    def __init__(self, cfg: TextItemsConfig) -> None:
        super().__init__()
        self.cfg = cfg
        G, E, D = cfg.experts, cfg.text_dim, cfg.dim
        self.bias = nn.Parameter(torch.zeros(G, E))  # b_g: the whitening centre of each expert
        # W_g with std 1/sqrt(E): a unit-norm text vector maps to item vectors of roughly unit-size components
        self.weight = nn.Parameter(torch.randn(G, E, D) / E**0.5)
        self.gate = nn.Parameter(torch.zeros(E, G))  # zero: the experts start evenly mixed
        self.noise = nn.Parameter(torch.zeros(E, G))
        self.drop = nn.Dropout(cfg.dropout)

    @torch.no_grad()
    def centre_on(self, text_vecs: torch.Tensor) -> None:
        """Start every expert's whitening bias at the mean text vector: sentence vectors share a large common
        direction (anisotropy), and centring it away lets W spend its capacity on what tells items apart."""
        self.bias.copy_(text_vecs.mean(dim=0).expand_as(self.bias))

    def gate_weights(self, x: torch.Tensor) -> torch.Tensor:
        """(..., E) -> (..., G) mixing weights summing to 1; noisy in training mode only."""
        logits = x @ self.gate
        if self.training:  # a mode switch, not a branch on data: eval/ONNX graphs never contain it
            std = F.softplus(x @ self.noise) + self.cfg.gate_noise
            logits = logits + torch.randn_like(logits) * std
        return F.softmax(logits, dim=-1)

    def experts(self, x: torch.Tensor) -> torch.Tensor:
        """(..., E) -> (..., G, D) whitened projections (x - b_g) W_g of every expert."""
        G, E, D = self.weight.shape
        # (x - b_g) W_g = x W_g - b_g W_g: one (E, G*D) matmul instead of G copies of x, so the whole
        # catalogue (~20k items) passes through every training step cheaply
        xw = (x @ self.weight.permute(1, 0, 2).reshape(E, G * D)).reshape(*x.shape[:-1], G, D)  # (..., G, D)
        bw = torch.einsum("ge,ged->gd", self.bias, self.weight)  # (G, D)
        return xw - bw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(x)
        gates = self.gate_weights(x)  # (..., G)
        return (gates.unsqueeze(-1) * self.experts(x)).sum(dim=-2)  # (..., D)


class TextTower(nn.Module):
    """The serving item tower of a NEW item: text vectors (B, text_dim) -> normalised item vectors (B, D).

    Only the inductive part (the adapter): a new item has no id embedding. It shares the adapter's parameters
    with the model it came from, so it always matches that model's ``item_vectors()`` for text-only items.
    """

    def __init__(self, adapter: MoEAdapter) -> None:
        super().__init__()
        self.adapter = adapter

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.adapter(text), dim=-1)
