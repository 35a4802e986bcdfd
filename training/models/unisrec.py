"""UniSRec (Hou et al., KDD 2022): items represented through their text, so a new item is retrievable at once.

An item's vector is the MoE adapter of its frozen sentence vector (``text_items.py``), plus a learned id
embedding in the **transductive** variant; the **inductive** variant has text only. A causal transformer
(``layers.SequenceEncoder``, position embeddings counted from the newest item) reads the item vectors of a
left-padded history; the user vector is its last position. User and item vectors are L2-normalised: scores are
cosines (divided by ``temperature`` in the losses).

Serving interface (export codes against exactly this):
* ``forward(target_seq (B, T) int64) -> (B, D)`` normalised user vectors; all-padding rows stay finite;
* ``item_vectors() -> (N+1, D)`` normalised vectors of the domain's whole catalogue, row 0 (padding) zeros;
* ``text_tower()`` -> module mapping text vectors (B, text_dim) to item vectors (B, D) in the same space
  (inductive part only: a new item has no id embedding).
The item text vectors are a buffer, so a checkpoint alone rebuilds the model (``training.checkpoint.load``).

Training-only losses below: the sequence-item contrastive loss and the sequence-sequence contrastive loss
between two augmented views of a sequence. View one is **word drop**, approximated by dropout on the sentence
vectors of the sequence's items (dropping words would need the sentence encoder inside the training loop; a
dropped word moves the sentence vector a little, and so does dropout noise); view two is **item drop**
(random items of the history replaced by padding).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
from torch import nn
from torch.nn import functional as F

from training.data.text import DEFAULT_TEXT_MODEL
from training.models.layers import EncoderConfig, SequenceEncoder
from training.models.serving import Serving, TargetOnly, TextItems
from training.models.text_items import MoEAdapter, TextItemsConfig, TextTower


@dataclass
class UniSRecConfig:
    n_items: int  # real items of ``domain``; ids 1..n_items, 0 = padding
    text_dim: int = 384
    dim: int = 64
    layers: int = 2
    heads: int = 2
    dropout: float = 0.2
    max_len: int = 50
    experts: int = 8
    adapter_dropout: float = 0.2
    temperature: float = 0.07
    transductive: bool = False  # True: item vector = adapter(text) + id embedding
    text_model: str = DEFAULT_TEXT_MODEL  # the sentence model the text vectors came from
    domain: str = ""


class UniSRec(nn.Module):
    text_vecs: torch.Tensor  # buffer (N+1, text_dim)

    def __init__(self, cfg: UniSRecConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("text_vecs", torch.zeros(cfg.n_items + 1, cfg.text_dim))  # (N+1, E), row 0 zeros
        self.adapter = MoEAdapter(TextItemsConfig(cfg.text_dim, cfg.dim, cfg.experts, cfg.adapter_dropout))
        self.id_emb: nn.Embedding | None = None
        if cfg.transductive:
            self.id_emb = nn.Embedding(cfg.n_items + 1, cfg.dim, padding_idx=0)
            nn.init.normal_(self.id_emb.weight, std=0.02)  # small: text dominates until ids earn their keep
            with torch.no_grad():
                self.id_emb.weight[0].zero_()
        # the adapter's output scale drifts while it trains; the encoder sees item vectors at a fixed scale
        self.in_ln = nn.LayerNorm(cfg.dim)
        enc = EncoderConfig(cfg.dim, cfg.layers, cfg.heads, cfg.dropout, cfg.max_len)
        self.encoder = SequenceEncoder(enc, causal=True)

    def config_dict(self) -> dict[str, object]:
        return asdict(self.cfg)

    @torch.no_grad()
    def set_text(self, text_vecs: torch.Tensor, centre: bool = True) -> None:
        """Load the (N+1, text_dim) text table (row 0 is forced to zeros); ``centre`` starts whitening at its mean."""
        if tuple(text_vecs.shape) != tuple(self.text_vecs.shape):
            raise ValueError(f"text vectors {tuple(text_vecs.shape)}, expected {tuple(self.text_vecs.shape)}")
        self.text_vecs.copy_(text_vecs)
        self.text_vecs[0].zero_()
        if centre:
            self.adapter.centre_on(self.text_vecs[1:])

    def item_reps(self, ids: torch.Tensor, word_drop: float = 0.0) -> torch.Tensor:
        """Item ids (...) -> unnormalised item representations (..., D). ``word_drop``: training-only noise."""
        x = self.text_vecs[ids]  # (..., E)
        if word_drop > 0:  # a hyperparameter of the training view, never set on the serving path
            x = F.dropout(x, word_drop, training=True)
        v = self.adapter(x)  # (..., D)
        if self.id_emb is not None:
            v = v + self.id_emb(ids)
        return v

    def hidden(self, seq: torch.Tensor, word_drop: float = 0.0) -> torch.Tensor:
        """(B, T) item ids -> (B, T, D) hidden states (not normalised)."""
        pad = seq == 0
        x = self.in_ln(self.item_reps(seq, word_drop))  # (B, T, D); padding is zeroed inside the encoder
        return self.encoder(x, pad)

    def forward(self, target_seq: torch.Tensor) -> torch.Tensor:
        """Serving tower: (B, T) left-padded item ids -> (B, D) normalised user vectors."""
        return F.normalize(self.hidden(target_seq)[:, -1, :], dim=-1)

    def item_vectors(self) -> torch.Tensor:
        """(N+1, D) normalised vectors of every catalogue item; row 0 (padding) is zeros."""
        ids = torch.arange(self.cfg.n_items + 1, device=self.text_vecs.device)
        v = F.normalize(self.item_reps(ids), dim=-1)
        return torch.cat([torch.zeros_like(v[:1]), v[1:]])

    def text_tower(self) -> nn.Module:
        """Text vectors (B, text_dim) -> item vectors (B, D) of items known by their text alone."""
        return TextTower(self.adapter)

    def score(self, seq: torch.Tensor) -> torch.Tensor:
        return self(seq) @ self.item_vectors().T  # (B, N+1) cosines

    def serving(self) -> Serving:
        """A user tower reading the target history, with the text tower new items go through (models/serving.py)."""
        cfg = self.cfg
        return Serving("user_tower", TargetOnly(self), ("target",), cfg.n_items, cfg.max_len,
                       text=TextItems(self.text_tower(), cfg.text_model))


def transfer(
    model: UniSRec, text_vecs: torch.Tensor, domain: str, transductive: bool | None = None
) -> UniSRec:
    """A model for another domain (or another variant) that keeps ``model``'s adapter and encoder weights.

    The item table is the new domain's (``text_vecs`` (N+1, text_dim)); id embeddings never carry over (ids of
    different catalogues mean different items), so a transductive model starts its ids fresh.
    """
    n_items = text_vecs.shape[0] - 1
    variant = model.cfg.transductive if transductive is None else transductive
    out = UniSRec(replace(model.cfg, n_items=n_items, domain=domain, transductive=variant))
    shared = {k: v for k, v in model.state_dict().items() if not k.startswith(("text_vecs", "id_emb"))}
    missing, unexpected = out.load_state_dict(shared, strict=False)
    assert not unexpected and all(k.startswith(("text_vecs", "id_emb")) for k in missing), (missing, unexpected)
    out.set_text(text_vecs, centre=False)  # the pretrained whitening is part of what transfers
    return out


# --------------------------------------------------------------------------- training-only losses


def seq_item_loss(
    model: UniSRec,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    candidates: torch.Tensor | None = None,
    word_drop: float = 0.0,
) -> torch.Tensor:
    """Sequence-item contrastive loss at every position whose label is a real item.

    inputs/labels (B, T). The softmax runs over the batch's distinct labels (in-batch negatives; an item never
    serves as its own negative) plus ``candidates`` (e.g. ``arange(1, N+1)`` for the full catalogue, or uniformly
    drawn extra negatives), with cosine / temperature logits.
    """
    h = F.normalize(model.hidden(inputs, word_drop), dim=-1)  # (B, T, D)
    real = labels > 0
    h, y = h[real], labels[real]  # (M, D), (M,)
    pool = y if candidates is None else torch.cat([y, candidates])
    cand = torch.unique(pool)  # sorted, distinct
    items = F.normalize(model.item_reps(cand), dim=-1)  # (C, D)
    logits = h @ items.T / model.cfg.temperature  # (M, C)
    return F.cross_entropy(logits, torch.searchsorted(cand, y))


def item_drop(seq: torch.Tensor, p: float) -> torch.Tensor:
    """(B, T) -> (B, T): each real item replaced by padding with probability ``p`` (the item-drop view)."""
    drop = (torch.rand(seq.shape, device=seq.device) < p) & (seq > 0)
    return seq.masked_fill(drop, 0)


def seq_seq_loss(
    model: UniSRec, inputs: torch.Tensor, word_drop: float = 0.1, drop_items: float = 0.2
) -> torch.Tensor:
    """Sequence-sequence contrastive loss: a sequence's word-drop view must pick out its own item-drop view
    among the batch's (in-batch negatives, cosine / temperature)."""
    a = F.normalize(model.hidden(inputs, word_drop)[:, -1], dim=-1)  # (B, D)
    b = F.normalize(model.hidden(item_drop(inputs, drop_items))[:, -1], dim=-1)  # (B, D)
    logits = a @ b.T / model.cfg.temperature  # (B, B)
    same = (inputs[:, None, :] == inputs[None, :, :]).all(-1)  # identical sequences are not negatives
    logits = logits.masked_fill(same & ~torch.eye(len(a), dtype=torch.bool, device=a.device), -1e9)
    return F.cross_entropy(logits, torch.arange(len(a), device=a.device))
