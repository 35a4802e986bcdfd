"""Self-attention blocks shared by the sequence models (SASRec, GURU, CDSRec, UniSRec).

Padding convention (core.sequence): id 0, on the left. A query may attend to keys at or before its own
position that are not padding; every position may always attend to itself, so a fully padded row still has
one finite attention weight per query and the output stays finite (never NaN). Pure tensor maths only, so
the blocks export to ONNX with dynamic batch and length axes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class EncoderConfig:
    dim: int = 64
    layers: int = 2
    heads: int = 2
    dropout: float = 0.2
    max_len: int = 50


def attention_mask(pad: torch.Tensor, causal: bool) -> torch.Tensor:
    """Boolean (B, 1, T, T) mask, True where a query may attend. ``pad`` is (B, T), True at padding."""
    T = pad.shape[1]
    ar = torch.arange(T, device=pad.device)
    allowed = ~pad[:, None, None, :]  # (B, 1, 1, T): keys that are real items
    if causal:
        allowed = allowed & (ar[None, :] <= ar[:, None])[None, None]  # (B, 1, T, T)
    # the diagonal built by comparison, not torch.eye: onnxruntime has no boolean EyeLike kernel
    eye = (ar[:, None] == ar[None, :])[None, None]
    return allowed | eye


class SelfAttention(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        assert cfg.dim % cfg.heads == 0, "dim must divide by heads"
        self.heads = cfg.heads
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(x).split(D, dim=2)
        q = q.view(B, T, self.heads, D // self.heads).transpose(1, 2)  # (B, H, T, Dh)
        k = k.view(B, T, self.heads, D // self.heads).transpose(1, 2)
        v = v.view(B, T, self.heads, D // self.heads).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(D // self.heads)  # (B, H, T, T)
        att = att.masked_fill(~mask, -1e9)
        att = self.drop(F.softmax(att, dim=-1))
        y = (att @ v).transpose(1, 2).reshape(B, T, D)  # (B, T, D)
        return self.drop(self.proj(y))


class Block(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.dim)
        self.attn = SelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.dim)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.dim, 4 * cfg.dim), nn.GELU(), nn.Linear(4 * cfg.dim, cfg.dim), nn.Dropout(cfg.dropout)
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), mask)
        return x + self.mlp(self.ln2(x))


class SequenceEncoder(nn.Module):
    """Embedded sequence (B, T, D) + padding flags (B, T) -> hidden states (B, T, D)."""

    def __init__(self, cfg: EncoderConfig, causal: bool = True) -> None:
        super().__init__()
        self.causal = causal
        self.pos = nn.Embedding(cfg.max_len, cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.ln = nn.LayerNorm(cfg.dim)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        T = x.shape[1]
        # positions count back from the most recent item, so the newest is always position 0 whatever T is.
        # (T - 1) - arange, not a descending arange: onnxruntime's GatherToSliceFusion turns the latter into an
        # empty Slice, silently zeroing the position embeddings
        pos = (T - 1) - torch.arange(T, device=x.device)
        x = self.drop(x + self.pos(pos)[None])
        x = x.masked_fill(pad[..., None], 0.0)
        mask = attention_mask(pad, self.causal)
        for block in self.blocks:
            x = block(x, mask)
        return self.ln(x)


def item_embedding(n_items: int, dim: int) -> nn.Embedding:
    """Item vectors for ids 1..n_items, row 0 (padding) zero and kept zero; small normal init (SASRec's)."""
    emb = nn.Embedding(n_items + 1, dim, padding_idx=0)
    nn.init.normal_(emb.weight, std=0.02)
    with torch.no_grad():
        emb.weight[0].zero_()
    return emb
