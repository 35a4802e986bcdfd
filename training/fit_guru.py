"""Training a GURU on both domains of a leave-one-out split: the loop `cdrec train guru` runs, which CDSRec's
``--pretrain-epochs`` and the inductive bridge's GUR encoder (``train_bridge_inductive.train_gur``) reuse.

Reads top to bottom: data -> time-aligned arrays (training.data.cross_domain) -> length-bucketed batches -> model
-> loop (reconstruction + adversarial + alignment) with early stopping (training.fit) on validation NDCG@10 of
the "GUR alone" tower.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from training import checkpoint
from training.args import GURUArgs
from training.data.cross_domain import bucketed_batches, cross_domain_arrays
from training.data.negatives import NegativeSampler
from training.data.splits import Examples, NextItemSplit
from training.evaluation import evaluate_ranking, two_domain_scorer
from training.fit import FitResult, epoch_of, fit
from training.models.guru import GURU, GURUConfig, guru_losses, reversal_strength


def train_guru(
    split: NextItemSplit, args: GURUArgs, out: Path | None = None
) -> tuple[GURU, FitResult, Callable[[Examples], torch.Tensor]]:
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    assert split.source is not None
    n_target, n_source = split.data.n_items(split.target), split.data.n_items(split.source)
    data = cross_domain_arrays(split, args.max_len)
    samplers = [NegativeSampler(split.train, d, n, args.negatives, args.pop_mix)
                for d, n in ((split.target, n_target), (split.source, n_source))]

    cfg = GURUConfig(n_target, n_source, args.dim, args.layers, args.heads, args.dropout, args.max_len,
                     args.encoder, args.adversarial)
    model = GURU(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    scorer = two_domain_scorer(model, args.max_len, n_target)
    steps_per_epoch = -(-len(data.length) // args.batch_size)
    # length-bucketed batches: weigh each by its real positions so every position counts the same
    per_batch = ((data.target_in != 0).sum() + (data.source_in != 0).sum()) / steps_per_epoch
    step = 0

    def batch_losses() -> Iterator[torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
        nonlocal step
        for t_in, t_out, s_in, s_idx in bucketed_batches(data, args.batch_size, rng):
            strength = reversal_strength(step / (args.epochs * steps_per_epoch))
            negs = (samplers[0](), samplers[1]())
            h_t, h_s = model.latents(t_in, 0), model.latents(s_in, 1)
            parts = guru_losses(model, h_t, h_s, t_in, s_in, t_out, s_idx, strength, args.loss, negs,
                                args.cross)
            loss = parts["rec"] + args.adv_weight * parts["adv"] + args.align_weight * parts["align"]
            weight = float((t_in != 0).sum() + (s_in != 0).sum()) / per_batch
            yield weight * loss, loss  # step on the weighted loss, report the plain one
            step += 1

    train_epoch = epoch_of(opt, batch_losses)

    meta = {"model": "gur", "data": split.data.name, "target": split.target, "source": split.source,
            "n_target_items": n_target, "args": asdict(args)}
    result = fit(model, train_epoch, lambda: evaluate_ranking(scorer, split.valid), args.epochs, args.patience,
                 out, meta, desc=f"gur {split.target}",
                 items=checkpoint.catalogue(split.data, (split.target, split.source)) if out is not None else None)
    return model, result, scorer
