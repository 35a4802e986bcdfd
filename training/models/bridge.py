"""Cold-start bridges from a source domain to a target domain: PTUPCDR, EMCDR and the inductive bridge.

Every bridge outputs a user vector in the **target item space**: the score of target item i is the dot
product with row i of ``item_vectors()`` (the pretrained target MF's augmented vectors, see models/mf.py).

* ``PTUPCDR`` (Zhu et al., WSDM 2022), transductive, for the rating protocol: a characteristic encoder
  attends over the user's source items' embeddings and pools them into p_u (B, k); a meta network maps p_u to
  a personal bridge W_u (B, k, k); u_s . W_u is the user's target embedding. A linear head on p_u, the source
  MF user bias and the damped mean deviation of the source ratings predicts the target user bias.
  Serving: ``forward(users, source_seq, source_rating) -> (B, k + 2)``.
* ``EMCDR`` (Man et al., IJCAI 2017): one shared map of the augmented source user vector [u_s, b_u^s] to the
  target one, fitted by embedding distance. Serving: ``forward(users) -> (B, k + 2)``.
* ``InductiveBridge``, for users the models have never seen: ``forward(source_seq) -> (B, D + 1)``. The
  source representation s_u is computed from the (B, T) left-padded source item ids themselves (mean of
  source item embeddings, a self-attentive encoder, or the GUR of a trained GURU encoder), then mapped by a
  personal bridge (shared base W_0 plus the meta network's W_u) or, with ``personal=False``, by W_0 alone
  (the EMCDR-style shared bridge). The output is [x_u, 1] against item vectors [v_i, b_i]: an empty history
  gives x_u = 0, a finite vector that ranks by the item bias alone (popularity), the documented fallback.

Forwards are pure tensor maths; padding (id 0) is masked everywhere. Training heads are at the bottom.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from training.models.guru import GURU, GURUConfig
from training.models.layers import EncoderConfig, SequenceEncoder
from training.models.serving import NotServable, Serving

# why PTUPCDR and EMCDR declare no serving graph (models/serving.py)
_USER_IDS = ("takes user ids, so it cannot serve users the model has not seen; export the inductive bridge "
             "(`cdrec train bridge inductive`) instead")

# --------------------------------------------------------------------------- shared layers


class CharacteristicEncoder(nn.Module):
    """Attention pooling: (B, T, k) item embeddings + (B, T) padding flags -> (B, k) p_u."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.att = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, 1, bias=False))

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        logits = self.att(x)[..., 0].masked_fill(pad, -1e9)  # (B, T)
        weights = F.softmax(logits, dim=-1) * (~pad).to(x.dtype)  # a fully padded row gets all-zero weights
        return (weights[..., None] * x).sum(1)  # (B, k)


class MetaNetwork(nn.Module):
    """p_u (B, d) -> personal bridge W_u (B, k_in, k_out)."""

    def __init__(self, dim_p: int, dim_in: int, dim_out: int, hidden: int, init_scale: float = 1.0) -> None:
        super().__init__()
        self.dim_in, self.dim_out = dim_in, dim_out
        self.net = nn.Sequential(nn.Linear(dim_p, hidden), nn.ReLU(), nn.Linear(hidden, dim_in * dim_out))
        with torch.no_grad():
            self.net[2].weight.mul_(init_scale)
            self.net[2].bias.mul_(init_scale)

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        return self.net(p).view(-1, self.dim_in, self.dim_out)  # (B, k_in, k_out)


