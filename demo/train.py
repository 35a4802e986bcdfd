"""`make demo`, first half (torch): data -> CDSRec -> evaluation table, and the hand-off to the serving half.

Generates the synthetic cross-domain data (or reads DATA=path, a generic interactions file), trains the
cross-domain user tower (CDSRec: the user's target sequence fused with the GUR of both domains' histories; or
``--model sasrec``, target domain only) with early stopping, evaluates it against popularity and single-domain
SASRec on the held-out test items and prints the table, then trains the inductive cold-start bridge
(source -> target) briefly. It then writes, under ``--out``, what the torch-free second half
(``python -m demo.serve up``: export, Redis, seed, serve, refresh, HTTP calls) needs: ``demo.json`` (data
spec, domains, checkpoint) and ``sequences.json`` (every user's history per domain, external ids, oldest
first: the seed for Redis).

    python -m demo.train [--data PATH] [--target-domain D] [--model cdsrec|sasrec] [--epochs N] \
        [--out demo-out]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from training.baselines import Popularity
from training.data.interactions import DataError, Interactions
from training.data.source import load_data
from training.data.splits import leave_one_out
from training.evaluation import evaluate_ranking
from training.train_cdsrec import CDSRecArgs, train_cdsrec
from training.train_sasrec import SASRecArgs, train_sasrec


def stage(text: str) -> None:
    print(f"==> {text}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="make demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="synthetic", help="a generic interactions file; default: synthetic data")
    p.add_argument("--target-domain", default=None, help="default: the domain with the shorter sequences")
    p.add_argument("--model", choices=("cdsrec", "sasrec"), default="cdsrec", help="the user encoder to serve")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--out", type=Path, default=Path("demo-out"))
    p.add_argument("--no-bridge", action="store_true", help="skip the cold-start bridge (newcomers get popularity)")
    ns = p.parse_args(argv)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    start = time.perf_counter()

    stage(f"data: {ns.data}")
    try:
        data = load_data(ns.data)
        stats = data.stats()
        print(stats.to_string(index=False))
        target = ns.target_domain or str(stats.sort_values("mean_len").iloc[0]["domain"])
        split = leave_one_out(data, target)
    except (DataError, ValueError, FileNotFoundError) as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2
    print(f"target domain {target}: {len(split.valid)} valid and {len(split.test)} test users")

    stage("train: popularity")
    pop = Popularity(split.train, target, data.n_items(target))

    stage(f"train: SASRec on {target} alone (the single-domain baseline; early stopping on validation NDCG@10)")
    sasrec_ckpt = ns.out / f"sasrec.{target}.pt"
    sasrec_args = SASRecArgs(epochs=ns.epochs, patience=5, lr=3e-3)
    _, result, sasrec = train_sasrec(split, sasrec_args, sasrec_ckpt)
    print(f"best epoch {result.best_epoch}, {result.epoch_s:.1f} s/epoch, checkpoint {result.checkpoint}")
    scorers = {"popularity": pop.score, "sasrec": sasrec}
    checkpoint = result.checkpoint or sasrec_ckpt
    if ns.model == "cdsrec":
        stage(f"train: CDSRec on {target} with the GUR of both domains (the served user encoder)")
        cdsrec_ckpt = ns.out / f"cdsrec.{target}.pt"
        _, result, scorers["cdsrec"] = train_cdsrec(split, CDSRecArgs(epochs=ns.epochs, patience=5), cdsrec_ckpt)
        print(f"best epoch {result.best_epoch}, {result.epoch_s:.1f} s/epoch, checkpoint {result.checkpoint}")
        checkpoint = result.checkpoint or cdsrec_ckpt

    stage("evaluate: full ranking on the test items")
    rows = {name: evaluate_ranking(score, split.test) for name, score in scorers.items()}
    metrics = list(rows["sasrec"])
    print(f"{'model':<12}" + "".join(f"{m:>10}" for m in metrics))
    for name, vals in rows.items():
        print(f"{name:<12}" + "".join(f"{vals[m]:>10.4f}" for m in metrics))
    bridge = None
    sources = [d for d in data.domains if d != target]
    if sources and not ns.no_bridge:
        bridge = train_bridge(data, sources[0], target, ns.epochs, ns.out)
    write_handoff(ns.out, ns.data, data, target, checkpoint, bridge)
    stage(f"training half done in {time.perf_counter() - start:.0f} s; handed off in {ns.out}/demo.json")
    return 0


def train_bridge(data: Interactions, source: str, target: str, epochs: int, out: Path) -> Path | None:
    """The inductive cold-start bridge (``cdrec train bridge inductive``), briefly: for users new to ``target``."""
    from training.data.splits import cold_start_split
    from training.train_bridge_inductive import InductiveArgs, run

    stage(f"train: cold-start bridge {source} -> {target} (inductive; for users with no {target} history)")
    try:
        split = cold_start_split(data, source, target, beta=0.2)
    except ValueError as exc:  # e.g. no users in both domains: the demo serves popularity to newcomers
        print(f"no bridge: {exc}")
        return None
    report = run(split, InductiveArgs(epochs=max(1, min(epochs, 8)), patience=2), out)
    test: dict[str, dict[str, float]] = report["test"]  # type: ignore[assignment]
    print("cold users' test NDCG@10: " + ", ".join(f"{k} {v['NDCG@10']:.4f}" for k, v in test.items()))
    checkpoints: dict[str, str] = report["checkpoints"]  # type: ignore[assignment]
    return Path(checkpoints["bridge-inductive"])


def write_handoff(
    out: Path, spec: str, data: Interactions, target: str, checkpoint: Path, bridge: Path | None = None
) -> None:
    """``demo.json`` and ``sequences.json`` for the serving half (which never imports training)."""
    sequences: dict[str, dict[str, list[str]]] = {}
    for domain in data.domains:
        ids = data.item_ids[domain]
        for user, (items, _) in data.sequences(domain).items():
            sequences.setdefault(str(data.user_ids[user]), {})[domain] = [str(ids[int(i)]) for i in items]
    (out / "sequences.json").write_text(json.dumps(sequences))
    sources = [d for d in data.domains if d != target]
    meta = {
        "data": spec,
        "target_domain": target,
        "source_domain": sources[0] if sources else None,
        "checkpoint": str(Path(checkpoint).resolve()),
        "bridge_checkpoint": str(bridge.resolve()) if bridge is not None else None,
        "users": len(sequences),
    }
    (out / "demo.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
