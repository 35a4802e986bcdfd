"""DSS (Ma et al., "Disentangled Self-Supervision in Sequential Recommenders", KDD 2020): a user as K intent
vectors, trained with next-item (seq2item) and latent sequence-to-sequence (seq2seq) objectives.

``DSS.forward(seq)`` is the serving signature: (B, T) int64 left-padded target item ids -> (B, K, D), the K
intent vectors of the whole history; an item's score is ``max_k <phi_k, e_item>`` (``score="max"``) or
``sum_k pi_k <phi_k, e_item>`` (``score="weighted"``, pi = the intents' presence, see below). The training heads
(``item_loss``, ``seq2seq_loss``) sit beside it.

Layers, for a history x_1..x_t (t = the newest item):
- encoder: ``CausalEncoder`` (the relative-position self-attention GURU/CDSRec use), single head by default,
  giving z_i (B, T, D). Causal with relative positions, so the state at column t of a training row equals
  the state of the prefix x_1..t alone: training evaluates every prefix of a row in one pass, exactly as
  serving sees it.
- intent assignment p(k|i) = softmax_k(cos(z_i, c_k) / tau) with K learned prototypes c_k.
- position/state weighting p_t(i) = softmax_{i<=t, real}((W z_i + b) . (z_t + b') / sqrt(D) + r[t - i]):
  the query is the newest state (shifted by the learned b'), keys the projected states, plus a learned scalar
  bias per distance r (recent items can weigh more). The paper's weighting uses the position and the state;
  a scalar per distance instead of a position embedding added to z_i is our choice (it costs (B, T, T), not
  (B, T, T, D), since every prefix is weighted at once in training).
- aggregation phi_k = LayerNorm(sum_i p_t(i) p(k|i) z_i), one LayerNorm shared by the intents. The LayerNorm
  removes the intent's mass, so a minority intent (a few old items) still gets a full-size vector; its mass
  pi_k = sum_i p_t(i) p(k|i) (sums to 1 over k) says how present the intent is.

Choices where the paper is silent (all documented here, the alternatives are flags of ``DSSConfig``):
- score over intents: ``max`` by default (a candidate only needs to fit one intent, which is what lets a
  minority intent surface); ``weighted`` uses pi_k, and then equals a dot product with ONE vector
  sum_k pi_k phi_k, i.e. single-vector retrieval.
- seq2seq: the training row's full sequence x_1..x_L is cut at a uniform random c in [1, L-1]; the prefix
  x_1..c (its states come free from the seq2item pass) is contrasted with the reversed future x_L..x_{c+1}
  encoded by the same tower. Logits are <prefix_k(u), future_k'(u')> / sqrt(D) over all B*K future vectors of
  the batch; the positive is the same user and intent. A (user, intent) row counts only when pi_k of both
  halves exceeds ``lam``; rows below it are still negatives of the others. No extra disentanglement loss.
- seq2item: a sampled softmax with logQ correction (as SASRec's) on the max (or weighted) intent score, at
  every real position of the row; the total loss is item_loss + ``seq2seq_weight`` * seq2seq_loss.
- item scores (``DSSConfig.cosine``): the dot product by default; with ``cosine`` = T > 0, the cosine of the
  (unit) intent and item vectors divided by T, and the seq2seq logits then scale by 1/T too. Under the max over
  intents, a dot product favours items with large norms (the popular ones score high against every intent);
  the cosine ranks by direction alone. The sampled softmax's logQ correction can be dropped as well
  or weighed (``DSSArgs.logq`` in [0, 1]): negatives drawn by popularity then push popular items down, in part or
  in full. bench.quality measures both (rows ``dss-cos``, ``dss-nologq``, ``dss-cos-item-logq*``).
- what an intent aggregates (``DSSConfig.aggregate``): the encoder states z_i by default, as the paper; the item
  embeddings e_i ("item": each intent a weighted centroid of its items, the encoder only weighing them) or both.
  Measured on Office (5 epochs, cosine scores): a user's intents aggregated from states have mean pairwise cosine
  0.89 (their top-10 lists share 4.7 items), from item embeddings 0.61.
- absent intents (``DSSConfig.mask_absent``): with a sharp assignment most users have one intent near pi = 1 and
  the others near 0; the LayerNorm of a near-zero aggregate is then its bias, one vector shared by every user
  (cosine 0.96 to it, measured), which under the max score puts the same items in everyone's list. With
  ``mask_absent`` an intent below ``lam`` scores nothing of its own.
- the configuration that meets the issue's three criteria (3 seeds, test split, docs/results.md): cosine 0.1,
  ``aggregate="item"``, and the logQ weight lowered. On Art ``logq=0`` (K = 4): NDCG@10 0.0400, ILD@10 0.5667,
  coverage@10 0.854 against SASRec's 0.0364 / 0.5450 / 0.481. On Office ``logq=0.5``, K = 8: merge ``max``
  0.0575 / 0.5813 / 0.665, the validation-chosen merge 0.0495 / 0.5916 / 0.713, against 0.0491 / 0.5753 / 0.401.
  Lowering the weight trades accuracy for diversity (Office, K = 8, seed 0: ``logq=0`` 0.0467 / 0.6047; Art,
  K = 4, seed 0: ``logq=0.5`` 0.0427 / 0.5423 under ``max``), so no one setting measured meets all three on both
  targets. The defaults stay the paper's formulation.
- a fully padded row: the newest column may always weigh itself (as the attention masks do), so the output
  is finite (LayerNorm of a finite vector).

The recommended list (inference only, ``DSSConfig.intent_score``, ``intent_lists``): ranking every item by its max
over intents lets the dominant intent fill all 10 slots, so the method's point (the list covers the user's
several intentions) goes unused. ``quota`` shares the slots among the intents present above ``lam`` in
proportion to their presence pi_k (Sainte-Lague), each slot taking that intent's best item not yet listed;
``round-robin`` gives them equal turns, strongest first; ``max`` and ``weighted`` are the plain score orders.
Ranking metrics of a merged list read the target's position in it (the first ``MERGE_DEPTH`` = 20), and beyond
it the target's max-score rank among the rest (``merged_scores``), so @10 metrics are the list's own and MRR
stays a full-ranking MRR. The rule is chosen per trained model on VALIDATION only (bench.quality ``pick_dss``,
training/train_dss.py ``choose_merge``): the best valid NDCG@10 among the rules whose valid ILD@10 and
coverage@10 beat SASRec's valid ones, else the best valid NDCG@10. The item sentence vectors (the ILD
reference) play no part in any rule. Measured figures of every rule: docs/results.md (bench ``quality``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from core.manifest import HEAD3
from training.models.guru import CausalEncoder
from training.models.layers import EncoderConfig, item_embedding
from training.models.sasrec import best_dot, softmax_loss
from training.models.serving import Serving

SCORES = ("max", "weighted")
ASSIGNS = ("item", "state", "text")
AGGREGATES = ("state", "item", "both")
# how the top of the list is drawn from the K intents at inference (``intent_lists``); training is unchanged
MERGES = ("max", "weighted", "quota", "round-robin", "head3")
HEAD = HEAD3  # ``head3``: the slots drawn by the best score over the present intents (core/manifest.py)
MERGE_DEPTH = 20  # the merged list's length; ranks beyond it follow the max score (``merged_scores``)


@dataclass
class DSSConfig:
    n_items: int  # real items; ids 1..n_items, 0 = padding
    dim: int = 64
    layers: int = 2
    heads: int = 1  # the paper's encoder is single-head
    dropout: float = 0.2
    max_len: int = 50
    intents: int = 4  # K
    tau: float = 0.1  # temperature of the intent assignment
    lam: float = 0.1  # seq2seq: an intent counts when its presence pi_k exceeds lam in both halves
    score: str = "max"  # "max" | "weighted" over intents
    # p(k|i) from the cosine of "item" embeddings e_i or of encoder "state"s z_i to learned prototypes c_k, or
    # "text": from the cosine of the item's sentence vector to K fixed k-means centroids of the catalogue's sentence
    # vectors (``text_anchors``), a table the model carries (``DSS.text_assign``)
    assign: str = "item"
    # inference only: how the recommended list is drawn from the intents (``MERGES``, ``intent_lists``); chosen
    # on validation after training (bench.quality ``run_dss``), recorded by the export as the manifest's
    # ``intent_score``. Checkpoints from before it load with "max".
    intent_score: str = "max"
    # 0: an item scores the dot product of its embedding with an intent vector; > 0: their cosine divided by this
    # temperature (intents and items unit-normalized: an item's norm can no longer carry its popularity, and every
    # intent ranks by direction alone). ``item_vectors`` and ``forward`` then return the normalized (and scaled)
    # vectors, so the export and the service need nothing else.
    cosine: float = 0.0
    # True: an intent not confidently present (``confident``: pi_k <= lam and not the strongest) scores no item of
    # its own: in every item score (training, evaluation, the serving graph) its vector is the strongest intent's.
    # False (checkpoints from before it): all K intents score, also those with almost no mass.
    mask_absent: bool = False
    # what an intent aggregates (``DSS.values``): the encoder "state"s z_i (the paper's), the "item" embeddings e_i
    # (each intent a weighted centroid of its items: the encoder then only weighs them), or "both" (z_i + the
    # encoder's input sqrt(D) e_i). Contextual states are alike along a history (mean within-user cosine 0.53 on
    # Office against 0.13 for the item embeddings), so intents aggregated from them come out alike too.
    aggregate: str = "state"

    def __post_init__(self) -> None:
        if self.score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {self.score!r}")
        if self.intent_score not in MERGES:
            raise ValueError(f"intent_score must be one of {MERGES}, got {self.intent_score!r}")
        if self.assign not in ASSIGNS:
            raise ValueError(f"assign must be one of {ASSIGNS}, got {self.assign!r}")
        if self.intents < 1:
            raise ValueError(f"intents must be >= 1, got {self.intents}")
        if self.aggregate not in AGGREGATES:
            raise ValueError(f"aggregate must be one of {AGGREGATES}, got {self.aggregate!r}")
        if self.cosine < 0:
            raise ValueError(f"cosine must be >= 0 (0: dot-product scores), got {self.cosine}")


class IntentLayer(nn.Module):
    """Per-position states z (B, T, D) + padding (B, T) -> intents of every prefix (B, T, K, D) and their
    presence (B, T, K); see the module docstring."""

    def __init__(self, cfg: DSSConfig) -> None:
        super().__init__()
        self.tau, self.max_len = cfg.tau, cfg.max_len
        self.scale = 1.0 / math.sqrt(cfg.dim)
        self.prototypes = nn.Parameter(torch.randn(cfg.intents, cfg.dim) * 0.1)  # c_k
        self.key = nn.Linear(cfg.dim, cfg.dim)  # W, b
        self.query_bias = nn.Parameter(torch.zeros(cfg.dim))  # b'
        self.recency = nn.Embedding(cfg.max_len, 1)  # r[t - i]
        nn.init.zeros_(self.recency.weight)
        self.ln = nn.LayerNorm(cfg.dim)

    def assignment(self, route: torch.Tensor) -> torch.Tensor:
        """route (B, T, D): the vectors assigned to intents (z or e) -> p(k|i) (B, T, K)."""
        return torch.softmax(F.normalize(route, dim=-1) @ F.normalize(self.prototypes, dim=-1).T / self.tau, dim=-1)

    def forward(
        self, z: torch.Tensor, pad: torch.Tensor, assign: torch.Tensor, values: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """z: states (B, T, D); pad (B, T); assign (B, T, K): p(k|i) (``assignment``, or the text table's rows);
        ``values`` (B, T, D): what the intents aggregate (default z, ``DSSConfig.aggregate``)."""
        T = z.shape[1]
        ar = torch.arange(T, device=z.device)
        dist = ar[:, None] - ar[None, :]  # (T, T): query t minus key i
        logits = (z + self.query_bias) @ self.key(z).transpose(1, 2) * self.scale  # (B, T, T)
        logits = logits + self.recency(dist.clamp(0, self.max_len - 1))[..., 0][None]
        allowed = (dist >= 0)[None] & ~pad[:, None, :]  # (B, T, T): real keys at or before the query
        allowed = allowed | (dist == 0)[None]  # a query always weighs itself: finite on all padding
        weight = torch.softmax(logits.masked_fill(~allowed, -1e9), dim=-1)  # (B, T, T): p_t(i)
        mass = weight[..., None] * assign[:, None]  # (B, T, T, K): p_t(i) p(k|i)
        phi = self.ln(torch.einsum("btik,bid->btkd", mass, z if values is None else values))  # (B, T, K, D)
        return phi, mass.sum(dim=2)  # presence pi (B, T, K), sums to 1 over k

    def last(
        self, z: torch.Tensor, pad: torch.Tensor, assign: torch.Tensor, values: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward`` at the newest column only: the whole history's intents (B, K, D) and presence (B, K).
        Serving needs no other prefix, and this costs (B, T, K, D) instead of (B, T, T, K, D)."""
        T = z.shape[1]
        dist = (T - 1) - torch.arange(T, device=z.device)  # (T,): the newest column minus key i
        query = (z[:, -1] + self.query_bias)[:, None, :]  # (B, 1, D)
        logits = (query @ self.key(z).transpose(1, 2))[:, 0] * self.scale  # (B, T)
        logits = logits + self.recency(dist.clamp(0, self.max_len - 1))[..., 0][None]
        allowed = ~pad | (dist == 0)[None]  # (B, T): real keys; the newest column always weighs itself
        weight = torch.softmax(logits.masked_fill(~allowed, -1e9), dim=-1)  # (B, T): p_T(i)
        mass = weight[..., None] * assign  # (B, T, K)
        agg = torch.einsum("bik,bid->bkd", mass, z if values is None else values)
        return self.ln(agg), mass.sum(dim=1)  # (B, K, D), (B, K)


class DSS(nn.Module):
    def __init__(self, cfg: DSSConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.item_emb = item_embedding(cfg.n_items, cfg.dim)
        enc = EncoderConfig(cfg.dim, cfg.layers, cfg.heads, cfg.dropout, cfg.max_len)
        self.encoder = CausalEncoder(enc, "transformer")
        self.intent = IntentLayer(cfg)
        if cfg.assign == "text":  # p(k|i) of every item id (row 0: padding), filled by ``set_text_anchors``
            self.register_buffer("text_assign", torch.full((cfg.n_items + 1, cfg.intents), 1.0 / cfg.intents))

    def set_text_anchors(self, vectors: np.ndarray, seed: int = 0) -> None:
        """``assign="text"``: p(k|i) from the items' sentence vectors (n_items + 1, E) (row 0 padding), see
        ``text_anchors``. Fixed for the model's life: training never changes it, the checkpoint carries it."""
        if self.cfg.assign != "text":
            raise ValueError(f"text anchors need assign='text', the model has assign={self.cfg.assign!r}")
        if vectors.shape[0] != self.cfg.n_items + 1:
            raise ValueError(f"expected {self.cfg.n_items + 1} item sentence vectors (row 0 padding), got "
                             f"{vectors.shape[0]}")
        self.text_assign.copy_(text_anchors(vectors, self.cfg.intents, self.cfg.tau, seed))

    def _assign(self, seq: torch.Tensor, e: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """p(k|i) (B, T, K) of the items of ``seq`` (B, T), their embeddings e and states z (B, T, D)."""
        if self.cfg.assign == "text":
            return self.text_assign[seq]
        return self.intent.assignment(e if self.cfg.assign == "item" else z)

    def config_dict(self) -> dict[str, object]:
        return asdict(self.cfg)

    def intents_all(self, seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) -> intents of every prefix (B, T, K, D) and their presence (B, T, K)."""
        pad = seq == 0
        e = self.item_emb(seq)  # (B, T, D)
        z = self.encoder(e * math.sqrt(self.cfg.dim), pad)  # (B, T, D)
        phi, pi = self.intent(z, pad, self._assign(seq, e, z), self.values(e, z))
        return self._unit(phi), pi

    def intents(self, seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) -> the whole history's intents (B, K, D) and presence (B, K)."""
        phi, pi = self.intents_all(seq)
        return phi[:, -1], pi[:, -1]

    def last_intents(self, seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) -> ``intents``' (B, K, D) and (B, K) computed at the newest column alone (as ``forward``)."""
        pad = seq == 0
        e = self.item_emb(seq)  # (B, T, D)
        z = self.encoder(e * math.sqrt(self.cfg.dim), pad)  # (B, T, D)
        phi, pi = self.intent.last(z, pad, self._assign(seq, e, z), self.values(e, z))
        return self._unit(phi), pi

    def values(self, e: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """What the intents aggregate (``DSSConfig.aggregate``) from item embeddings e and states z (B, T, D)."""
        if self.cfg.aggregate == "item":
            return e
        if self.cfg.aggregate == "both":
            return z + e * math.sqrt(self.cfg.dim)
        return z

    def _unit(self, phi: torch.Tensor) -> torch.Tensor:
        """Intent vectors as scored: unit length under cosine scoring (``DSSConfig.cosine``), else as they are."""
        return F.normalize(phi, dim=-1) if self.cfg.cosine > 0 else phi

    def seq2seq_scale(self) -> float:
        """The seq2seq logits' scale: 1/sqrt(D) on the LayerNorm's vectors (norm ~sqrt(D)), the item scores'
        1/temperature on unit ones (cosine scoring)."""
        return 1.0 / self.cfg.cosine if self.cfg.cosine > 0 else 1.0 / math.sqrt(self.cfg.dim)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """Serving tower: (B, T) item ids -> (B, K, D) intent vectors (``intents``' first output, computed at the
        newest column alone: ``IntentLayer.last``, as scored: ``scored``)."""
        return self.scored(*self.last_intents(seq))

    def scored(self, phi: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
        """Intents (..., K, D) and presence (..., K) -> the intents an item score reads: with ``mask_absent``, an
        intent not confidently present (``confident``) takes the strongest intent's vector, so the max over
        intents is the max over the present ones (and the service's merge de-duplicates the repeated list).
        The seq2seq loss reads the raw intents (a copy of the strongest would be a false negative there)."""
        if not self.cfg.mask_absent:
            return phi
        strongest = pi.argmax(dim=-1)[..., None, None].expand(*phi.shape[:-2], 1, phi.shape[-1])
        return torch.where(confident(pi, self.cfg.lam)[..., None], phi, phi.gather(-2, strongest))

    def item_vectors(self) -> torch.Tensor:
        """(n_items + 1, D) item vectors; row 0 is padding. Cosine scoring: unit rows divided by the temperature."""
        if self.cfg.cosine > 0:
            return F.normalize(self.item_emb.weight, dim=-1) / self.cfg.cosine
        return self.item_emb.weight

    def score(self, seq: torch.Tensor) -> torch.Tensor:
        """(B, T) -> (B, N+1) full-ranking scores under the model's inference merge ``cfg.intent_score`` (an
        intent-aware one lists no item of ``seq``: the seen filter, as far as the sequence reaches)."""
        phi, pi = self.intents(seq)
        phi = self.scored(phi, pi)
        rule = self.cfg.intent_score
        if rule in ("max", "weighted"):
            return intent_scores(phi, pi, self.item_vectors(), "weighted" if rule == "weighted" else self.cfg.score)
        per_intent = torch.einsum("bkd,nd->bkn", head_basis(phi, rule), self.item_vectors())  # (B, K, N+1)
        excluded = torch.zeros(seq.shape[0], per_intent.shape[2], dtype=torch.bool).scatter(1, seq, True)
        excluded[:, 0] = True  # padding
        return merged_scores(per_intent, pi, rule, self.cfg.lam, excluded)

    def serving(self) -> Serving:
        """K intent vectors of the target history under the model's inference merge (``cfg.intent_score``; one
        vector when trained or merged ``weighted``): models/serving.py; export/dss.py writes the graph."""
        cfg = self.cfg
        rule = "weighted" if "weighted" in (cfg.score, cfg.intent_score) else cfg.intent_score
        return Serving("intents", self, ("target",), cfg.n_items, cfg.max_len, intents=cfg.intents,
                       intent_score=rule)


def text_anchors(
    vectors: np.ndarray, k: int, tau: float, seed: int = 0, iters: int = 25, restarts: int = 4
) -> torch.Tensor:
    """Items' sentence vectors (N + 1, E) (row 0 padding) -> p(k|i) (N + 1, K): the softmax over K centroids of
    the cosine of each item's vector to each centroid, divided by ``tau``. The centroids are spherical k-means of
    the N items' unit vectors (k-means++ starts drawn from ``seed``, ``iters`` rounds, the best of ``restarts``
    by total cosine to the centres). Padding and items without text (a zero vector) get the uniform row."""
    x = np.asarray(vectors[1:], dtype=np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    has_text = norm[:, 0] > 0
    x = np.where(has_text[:, None], x / np.maximum(norm, 1e-12), 0.0)
    pts = x[has_text]
    if len(pts) < k:
        raise ValueError(f"text anchors need at least K={k} items with text, got {len(pts)}")
    rng = np.random.default_rng(seed)
    best, best_fit = None, -np.inf
    for _ in range(restarts):
        centres = [pts[rng.integers(len(pts))]]
        for _ in range(1, k):  # k-means++: the next start drawn by the squared cosine gap to the chosen ones
            gap = np.clip(1.0 - np.max(pts @ np.stack(centres).T, axis=1), 0.0, None) ** 2
            centres.append(pts[rng.choice(len(pts), p=gap / gap.sum())] if gap.sum() > 0
                           else pts[rng.integers(len(pts))])
        c = np.stack(centres)
        for _ in range(iters):
            label = np.argmax(pts @ c.T, axis=1)
            for j in range(k):  # an emptied cluster keeps its centre
                total = pts[label == j].sum(axis=0)
                if np.linalg.norm(total) > 0:
                    c[j] = total / np.linalg.norm(total)
        fit = float(np.max(pts @ c.T, axis=1).sum())
        if fit > best_fit:
            best, best_fit = c, fit
    assert best is not None
    out = torch.softmax(torch.as_tensor(x @ best.T / tau, dtype=torch.float32), dim=1)  # (N, K)
    out[torch.as_tensor(~has_text)] = 1.0 / k
    return torch.cat([torch.full((1, k), 1.0 / k), out])


def intent_scores(phi: torch.Tensor, pi: torch.Tensor, items: torch.Tensor, score: str) -> torch.Tensor:
    """Intents (M, K, D), presence (M, K), candidates (S, D) -> (M, S): max or pi-weighted over intents."""
    if score == "weighted":  # sum_k pi_k <phi_k, e> = <sum_k pi_k phi_k, e>: one vector
        return (pi[..., None] * phi).sum(dim=1) @ items.T
    return best_dot(phi, items)


def item_loss(
    phi: torch.Tensor,
    pi: torch.Tensor,
    labels: torch.Tensor,
    items: torch.Tensor,
    score: str,
    negatives: int = 0,
    sampler: torch.Tensor | None = None,
    logq: float = 1.0,
) -> torch.Tensor:
    """seq2item: cross-entropy of ``labels`` (M,) from intents (M, K, D) over item vectors (N+1, D): SASRec's
    (sampled) softmax with the intent score in place of one vector's dot product (``softmax_loss``)."""
    h = (pi[..., None] * phi).sum(dim=1) if score == "weighted" else phi  # (M, D) | (M, K, D)
    return softmax_loss(h, labels, items, negatives, sampler, logq)


def seq2seq_loss(
    prefix: torch.Tensor, prefix_pi: torch.Tensor, future: torch.Tensor, future_pi: torch.Tensor, lam: float,
    scale: float | None = None,
) -> torch.Tensor:
    """Contrastive loss of prefix intents (B, K, D) against reversed-future intents (B, K, D).

    Row (u, k) is scored against every future vector of the batch (B * K), scaled by ``scale`` (default 1/sqrt(D),
    ``DSS.seq2seq_scale``); its positive is
    (u, k). Only rows whose intent is present above ``lam`` in both halves count; with none, a zero that
    keeps the graph (so a batch without a confident intent trains the other loss alone).
    """
    B, K, D = prefix.shape
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    logits = prefix.reshape(B * K, D) @ future.reshape(B * K, D).T * scale  # (B*K, B*K)
    keep = ((prefix_pi > lam) & (future_pi > lam)).reshape(B * K)
    target = torch.arange(B * K, device=prefix.device)
    losses = F.cross_entropy(logits, target, reduction="none")  # (B*K,)
    return (losses * keep).sum() / keep.sum().clamp(min=1)


def reversed_future(full: torch.Tensor, cut: torch.Tensor) -> torch.Tensor:
    """Left-padded rows ``full`` (B, W) and ``cut`` (B,) prefix lengths -> (B, W) left-padded reversed
    futures: row x_1..x_L becomes x_L, ..., x_{cut+1}."""
    W = full.shape[1]
    length = (full != 0).sum(dim=1)  # (B,)
    n_future = length - cut  # (B,)
    col = torch.arange(W, device=full.device)[None, :]  # (1, W)
    # output column j holds the future's item number (j - (W - n_future)) counted from the newest, which sits
    # at full column W - 1 - that number
    rank = col - (W - n_future)[:, None]  # (B, W): < 0 on padding
    src = (W - 1 - rank).clamp(0, W - 1)
    return torch.where(rank >= 0, full.gather(1, src), torch.zeros_like(full))


def confident(pi: torch.Tensor, lam: float) -> torch.Tensor:
    """(M, K) presence -> (M, K) bool: the intents present above ``lam``, and always each row's strongest."""
    return (pi > lam) | (pi == pi.max(dim=1, keepdim=True).values)


def head_basis(phi: torch.Tensor, rule: str) -> torch.Tensor:
    """The intents an intent-aware list ranks with: unit vectors for ``head3`` (its head compares scores ACROSS
    intents, and the served graph carries unit intents scaled by presence, export/dss.py), else as they are (the
    other rules compare scores within one intent only, where a positive scale changes nothing)."""
    return F.normalize(phi, dim=-1) if rule == "head3" else phi


def intent_lists(per_intent: torch.Tensor, pi: torch.Tensor, rule: str, lam: float, length: int) -> torch.Tensor:
    """Intent-aware top of the list: per-intent scores (M, K, S) (excluded candidates at -inf), presence (M, K)
    -> (M, length) candidate columns, best first, no repeats. ``rule``:

    - ``quota``: the slots are shared among the confident intents (``confident``) in proportion to their
      presence, Sainte-Lague's way (D'Hondt's pi_k / (taken_k + 1) over-serves the strongest intent): slot after
      slot goes to the intent with the highest pi_k / (2 taken_k + 1), and is filled with that intent's best
      candidate not yet in the list. The strongest intent opens the list.
    - ``round-robin``: the confident intents take turns, strongest first, one slot each.
    - ``head3``: the first ``HEAD`` slots are the best candidates by max over the confident intents (the top of
      the list, where NDCG@10 puts most of its weight, stays the max-score order), then ``round-robin``. The
      scores should come from unit intents (``head_basis``), as the service's do.
    - ``max`` / ``weighted``: the ``length`` best by max over intents / by sum_k pi_k score_k (for the
      comparison; equal to ``intent_scores``' order).

    A slot always has a candidate while the catalogue has ``length`` eligible ones: an intent's own top
    ``length`` holds at least one not yet taken (fewer than ``length`` are)."""
    M, K, S = per_intent.shape
    length = min(length, S)
    if rule in ("max", "weighted"):
        merged = per_intent.max(dim=1).values if rule == "max" else (pi[..., None] * per_intent).sum(dim=1)
        return merged.topk(length, dim=1).indices
    if rule not in ("quota", "round-robin", "head3"):
        raise ValueError(f"rule must be one of {MERGES}, got {rule!r}")
    per_intent, pi = per_intent.detach(), pi.detach()  # a list is an index choice: no gradient flows through it
    tops = per_intent.topk(length, dim=2).indices.numpy()  # (M, K, length): each intent's best, best first
    ok_t = confident(pi, lam)
    ok = ok_t.numpy()
    head = min(HEAD, length) if rule == "head3" else 0
    # head3: the first slots by the best score over the confident intents (-inf elsewhere)
    heads = per_intent.masked_fill(~ok_t[..., None], -torch.inf).amax(dim=1).topk(head, dim=1).indices.numpy()
    weight = pi.numpy().astype(np.float64) if rule == "quota" else ok.astype(np.float64)
    out = np.zeros((M, length), dtype=np.int64)
    for m in range(M):
        out[m, :head] = heads[m]
        taken: set[int] = set(heads[m].tolist())
        count = np.zeros(K)
        ptr = np.zeros(K, dtype=np.int64)
        # round-robin (and head3's rest): equal weights, ties broken by presence (the strongest first every round)
        prio = np.where(ok[m], weight[m], -np.inf)
        tiebreak = pi[m].numpy() * 1e-6 if rule != "quota" else 0.0
        for slot in range(head, length):
            k = int(np.argmax(prio / (2 * count + 1) + tiebreak))
            while int(tops[m, k, ptr[k]]) in taken:
                ptr[k] += 1
            out[m, slot] = item = int(tops[m, k, ptr[k]])
            taken.add(item)
            count[k] += 1
    return torch.as_tensor(out)


def merged_scores(
    per_intent: torch.Tensor,
    pi: torch.Tensor,
    rule: str,
    lam: float,
    excluded: torch.Tensor | None = None,
    length: int = MERGE_DEPTH,
) -> torch.Tensor:
    """Per-intent scores (M, K, S), presence (M, K), ``excluded`` (M, S) bool (the seen filter: never in the
    merged list) -> (M, S) scores whose descending order is the ranking ``rule`` gives: the ``intent_lists``
    list first, in its order, then every other candidate by its max over intents (excluded ones keep that score:
    the evaluation masks them itself and restores a repeated target's own score, as for any scorer). Full-ranking
    metrics then read the target's position in the merged list, and beyond it its max-score rank among the rest
    (so MRR stays a full-ranking MRR)."""
    best = per_intent.max(dim=1).values  # (M, S)
    if rule == "max":
        return best
    if rule == "weighted":
        return (pi[..., None] * per_intent).sum(dim=1)
    masked = per_intent if excluded is None else per_intent.masked_fill(excluded[:, None, :], -torch.inf)
    lists = intent_lists(masked, pi, rule, lam, length)  # (M, L)
    top = best.nan_to_num(0.0, 0.0, 0.0).max(dim=1, keepdim=True).values + 1  # above every max score of the row
    bonus = top + torch.arange(lists.shape[1], 0, -1, dtype=best.dtype)[None, :]  # (M, L): the first highest
    return best.scatter(1, lists, bonus)
