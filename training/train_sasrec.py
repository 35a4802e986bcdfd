"""Train SASRec on one target domain: `cdrec train sasrec --data PATH --target-domain DOMAIN`.

``merged=True`` trains the same model on the user's merged two-domain sequence (target ids 1..Nt, source ids
shifted after them): the strong simple cross-domain baseline (`sasrec-merged`). Its input is the merged
sequence, its output the target domain only: a position is trained when its next item is a target item, the
softmax runs over target items. On Art-Office neither form helps: cross-domain item transitions do not
generalise there, validation NDCG@10 falls from the first epoch (docs/results.md, bench quality).
Reads top to bottom: data -> batches -> model -> loop with early stopping on validation NDCG@10.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from pydantic.dataclasses import dataclass

from training import checkpoint
from training.args import NextItemArgs
from training.data.batches import next_item_pairs, shuffled_batches, trim_left_padding
from training.data.splits import Examples, NextItemSplit
from training.evaluation import evaluate_ranking, sequence_scorer
from training.fit import FitResult, epoch_of, fit
from training.models.sasrec import SASRec, SASRecConfig, popularity_sampler, sequence_loss


@dataclass
class SASRecArgs(NextItemArgs):
    """SASRec's options (`cdrec train sasrec`): the shared ones (training.fit)."""


def train_sasrec(
    split: NextItemSplit, args: SASRecArgs, out: Path | None = None, merged: bool = False
) -> tuple[SASRec, FitResult, Callable[[Examples], torch.Tensor]]:
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    data, target = split.data, split.target
    n_target = data.n_items(target)
    if merged:
        assert split.source is not None, "the merged baseline needs exactly two domains"
        train = split.train.sort_values(["user", "order"], kind="stable")
        ids = train["item"].to_numpy() + np.where(train["domain"].to_numpy() == target, 0, n_target)
        cuts = np.flatnonzero(np.diff(train["user"].to_numpy())) + 1
        seqs = np.split(ids, cuts)
        n_vocab = n_target + data.n_items(split.source)
    else:
        seqs = list(split.train_sequences(target).values())
        n_vocab = n_target
    inputs, labels = next_item_pairs(seqs, args.max_len)
    if merged:
        labels = np.where(labels > n_target, 0, labels)  # only target items are predicted (see above)
        keep = (labels > 0).any(axis=1)  # rows with no target item left teach nothing
        inputs, labels = inputs[keep], labels[keep]

    model = SASRec(SASRecConfig(n_vocab, args.dim, args.layers, args.heads, args.dropout, args.max_len))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    scorer = sequence_scorer(model, args.max_len, n_target, merged)
    sampler = popularity_sampler(labels, n_target, args.neg_power)  # negatives: target items only

    def batch_losses() -> Iterator[torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
        for batch in shuffled_batches([inputs, labels], args.batch_size, rng):
            x, y = trim_left_padding(*batch)
            loss = sequence_loss(model, x, y, args.negatives, sampler, n_output=n_target)
            yield loss

    train_epoch = epoch_of(opt, batch_losses)

    meta = {
        "model": "sasrec-merged" if merged else "sasrec",
        "data": data.name,
        "target": target,
        "source": split.source,
        "merged": merged,
        "n_target_items": n_target,
    }
    result = fit(
        model,
        train_epoch,
        lambda: evaluate_ranking(scorer, split.valid),
        args.epochs,
        args.patience,
        out,
        meta,
        desc=f"{meta['model']} {target}",
        items=checkpoint.catalogue(data, (target, split.source)) if out is not None else None,
    )
    return model, result, scorer
