"""The cross-domain rows of `bench.quality`: GUR alone, CDSRec without adversary, CDSRec, CDSRec with LSTM.

``cross_domain_runners()`` gives one runner per row in the shape bench/quality.py calls:
``runner(split, seed) -> (test metrics, seconds per training epoch)``. ``run_cross_domain_rows(split, seeds)``
runs them all and returns ``{model: [test metrics + {"epoch_s"} per seed]}``. Each run selects its epoch on
validation NDCG@10 only; test is evaluated once, at the end.

The settings below were chosen on Art-Office validation NDCG@10 (target=art and target=office, seed 0) under
a budget of about 2-3 minutes of training per run on one CPU thread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import torch

from training.data.splits import NextItemSplit
from training.evaluation import evaluate_ranking
from training.train_cdsrec import CDSRecArgs, train_cdsrec
from training.train_guru import GURUArgs, train_guru

Runner = Callable[[NextItemSplit, int], tuple[dict[str, float], float]]
ROWS = ("gur", "cdsrec-noadv", "cdsrec", "cdsrec-lstm")

GURU_ARGS = GURUArgs(epochs=12, patience=2)
CDSREC_ARGS = CDSRecArgs(epochs=12, patience=2)


def _guru_runner(args: GURUArgs) -> Runner:
    def run(split: NextItemSplit, seed: int) -> tuple[dict[str, float], float]:
        _, result, scorer = train_guru(split, replace(args, seed=seed))
        return evaluate_ranking(scorer, split.test), result.epoch_s

    return run


def _cdsrec_runner(args: CDSRecArgs) -> Runner:
    def run(split: NextItemSplit, seed: int) -> tuple[dict[str, float], float]:
        _, result, scorer = train_cdsrec(split, replace(args, seed=seed))
        return evaluate_ranking(scorer, split.test), result.epoch_s

    return run


def cross_domain_runners(
    guru_args: GURUArgs = GURU_ARGS, cdsrec_args: CDSRecArgs = CDSREC_ARGS
) -> dict[str, Runner]:
    return {
        "gur": _guru_runner(guru_args),
        "cdsrec-noadv": _cdsrec_runner(replace(cdsrec_args, adversarial=False)),
        "cdsrec": _cdsrec_runner(replace(cdsrec_args, adversarial=True)),
        "cdsrec-lstm": _cdsrec_runner(replace(cdsrec_args, adversarial=True, encoder="lstm")),
    }


def run_cross_domain_rows(
    split: NextItemSplit,
    seeds: Sequence[int],
    models: Sequence[str] = ROWS,
    guru_args: GURUArgs = GURU_ARGS,
    cdsrec_args: CDSRecArgs = CDSREC_ARGS,
) -> dict[str, list[dict[str, float]]]:
    """Train and test every requested row for every seed: ``{model: [{metric: value, "epoch_s": s}, ...]}``."""
    runners = cross_domain_runners(guru_args, cdsrec_args)
    unknown = [m for m in models if m not in runners]
    if unknown:
        raise ValueError(f"unknown cross-domain rows {unknown}; known: {list(runners)}")
    out: dict[str, list[dict[str, float]]] = {m: [] for m in models}
    for model in models:
        for seed in seeds:
            torch.manual_seed(seed)
            metrics, epoch_s = runners[model](split, seed)
            out[model].append({**metrics, "epoch_s": epoch_s})
    return out
