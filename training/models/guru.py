"""GURU (RecGURU, Li et al. WSDM 2022): one shared encoder turns either domain's sequence into a latent user
representation in one space, the Generalised User Representation (GUR).

Parts (DESIGN §3: serving module with its training-only heads beside it):
* per-domain item embeddings + a domain embedding -> one **shared** causal encoder (``CausalEncoder``:
  self-attention, or an LSTM for the KTLF-style ablation ``encoder="lstm"``) -> latent ``h`` at every position;
* per-domain autoregressive decoders: the decoder of domain d reads the causal latent ``h_t`` (a summary of
  v_1..v_t) and scores the next item, so the reconstruction loss is -sum_t log p(v_{t+1} | v_<=t) with the
  sequence reconstructed item by item through the latent;
* a domain discriminator on ``h`` trained adversarially (``adversarial=False`` switches it off for the ablation);
* overlapping users' two representations pulled together: a cosine term between the latest target and source
  GURs (optionally also a cross-domain reconstruction, ``cross``: the source GUR of a moment decodes the next
  target item).

Adversarial training uses a **gradient reversal layer** (Ganin & Lempitsky 2015) rather than alternating
steps: the discriminator minimises its cross-entropy while the encoder receives the negated gradient of the
same loss, so one forward and one backward pass per batch train both players (alternating steps cost a
second discriminator pass and a second optimiser, and on a 1-thread CPU budget every pass counts). The
reversal strength follows the DANN ramp 2/(1+exp(-10 p)) - 1 over training progress p, so the encoder first
learns to reconstruct and only then is pushed to hide the domain, which keeps the min-max game stable.

Attention is causal and order enters only as relative positions (distance in items), so the state at column t
is exactly what the encoder gives for the prefix v_1..v_t on its own: the training path (every position at
once) and the serving path (last column) compute the same numbers, which is what the no-leakage and
padding-invariance tests pin.

``GURU.forward(target_seq, source_seq)`` is the "GUR alone" serving tower: the mean of the two domains' GURs
(an empty domain is left out), decoded into the target item space; domain index 0 is the target domain.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from training.models.layers import EncoderConfig, attention_mask
from training.models.serving import Serving


@dataclass
class GURUConfig:
    n_target: int  # real items of domain 0 (the target); ids 1..n, 0 = padding
    n_source: int  # real items of domain 1 (the source)
    dim: int = 64
    layers: int = 2
    heads: int = 2
    dropout: float = 0.2
    max_len: int = 50
    encoder: str = "transformer"  # "transformer" | "lstm"
    adversarial: bool = True


class RelativeAttention(nn.Module):
    """Multi-head self-attention with an additive bias per head on the logits (relative positions)."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        assert cfg.dim % cfg.heads == 0, "dim must divide by heads"
        self.heads = cfg.heads
        self.scale = 1.0 / math.sqrt(cfg.dim // cfg.heads)  # a constant, not traced from shapes on export
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """x (B, T, D), mask (B, 1, T, T) True where allowed, bias (1, H, T, T) -> (B, T, D)."""
        B, T, D = x.shape
        q, k, v = self.qkv(x).split(D, dim=2)
        q = q.view(B, T, self.heads, D // self.heads).transpose(1, 2)  # (B, H, T, Dh)
        k = k.view(B, T, self.heads, D // self.heads).transpose(1, 2)
        v = v.view(B, T, self.heads, D // self.heads).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * self.scale + bias  # (B, H, T, T)
        att = self.drop(torch.softmax(att.masked_fill(~mask, -1e9), dim=-1))
        return self.drop(self.proj((att @ v).transpose(1, 2).reshape(B, T, D)))


class RelativeBlock(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(cfg.dim), nn.LayerNorm(cfg.dim)
        self.attn = RelativeAttention(cfg)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.dim, 4 * cfg.dim), nn.GELU(), nn.Linear(4 * cfg.dim, cfg.dim), nn.Dropout(cfg.dropout)
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), mask, bias)
        return x + self.mlp(self.ln2(x))


class CausalEncoder(nn.Module):
    """(B, T, D) embedded items + (B, T) padding flags -> (B, T, D) states; state t depends on items <= t only.

    Order enters only as **relative** positions: a learned bias per head and distance (in items) between query
    and key, as in T5. Absolute positions would make state t depend on where the row starts (from the left) or
    ends (from the right, which in a training row leaks how many items follow); distances do neither, so state
    t is identical inside a longer sequence and on the prefix alone, and the most recent item is always at
    distance 0, however long the history at serving time. ``window > 0`` limits attention to the last
    ``window`` items (a short-term encoder). A padding column's state is finite but meaningless: callers mask it.
    """

    def __init__(self, cfg: EncoderConfig, kind: str = "transformer", window: int = 0) -> None:
        super().__init__()
        if kind not in ("transformer", "lstm"):
            raise ValueError(f"encoder must be 'transformer' or 'lstm', got {kind!r}")
        self.kind, self.window, self.max_len = kind, window, cfg.max_len
        self.drop = nn.Dropout(cfg.dropout)
        self.ln = nn.LayerNorm(cfg.dim)
        if kind == "transformer":
            self.rel = nn.Embedding(cfg.max_len, cfg.heads)  # bias per distance 0..max_len-1 and head
            nn.init.zeros_(self.rel.weight)
            self.blocks = nn.ModuleList(RelativeBlock(cfg) for _ in range(cfg.layers))
        else:
            between = cfg.dropout if cfg.layers > 1 else 0.0
            self.lstm = nn.LSTM(cfg.dim, cfg.dim, num_layers=cfg.layers, batch_first=True, dropout=between)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        ar = torch.arange(T, device=x.device)[None, :]  # (1, T)
        x = self.drop(x).masked_fill(pad[..., None], 0.0)
        if self.kind == "lstm":
            # rotate each row so its real items come first: the LSTM then starts from its zero state at the
            # first real item however much padding there is, and rotating back restores the column layout
            n_pad = pad.sum(dim=1, keepdim=True)  # (B, 1)
            fwd = ((ar + n_pad) % T)[..., None].expand(B, T, D)
            h0 = x.new_zeros((self.lstm.num_layers, B, D))  # explicit zero state: exports with a dynamic batch
            y, _ = self.lstm(x.gather(1, fwd), (h0, h0))  # (B, T, D), right padded
            back = ((ar - n_pad) % T)[..., None].expand(B, T, D)
            return self.ln(y.gather(1, back))
        dist = ar.T - ar  # (T, T): query minus key, in items
        bias = self.rel(dist.clamp(0, self.max_len - 1)).permute(2, 0, 1)[None]  # (1, H, T, T)
        mask = attention_mask(pad, causal=True)  # (B, 1, T, T)
        if self.window > 0:
            mask = mask & (dist < self.window)[None, None]
        for block in self.blocks:
            x = block(x, mask, bias)
        return self.ln(x)


class GradReverse(torch.autograd.Function):
    """Identity forward; multiplies the gradient by -strength backward (the DANN gradient reversal layer)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, strength: float) -> torch.Tensor:
        ctx.strength = strength  # type: ignore[attr-defined]
        return x.view_as(x)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.strength * grad, None  # type: ignore[attr-defined]


def reversal_strength(progress: float) -> float:
    """DANN schedule: 0 at the start of training, close to 1 at the end."""
    return 2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0


class GURU(nn.Module):
    def __init__(self, cfg: GURUConfig) -> None:
        super().__init__()
        self.cfg = cfg
        D = cfg.dim
        self.item_emb = nn.ModuleList(
            nn.Embedding(n + 1, D, padding_idx=0) for n in (cfg.n_target, cfg.n_source)
        )
        for emb in self.item_emb:
            nn.init.normal_(emb.weight, std=0.02)
            with torch.no_grad():
                emb.weight[0].zero_()
        self.domain_emb = nn.Embedding(2, D)
        nn.init.normal_(self.domain_emb.weight, std=0.02)
        enc = EncoderConfig(D, cfg.layers, cfg.heads, cfg.dropout, cfg.max_len)
        self.encoder = CausalEncoder(enc, cfg.encoder)
        # training-only heads: per-domain decoders and the domain discriminator
        self.decoders = nn.ModuleList(
            nn.Sequential(nn.Linear(D, D), nn.GELU(), nn.Linear(D, D)) for _ in range(2)
        )
        self.discriminator = nn.Sequential(nn.Linear(D, D), nn.ReLU(), nn.Linear(D, 1))

    def latents(self, seq: torch.Tensor, domain: int) -> torch.Tensor:
        """(B, T) item ids of one domain (0 = target, 1 = source) -> (B, T) causal GURs (B, T, D)."""
        x = self.item_emb[domain](seq) * math.sqrt(self.cfg.dim) + self.domain_emb.weight[domain]
        return self.encoder(x, seq == 0)

    def decode(self, h: torch.Tensor, domain: int) -> torch.Tensor:
        """(..., D) latent -> (..., D) query in ``domain``'s item space."""
        return h + self.decoders[domain](h)

    def gur(self, target_seq: torch.Tensor, source_seq: torch.Tensor) -> torch.Tensor:
        """(B, T) and (B, T') -> (B, D): mean of the two domains' GURs, an empty domain left out."""
        g_t = self.latents(target_seq, 0)[:, -1]  # (B, D)
        g_s = self.latents(source_seq, 1)[:, -1]
        has_t = (target_seq[:, -1] != 0).to(g_t.dtype)[:, None]  # left padding: last column real iff any item
        has_s = (source_seq[:, -1] != 0).to(g_s.dtype)[:, None]
        return (has_t * g_t + has_s * g_s) / (has_t + has_s).clamp(min=1.0)

    def forward(self, target_seq: torch.Tensor, source_seq: torch.Tensor) -> torch.Tensor:
        """Serving tower ("GUR alone"): (B, T) target ids, (B, T') source ids -> (B, D) in target item space."""
        return self.decode(self.gur(target_seq, source_seq), 0)

    def item_vectors(self) -> torch.Tensor:
        """(n_target + 1, D) target item vectors; row 0 is padding."""
        return self.item_emb[0].weight

    def serving(self) -> Serving:
        """A user tower reading both histories ("GUR alone", models/serving.py)."""
        cfg = self.cfg
        return Serving("user_tower", self, ("target", "source"), cfg.n_target, cfg.max_len, n_source_items=cfg.n_source)


@dataclass
class Negatives:
    """Items shared as negatives by every query of a batch, and the proposal they were drawn from."""

    ids: torch.Tensor  # (K,) item ids
    log_q: torch.Tensor  # (N + 1,) log probability of drawing each item


def item_loss(
    query: torch.Tensor, labels: torch.Tensor, items: torch.Tensor, kind: str, negatives: Negatives | None
) -> torch.Tensor:
    """Next-item loss of (M, D) queries against their (M,) labels among ``items`` (N+1, D).

    ``kind``: "ce" full-softmax cross-entropy over every item; "sampled" sampled softmax over the label and
    the shared negatives, every logit corrected by -log q (Bengio & Senecal 2008), so drawing negatives by
    popularity gives harder negatives without biasing the learned scores; "bpr" -log sigmoid(pos - neg)
    averaged over the negatives. A negative equal to the label is masked out.
    """
    if kind == "ce":
        logits = (query @ items.T).masked_fill(torch.arange(items.shape[0], device=query.device) == 0, -1e9)
        return F.cross_entropy(logits, labels)
    if kind not in ("sampled", "bpr"):
        raise ValueError(f"loss must be 'ce', 'sampled' or 'bpr', got {kind!r}")
    assert negatives is not None, "sampled losses need negatives"
    ids = negatives.ids
    pos = (query * items[labels]).sum(-1, keepdim=True)  # (M, 1)
    neg = query @ items[ids].T  # (M, K)
    hit = ids[None, :] == labels[:, None]  # (M, K) accidental hits
    if kind == "sampled":
        pos = pos - negatives.log_q[labels][:, None]
        neg = neg - negatives.log_q[ids][None, :]
        logits = torch.cat([pos, neg.masked_fill(hit, -1e9)], dim=1)  # (M, 1 + K)
        return F.cross_entropy(logits, torch.zeros_like(labels))
    keep = (~hit).to(query.dtype)
    return -(F.logsigmoid(pos - neg) * keep).sum() / keep.sum().clamp(min=1.0)


def guru_losses(
    model: GURU,
    h_t: torch.Tensor,
    h_s: torch.Tensor,
    t_in: torch.Tensor,
    s_in: torch.Tensor,
    t_out: torch.Tensor,
    source_idx: torch.Tensor,
    strength: float,
    kind: str,
    negatives: tuple[Negatives | None, Negatives | None],
    cross: bool = False,
) -> dict[str, torch.Tensor]:
    """GURU's losses from the latents ``h_t`` (B, T, D) of ``t_in`` and ``h_s`` (B, T', D) of ``s_in``.

    ``t_out`` holds the target item after each column of ``t_in`` (0 = none); a source column's next item is
    the next column of ``s_in``; ``source_idx`` (B, T) is the source column last before each ``t_out`` item
    (-1: none). Returns reconstruction ("rec": each domain's next items from its own GURs; with ``cross``
    also the next target item from the source GUR of the same moment), adversarial ("adv", zero when the
    model is not adversarial) and alignment ("align") terms.
    """
    s_out = F.pad(s_in[:, 1:], (0, 1))  # (B, T'): next source item of each column
    rec = h_t.new_zeros(())
    for d, (h, x, y) in enumerate(((h_t, t_in, t_out), (h_s, s_in, s_out))):
        real = (x != 0) & (y != 0)
        if bool(real.any()):
            rec = rec + item_loss(model.decode(h[real], d), y[real], model.item_emb[d].weight, kind, negatives[d])
    # cross: the source GUR decodes into the target domain too, so the two domains' GURs of a user become
    # interchangeable. Off by default: on Art-Office it lets the source history act as a user id that
    # memorises the user's training targets (valid up, test down; numbers in bench/cross_domain.py)
    B, T, D = h_t.shape
    pairs = (source_idx >= 0) & (t_out != 0)
    if cross and bool(pairs.any()):
        h_s_at = h_s.gather(1, source_idx.clamp(min=0)[..., None].expand(B, T, D))  # (B, T, D)
        rec = rec + item_loss(model.decode(h_s_at[pairs], 0), t_out[pairs], model.item_emb[0].weight, kind,
                              negatives[0])
    # one GUR per user present in both domains: pull the two most recent representations together (cosine
    # distance, in [0, 2]: a squared distance between layer-normed vectors is ~dim times larger and swamps
    # the reconstruction terms)
    both = (t_in[:, -1] != 0) & (s_in[:, -1] != 0)  # (B,)
    cos = F.cosine_similarity(h_t[:, -1], h_s[:, -1], dim=-1)  # (B,)
    align = (1 - cos)[both].mean() if bool(both.any()) else h_t.new_zeros(())
    adv = h_t.new_zeros(())
    if model.cfg.adversarial:
        z = torch.cat([h_t[t_in != 0], h_s[s_in != 0]])  # (M, D) latents of real positions
        dom = torch.cat([h_t.new_zeros(int((t_in != 0).sum())), h_t.new_ones(int((s_in != 0).sum()))])
        logit = model.discriminator(GradReverse.apply(z, strength)).squeeze(-1)  # (M,)
        adv = F.binary_cross_entropy_with_logits(logit, dom)
    return {"rec": rec, "adv": adv, "align": align}
