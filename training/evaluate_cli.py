"""`cdrec evaluate`: the metrics table of a checkpoint, or of the popularity baseline, on valid or test.

    cdrec evaluate --checkpoint runs/cdsrec.office.pt --data ../shared/data/amazon_art_office_urllm
    cdrec evaluate --model popularity --data synthetic --target-domain music

Checkpoints of the next-item models (those whose ``serving()`` declares a user tower, training/models/serving.py,
so a new model needs no change here): SASRec (``sasrec``, ``sasrec-merged``), GURU (``gur``), CDSRec (``cdsrec``,
``cdsrec-noadv``, ``cdsrec-lstm``), DSS (``dss``: max or weighted over its K intent vectors, as trained) and
fine-tuned UniSRec (``unisrec-inductive``, ``unisrec-transductive``), on
the leave-one-out split they were trained on. Cold-start bridges are scored on their own split by
``cdrec train bridge``, which reports valid and test.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from training import checkpoint
from training.baselines import Popularity
from training.data.interactions import DataError
from training.data.source import load_data
from training.data.splits import Examples, leave_one_out
from training.evaluation import evaluate_ranking, sequence_scorer, two_domain_scorer
from training.models.serving import NotServable


def scorer_for(model: torch.nn.Module, meta: dict[str, Any], n_target: int) -> Callable[[Examples], torch.Tensor]:
    """The scorer a checkpoint's trainer evaluated it with, from the model's serving declaration
    (training/models/serving.py): a tower reading the target history alone scores with ``model.score(seq)``, one
    reading both histories as ``(target_seq, source_seq) -> user vector`` against its item vectors."""
    name = str(meta.get("model"))
    if "beta" in meta:  # only the cold-start trainers record the share of users they made cold
        raise ValueError(f"{name!r} is a cold-start bridge: `cdrec train bridge` scores it on its cold-start split")
    serving = getattr(model, "serving", None)
    try:
        spec = serving() if callable(serving) else None
    except NotServable:
        spec = None
    if spec is None or spec.role == "bridge":
        raise ValueError(f"cdrec evaluate does not know model {name!r}: {type(model).__name__} declares no user tower "
                         "(training/models/serving.py; the next-item models do: sasrec, gur, cdsrec, dss, unisrec)")
    merged = bool(meta.get("merged"))  # sasrec-merged: one vocabulary of both domains, target ids first
    if spec.n_target_items < n_target or (spec.n_target_items != n_target and not merged):
        raise ValueError(f"{name!r} scores {spec.n_target_items} items but the target domain has {n_target}: "
                         "it was not trained on this domain's items")
    if "source" in spec.reads:  # GURU and CDSRec: (target_seq, source_seq) towers
        return two_domain_scorer(model, spec.max_len, n_target)
    return sequence_scorer(model, spec.max_len, n_target, merged)  # one sequence in, every item's score out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cdrec evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--checkpoint", type=Path)
    p.add_argument("--model", choices=["popularity"], help="a baseline instead of a checkpoint")
    p.add_argument("--target-domain", help="default: the checkpoint's")
    p.add_argument("--split", choices=["valid", "test"], default="test")
    p.add_argument("--seed", type=int, default=0, help="seed of synthetic data")
    ns = p.parse_args(argv)
    if (ns.checkpoint is None) == (ns.model is None):
        p.error("give exactly one of --checkpoint and --model")
    try:
        rows = []
        if ns.checkpoint is not None:
            model, meta = checkpoint.load(ns.checkpoint)
            target = ns.target_domain or meta["target"]
            data = load_data(ns.data, seed=ns.seed)
            split = leave_one_out(data, target)
            scorer = scorer_for(model, meta, data.n_items(target))
            rows.append((meta["model"], evaluate_ranking(scorer, getattr(split, ns.split))))
        else:
            if not ns.target_domain:
                p.error("--model popularity needs --target-domain")
            data = load_data(ns.data, seed=ns.seed)
            split = leave_one_out(data, ns.target_domain)
            pop = Popularity(split.train, ns.target_domain, data.n_items(ns.target_domain))
            rows.append(("popularity", evaluate_ranking(pop.score, getattr(split, ns.split))))
    except (DataError, ValueError, FileNotFoundError, checkpoint.CheckpointError) as exc:
        print(f"cdrec evaluate: {exc}", file=sys.stderr)
        return 2
    metrics = list(rows[0][1])
    print(f"{'model':<16}" + "".join(f"{m:>10}" for m in metrics))
    for name, vals in rows:
        print(f"{name:<16}" + "".join(f"{vals[m]:>10.4f}" for m in metrics))
    return 0
