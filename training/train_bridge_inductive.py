"""The inductive cold-start bridge the service runs: `cdrec train bridge inductive --data PATH ...`.

A user the models have never seen arrives with a source-domain history only; the bridge turns that item
sequence into a vector in the target item space (models/bridge.py ``InductiveBridge``). Reads top to bottom:

1. ``ranking_view`` keeps what selection may see: the split's train frame and the VALID cold users' examples.
2. Source and target MF (implicit feedback, sampled softmax) are pretrained on the train frame.
3. ``bridge-shared`` (EMCDR-style): mean of the user's source item embeddings -> one shared linear map,
   fitted by distance to the target MF's user vectors of the training users.
4. ``bridge-inductive`` (PTUPCDR made inductive): the same source representation, a personal bridge from the
   characteristic encoder + meta network on top of the shared one, trained task-oriented: cross-entropy of each
   target item of the training users given the source items strictly before it. With a trained GURU
   (``train_gur``, on the same train frame) s_u is GURU's source GUR instead ("bridge-inductive-guru").
Epochs are chosen on the valid cold users' full-ranking NDCG@10; test examples are built by the caller, after.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from pydantic import Field
from pydantic.dataclasses import dataclass as pydantic_dataclass

from core.sequence import encode_batch
from training import checkpoint
from training.args import GURUArgs, MFArgs, shared
from training.baselines import Popularity
from training.data.batches import minibatches
from training.data.interactions import Interactions
from training.data.negatives import smoothed_log_q
from training.data.splits import ColdStartSplit, Examples, NextItemSplit
from training.evaluation import evaluate_ranking
from training.fit import FitResult, epoch_of, fit
from training.fit_guru import train_guru
from training.fit_mf import train_softmax_mf
from training.models.bridge import InductiveBridge, InductiveBridgeConfig, distance_loss, masked_mean
from training.models.guru import GURU
from training.models.mf import MF, sampled_softmax_loss


@pydantic_dataclass
class InductiveArgs(shared("InductiveBase", dim=64, max_len=50, epochs=20, patience=2, lr=1e-3, batch_size=256,
                           seed=0)):
    """The inductive bridge's options (`cdrec train bridge inductive`): the bridge's loop (epochs, patience, lr,
    batch size), the MF tables' and the bridge's size (dim), the source items read (max_len), the seed; then:"""

    mf_epochs: int = Field(4, ge=1, description="epochs of the source and target MF pretraining")
    mf_lr: float = Field(2e-3, gt=0, description="learning rate of the MF pretraining")
    mf_batch_size: int = Field(1024, ge=1, description="batch size of the MF pretraining")
    negatives: int = Field(1024, ge=1, description="sampled negatives per batch (MF pretraining and the bridge)")
    hidden: int = Field(128, ge=1, description="hidden size of the characteristic encoder and meta network")
    encoder: str = Field(
        "mean", description="s_u: mean of source item embeddings | attention (own) | guru (trains GURU first)"
    )
    guru_epochs: int = Field(4, ge=1, description="--encoder guru: GURU training epochs")
    warm_start: bool = Field(False, description="start W_0 at the shared bridge's (else at 0: item-bias ranking)")
    pop_bias: bool = Field(True, description="item bias = log(1 + training count) instead of the target MF's")
    tune_tables: bool = Field(False, description="fine-tune the pretrained item tables with the task loss")
    cold_item: str = Field(
        "first",
        description="the cold users' item that selection ranks: first (their first target item after their "
        "first source item) | last",
    )


@dataclass
class RankingView:
    """Everything model selection may see: the train frame and the valid cold users' examples."""

    source: str
    target: str
    n_users: int
    n_source_items: int
    n_target_items: int
    train: pd.DataFrame
    valid: Examples


def ranking_view(split: ColdStartSplit, cold_item: str = InductiveArgs.cold_item) -> RankingView:
    """``cold_item``: which item of each valid cold user is ranked (ColdStartSplit.ranking_examples)."""
    data = split.data
    return RankingView(split.source, split.target, data.n_users, data.n_items(split.source),
                       data.n_items(split.target), split.train, split.ranking_examples(split.valid_users, cold_item))


def training_pairs(view: RankingView, max_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(users (P,), source seqs (P, max_len), target items (P,)): every training target interaction with
    the user's source items strictly before it, as the cold users are evaluated."""
    t = view.train.sort_values(["user", "order"], kind="stable")
    by_user = t[t["domain"] == view.source].groupby("user")
    src = {int(u): (g["item"].to_numpy(), g["order"].to_numpy()) for u, g in by_user}
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64))
    users, hists, targets = [], [], []
    tgt = t[t["domain"] == view.target]
    for u, item, order in zip(tgt["user"].to_numpy(), tgt["item"].to_numpy(), tgt["order"].to_numpy(), strict=True):
        s_items, s_orders = src.get(int(u), empty)
        users.append(u)
        hists.append(s_items[s_orders < order])
        targets.append(item)
    return np.asarray(users, np.int64), encode_batch(hists, max_len), np.asarray(targets, np.int64)