def masked_mean(x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
    """(B, T, k), (B, T) -> (B, k) mean over real positions; 0 for a fully padded row."""
    keep = (~pad).to(x.dtype)[..., None]  # (B, T, 1)
    return (x * keep).sum(1) / keep.sum(1).clamp(min=1.0)


# --------------------------------------------------------------------------- PTUPCDR (ratings)


@dataclass
class PTUPCDRConfig:
    n_users: int
    n_source_items: int
    n_target_items: int
    dim: int = 32  # k, the MF dimension of both domains
    hidden: int = 64  # characteristic encoder and meta network width
    target_mean: float = 0.0  # mu of the target ratings
    init_scale: float = 0.1  # start near W_u = 0: the bridged prediction starts at mu + b_i
    shared_base: bool = True  # add a shared linear map of [u_s, b_u^s] (EMCDR's form) under the personal one
    damping: float = 5.0  # of the mean source rating deviation fed to the bias head
    rating_aware: bool = True  # each source item enters the encoder as [e_j, d_j e_j, d_j], d_j its centred rating


class PTUPCDR(nn.Module):
    """Frozen pretrained tables (buffers) + the trainable characteristic encoder, meta network, bias head."""

    def __init__(self, cfg: PTUPCDRConfig) -> None:
        super().__init__()
        self.cfg = cfg
        k = cfg.dim
        self.register_buffer("source_users", torch.zeros(cfg.n_users, k + 2))  # [u_s, 1, mu_s + b_u^s]
        self.register_buffer("source_items", torch.zeros(cfg.n_source_items + 1, k))
        self.register_buffer("target_items", torch.zeros(cfg.n_target_items + 1, k + 2))  # [v, b_i, 1]
        self.register_buffer("source_mean", torch.zeros(()))
        d = 2 * k + 1 if cfg.rating_aware else k  # width of one encoder input, and of p_u
        self.encoder = CharacteristicEncoder(d, cfg.hidden)
        self.meta = MetaNetwork(d, k, k, cfg.hidden, init_scale=cfg.init_scale)
        self.bias_head = nn.Linear(d + 2, 1)  # on [p_u, b_u^s, dev_u]
        nn.init.zeros_(self.bias_head.weight)
        nn.init.zeros_(self.bias_head.bias)
        self.base = nn.Linear(k + 1, k + 1)
        nn.init.zeros_(self.base.weight)
        nn.init.zeros_(self.base.bias)

    def forward(self, users: torch.Tensor, source_seq: torch.Tensor, source_rating: torch.Tensor) -> torch.Tensor:
        """(B,) user ids, (B, T) source item ids, (B, T) their ratings -> (B, k + 2) target user vectors
        [u_s W_u, 1, mu + b_u]."""
        k = self.cfg.dim
        src = self.source_users[users]  # (B, k + 2)
        u_s, b_s = src[:, :k], src[:, k + 1 :] - self.source_mean  # (B, k), (B, 1)
        pad = source_seq == 0
        x = self.source_items[source_seq]  # (B, T, k)
        if self.cfg.rating_aware:
            dev = ((source_rating - self.source_mean) * (~pad).to(x.dtype))[..., None]  # (B, T, 1)
            x = torch.cat([x, dev * x, dev], dim=-1)  # (B, T, 2k + 1)
        p = self.encoder(x, pad)  # (B, d)
        w = self.meta(p)  # (B, k, k)
        u_t = torch.bmm(u_s[:, None, :], w)[:, 0]  # (B, k)
        b_t = self.bias_head(torch.cat([p, self.user_stats(b_s, source_rating, pad)], dim=-1))  # (B, 1)
        if self.cfg.shared_base:
            base = self.base(torch.cat([u_s, b_s], dim=-1))  # (B, k + 1)
            u_t, b_t = u_t + base[:, :k], b_t + base[:, k:]
        return torch.cat([u_t, torch.ones_like(b_t), self.cfg.target_mean + b_t], dim=-1)

    def serving(self) -> Serving:
        raise NotServable(f"PTUPCDR {_USER_IDS}")

    def user_stats(self, b_s: torch.Tensor, source_rating: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """(B, 2) [b_u^s, dev_u]: the source MF user bias and the damped mean deviation of the source ratings
        (the user's rating level, before any item adjustment)."""
        keep = (~pad).to(source_rating.dtype)
        dev = ((source_rating - self.source_mean) * keep).sum(1) / (keep.sum(1) + self.cfg.damping)  # (B,)
        return torch.cat([b_s, dev[:, None]], dim=-1)

    def item_vectors(self) -> torch.Tensor:
        return self.target_items


# --------------------------------------------------------------------------- EMCDR (ratings)


@dataclass
class EMCDRConfig:
    n_users: int
    n_target_items: int
    dim: int = 32
    hidden: int = 0  # 0: a linear map (as PTUPCDR's EMCDR); > 0: the paper's one-hidden-layer MLP
    target_mean: float = 0.0


class EMCDR(nn.Module):
    def __init__(self, cfg: EMCDRConfig) -> None:
        super().__init__()
        self.cfg = cfg
        k = cfg.dim
        self.register_buffer("source_users", torch.zeros(cfg.n_users, k + 2))
        self.register_buffer("target_items", torch.zeros(cfg.n_target_items + 1, k + 2))
        self.register_buffer("source_mean", torch.zeros(()))
        if cfg.hidden > 0:
            self.mapping: nn.Module = nn.Sequential(
                nn.Linear(k + 1, cfg.hidden), nn.Tanh(), nn.Linear(cfg.hidden, k + 1)
            )
        else:
            self.mapping = nn.Linear(k + 1, k + 1)

    def serving(self) -> Serving:
        raise NotServable(f"EMCDR {_USER_IDS}")

    def bridge(self, users: torch.Tensor) -> torch.Tensor:
        """(B,) -> (B, k + 1) mapped [u_t, b_u^t] (what the distance loss fits)."""
        k = self.cfg.dim
        src = self.source_users[users]
        return self.mapping(torch.cat([src[:, :k], src[:, k + 1 :] - self.source_mean], dim=-1))

    def forward(self, users: torch.Tensor) -> torch.Tensor:
        """(B,) -> (B, k + 2) target user vectors [u_t, 1, mu + b_u]."""
        k = self.cfg.dim
        m = self.bridge(users)  # (B, k + 1)
        return torch.cat([m[:, :k], torch.ones_like(m[:, k:]), self.cfg.target_mean + m[:, k:]], dim=-1)

    def item_vectors(self) -> torch.Tensor:
        return self.target_items


# --------------------------------------------------------------------------- inductive bridge (serving)


@dataclass
class InductiveBridgeConfig:
    n_source_items: int
    n_target_items: int
    dim: int = 64  # source item embedding size
    target_dim: int = 64  # size of the target item vectors without the bias column
    personal: bool = True  # meta network per-user bridge on top of the shared W_0
    encoder: str = "mean"  # s_u: "mean" of the source item embeddings | "attention" (own) | "guru" (GURU's GUR)
    hidden: int = 128
    layers: int = 1  # of the "attention" or "guru" encoder
    heads: int = 2
    dropout: float = 0.1
    max_len: int = 50


class InductiveBridge(nn.Module):
    def __init__(self, cfg: InductiveBridgeConfig) -> None:
        super().__init__()
        if cfg.encoder not in ("mean", "attention", "guru"):
            raise ValueError(f"encoder must be 'mean', 'attention' or 'guru', got {cfg.encoder!r}")
        self.cfg = cfg
        self.source_items = nn.Embedding(cfg.n_source_items + 1, cfg.dim, padding_idx=0)
        self.target_items = nn.Parameter(torch.zeros(cfg.n_target_items + 1, cfg.target_dim + 1))  # [v, b]
        self.w0 = nn.Linear(cfg.dim, cfg.target_dim, bias=False)
        self.encoder = CharacteristicEncoder(cfg.dim, cfg.hidden)
        self.meta = MetaNetwork(cfg.dim, cfg.dim, cfg.target_dim, cfg.hidden, init_scale=0.1)
        self.seq: SequenceEncoder | None = None
        self.guru: GURU | None = None
        if cfg.encoder == "attention":
            enc = EncoderConfig(cfg.dim, cfg.layers, cfg.heads, cfg.dropout, cfg.max_len)
            self.seq = SequenceEncoder(enc, causal=False)
        elif cfg.encoder == "guru":
            self.guru = GURU(GURUConfig(cfg.n_target_items, cfg.n_source_items, cfg.dim, cfg.layers, cfg.heads,
                                        cfg.dropout, cfg.max_len))

    def source_representation(self, source_seq: torch.Tensor) -> torch.Tensor:
        """(B, T) -> s_u (B, k); 0 for an empty history."""
        pad = source_seq == 0
        if self.guru is not None:
            has_any = (~pad).any(dim=1, keepdim=True).to(self.w0.weight.dtype)  # (B, 1)
            return self.guru.latents(source_seq, 1)[:, -1] * has_any  # the GUR after the last source item
        x = self.source_items(source_seq)  # (B, T, k)
        return masked_mean(x if self.seq is None else self.seq(x, pad), pad)

    def characteristic(self, source_seq: torch.Tensor) -> torch.Tensor:
        """(B, T) -> p_u (B, k), attention-pooled source item embeddings; 0 for an empty history."""
        return self.encoder(self.source_items(source_seq), source_seq == 0)

    def bridge(self, s: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """s_u (B, k), p_u (B, k) -> (B, D + 1) [s_u (W_0 + W_u), 1]."""
        x = self.w0(s)  # (B, D)
        if self.cfg.personal:
            x = x + torch.bmm(s[:, None, :], self.meta(p))[:, 0]  # s_u . W_u, (B, D)
        return torch.cat([x, torch.ones_like(x[:, :1])], dim=-1)

    def forward(self, source_seq: torch.Tensor) -> torch.Tensor:
        """Serving: (B, T) left-padded source item ids -> (B, D + 1) user vector [x_u, 1]."""
        return self.bridge(self.source_representation(source_seq), self.characteristic(source_seq))

    def item_vectors(self) -> torch.Tensor:
        """(N + 1, D + 1) target item vectors [v_i, b_i]; row 0 is padding."""
        return self.target_items

    def score(self, source_seq: torch.Tensor) -> torch.Tensor:
        return self(source_seq) @ self.item_vectors().T  # (B, N + 1)

    def serving(self) -> Serving:
        """A cold-start bridge reading the source history (models/serving.py)."""
        cfg = self.cfg
        return Serving("bridge", self, ("source",), cfg.n_target_items, cfg.max_len, n_source_items=cfg.n_source_items)


# --------------------------------------------------------------------------- training heads


def rating_loss(
    user_vecs: torch.Tensor, item_vecs: torch.Tensor, items: torch.Tensor, ratings: torch.Tensor, l1: float = 0.0
) -> torch.Tensor:
    """Task-oriented loss (PTUPCDR): squared error of the bridged ratings, plus ``l1`` x absolute error when
    MAE is a reported metric too. (B, D), (N+1, D), (B,), (B,)."""
    err = (user_vecs * item_vecs[items]).sum(-1) - ratings
    return err.pow(2).mean() + l1 * err.abs().mean()


def distance_loss(mapped: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """EMCDR: squared distance between the bridged and the pretrained target user vectors."""
    return (mapped - target).pow(2).sum(-1).mean()


def next_item_loss(model: InductiveBridge, source_seq: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Task-oriented loss of the inductive bridge: full-catalogue cross-entropy of the target item."""
    logits = model.score(source_seq)  # (B, N + 1)
    logits[:, 0] = -1e9
    return F.cross_entropy(logits, targets)
