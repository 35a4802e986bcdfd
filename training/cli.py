"""`cdrec train MODEL ...`: train one model and write a checkpoint that rebuilds itself.

Examples:
    cdrec train sasrec --data ../shared/data/amazon_art_office_urllm --target-domain office
    cdrec train sasrec --data synthetic --target-domain music --merged
    cdrec train bridge ptupcdr --data ../shared/data/douban_book_music_gadtcdr --source-domain book \
        --target-domain music --beta 0.2
    cdrec train bridge inductive --data ../shared/data/amazon_art_office_urllm --source-domain art \
        --target-domain office
    cdrec train guru --data ../shared/data/amazon_art_office_urllm --target-domain office
    cdrec train cdsrec --data ../shared/data/amazon_art_office_urllm --target-domain office \
        --guru-checkpoint runs/gur.office.pt        (or --pretrain-epochs N: train GURU first)
    cdrec train unisrec --data ../shared/data/amazon_art_office_urllm --target-domain office \
        --variant inductive --pretrain-domain art
    cdrec train dss --data ../shared/data/amazon_art_office_urllm --target-domain office --intents 4

Settings from the environment (core.settings): a ``CDREC_TRAIN__<FIELD>`` that is set (epochs, patience,
batch_size, lr, dim, layers, heads, dropout, seed, threads; out_dir for ``--out``) or ``CDREC_DATA__MAX_LEN``
becomes the default of the flag of that name; a flag on the command line still wins, and a field that is not
set leaves each trainer's own default.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

from pydantic import ValidationError

from core.settings import Settings
from training import checkpoint
from training.data.interactions import DataError
from training.data.source import load_data
from training.data.splits import NextItemSplit, leave_one_out
from training.evaluation import evaluate_ranking
from training.models.guru import GURU
from training.train_cdsrec import CDSRecArgs, train_cdsrec
from training.train_guru import GURUArgs, train_guru
from training.train_sasrec import SASRecArgs, train_sasrec


def _add_dataclass_args(parser: argparse.ArgumentParser, cls: type) -> None:
    for f in fields(cls):
        flag = f"--{f.name.replace('_', '-')}"
        if isinstance(f.default, bool):  # type=bool would read "False" as True
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        else:
            parser.add_argument(flag, type=type(f.default), default=f.default)


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
    _add_cross_domain_parsers(sub)
    _add_bridge_parser(sub)
    from training.train_unisrec import add_unisrec_parser

    add_unisrec_parser(sub)
    _add_dss_parser(sub)
    return parser


def _add_dss_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from training.train_dss import DSSArgs

    p = sub.add_parser("dss", help="DSS: K intent vectors per user, seq2item + latent seq2seq training")
    p.add_argument("--data", required=True, help="a data path (see `cdrec data stats`) or `synthetic`")
    p.add_argument("--target-domain", required=True)
    p.add_argument("--out", type=Path, default=Path("runs"), help="checkpoint directory")
    _add_dataclass_args(p, DSSArgs)


def _train_dss(ns: argparse.Namespace, split: NextItemSplit) -> dict[str, object]:
    from training.train_dss import DSSArgs, train_dss

    out = ns.out / f"dss.{ns.target_domain}.pt"
    _, result, scorer = train_dss(split, _ns_to(DSSArgs, ns), out)  # type: ignore[arg-type]
    return {"model": "dss", "checkpoint": str(out), "best_epoch": result.best_epoch,
            "epoch_s": round(result.epoch_s, 2), "valid": result.valid, "test": evaluate_ranking(scorer, split.test)}


def settings_defaults(settings: Settings) -> dict[str, object]:
    """The flag defaults the environment sets: only the fields it named, so unset ones keep each trainer's."""
    out: dict[str, object] = {f: getattr(settings.train, f) for f in settings.train.model_fields_set}
    if "out_dir" in out:
        out["out"] = out.pop("out_dir")
    if "max_len" in settings.data.model_fields_set:
        out["max_len"] = settings.data.max_len
    return out


