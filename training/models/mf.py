"""Matrix factorisation with bias terms: the pretrained domain models the bridges map between.

Explicit ratings: ``r(u, i) = mu + b_u + b_i + u . v_i``. Implicit feedback: ``logit(u, i) = u . v_i + b_i``
over the full catalogue (softmax). Both are one dot product of augmented vectors, so every consumer (the
bridges, a FAISS index) scores with ``user_vectors(u) @ item_vectors().T``:

    user_vectors(u) = [u, 1, mu + b_u]          (B, D + 2)
    item_vectors()  = [v_i, b_i, 1]             (N + 1, D + 2), row 0 is padding

For implicit feedback ``mu`` is 0 and ``b_u`` is constant per user, so it does not change a ranking.
Embeddings start small (N(0, init_std)) and biases at zero, so an untrained user predicts ``mu + b_i``.
``rating_loss`` and ``softmax_loss`` are the training heads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from training.models.serving import NotServable, Serving


@dataclass
class MFConfig:
    n_users: int
    n_items: int  # real items; ids 1..n_items, 0 = padding
    dim: int = 32
    global_mean: float = 0.0  # mu: the mean training rating (0 for implicit feedback)
    init_std: float = 0.01


class MF(nn.Module):
    def __init__(self, cfg: MFConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.user = nn.Embedding(cfg.n_users, cfg.dim)
        self.item = nn.Embedding(cfg.n_items + 1, cfg.dim, padding_idx=0)
        self.user_bias = nn.Embedding(cfg.n_users, 1)
        self.item_bias = nn.Embedding(cfg.n_items + 1, 1, padding_idx=0)
        nn.init.normal_(self.user.weight, std=cfg.init_std)
        nn.init.normal_(self.item.weight, std=cfg.init_std)
        nn.init.zeros_(self.user_bias.weight)
        nn.init.zeros_(self.item_bias.weight)
        with torch.no_grad():
            self.item.weight[0].zero_()

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """(B,) users, (B,) items -> (B,) predicted rating (or logit)."""
        dot = (self.user(users) * self.item(items)).sum(-1)  # (B,)
        return self.cfg.global_mean + self.user_bias(users)[:, 0] + self.item_bias(items)[:, 0] + dot

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        """(B,) -> (B, D + 2) augmented user vectors [u, 1, mu + b_u]."""
        ones = torch.ones_like(self.user_bias(users))  # (B, 1)
        return torch.cat([self.user(users), ones, self.cfg.global_mean + self.user_bias(users)], dim=-1)

    def item_vectors(self) -> torch.Tensor:
        """(N + 1, D + 2) augmented item vectors [v, b_i, 1]; row 0 is padding."""
        ones = torch.ones_like(self.item_bias.weight)
        return torch.cat([self.item.weight, self.item_bias.weight, ones], dim=-1)

    def serving(self) -> Serving:
        raise NotServable("MF takes user ids, so it cannot serve users the model has not seen; it is the "
                          "pretrained base of the bridges (`cdrec train bridge`)")

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        """(B,) -> (B, N + 1) scores of every item."""
        return self.user_vectors(users) @ self.item_vectors().T


def rating_loss(
    model: MF, users: torch.Tensor, items: torch.Tensor, ratings: torch.Tensor, reg: float
) -> torch.Tensor:
    """Squared error plus L2 on the embeddings and biases the batch touches."""
    pred = model(users, items)
    penalty = (
        model.user(users).pow(2).sum(-1)
        + model.item(items).pow(2).sum(-1)
        + model.user_bias(users)[:, 0].pow(2)
        + model.item_bias(items)[:, 0].pow(2)
    )
    return F.mse_loss(pred, ratings) + reg * penalty.mean()


def softmax_loss(model: MF, users: torch.Tensor, items: torch.Tensor, reg: float) -> torch.Tensor:
    """Full-catalogue cross-entropy of the observed item, plus L2 on the batch's user vectors."""
    logits = model.user(users) @ model.item.weight.T + model.item_bias.weight[:, 0]  # (B, N + 1)
    logits[:, 0] = -1e9
    return F.cross_entropy(logits, items) + reg * model.user(users).pow(2).sum(-1).mean()


def sampled_softmax_loss(
    user_vecs: torch.Tensor,
    item_vecs: torch.Tensor,
    targets: torch.Tensor,
    negatives: torch.Tensor,
    log_q: torch.Tensor,
) -> torch.Tensor:
    """Softmax over the target plus shared sampled negatives, with the log-Q correction of the sampler.

    user_vecs (B, D), item_vecs (N + 1, D), targets (B,), negatives (M,) drawn with probabilities exp(log_q)
    (N + 1,). Training only: evaluation always ranks the full catalogue.
    """
    pos = (user_vecs * item_vecs[targets]).sum(-1, keepdim=True) - log_q[targets][:, None]  # (B, 1)
    neg = user_vecs @ item_vecs[negatives].T - log_q[negatives][None, :]  # (B, M)
    neg = neg.masked_fill(negatives[None, :] == targets[:, None], -1e9)  # a sampled target is no negative
    logits = torch.cat([pos, neg], dim=1)  # (B, 1 + M)
    return F.cross_entropy(logits, torch.zeros_like(targets))
