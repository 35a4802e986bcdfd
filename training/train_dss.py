"""Train DSS on one target domain: `cdrec train dss --data PATH --target-domain DOMAIN [--intents K]`.

Reads top to bottom: data -> next-item rows (as SASRec) -> model -> loop (seq2item sampled softmax at every
position + ``seq2seq_weight`` * the latent seq2seq contrastive loss on a random cut of each row) with early
stopping on validation NDCG@10 (``training.fit``). Full-ranking evaluation scores every item by its max (or
pi-weighted) dot product with the K intent vectors (``DSS.score``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from pydantic import Field
from pydantic.dataclasses import dataclass

from training import checkpoint
from training.args import NextItemArgs
from training.data.batches import encode_histories, next_item_pairs, shuffled_batches, trim_left_padding
from training.data.splits import Examples, NextItemSplit
from training.evaluation import evaluate_ranking, sequence_scorer
from training.fit import FitResult, epoch_of, fit
from training.models.dss import (
    DSS,
    MERGES,
    DSSConfig,
    head_basis,
    item_loss,
    merged_scores,
    reversed_future,
    seq2seq_loss,
)
from training.models.sasrec import popularity_sampler


@dataclass
class DSSArgs(NextItemArgs):
    """DSS's options (`cdrec train dss`)."""

    heads: int = Field(1, ge=1, description="attention heads per layer (the paper's single-head encoder)")
    intents: int = Field(4, ge=1, description="K: intent vectors per user")
    tau: float = Field(0.1, gt=0, description="temperature of the intent assignment")
    lam: float = Field(0.1, ge=0, description="seq2seq: an intent counts when its presence exceeds lam in both halves")
    score: str = Field("max", description="item score over the intents: max | weighted (by pi)")
    assign: str = Field(
        "item", description="p(k|i) from the cosine of item (embeddings) or encoder (state)s to learned prototypes, "
        "or (text): of the item's sentence vector to K k-means centroids of the catalogue's (fixed)"
    )
    text_model: str | None = Field(None, description="assign=text: the sentence-embedding model (default: the "
                                   "packaged all-MiniLM-L6-v2, training/data/text.py)")
    cosine: float = Field(0.0, ge=0, description="0: dot-product item scores; > 0: cosine of intent and item "
                          "vectors divided by this temperature (no popularity in the items' norms)")
    logq: float = Field(1.0, ge=0, le=1, description="weight of the logQ correction of the popularity-sampled "
                        "negatives: 1 the full correction, 0 none (a popularity penalty learned into the scores), "
                        "in between a part of that penalty")
    aggregate: str = Field("state", description="what an intent aggregates: encoder state (the paper's) | item "
                           "(embeddings: intents as item centroids) | both")
    mask_absent: bool = Field(False, description="an intent not present above lam scores no item of its own (its "
                              "vector is the strongest intent's in every item score)")
    seq2seq_weight: float = Field(0.2, ge=0, description="weight of the latent seq2seq loss (0: seq2item only)")
    intent_score: str = Field(
        "max", description="inference merge of the intents' lists: max | weighted | quota | round-robin "
        "(training/models/dss.py intent_lists); the export serves it"
    )


