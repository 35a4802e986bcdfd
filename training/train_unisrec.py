"""Train UniSRec: `cdrec train unisrec --data PATH --target-domain DOMAIN [--variant inductive|transductive]`.

Reads top to bottom: item text vectors (cached) -> **pretraining** on the pretrain domain's training sequences
(default: the other domain) with the sequence-item + sequence-sequence contrastive losses, stopped on the
*zero-shot* validation NDCG@10 of the target domain (the pretrained adapter + encoder scoring target items by
their text) -> **fine-tuning** on the target domain (adapter and encoder carry over, the item table is the
target's) with the sequence-item loss (in-batch + sampled negatives from the target catalogue), early stopping on
validation NDCG@10 -> (transductive: add fresh id embeddings to that text-only model and fine-tune again) ->
checkpoint. Test is never looked at here.

``hold_out_items`` builds the item cold-start split: a fraction of the target items is removed from training
entirely, and the test examples whose target is one of them form the slice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from pydantic.dataclasses import dataclass as pydantic_dataclass

from training import checkpoint
from training.args import SeqArgs
from training.data.batches import next_item_pairs, shuffled_batches, trim_left_padding
from training.data.splits import Examples, NextItemSplit
from training.data.text import DEFAULT_CACHE_DIR, DEFAULT_TEXT_MODEL, item_text_vectors
from training.evaluation import evaluate_ranking, sequence_scorer
from training.fit import FitResult, epoch_of, fit
from training.models.unisrec import UniSRec, UniSRecConfig, seq_item_loss, seq_seq_loss, transfer

Scorer = Callable[[Examples], torch.Tensor]
TextTables = dict[str, np.ndarray]  # domain -> (n_items + 1, text_dim) text vectors


@pydantic_dataclass
class UniSRecArgs(SeqArgs):
    """UniSRec's options (`cdrec train unisrec`)."""

    variant: Literal["inductive", "transductive"] = Field(
        "inductive", description="inductive (text only) | transductive (text + id embedding)"
    )
    # zero-shot validation on Art-Office peaks after the first pretraining epoch, then drifts to the source domain
    pretrain_epochs: int = Field(2, ge=0, description="pretraining epochs (0: no pretraining, fine-tune from scratch)")
    pretrain_patience: int = Field(1, ge=1, description="pretraining epochs without a better zero-shot NDCG@10")
    # fine-tuning: the inductive model still gained at epoch 25 on Art-Office office
    epochs: int = Field(40, ge=1, description="most fine-tuning epochs")
    pretrain_lr: float = Field(1e-3, gt=0, description="AdamW learning rate of the pretraining")
    experts: int = Field(8, ge=1, description="experts of the MoE text adapter")
    adapter_dropout: float = Field(0.2, ge=0, lt=1, description="dropout in the text adapter")
    temperature: float = Field(0.07, gt=0, description="softmax temperature of the contrastive losses")
    word_drop: float = Field(0.1, ge=0, lt=1, description="dropout on the text vectors of the word-drop view")
    item_drop: float = Field(0.2, ge=0, lt=1, description="share of history items dropped in the item-drop view")
    ssl_weight: float = Field(0.1, ge=0, description="weight of the sequence-sequence loss in pretraining")
    # fine-tuning softmax: in-batch + this many uniform negatives; 0 = the full catalogue, which is the paper's
    # loss but 76 s/epoch instead of 10 s on one CPU thread for Art-Office office (20k items through the adapter)
    negatives: int = Field(2048, ge=0, description="uniform negatives beside the in-batch ones (0: full catalogue)")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay (pretraining and fine-tuning)")
    # transductive: fine-tune text-only first, then add the id embeddings and fine-tune again. Trained jointly
    # from the start, the ids memorise the training sequences within 2-3 epochs on Art-Office (valid NDCG@10
    # 0.049 at best vs 0.060 for text only); added last, they start from the text model and can only refine it
    ids_after_text: bool = Field(
        True, description="transductive: fine-tune text-only first, then add the id embeddings"
    )
    freeze_encoder: bool = Field(False, description="fine-tune only the adapter (+ ids): parameter-efficient")
    text_model: str = Field(DEFAULT_TEXT_MODEL, description="the sentence model that embeds item texts")


