"""CDSRec (RecGURU's recommender): a short-term target-sequence encoder fused by attention with the GURs of
both domains; the user tower the service runs for every warm user.

``CDSRec.forward(target_seq, source_seq)`` is the ONNX serving signature: (B, T) target ids and (B, T')
source ids, both left padded (0 = padding) -> (B, D) user vector in the target item space; scores are dot
products with ``item_vectors()`` (the target item embeddings, shared with GURU's target domain). Unlike the
official code, the source history is an explicit input, so the other domain reaches the user directly and not
only through shared weights.

Per prediction point the fusion attends from the short-term state ``s`` (a causal self-attention encoder over
the most recent ``short_window`` target items) over ``s`` itself, the target-domain GUR and the source-domain
GUR at every source position before the prediction point; keys of an empty domain are masked out and ``s`` is
always a key, so an all-padding input gives a finite vector (a learned "no history" state stands in for ``s``).

Training (``training/train_cdsrec.py``) evaluates ``states`` at every target position at once: the state that
predicts target item t reads the target items before t and, through ``source_idx``, the source GURs up to the
last source item strictly before t in time. Because every encoder is causal with positions counted from the first
real item, that state equals ``forward`` on the strictly-before histories alone: no leakage, and training
matches serving exactly (tests/training/test_cdsrec.py pins both).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from training.models.guru import GURU, CausalEncoder, GURUConfig
from training.models.layers import EncoderConfig


@dataclass
class CDSRecConfig:
    n_target: int
    n_source: int
    dim: int = 64
    layers: int = 2  # GURU encoder layers
    heads: int = 2
    dropout: float = 0.2
    max_len: int = 50
    encoder: str = "transformer"  # GURU encoder: "transformer" | "lstm"
    adversarial: bool = True
    short_layers: int = 1
    short_window: int = 0  # short-term encoder sees the last this many target items; 0 = all of max_len

    def guru_config(self) -> GURUConfig:
        return GURUConfig(
            self.n_target, self.n_source, self.dim, self.layers, self.heads, self.dropout, self.max_len,
            self.encoder, self.adversarial,
        )


class AttentionFusion(nn.Module):
    """Multi-head attention from the short-term state over the GURs: [itself, the target GUR, the source GUR at
    every allowed source position], then a residual and a layer norm.

    Attending over the source GUR sequence (not only its last state) lets the current target context pick the
    source items that matter, as the merged-sequence baseline can; the GURs themselves stay context-free.
    """

    def __init__(self, dim: int, heads: int, max_len: int) -> None:
        super().__init__()
        self.heads, self.max_len = heads, max_len
        self.scale = 1.0 / math.sqrt(dim // heads)
        self.gur_proj = nn.Linear(dim, dim)
        self.recency = nn.Embedding(max_len, heads)  # bias per head by how many source items back a key is
        nn.init.zeros_(self.recency.weight)
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        # zero-initialised output: training starts from the short-term encoder alone and adds what the GURs
        # bring only as far as it helps
        nn.init.zeros_(self.o.weight)
        nn.init.zeros_(self.o.bias)
        self.ln = nn.LayerNorm(dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        return x.view(B, T, self.heads, D // self.heads).transpose(1, 2)  # (B, H, T, Dh)

    def forward(
        self,
        s: torch.Tensor,
        g_t: torch.Tensor,
        g_s: torch.Tensor,
        has_t: torch.Tensor,
        source_mask: torch.Tensor,
        source_back: torch.Tensor,
    ) -> torch.Tensor:
        """s, g_t: (B, T, D); g_s: (B, T', D); has_t: (B, T); source_mask: (B, T, T') True where query t may
        read source column t'; source_back: (B or 1, T, T') how many source items before the query's newest
        allowed one column t' is -> (B, T, D)."""
        B, T, D = s.shape
        q = self._split(self.q(s))  # (B, H, T, Dh)
        own = torch.stack([s, self.gur_proj(g_t)], dim=2)  # (B, T, 2, D): per-query keys
        own_k = self.k(own).view(B, T, 2, self.heads, D // self.heads).permute(0, 3, 1, 2, 4)  # (B, H, T, 2, Dh)
        own_v = self.v(own).view(B, T, 2, self.heads, D // self.heads).permute(0, 3, 1, 2, 4)
        src = self.gur_proj(g_s)
        src_k, src_v = self._split(self.k(src)), self._split(self.v(src))  # (B, H, T', Dh)
        own_logits = (own_k @ q[..., None]).squeeze(-1) * self.scale  # (B, H, T, 2)
        recency = self.recency(source_back.clamp(0, self.max_len - 1)).permute(0, 3, 1, 2)  # (B|1, H, T, T')
        src_logits = (q @ src_k.transpose(-2, -1)) * self.scale + recency  # (B, H, T, T')
        own_ok = torch.stack([torch.ones_like(has_t), has_t], dim=-1)[:, None]  # (B, 1, T, 2)
        logits = torch.cat([own_logits.masked_fill(~own_ok, -1e9),
                            src_logits.masked_fill(~source_mask[:, None], -1e9)], dim=-1)
        att = torch.softmax(logits, dim=-1)  # (B, H, T, 2 + T'); the query itself is always allowed
        mixed = (att[..., :2, None] * own_v).sum(dim=-2) + att[..., 2:] @ src_v  # (B, H, T, Dh)
        mixed = mixed.transpose(1, 2).reshape(B, T, D)
        return self.ln(s + self.o(mixed))


class CDSRec(nn.Module):
    def __init__(self, cfg: CDSRecConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.guru = GURU(cfg.guru_config())
        enc = EncoderConfig(cfg.dim, cfg.short_layers, cfg.heads, cfg.dropout, cfg.max_len)
        self.short = CausalEncoder(enc, "transformer", window=cfg.short_window)
        self.empty = nn.Parameter(torch.zeros(cfg.dim))  # the short-term state of an empty target history
        self.fusion = AttentionFusion(cfg.dim, cfg.heads, cfg.max_len)

    def item_vectors(self) -> torch.Tensor:
        """(n_target + 1, D) target item vectors; row 0 is padding."""
        return self.guru.item_vectors()

    def encode(self, target_seq: torch.Tensor, source_seq: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Causal states at every column: short-term (B, T, D), target GUR (B, T, D), source GUR (B, T', D)."""
        x = self.guru.item_emb[0](target_seq) * math.sqrt(self.cfg.dim)
        s = self.short(x, target_seq == 0)
        return s, self.guru.latents(target_seq, 0), self.guru.latents(source_seq, 1)

    def fuse(
        self,
        s: torch.Tensor,
        g_t: torch.Tensor,
        g_s: torch.Tensor,
        has_t: torch.Tensor,
        source_mask: torch.Tensor,
        source_back: torch.Tensor,
    ) -> torch.Tensor:
        """Short-term states (B, T, D) + GURs -> user vectors (B, T, D); see ``AttentionFusion``."""
        s = torch.where(has_t[..., None], s, self.empty)
        return self.fusion(s, g_t, g_s, has_t, source_mask, source_back)

    def states(self, target_seq: torch.Tensor, source_seq: torch.Tensor, source_idx: torch.Tensor) -> torch.Tensor:
        """Training path: the user vector after every target column, (B, T, D).

        ``source_idx`` (B, T): for each target column, the column of ``source_seq`` holding the last source item
        strictly before the target item predicted there; -1 when there is none.
        """
        return self.states_and_gurs(target_seq, source_seq, source_idx)[0]

    def states_and_gurs(
        self, target_seq: torch.Tensor, source_seq: torch.Tensor, source_idx: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``states`` plus the GURs it read (target (B, T, D), source (B, T', D)), for GURU's own losses."""
        s, g_t, g_s = self.encode(target_seq, source_seq)
        cols = torch.arange(source_seq.shape[1], device=source_seq.device)
        back = source_idx[..., None] - cols  # (B, T, T'): < 0 for source items at or after the predicted one
        source_mask = (back >= 0) & (source_seq != 0)[:, None, :]
        return self.fuse(s, g_t, g_s, target_seq != 0, source_mask, back), g_t, g_s

    def forward(self, target_seq: torch.Tensor, source_seq: torch.Tensor) -> torch.Tensor:
        """Serving tower: (B, T) target ids, (B, T') source ids -> (B, D) user vector in target item space."""
        s, g_t, g_s = self.encode(target_seq, source_seq)
        cols = torch.arange(source_seq.shape[1], device=source_seq.device)
        back = (cols[-1:] - cols)[None, None, :]  # (1, 1, T'): every source item is in the past
        source_mask = (source_seq != 0)[:, None, :]  # (B, 1, T')
        return self.fuse(s[:, -1:], g_t[:, -1:], g_s, target_seq[:, -1:] != 0, source_mask, back)[:, 0]

    def score(self, target_seq: torch.Tensor, source_seq: torch.Tensor) -> torch.Tensor:
        return self(target_seq, source_seq) @ self.item_vectors().T  # (B, N+1)