def scorer(model: InductiveBridge) -> Callable[[Examples], torch.Tensor]:
    def score(ex: Examples) -> torch.Tensor:
        return model.score(torch.as_tensor(encode_batch(ex.source_hist, model.cfg.max_len)))

    return score


def pretrain(view: RankingView, args: InductiveArgs) -> tuple[MF, MF]:
    mf = MFArgs(dim=args.dim, lr=args.mf_lr, reg=0.0, epochs=args.mf_epochs, patience=2,
                batch_size=args.mf_batch_size, init_std=0.1, seed=args.seed)
    t = view.train
    s, g = t[t["domain"] == view.source], t[t["domain"] == view.target]
    src, _ = train_softmax_mf(s["user"].to_numpy(np.int64, copy=True), s["item"].to_numpy(np.int64, copy=True),
                              view.n_users, view.n_source_items, mf, args.negatives, desc="mf source")
    tgt, _ = train_softmax_mf(g["user"].to_numpy(np.int64, copy=True), g["item"].to_numpy(np.int64, copy=True),
                              view.n_users, view.n_target_items, mf, args.negatives, desc="mf target")
    return src, tgt


def new_bridge(
    view: RankingView, src: MF, tgt: MF, args: InductiveArgs, personal: bool, guru: GURU | None = None
) -> InductiveBridge:
    """A bridge on the pretrained tables: source item embeddings from the source MF (or GURU's, frozen with
    its encoder when ``guru`` is given), target item vectors [v, b] from the target MF."""
    encoder = "guru" if guru is not None else args.encoder
    layers, heads, dropout = (guru.cfg.layers, guru.cfg.heads, guru.cfg.dropout) if guru is not None else (1, 2, 0.1)
    cfg = InductiveBridgeConfig(view.n_source_items, view.n_target_items, args.dim, args.dim, personal, encoder,
                                args.hidden, layers, heads, dropout, args.max_len)
    model = InductiveBridge(cfg)
    with torch.no_grad():
        model.target_items.copy_(tgt.item_vectors()[:, : args.dim + 1])  # [v, b]
        if model.guru is not None and guru is not None:
            model.guru.load_state_dict(guru.state_dict())
            model.guru.requires_grad_(False)
            model.source_items.weight.copy_(guru.item_emb[1].weight)
        else:
            model.source_items.weight.copy_(src.item.weight)
    return model


def train_gur(view: RankingView, args: InductiveArgs) -> GURU:
    """GURU on the cold split's train frame, selected by its "GUR alone" tower on the valid cold users."""
    frame = view.train
    ids = {view.source: [""] * (view.n_source_items + 1), view.target: [""] * (view.n_target_items + 1)}
    # a stand-in dataset of the train frame alone: external ids are not needed, and the hidden rows stay out
    stand_in = Interactions(frame, [""] * view.n_users, ids, name="cold-start train frame")
    split = NextItemSplit(stand_in, view.target, view.source, frame, view.valid, view.valid)
    gargs = GURUArgs(epochs=args.guru_epochs, patience=2, dim=args.dim, max_len=args.max_len, seed=args.seed)
    model, _, _ = train_guru(split, gargs)
    return model


@torch.no_grad()
def gur_states(model: InductiveBridge, seqs: np.ndarray, chunk: int = 1024) -> torch.Tensor:
    """s_u of every row of ``seqs`` under the frozen GURU, computed once (rows sorted by length, so each
    chunk drops its all-padding columns: positions count from the first real item, nothing changes)."""
    assert model.guru is not None
    model.guru.eval()
    out = torch.zeros(len(seqs), model.cfg.dim)
    order = np.argsort((seqs != 0).sum(1), kind="stable")
    for start in range(0, len(order), chunk):
        idx = order[start : start + chunk]
        x = torch.as_tensor(seqs[idx])
        keep = max(1, int((x != 0).sum(1).max()))
        out[torch.as_tensor(idx)] = model.source_representation(x[:, -keep:])
    return out


def valid_ndcg(view: RankingView, model: InductiveBridge) -> Callable[[], dict[str, float]]:
    """The valid cold users' full-ranking metrics: selection maximises their NDCG@10."""
    return lambda: evaluate_ranking(scorer(model), view.valid)