def text_tables(split: NextItemSplit, domains: list[str], text_model: str) -> TextTables:
    return {d: item_text_vectors(split.data, d, text_model, DEFAULT_CACHE_DIR) for d in domains}


def _model(args: UniSRecArgs, text: np.ndarray, domain: str, transductive: bool) -> UniSRec:
    cfg = UniSRecConfig(
        text.shape[0] - 1, text.shape[1], args.dim, args.layers, args.heads, args.dropout, args.max_len,
        args.experts, args.adapter_dropout, args.temperature, transductive, args.text_model, domain,
    )
    model = UniSRec(cfg)
    model.set_text(torch.as_tensor(text, dtype=torch.float32))
    return model


def pretrain(
    split: NextItemSplit, domain: str, text: TextTables, args: UniSRecArgs, out: Path | None = None
) -> tuple[UniSRec, FitResult]:
    """Pretrain an inductive model on ``domain``'s training sequences; select on zero-shot target valid NDCG@10."""
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    seqs = list(split.train_sequences(domain).values())
    inputs, labels = next_item_pairs(seqs, args.max_len)
    model = _model(args, text[domain], domain, transductive=False)
    opt = torch.optim.AdamW(model.parameters(), lr=args.pretrain_lr, weight_decay=args.weight_decay)

    def batch_losses() -> Iterator[torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
        for batch in shuffled_batches([inputs, labels], args.batch_size, rng):
            x, y = trim_left_padding(*batch)
            loss = seq_item_loss(model, x, y, word_drop=args.word_drop)
            loss = loss + args.ssl_weight * seq_seq_loss(model, x, args.word_drop, args.item_drop)
            yield loss

    train_epoch = epoch_of(opt, batch_losses)

    def zero_shot() -> dict[str, float]:
        target = transfer(model, torch.as_tensor(text[split.target]), split.target).eval()
        return evaluate_ranking(sequence_scorer(target, args.max_len), split.valid)

    meta = {"model": "unisrec-pretrain", "data": split.data.name, "domain": domain, "target": split.target,
            "selected_on": f"zero-shot valid NDCG@10 on {split.target}"}
    result = fit(model, train_epoch, zero_shot, args.pretrain_epochs, args.pretrain_patience, out, meta,
                 desc=f"unisrec pretrain {domain}->{split.target}",
                 items=checkpoint.catalogue(split.data, (domain,)) if out is not None else None)
    return model, result


def finetune(
    split: NextItemSplit,
    text: TextTables,
    args: UniSRecArgs,
    pretrained: UniSRec | None = None,
    out: Path | None = None,
    meta: dict[str, object] | None = None,
    negative_pool: np.ndarray | None = None,
) -> tuple[UniSRec, FitResult, Scorer]:
    """Fine-tune on the target domain (from ``pretrained``'s adapter + encoder when given).

    ``negative_pool``: the item ids negatives are drawn from (default: the whole catalogue); the item cold-start
    run passes the catalogue minus the held-out items, which training must not see even as negatives.
    """
    if args.variant not in ("inductive", "transductive"):
        raise ValueError(f"unknown UniSRec variant {args.variant!r}: inductive | transductive")
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    target, transductive = split.target, args.variant == "transductive"
    tvecs = torch.as_tensor(text[target], dtype=torch.float32)
    if pretrained is not None:
        model = transfer(pretrained, tvecs, target, transductive)
    else:
        model = _model(args, text[target], target, transductive)
    n_items = model.cfg.n_items
    inputs, labels = next_item_pairs(list(split.train_sequences(target).values()), args.max_len)
    params = [p for n, p in model.named_parameters() if not (args.freeze_encoder and n.startswith("encoder."))]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    pool = torch.arange(1, n_items + 1) if negative_pool is None else torch.as_tensor(negative_pool, dtype=torch.long)

    def batch_losses() -> Iterator[torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
        for batch in shuffled_batches([inputs, labels], args.batch_size, rng):
            x, y = trim_left_padding(*batch)
            extra = pool if args.negatives <= 0 else pool[torch.randint(len(pool), (args.negatives,))]
            loss = seq_item_loss(model, x, y, extra)
            yield loss

    train_epoch = epoch_of(opt, batch_losses)

    scorer = sequence_scorer(model, args.max_len)
    name = f"unisrec-{args.variant}"
    info = {
        "model": name,
        "data": split.data.name,
        "target": target,
        "domain": target,
        "source": split.source,
        "text_model": args.text_model,
        "text_dim": model.cfg.text_dim,
        "n_target_items": n_items,
        "pretrained_on": None if pretrained is None else pretrained.cfg.domain,
        **(meta or {}),
    }
    result = fit(model, train_epoch, lambda: evaluate_ranking(scorer, split.valid), args.epochs, args.patience,
                 out, info, desc=f"{name} {target}",
                 items=checkpoint.catalogue(split.data, (target, split.source)) if out is not None else None)
    return model, result, scorer


def train_unisrec(
    split: NextItemSplit,
    args: UniSRecArgs,
    out: Path | None = None,
    pretrain_domain: str | None = None,
    text: TextTables | None = None,
) -> tuple[UniSRec, FitResult, Scorer, FitResult | None]:
    """Pretrain on ``pretrain_domain`` (default: the split's source domain; none when ``pretrain_epochs`` is 0
    or there is no other domain), then fine-tune on the target. Returns model, fine-tune fit, scorer and the
    pretraining fit (or None)."""
    domain = pretrain_domain or split.source
    if domain is not None and domain not in split.data.domains:
        raise ValueError(f"unknown pretrain domain {domain!r}; the data has {split.data.domains}")
    pre = domain is not None and args.pretrain_epochs > 0
    domains = [split.target, *([domain] if pre and domain != split.target else [])]
    text = text if text is not None else text_tables(split, domains, args.text_model)  # type: ignore[arg-type]
    pretrained, pre_result = None, None
    if pre:
        assert domain is not None
        pretrained, pre_result = pretrain(split, domain, text, args)
    meta: dict[str, object] = {"pretrained_on": domain if pre else None}
    if pre_result is not None:
        meta |= {"pretrain_valid": pre_result.valid, "pretrain_epoch": pre_result.best_epoch}
    if args.variant == "transductive" and args.ids_after_text:
        pretrained, text_fit, _ = finetune(split, text, replace(args, variant="inductive"), pretrained)
        meta |= {"text_only_valid": text_fit.valid, "text_only_epoch": text_fit.best_epoch}
    model, result, scorer = finetune(split, text, args, pretrained, out, meta)
    return model, result, scorer, pre_result


# --------------------------------------------------------------------------- item cold start


@dataclass
class ItemColdSplit:
    split: NextItemSplit  # training without the held-out items; valid without examples that target them
    held_out: np.ndarray  # target-domain item ids never seen in training
    test_slice: Examples  # test examples whose target is a held-out item


def hold_out_items(split: NextItemSplit, frac: float = 0.1, seed: int = 0) -> ItemColdSplit:
    """Hold a random ``frac`` of the target catalogue out of training entirely.

    Their interactions leave the training sequences (in every user's history, so no model trains on them),
    validation drops the examples that target them (selection never sees them either), and the test examples
    that target them form the cold slice. Evaluation histories are kept whole: at serving time a user's history
    may hold a new item, which a text model reads through its text.
    """
    if not 0 < frac < 1:
        raise ValueError(f"frac must be in (0, 1), got {frac}")
    n = split.data.n_items(split.target)
    rng = np.random.default_rng(seed)
    held = np.sort(rng.choice(np.arange(1, n + 1), size=max(1, round(frac * n)), replace=False))
    t = split.train
    is_held = (t["domain"].to_numpy() == split.target) & np.isin(t["item"].to_numpy(), held)
    keep_valid = np.flatnonzero(~np.isin(split.valid.targets, held))
    cold = replace(split, train=t[~is_held], valid=split.valid.subset(keep_valid))
    slice_idx = np.flatnonzero(np.isin(split.test.targets, held))
    return ItemColdSplit(cold, held, split.test.subset(slice_idx))
