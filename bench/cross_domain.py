"""The cross-domain rows of `bench.quality`: GUR alone, CDSRec without adversary, CDSRec, CDSRec with LSTM.

``cross_domain_runners()`` gives one runner per row in the shape bench/quality.py calls:
``runner(split, seed) -> (test metrics, seconds per training epoch)``. ``run_cross_domain_rows(split, seeds)``
runs them all and returns ``{model: [test metrics + epoch_s, train_s, valid_NDCG@10 per seed]}``. Each run
picks its epoch on validation NDCG@10 only; test is evaluated once, at the end.

On its own, for one target and seed with validation figures and the source-domain ablation (the same model
evaluated with every source history emptied):

    python -m bench.cross_domain --data-root ../shared/data --targets art office --seeds 0
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import torch

from bench.results import data_parser
from training.args import GURUArgs
from training.data.splits import Examples, NextItemSplit
from training.evaluation import evaluate_ranking
from training.fit import FitResult
from training.fit_guru import train_guru
from training.train_cdsrec import CDSRecArgs, train_cdsrec

Runner = Callable[[NextItemSplit, int], tuple[dict[str, float], float]]
Scorer = Callable[[Examples], torch.Tensor]
ROWS = ("gur", "cdsrec-noadv", "cdsrec", "cdsrec-lstm")

# chosen on Art-Office validation NDCG@10; a run stops two epochs after its best (about 10-12 epochs)
GURU_ARGS = GURUArgs(epochs=30, patience=3)
CDSREC_ARGS = CDSRecArgs(epochs=30, patience=2)


def train_row(
    model: str, split: NextItemSplit, seed: int, guru_args: GURUArgs = GURU_ARGS, cdsrec_args: CDSRecArgs = CDSREC_ARGS
) -> tuple[FitResult, Scorer, float]:
    """Train one row's model; returns its fit result, its scorer and the wall seconds it took."""
    start = time.perf_counter()
    if model == "gur":
        _, result, scorer = train_guru(split, replace(guru_args, seed=seed))
    elif model in ("cdsrec-noadv", "cdsrec", "cdsrec-lstm"):
        args = replace(cdsrec_args, seed=seed, adversarial=model != "cdsrec-noadv",
                       encoder="lstm" if model == "cdsrec-lstm" else "transformer")
        _, result, scorer = train_cdsrec(split, args)
    else:
        raise ValueError(f"unknown cross-domain row {model!r}; known: {ROWS}")
    return result, scorer, time.perf_counter() - start


def cross_domain_runners(
    guru_args: GURUArgs = GURU_ARGS, cdsrec_args: CDSRecArgs = CDSREC_ARGS
) -> dict[str, Runner]:
    def runner(model: str) -> Runner:
        def run(split: NextItemSplit, seed: int) -> tuple[dict[str, float], float]:
            result, scorer, _ = train_row(model, split, seed, guru_args, cdsrec_args)
            return evaluate_ranking(scorer, split.test), result.epoch_s

        return run

    return {m: runner(m) for m in ROWS}


def run_cross_domain_rows(
    split: NextItemSplit,
    seeds: Sequence[int],
    models: Sequence[str] = ROWS,
    guru_args: GURUArgs = GURU_ARGS,
    cdsrec_args: CDSRecArgs = CDSREC_ARGS,
) -> dict[str, list[dict[str, float]]]:
    """Train and test every requested row for every seed: ``{model: [{metric: value, ...}, ...]}``."""
    unknown = [m for m in models if m not in ROWS]
    if unknown:
        raise ValueError(f"unknown cross-domain rows {unknown}; known: {ROWS}")
    out: dict[str, list[dict[str, float]]] = {m: [] for m in models}
    for model in models:
        for seed in seeds:
            result, scorer, seconds = train_row(model, split, seed, guru_args, cdsrec_args)
            out[model].append({**evaluate_ranking(scorer, split.test), "epoch_s": result.epoch_s,
                               "train_s": seconds, "valid_NDCG@10": result.valid["NDCG@10"]})
    return out


def without_source(examples: Examples) -> Examples:
    """The same examples with every source-domain history emptied (the cross-domain ablation)."""
    out = copy.copy(examples)
    out.source_hist = [np.zeros(0, np.int64) for _ in examples.source_hist]
    out.source_order = [np.zeros(0, np.int64) for _ in examples.source_hist]
    return out


def main(argv: list[str] | None = None) -> int:
    from training.data.loaders import load_art_office
    from training.data.splits import leave_one_out

    p = data_parser(__doc__, seeds=[0])
    p.add_argument("--targets", nargs="+", default=["art", "office"])
    p.add_argument("--models", nargs="+", default=list(ROWS))
    p.add_argument("--threads", type=int, default=1)
    ns = p.parse_args(argv)
    torch.set_num_threads(ns.threads)
    data = load_art_office(ns.data_root / "amazon_art_office_urllm")
    for target in ns.targets:
        split = leave_one_out(data, target)
        for model in ns.models:
            for seed in ns.seeds:
                result, scorer, seconds = train_row(model, split, seed)
                row = {
                    "target": target, "model": model, "seed": seed, "best_epoch": result.best_epoch,
                    "valid": result.valid["NDCG@10"], "test": evaluate_ranking(scorer, split.test)["NDCG@10"],
                    "valid_no_source": evaluate_ranking(scorer, without_source(split.valid))["NDCG@10"],
                    "test_no_source": evaluate_ranking(scorer, without_source(split.test))["NDCG@10"],
                    "epoch_s": result.epoch_s, "train_s": seconds,
                }
                print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
