"""DSS's choices where the paper is silent, measured on users with two planted intents: `python -m bench.dss_planted`.

    python -m bench.dss_planted [--seeds 0 1 2]

Data: ``training.data.synthetic.planted_intents`` (600 users, 8 topics of 20 items; the held-out test item is
the minority intent's, the most recent items the majority's). Rows: SASRec, DSS with the defaults (K=4, max over
intents, assignment from item embeddings, lambda=0.1, seq2seq weight 0.2) and one change each: K, lambda,
score = weighted, assignment from encoder states, no seq2seq loss; and the default model's top 10 drawn across its
intents (``intent_score`` quota / round-robin, inference only: the same trained model). Metrics: test HR@10 /
HR@20 / NDCG@10 and the top-10's intra-list diversity against the planted topics (one-hot per topic). Small
enough for CPU (about half a minute per seed). Writes docs/results.json (bench "dss_planted") and its section of
docs/results.md.
"""

from __future__ import annotations

import shlex
import sys
import time
from typing import Any

import numpy as np
import torch

from bench.results import data_parser, record, table, update_json, update_markdown
from training.data.splits import leave_one_out
from training.data.synthetic import planted_intents
from training.evaluation import diversity_metrics, evaluate_ranking, top_k_items
from training.train_dss import DSSArgs, merge_scorer, train_dss
from training.train_sasrec import SASRecArgs, train_sasrec

BENCH, DATASET, TASK = "dss_planted", "planted-intents", "target=shop"
METRICS = ("HR@10", "HR@20", "NDCG@10", "ILD@10")
COMMON: dict[str, Any] = {"epochs": 10, "patience": 10, "dim": 32, "layers": 1, "max_len": 16, "lr": 1e-2,
                          "negatives": 0}
VARIANTS: dict[str, dict[str, Any]] = {
    "dss": {},
    "dss K=2": {"intents": 2},
    "dss K=8": {"intents": 8},
    "dss lambda=0.3": {"lam": 0.3},
    "dss score=weighted": {"score": "weighted"},
    "dss assign=state": {"assign": "state"},
    "dss no seq2seq": {"seq2seq_weight": 0.0},
}


def main(argv: list[str] | None = None) -> int:
    p = data_parser(__doc__)
    ns = p.parse_args(argv)
    torch.set_num_threads(1)
    wall = time.perf_counter()
    cells: dict[str, list[dict[str, float]]] = {}
    for seed in ns.seeds:
        data, topics = planted_intents(seed=seed)
        split = leave_one_out(data, "shop")
        reference = np.zeros((len(topics), int(topics.max()) + 1))
        reference[np.arange(1, len(topics)), topics[1:]] = 1.0
        last = np.array([h[-1] for h in split.test.target_hist])
        scorers = {"sasrec": train_sasrec(split, SASRecArgs(**COMMON, seed=seed))[2]}
        for name, extra in VARIANTS.items():
            model, _, scorers[name] = train_dss(split, DSSArgs(**COMMON, **extra, seed=seed))
            if name == "dss":  # the same trained model, its list drawn across the intents
                for rule in ("quota", "round-robin"):
                    scorers[f"dss intent_score={rule}"] = merge_scorer(model.eval(), COMMON["max_len"], rule)
        for name, scorer in scorers.items():
            metrics = {**evaluate_ranking(scorer, split.test),
                       **diversity_metrics(top_k_items(scorer, split.test), last, reference)}
            cells.setdefault(name, []).append(metrics)
            print(f"seed {seed} {name:<20} " + " ".join(f"{m} {metrics[m]:.4f}" for m in METRICS), flush=True)
    records = [record(BENCH, DATASET, TASK, name, m, [c[m] for c in runs]) for name, runs in cells.items()
               for m in METRICS]
    md = table(records, METRICS)
    print(md)
    command = "python -m bench.dss_planted " + shlex.join(argv if argv is not None else sys.argv[1:])
    update_json(BENCH, records)
    update_markdown(BENCH, f"""## DSS on users with two planted intents (bench `dss_planted`)

Command: `{command.strip()}` ({(time.perf_counter() - wall) / 60:.1f} min on this machine, 1 thread).

Synthetic users with a majority and a minority intent (`training.data.synthetic.planted_intents`); the test item
is the minority intent's, the most recent items are the majority's. DSS defaults: K=4, max over intents,
assignment from item embeddings, lambda=0.1, seq2seq weight 0.2; each other row changes one of them, except
`intent_score=...`: the `dss` row's own trained model with its top 10 drawn across its intents (quota by
presence, round-robin). `ILD@10` against the planted topics. Mean ± std over {len(ns.seeds)} seeds.

{md}
""")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
