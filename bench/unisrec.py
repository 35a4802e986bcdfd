"""UniSRec on Amazon Art-Office: next-item quality and the item cold-start slice (bench `unisrec`).

    python -m bench.unisrec --data-root ../shared/data --targets office [art] [--seeds 0]

Per target domain and seed, on the leave-one-out split of bench `quality`:
* next item (task ``target=<domain>``): pretrain once on the other domain (selected on the target's zero-shot
  validation NDCG@10), fine-tune ``unisrec-inductive`` and ``unisrec-transductive`` from it, test HR@10 /
  NDCG@10 / MRR over the full target catalogue; ``sasrec`` is trained beside them for the side-by-side row;
* item cold start (task ``items:target=<domain>``): 10% of the target catalogue is held out of training
  entirely (``training.train_unisrec.hold_out_items``); the test examples whose target is a held-out item are
  ranked against the FULL catalogue by ``unisrec-inductive``, ``sasrec`` and ``popularity`` trained on what
  is left. An id model has never seen those items: popularity ranks them last by construction, SASRec only
  knows them as negatives.
Writes docs/results.json (bench "unisrec") and its section of docs/results.md.

``unisrec_runners()`` gives the two next-item rows in the shape bench/quality.py calls
(``runner(split, seed) -> (test metrics, seconds per fine-tuning epoch)``), as bench/cross_domain.py does.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from bench.results import DOCS, data_parser, record, table, update_json, update_markdown
from training.baselines import Popularity
from training.data.loaders import load_art_office
from training.data.splits import NextItemSplit, leave_one_out
from training.evaluation import evaluate_ranking
from training.train_sasrec import SASRecArgs, train_sasrec
from training.train_unisrec import UniSRecArgs, finetune, hold_out_items, pretrain, text_tables, train_unisrec

BENCH, DATASET = "unisrec", "art-office"
METRICS = ("HR@10", "NDCG@10", "MRR")
ROWS = ("unisrec-inductive", "unisrec-transductive")
Runner = Callable[[NextItemSplit, int], tuple[dict[str, float], float]]

# the trainer's defaults (a few minutes per run on one CPU thread); selection on validation NDCG@10 only
UNISREC_ARGS = UniSRecArgs()
SASREC_ARGS = SASRecArgs(epochs=40, patience=4, dropout=0.5)  # bench quality's settings


def unisrec_runners(args: UniSRecArgs = UNISREC_ARGS) -> dict[str, Runner]:
    def runner(variant: str) -> Runner:
        def run(split: NextItemSplit, seed: int) -> tuple[dict[str, float], float]:
            _, result, scorer, _ = train_unisrec(split, replace(args, seed=seed, variant=variant))
            return evaluate_ranking(scorer, split.test), result.epoch_s

        return run

    return {f"unisrec-{v}": runner(v) for v in ("inductive", "transductive")}


def _log(**row: Any) -> None:
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)


def next_item(split: NextItemSplit, seed: int, args: UniSRecArgs, sasrec: bool) -> dict[str, dict[str, float]]:
    """{model: test metrics + epoch_s} for both UniSRec variants (one shared pretraining) and SASRec."""
    args = replace(args, seed=seed)
    assert split.source is not None
    text = text_tables(split, [split.target, split.source], args.text_model)
    start = time.perf_counter()
    pre, pre_fit = pretrain(split, split.source, text, args)
    _log(target=split.target, seed=seed, model="pretrain", best_epoch=pre_fit.best_epoch, epoch_s=pre_fit.epoch_s,
         zero_shot_valid=pre_fit.valid["NDCG@10"], train_s=time.perf_counter() - start)
    out: dict[str, dict[str, float]] = {}
    base = pre
    for name in ROWS:  # inductive first: the transductive model adds its ids to it (UniSRecArgs.ids_after_text)
        start = time.perf_counter()
        base, fit_, scorer = finetune(split, text, replace(args, variant=name.removeprefix("unisrec-")), base)
        out[name] = {**evaluate_ranking(scorer, split.test), "epoch_s": fit_.epoch_s}
        _log(target=split.target, seed=seed, model=name, best_epoch=fit_.best_epoch, valid=fit_.valid["NDCG@10"],
             test=out[name]["NDCG@10"], epoch_s=fit_.epoch_s, train_s=time.perf_counter() - start)
    if sasrec:
        _, fit_, scorer = train_sasrec(split, replace(SASREC_ARGS, seed=seed))
        out["sasrec"] = {**evaluate_ranking(scorer, split.test), "epoch_s": fit_.epoch_s}
        _log(target=split.target, seed=seed, model="sasrec", best_epoch=fit_.best_epoch, valid=fit_.valid["NDCG@10"],
             test=out["sasrec"]["NDCG@10"], epoch_s=fit_.epoch_s)
    return out


def item_cold(split: NextItemSplit, seed: int, args: UniSRecArgs, frac: float) -> dict[str, dict[str, float]]:
    """{model: metrics on the held-out-item test slice} for unisrec-inductive, sasrec and popularity."""
    args = replace(args, seed=seed, variant="inductive")
    cold = hold_out_items(split, frac, seed)
    s = cold.split
    assert s.source is not None
    text = text_tables(s, [s.target, s.source], args.text_model)
    out: dict[str, dict[str, float]] = {}
    pre, _ = pretrain(s, s.source, text, args)
    known = np.setdiff1d(np.arange(1, s.data.n_items(s.target) + 1), cold.held_out)  # never a held-out negative
    _, fit_, scorer = finetune(s, text, args, pre, negative_pool=known)
    out["unisrec-inductive"] = evaluate_ranking(scorer, cold.test_slice)
    warm = evaluate_ranking(scorer, s.test.subset(_warm_idx(s, cold.held_out)))
    _log(target=s.target, seed=seed, model="unisrec-inductive", task="items", slice=len(cold.test_slice),
         held_out=len(cold.held_out), best_epoch=fit_.best_epoch, cold=out["unisrec-inductive"]["NDCG@10"],
         warm=warm["NDCG@10"])
    _, fit_, scorer = train_sasrec(s, replace(SASREC_ARGS, seed=seed))
    out["sasrec"] = evaluate_ranking(scorer, cold.test_slice)
    _log(target=s.target, seed=seed, model="sasrec", task="items", cold=out["sasrec"]["NDCG@10"],
         cold_hr=out["sasrec"]["HR@10"])
    pop = Popularity(s.train, s.target, s.data.n_items(s.target))
    out["popularity"] = evaluate_ranking(pop.score, cold.test_slice)
    return out


def _warm_idx(split: NextItemSplit, held: np.ndarray) -> np.ndarray:
    return np.flatnonzero(~np.isin(split.test.targets, held))


def main(argv: list[str] | None = None) -> int:
    p = data_parser(__doc__, seeds=[0])
    p.add_argument("--targets", nargs="+", default=["office", "art"])
    p.add_argument("--hold-out", type=float, default=0.1, help="share of target items held out (item cold start)")
    p.add_argument("--no-sasrec", action="store_true", help="skip the SASRec rows")
    p.add_argument("--skip-items", action="store_true", help="skip the item cold-start slice")
    p.add_argument("--threads", type=int, default=1)
    ns = p.parse_args(argv)
    torch.set_num_threads(ns.threads)
    wall = time.perf_counter()
    data = load_art_office(ns.data_root / "amazon_art_office_urllm")
    records: list[dict[str, Any]] = []
    for target in ns.targets:
        split = leave_one_out(data, target)
        runs = [next_item(split, seed, UNISREC_ARGS, not ns.no_sasrec) for seed in ns.seeds]
        for model in runs[0]:
            for m in (*METRICS, "epoch_s"):
                records.append(record(BENCH, DATASET, f"target={target}", model, m, [r[model][m] for r in runs]))
        if ns.skip_items:
            continue
        cold = [item_cold(split, seed, UNISREC_ARGS, ns.hold_out) for seed in ns.seeds]
        for model in cold[0]:
            for m in METRICS:
                records.append(record(BENCH, DATASET, f"items:target={target}", model, m, [r[model][m] for r in cold]))
    minutes = (time.perf_counter() - wall) / 60
    print(table(records, [*METRICS, "epoch_s"]))
    # a run for some targets replaces only those targets' rows, so `--targets office` then `--targets art` add up
    tasks = {r["task"] for r in records}
    old = json.loads((DOCS / "results.json").read_text()) if (DOCS / "results.json").exists() else []
    records = [r for r in old if r.get("bench") == BENCH and r["task"] not in tasks] + records
    records.sort(key=lambda r: (r["task"].startswith("items:"), r["task"]))
    md = table(records, [*METRICS, "epoch_s"])
    update_json(BENCH, records, DOCS)
    command = "python -m bench.unisrec " + shlex.join(argv if argv is not None else sys.argv[1:])
    cold_targets = sorted({r["task"].removeprefix("items:target=") for r in records if r["task"].startswith("items:")})
    sizes = ", ".join(
        f"{t}: {len(hold_out_items(leave_one_out(data, t), ns.hold_out, ns.seeds[0]).test_slice)} test examples"
        for t in cold_targets
    )
    update_markdown(BENCH, docs=DOCS, section=f"""## Items from text: UniSRec on Amazon Art-Office (bench `unisrec`)

Command: `{command.strip()}`
({minutes:.0f} min on this machine, {ns.threads} thread; rows of targets it did not run come from an earlier run
of the same command with those `--targets`).

`target=<domain>`: the leave-one-out split of bench `quality`; test metrics over the full target catalogue
(history items excluded), mean ± std over {len(ns.seeds)} seed(s). Text vectors: `{UNISREC_ARGS.text_model}` on
title + attributes. One pretraining on the other domain; `unisrec-inductive` is fine-tuned from it,
`unisrec-transductive` is that inductive model plus id embeddings, fine-tuned again; `sasrec` uses bench
`quality`'s settings. `epoch_s`: fine-tuning seconds per epoch.

`items:target=<domain>`: {ns.hold_out:.0%} of the target items held out of training entirely (not even as
negatives for UniSRec); only the test examples whose target is a held-out item, ranked against the full
catalogue by models trained on the rest ({sizes}). Popularity ranks never-seen items last by construction (0);
SASRec has seen them only as sampled negatives.

{md}
""")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
