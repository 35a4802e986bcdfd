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
from training.models.layers import EncoderConfig, attention_mask
from training.models.serving import Serving


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

    def serving_module(self) -> nn.Module:
        """The module export writes as the ONNX user tower: ``CDSRecServing`` (same output, fewer FLOPs) for
        transformer encoders; the model itself otherwise."""
        if self.cfg.encoder != "transformer":
            return self
        return CDSRecServing(self)

    def score(self, target_seq: torch.Tensor, source_seq: torch.Tensor) -> torch.Tensor:
        return self(target_seq, source_seq) @ self.item_vectors().T  # (B, N+1)

    def serving(self) -> Serving:
        """The user tower to serve: ``serving_module()`` reading both histories (models/serving.py)."""
        cfg = self.cfg
        return Serving("user_tower", self.serving_module(), ("target", "source"), cfg.n_target, cfg.max_len,
                       n_source_items=cfg.n_source)


class CDSRecServing(nn.Module):
    """``CDSRec.forward`` computed leanly, for export (the ONNX graph of the user tower; same weights, same
    output within float error: tests/training/test_cdsrec_serving.py, and export/parity.py on every export).

    ``forward`` reads only the last column of the short-term state and of the target GUR, so their encoders'
    last layer runs its query, attention output and MLP at that column alone (keys and values still span the
    sequence); the source GUR is read at every column and runs whole. When both sequences have one length, the
    GURU layers before the last run target and source stacked as one (2B, T) batch (their weights are shared):
    one larger matmul per layer instead of two. Transformer encoders only (``CDSRec.serving_module``)."""

    def __init__(self, model: CDSRec) -> None:
        super().__init__()
        self.model = model

    def item_vectors(self) -> torch.Tensor:
        return self.model.item_vectors()

    def forward(self, target_seq: torch.Tensor, source_seq: torch.Tensor) -> torch.Tensor:
        """(B, T) target ids, (B, T') source ids -> (B, D), as ``CDSRec.forward``."""
        m, guru = self.model, self.model.guru
        B, T = target_seq.shape
        D = m.cfg.dim
        pad_t, pad_s = target_seq == 0, source_seq == 0
        x_t = guru.item_emb[0](target_seq) * math.sqrt(D) + guru.domain_emb.weight[0]  # (B, T, D)
        x_s = guru.item_emb[1](source_seq) * math.sqrt(D) + guru.domain_emb.weight[1]  # (B, T', D)
        enc = guru.encoder
        # one stacked (2B, L) batch through the shared layers before the last, both sides left padded to the
        # longer length L: exact, since states depend on relative positions only and padding keys are masked
        # (a shape computed in the graph, not a Python branch, so the ONNX graph keeps dynamic lengths)
        L = torch.maximum(torch.as_tensor(T), torch.as_tensor(source_seq.shape[1]))
        pad_t, x_t = _left_pad(pad_t, x_t, L)
        pad_s, x_s = _left_pad(pad_s, x_s, L)
        h = _layers(enc, torch.cat([x_t, x_s]), torch.cat([pad_t, pad_s]), len(enc.blocks) - 1)  # (2B, L, D)
        h_t, h_s = h[:B], h[B:]
        g_t = enc.ln(_last_block(enc, enc.blocks[-1], h_t, pad_t))  # (B, 1, D)
        g_s = enc.ln(enc.blocks[-1](h_s, *_mask_bias(enc, pad_s)))  # (B, T', D)
        short = m.short
        x, pad = guru.item_emb[0](target_seq) * math.sqrt(D), target_seq == 0
        s = short.ln(_last_block(short, short.blocks[-1], _layers(short, x, pad, len(short.blocks) - 1), pad))
        cols = torch.arange(pad_s.shape[1], device=source_seq.device)
        back = (cols[-1:] - cols)[None, None, :]  # (1, 1, L): every source item is in the past
        source_mask = ~pad_s[:, None, :]  # (B, 1, L)
        return m.fuse(s, g_t, g_s, target_seq[:, -1:] != 0, source_mask, back)[:, 0]


def _left_pad(pad: torch.Tensor, x: torch.Tensor, length: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) padding flags and (B, T, D) inputs, left padded to ``length`` columns (a 0-d tensor >= T)."""
    B, T, D = x.shape
    extra = length - T
    flags = torch.ones((B, extra), dtype=torch.bool, device=pad.device)  # type: ignore[call-overload]
    zeros = torch.zeros((B, extra, D), dtype=x.dtype, device=x.device)  # type: ignore[call-overload]
    return torch.cat([flags, pad], dim=1), torch.cat([zeros, x], dim=1)


def _mask_bias(enc: CausalEncoder, pad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The encoder's (B, 1, T, T) mask and (1, H, T, T) relative bias, as ``CausalEncoder.forward`` builds them."""
    ar = torch.arange(pad.shape[1], device=pad.device)[None, :]
    dist = ar.T - ar  # (T, T)
    bias = enc.rel(dist.clamp(0, enc.max_len - 1)).permute(2, 0, 1)[None]
    mask = attention_mask(pad, causal=True)
    if enc.window > 0:
        mask = mask & (dist < enc.window)[None, None]
    return mask, bias


def _layers(enc: CausalEncoder, x: torch.Tensor, pad: torch.Tensor, n: int) -> torch.Tensor:
    """The encoder's input masking and its first ``n`` blocks, at every column: (B, T, D) -> (B, T, D)."""
    x = x.masked_fill(pad[..., None], 0.0)
    if n == 0:
        return x
    mask, bias = _mask_bias(enc, pad)
    for block in enc.blocks[:n]:
        x = block(x, mask, bias)
    return x


def _last_block(enc: CausalEncoder, block: nn.Module, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
    """``block`` with its query at the last column only: (B, T, D) block input -> (B, 1, D) block output there."""
    B, T, D = x.shape
    attn = block.attn
    H = attn.heads
    ar = torch.arange(T, device=x.device)
    dist = T - 1 - ar  # (T,): the last column minus each key's
    bias = enc.rel(dist.clamp(0, enc.max_len - 1)).T[None, :, None, :]  # (1, H, 1, T)
    allowed = (~pad | (dist == 0)[None, :])[:, None, None, :]  # (B, 1, 1, T): real keys, and itself always
    if enc.window > 0:
        allowed = allowed & (dist < enc.window)[None, None, None, :]
    h = block.ln1(x)
    w, b = attn.qkv.weight, attn.qkv.bias
    q = nn.functional.linear(h[:, -1:], w[:D], b[:D]).view(B, 1, H, D // H).transpose(1, 2)  # (B, H, 1, Dh)
    kv = nn.functional.linear(h, w[D:], b[D:])  # (B, T, 2D)
    k = kv[..., :D].reshape(B, T, H, D // H).transpose(1, 2)  # (B, H, T, Dh)
    v = kv[..., D:].reshape(B, T, H, D // H).transpose(1, 2)
    att = torch.softmax(((q @ k.transpose(-2, -1)) * attn.scale + bias).masked_fill(~allowed, -1e9), dim=-1)
    y = x[:, -1:] + attn.proj((att @ v).transpose(1, 2).reshape(B, 1, D))  # (B, 1, D)
    return y + block.mlp(block.ln2(y))