def apply_defaults(parser: argparse.ArgumentParser, defaults: dict[str, object]) -> None:
    """Set ``defaults`` on every (sub)parser that has a flag of that name."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                apply_defaults(sub, defaults)
    dests = {a.dest for a in parser._actions}
    parser.set_defaults(**{k: v for k, v in defaults.items() if k in dests})


def _add_bridge_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from training.train_bridge import BridgeArgs
    from training.train_bridge_inductive import InductiveArgs

    p = sub.add_parser("bridge", help="cold-start bridges on a cold-start split: ptupcdr (ratings) | inductive")
    kinds = p.add_subparsers(dest="kind", required=True)
    for kind, cls, text in (
        ("ptupcdr", BridgeArgs, "PTUPCDR + EMCDR on explicit ratings (pretrains source and target MF first)"),
        ("inductive", InductiveArgs, "the serving bridge: source item sequence -> target item space"),
    ):
        k = kinds.add_parser(kind, help=text)
        k.add_argument("--data", required=True, help="a data path (see `cdrec data stats`) or `synthetic`")
        k.add_argument("--source-domain", required=True)
        k.add_argument("--target-domain", required=True)
        k.add_argument("--beta", type=float, default=0.2, help="share of overlapping users made cold")
        k.add_argument("--out", type=Path, default=Path("runs"), help="checkpoint directory")
        if kind == "inductive":
            _add_dataclass_args(k, cls)
            continue
        from training.train_mf import MFArgs

        for f in fields(BridgeArgs):
            if f.name == "mf":  # the MF pretraining options, prefixed --mf-
                for g in fields(MFArgs):
                    if g.name != "seed":
                        k.add_argument(f"--mf-{g.name.replace('_', '-')}", dest=f"mf_{g.name}",
                                       type=type(g.default), default=g.default)
            elif isinstance(f.default, bool):
                k.add_argument(f"--{f.name.replace('_', '-')}", action=argparse.BooleanOptionalAction,
                               default=f.default)
            else:
                k.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)


def _train_bridge(ns: argparse.Namespace) -> int:
    """`cdrec train bridge ptupcdr|inductive ...`: cold-start split, train with selection on its valid users,
    save the bridges, print valid and test metrics."""
    from training.data.splits import cold_start_split
    from training.train_bridge import BridgeArgs
    from training.train_bridge import run as run_ptupcdr
    from training.train_bridge_inductive import InductiveArgs
    from training.train_bridge_inductive import run as run_inductive
    from training.train_mf import MFArgs

    try:
        data = load_data(ns.data, seed=ns.seed)
        split = cold_start_split(data, ns.source_domain, ns.target_domain, ns.beta, ns.seed)
        if ns.kind == "ptupcdr":
            if not data.has_ratings:
                raise ValueError(f"{ns.data}: PTUPCDR needs explicit ratings; try `cdrec train bridge inductive`")
            mf = MFArgs(**{f.name: getattr(ns, f"mf_{f.name}") for f in fields(MFArgs) if f.name != "seed"},
                        seed=ns.seed)
            args = BridgeArgs(**{**{f.name: getattr(ns, f.name) for f in fields(BridgeArgs) if f.name != "mf"},
                                 "mf": mf})
            report = run_ptupcdr(split, args, ns.out)
        else:
            report = run_inductive(split, _ns_to(InductiveArgs, ns), ns.out)  # type: ignore[arg-type]
    except (DataError, ValueError, FileNotFoundError) as exc:
        print(f"cdrec train: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"model": f"bridge {ns.kind}", **report}, indent=2))
    return 0


def _add_cross_domain_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    for name, cls, text in (
        ("guru", GURUArgs, "GURU: shared encoder + adversarial domain alignment; ranks by the GUR alone"),
        ("cdsrec", CDSRecArgs, "CDSRec: short-term target encoder fused with both domains' GURs"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--data", required=True, help="a data path (see `cdrec data stats`) or `synthetic`")
        p.add_argument("--target-domain", required=True)
        p.add_argument("--out", type=Path, default=Path("runs"), help="checkpoint directory")
        if name == "cdsrec":
            p.add_argument("--guru-checkpoint", type=Path, help="start from this trained GURU (same target)")
            p.add_argument("--pretrain-epochs", type=int, default=0, help="train GURU this many epochs first")
        _add_dataclass_args(p, cls)


def _train_cross_domain(ns: argparse.Namespace, split: NextItemSplit) -> dict[str, object]:
    if ns.model == "guru":
        args = _ns_to(GURUArgs, ns)
        out = ns.out / f"gur.{ns.target_domain}.pt"
        _, result, scorer = train_guru(split, args, out)  # type: ignore[arg-type]
        name = "gur"
    else:
        cargs: CDSRecArgs = _ns_to(CDSRecArgs, ns)  # type: ignore[assignment]
        guru = None
        if ns.guru_checkpoint is not None:
            guru, meta = checkpoint.load(ns.guru_checkpoint)
            if not isinstance(guru, GURU) or meta.get("target") != ns.target_domain:
                raise ValueError(f"{ns.guru_checkpoint}: not a GURU checkpoint for target {ns.target_domain!r}")
        elif ns.pretrain_epochs > 0:
            shared = {f.name: getattr(cargs, f.name) for f in fields(GURUArgs)}  # CDSRecArgs extends GURUArgs
            gargs = GURUArgs(**{**shared, "epochs": ns.pretrain_epochs})
            guru, _, _ = train_guru(split, gargs, ns.out / f"gur.{ns.target_domain}.pt")
        name = "cdsrec-lstm" if cargs.encoder == "lstm" else "cdsrec" if cargs.adversarial else "cdsrec-noadv"
        out = ns.out / f"{name}.{ns.target_domain}.pt"
        _, result, scorer = train_cdsrec(split, cargs, out, guru)  # type: ignore[arg-type]
    return {"model": name, "checkpoint": str(out), "best_epoch": result.best_epoch,
            "epoch_s": round(result.epoch_s, 2), "valid": result.valid, "test": evaluate_ranking(scorer, split.test)}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        defaults = settings_defaults(Settings())
    except ValidationError as exc:
        print(f"cdrec train: bad CDREC_* setting in the environment:\n{exc}", file=sys.stderr)
        return 2
    apply_defaults(parser, defaults)
    if "threads" in defaults:
        import torch

        torch.set_num_threads(int(defaults["threads"]))  # type: ignore[call-overload]
    ns = parser.parse_args(argv)
    if ns.model == "bridge":
        return _train_bridge(ns)
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
    elif ns.model == "unisrec":
        from training.train_unisrec import cli_report

        try:
            print(json.dumps(cli_report(ns, split), indent=2))
        except (ValueError, FileNotFoundError) as exc:
            print(f"cdrec train: {exc}", file=sys.stderr)
            return 2
    elif ns.model == "dss":
        try:
            print(json.dumps(_train_dss(ns, split), indent=2))
        except ValueError as exc:  # e.g. a --score that is not max or weighted
            print(f"cdrec train: {exc}", file=sys.stderr)
            return 2
    elif ns.model in ("guru", "cdsrec"):
        try:
            report = _train_cross_domain(ns, split)
        except (ValueError, checkpoint.CheckpointError) as exc:
            print(f"cdrec train: {exc}", file=sys.stderr)
            return 2
        print(json.dumps(report, indent=2))
    return 0
