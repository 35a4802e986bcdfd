"""`cdrec train MODEL ...`: train one model and write a checkpoint that rebuilds itself.

Examples:
    cdrec train sasrec --data ../shared/data/amazon_art_office_urllm --target-domain office
    cdrec train sasrec --data synthetic --target-domain music --merged
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

from training.data.interactions import DataError
from training.data.source import load_data
from training.data.splits import leave_one_out
from training.evaluation import evaluate_ranking
from training.train_sasrec import SASRecArgs, train_sasrec


def _add_dataclass_args(parser: argparse.ArgumentParser, cls: type) -> None:
    for f in fields(cls):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)


def _ns_to(cls: type, ns: argparse.Namespace) -> object:
    return cls(**{f.name: getattr(ns, f.name) for f in fields(cls)})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cdrec train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="model", required=True)
    p = sub.add_parser("sasrec", help="single-domain SASRec (or --merged: both domains in one sequence)")
    p.add_argument("--data", required=True, help="a data path (see `cdrec data stats`) or `synthetic`")
    p.add_argument("--target-domain", required=True)
    p.add_argument("--merged", action="store_true", help="train on the merged two-domain sequence")
    p.add_argument("--out", type=Path, default=Path("runs"), help="checkpoint directory")
    _add_dataclass_args(p, SASRecArgs)
    return parser


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    try:
        data = load_data(ns.data, seed=ns.seed)
        split = leave_one_out(data, ns.target_domain)
    except (DataError, ValueError, FileNotFoundError) as exc:
        print(f"cdrec train: {exc}", file=sys.stderr)
        return 2
    if ns.model == "sasrec":
        args = _ns_to(SASRecArgs, ns)
        name = "sasrec-merged" if ns.merged else "sasrec"
        out = ns.out / f"{name}.{ns.target_domain}.pt"
        _, result, scorer = train_sasrec(split, args, out, merged=ns.merged)  # type: ignore[arg-type]
        test = evaluate_ranking(scorer, split.test)
        print(json.dumps({"model": name, "checkpoint": str(out), "best_epoch": result.best_epoch,
                          "epoch_s": round(result.epoch_s, 2), "valid": result.valid, "test": test}, indent=2))
    return 0