def train_shared(view: RankingView, src: MF, tgt: MF, args: InductiveArgs) -> tuple[InductiveBridge, FitResult]:
    """EMCDR-style: W_0 fitted by distance from the pooled source embeddings to the target user vectors."""
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    model = new_bridge(view, src, tgt, args, personal=False)
    users, seqs, _ = training_pairs(view, args.max_len)
    last = np.flatnonzero(np.r_[users[1:] != users[:-1], True])  # each training user's full source history
    users, seqs = users[last], seqs[last]
    with torch.no_grad():
        seq_t = torch.as_tensor(seqs)
        pooled = masked_mean(model.source_items(seq_t), seq_t == 0)  # (U, k), fixed: the tables are frozen
        goal = tgt.user(torch.as_tensor(users))  # (U, D)
    opt = torch.optim.Adam(model.w0.parameters(), lr=args.lr * 3)
    idx = np.arange(len(users))

    def batch_losses() -> Iterator[torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
        for (b,) in minibatches([idx], args.batch_size, rng):
            loss = distance_loss(model.w0(pooled[b]), goal[b])
            yield loss

    train_epoch = epoch_of(opt, batch_losses)

    return model, fit(model, train_epoch, valid_ndcg(view, model), args.epochs * 5, args.patience * 2,
                      desc="bridge-shared")


def train_inductive(
    view: RankingView,
    src: MF,
    tgt: MF,
    args: InductiveArgs,
    warm: InductiveBridge | None = None,
    guru: GURU | None = None,
) -> tuple[InductiveBridge, FitResult]:
    """Task-oriented personal bridge. ``warm`` (with ``args.warm_start``): start from the shared bridge's W_0;
    ``guru``: s_u is that (frozen) GURU's source representation."""
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    model = new_bridge(view, src, tgt, args, personal=True, guru=guru)
    _, seqs, targets = training_pairs(view, args.max_len)
    if warm is not None and args.warm_start and model.cfg.encoder == "mean":
        model.w0.load_state_dict(warm.w0.state_dict())
    else:
        torch.nn.init.zeros_(model.w0.weight)  # x_u = 0: training starts from the item-bias (popularity) ranking
    if args.pop_bias:  # the bias column is the popularity ranking: the start, and the empty-history fallback
        counts = np.bincount(targets, minlength=view.n_target_items + 1)
        with torch.no_grad():
            model.target_items[:, -1] = torch.as_tensor(np.log1p(counts), dtype=torch.float32)
            model.target_items[0, -1] = 0.0
    model.source_items.weight.requires_grad_(args.tune_tables)
    model.target_items.requires_grad_(args.tune_tables)
    log_q = smoothed_log_q(targets, view.n_target_items)
    q = log_q.exp()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=args.lr)

    cached = gur_states(model, seqs) if model.guru is not None else None

    def batch_losses() -> Iterator[torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
        for x, y, row in minibatches([seqs, targets, np.arange(len(seqs))], args.batch_size, rng):
            neg = torch.multinomial(q, args.negatives, replacement=True)
            # the frozen GURU's s_u comes from the cache; everything after it is the serving forward
            vec = model(x) if cached is None else model.bridge(cached[row], model.characteristic(x))
            loss = sampled_softmax_loss(vec, model.item_vectors(), y, neg, log_q)
            yield loss

    train_epoch = epoch_of(opt, batch_losses)

    name = "bridge-inductive" + ("" if model.cfg.encoder == "mean" else f"-{model.cfg.encoder}")
    return model, fit(model, train_epoch, valid_ndcg(view, model), args.epochs, args.patience, desc=name,
                      start_valid=True)


def run(split: ColdStartSplit, args: InductiveArgs, out: Path | None = None) -> dict[str, object]:
    """`cdrec train bridge inductive`: pretrain, fit both bridges with selection on the valid cold users, save
    them (``bridge.<src>__<dst>.pt`` is the serving bridge), then report popularity and both bridges."""
    view = ranking_view(split, args.cold_item)
    src, tgt = pretrain(view, args)
    shared, st_shared = train_shared(view, src, tgt, args)
    guru = train_gur(view, args) if args.encoder == "guru" else None
    personal, st_personal = train_inductive(view, src, tgt, args, warm=shared, guru=guru)
    pop = Popularity(split.train, split.target, split.data.n_items(split.target))
    models = {"bridge-shared": (shared, st_shared), "bridge-inductive": (personal, st_personal)}
    valid = {name: evaluate_ranking(scorer(m), view.valid) for name, (m, _) in models.items()}
    valid["popularity"] = evaluate_ranking(pop.score, view.valid)
    saved = {}
    if out is not None:
        pair = f"{split.source}__{split.target}"
        for name, (model, stopped) in models.items():
            meta = {"model": name, "data": split.data.name, "source": split.source, "target": split.target,
                    "beta": split.beta, "seed": args.seed, "best_epoch": stopped.best_epoch, "valid": valid[name]}
            file = "bridge" if name == "bridge-inductive" else name
            items = checkpoint.catalogue(split.data, (split.target, split.source))
            saved[name] = str(checkpoint.save(out / f"{file}.{pair}.pt", model, meta, items))
    test_examples = split.ranking_examples(split.test_users, args.cold_item)  # after every model is fixed
    test = {name: evaluate_ranking(scorer(m), test_examples) for name, (m, _) in models.items()}
    test["popularity"] = evaluate_ranking(pop.score, test_examples)
    return {"checkpoints": saved, "valid": valid, "test": test}