def dss_step(
    model: DSS, x: torch.Tensor, y: torch.Tensor, args: DSSArgs, sampler: torch.Tensor | None,
    n_output: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch of trimmed next-item rows x, y (B, W) -> (seq2item loss, seq2seq loss). ``n_output``: only labels
    1..n_output are predicted, over those items alone (the cross-domain variant: target ids first); the seq2seq
    loss still reads the whole row."""
    phi, pi = model.intents_all(x)  # (B, W, K, D), (B, W, K)
    items = model.item_vectors() if n_output is None else model.item_vectors()[: n_output + 1]
    real = (y > 0) if n_output is None else (y > 0) & (y <= n_output)
    phi_r, pi_r = phi[real], pi[real]
    s2i = item_loss(model.scored(phi_r, pi_r), pi_r, y[real], items, model.cfg.score, args.negatives, sampler,
                    args.logq)
    if args.seq2seq_weight <= 0:
        return s2i, torch.zeros((), device=x.device)
    full = torch.cat([x, y[:, -1:]], dim=1)  # (B, W + 1): the whole row x_1..x_L
    length = (full != 0).sum(dim=1)  # (B,) L >= 2
    cut = 1 + (torch.rand(length.shape, device=x.device) * (length - 1)).long()  # (B,) in [1, L - 1]
    rows = torch.arange(x.shape[0], device=x.device)
    col = x.shape[1] - length + cut  # the prefix's newest item x_cut sits at this column of x
    future = trim_left_padding(reversed_future(full, cut))[0]
    f_phi, f_pi = model.intents(future)  # (B, K, D), (B, K)
    s2s = seq2seq_loss(phi[rows, col], pi[rows, col], f_phi, f_pi, model.cfg.lam, model.seq2seq_scale())
    return s2i, s2s


def train_dss(
    split: NextItemSplit, args: DSSArgs, out: Path | None = None, merged: bool = False,
    text_vectors: np.ndarray | None = None,
) -> tuple[DSS, FitResult, Callable[[Examples], torch.Tensor]]:
    """``text_vectors``: with ``assign="text"``, the target items' sentence vectors (n_items + 1, E) (row 0 padding),
    else computed (and cached) from the item titles. ``merged``: the cross-domain variant (bench row ``dss-xd``):
    intents over the user's two domains' histories interleaved in time (target ids 1..Nt, source ids after them, as
    ``sasrec-merged``), next-item loss and scores on target items only. Bench only: it writes no checkpoint (export
    and ``cdrec evaluate`` read the target history alone)."""
    if merged and out is not None:
        raise ValueError("the cross-domain DSS variant is bench-only: it writes no checkpoint")
    if merged and args.assign == "text":
        raise ValueError("assign='text' reads the target domain's item texts; the cross-domain variant has two")
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    data, target = split.data, split.target
    n_target = data.n_items(target)
    n_vocab = n_target
    if merged:
        assert split.source is not None, "the cross-domain variant needs exactly two domains"
        train = split.train.sort_values(["user", "order"], kind="stable")
        ids = train["item"].to_numpy() + np.where(train["domain"].to_numpy() == target, 0, n_target)
        seqs = np.split(ids, np.flatnonzero(np.diff(train["user"].to_numpy())) + 1)
        n_vocab += data.n_items(split.source)
        inputs, labels = next_item_pairs(seqs, args.max_len)
        keep = ((labels > 0) & (labels <= n_target)).any(axis=1)  # rows with no target label teach nothing
        inputs, labels = inputs[keep], labels[keep]
    else:
        inputs, labels = next_item_pairs(list(split.train_sequences(target).values()), args.max_len)

    cfg = DSSConfig(n_vocab, args.dim, args.layers, args.heads, args.dropout, args.max_len, args.intents,
                    args.tau, args.lam, args.score, args.assign, args.intent_score, args.cosine,
                    args.mask_absent, args.aggregate)
    model = DSS(cfg)
    if args.assign == "text":
        from training.data.text import item_text_vectors

        model.set_text_anchors(text_vectors if text_vectors is not None
                               else item_text_vectors(data, target, args.text_model), args.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    scorer = sequence_scorer(model, args.max_len, n_target if merged else None, merged)
    # negatives: target items only
    sampler = popularity_sampler(np.where(labels > n_target, 0, labels), n_target, args.neg_power)

    def batch_losses() -> Iterator[torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
        for batch in shuffled_batches([inputs, labels], args.batch_size, rng):
            x, y = trim_left_padding(*batch)
            s2i, s2s = dss_step(model, x, y, args, sampler, n_target if merged else None)
            loss = s2i + args.seq2seq_weight * s2s
            yield loss

    train_epoch = epoch_of(opt, batch_losses)

    meta = {"model": "dss", "data": data.name, "target": target, "source": split.source, "n_target_items": n_target}
    result = fit(model, train_epoch, lambda: evaluate_ranking(scorer, split.valid), args.epochs, args.patience,
                 out, meta, desc=f"dss {target}",
                 items=checkpoint.catalogue(data, (target, split.source)) if out is not None else None)
    return model, result, scorer


def merge_scorer(
    model: DSS, max_len: int, rule: str, n_target: int | None = None
) -> Callable[[Examples], torch.Tensor]:
    """A full-ranking scorer of the trained ``model`` under the inference merge ``rule`` (``MERGES``): the
    intent-aware list first (history excluded, as the service's seen filter), then the rest by max score
    (``merged_scores``). Inference only: the same trained model is scored under every rule. ``n_target``: the
    cross-domain variant (``train_dss(merged=True)``): it reads the merged history, scores target items only."""

    def score(ex: Examples) -> torch.Tensor:
        hist = ex.target_hist if n_target is None else ex.merged_hist(n_target)
        phi, pi = model.last_intents(encode_histories(hist, max_len))  # (B, K, D), (B, K)
        phi = model.scored(phi, pi)
        items = model.item_vectors() if n_target is None else model.item_vectors()[: n_target + 1]
        per_intent = torch.einsum("bkd,nd->bkn", head_basis(phi, rule), items)  # (B, K, N + 1)
        excluded = torch.zeros(per_intent.shape[0], per_intent.shape[2], dtype=torch.bool)
        excluded[:, 0] = True  # padding
        for row, items in enumerate(ex.target_hist):
            excluded[row, torch.as_tensor(np.asarray(items, dtype=np.int64))] = True
        return merged_scores(per_intent, pi, rule, model.cfg.lam, excluded)

    return score


def choose_merge(valid: dict[str, dict[str, float]], reference: dict[str, float] | None) -> str:
    """The merge rule, from VALIDATION figures only: ``valid`` rule -> its valid NDCG@10, ILD@10, coverage@10;
    ``reference`` SASRec's valid ILD@10 and coverage@10. The best valid NDCG@10 among the rules whose valid
    ILD@10 AND coverage@10 are above the reference's; when none is (or there is no reference), the best valid
    NDCG@10 of all rules. Ties go to the earlier rule of ``MERGES``."""
    rules = [r for r in MERGES if r in valid]
    if not rules:
        raise ValueError(f"no merge rule evaluated; expected some of {MERGES}")
    diverse = [r for r in rules if reference is not None
               and all(valid[r][m] > reference[m] for m in ("ILD@10", "coverage@10"))]
    pool = diverse or rules
    return max(pool, key=lambda r: (valid[r]["NDCG@10"], -rules.index(r)))
