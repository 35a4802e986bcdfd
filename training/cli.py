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

Every flag is a field of the trainer's args model (``SASRecArgs``, ...: its default is the only default, its
description the flag's help); ``cdrec train MODEL --help`` lists them. The environment sets any of them as
``CDREC_TRAIN__<FIELD>`` (``CDREC_TRAIN__EPOCHS=4``; also ``CDREC_TRAIN__OUT_DIR`` for ``--out`` and
``CDREC_DATA__MAX_LEN`` for ``--max-len``); the command line wins (training/config.py).
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError
from pydantic_settings import SettingsError

from training import checkpoint
from training.args import GURUArgs
from training.config import Run, args_fields, args_of, command, parse
from training.data.interactions import DataError, Interactions
from training.data.source import load_data
from training.data.splits import NextItemSplit, cold_start_split, leave_one_out
from training.evaluation import evaluate_ranking
from training.fit_guru import train_guru
from training.models.guru import GURU
from training.train_bridge import BridgeArgs
from training.train_bridge_inductive import InductiveArgs
from training.train_cdsrec import CDSRecArgs, train_cdsrec
from training.train_dss import DSSArgs, train_dss
from training.train_sasrec import SASRecArgs, train_sasrec
from training.train_unisrec import UniSRecArgs, train_unisrec


class SASRecRun(Run):
    merged: bool = Field(False, description="train on the merged two-domain sequence (sasrec-merged)")


class CDSRecRun(Run):
    guru_checkpoint: Path | None = Field(None, description="start from this trained GURU (same target domain)")
    pretrain_epochs: int = Field(0, ge=0, description="train GURU this many epochs first (0: start from scratch)")


class UniSRecRun(Run):
    pretrain_domain: str | None = Field(None, description="the pretraining domain (default: the other domain)")


class BridgeRun(Run):
    source_domain: str = Field(description="the domain cold users arrive with")
    beta: float = Field(0.2, gt=0, lt=1, description="share of overlapping users made cold")


# command -> (args model, run options, help line)
COMMANDS: dict[str, tuple[type, type[Run], str]] = {
    "sasrec": (SASRecArgs, SASRecRun, "single-domain SASRec (or --merged: both domains in one sequence)"),
    "guru": (GURUArgs, Run, "GURU: shared encoder + adversarial domain alignment; ranks by the GUR alone"),
    "cdsrec": (CDSRecArgs, CDSRecRun, "CDSRec: short-term target encoder fused with both domains' GURs"),
    "unisrec": (UniSRecArgs, UniSRecRun, "UniSRec: items from their text; pretrain on one domain, fine-tune"),
    "dss": (DSSArgs, Run, "DSS: K intent vectors per user, seq2item + latent seq2seq training"),
    "bridge ptupcdr": (BridgeArgs, BridgeRun, "PTUPCDR + EMCDR on explicit ratings (pretrains source and target MF)"),
    "bridge inductive": (InductiveArgs, BridgeRun, "the serving bridge: source item sequence -> target item space"),
}


def command_class(name: str) -> type[Run]:
    args_cls, run_cls, text = COMMANDS[name]
    return command(args_cls, run_cls, text)


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  cdrec train {name:<{width}}  {text}" for name, (_, _, text) in COMMANDS.items()]
    return "usage: cdrec train MODEL [flags]   (cdrec train MODEL --help lists its flags)\n\n" + "\n".join(lines)


def split_command(argv: list[str]) -> tuple[str | None, list[str]]:
    """``['bridge', 'inductive', '--x', ...]`` -> (``'bridge inductive'``, ``['--x', ...]``)."""
    for words in (2, 1):
        name = " ".join(argv[:words])
        if len(argv) >= words and name in COMMANDS:
            return name, argv[words:]
    return None, argv


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    name, rest = split_command(argv)
    if name is None:
        if argv[:1] in ([], ["-h"], ["--help"]):
            print(__doc__ + "\n" + usage())
            return 0
        print(f"cdrec train: unknown model {' '.join(argv[:2])!r}\n{usage()}", file=sys.stderr)
        return 2
    if name == "bridge ptupcdr":  # the MF pretraining options were --mf-dim ...; now --mf.dim
        rest = [("--mf." + a[5:]) if a.startswith("--mf-") else a for a in rest]
    try:
        run = parse(command_class(name), rest, f"cdrec train {name}")
    except (ValidationError, SettingsError) as exc:
        print(f"cdrec train {name}: {exc}", file=sys.stderr)
        return 2
    if run.threads is not None:
        import torch

        torch.set_num_threads(run.threads)
    try:
        report = train(name, run)
    except (DataError, ValueError, FileNotFoundError, checkpoint.CheckpointError) as exc:
        print(f"cdrec train: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2))
    return 0


def train(name: str, run: Any) -> dict[str, object]:
    """Run one parsed command: load the data, split it, train, save, report valid and test metrics."""
    args = args_of(COMMANDS[name][0], run)
    data = load_data(run.data, seed=args.seed)
    if name.startswith("bridge "):
        return _train_bridge(name, run, args, data)
    split = leave_one_out(data, run.target_domain)
    if name == "sasrec":
        file = "sasrec-merged" if run.merged else "sasrec"
        out = run.out / f"{file}.{split.target}.pt"
        _, result, scorer = train_sasrec(split, args, out, merged=run.merged)
    elif name == "guru":
        file, out = "gur", run.out / f"gur.{split.target}.pt"
        _, result, scorer = train_guru(split, args, out)
    elif name == "cdsrec":
        guru = _start_guru(run, args, split)
        file = "cdsrec-lstm" if args.encoder == "lstm" else "cdsrec" if args.adversarial else "cdsrec-noadv"
        out = run.out / f"{file}.{split.target}.pt"
        _, result, scorer = train_cdsrec(split, args, out, guru)
    elif name == "dss":
        file, out = "dss", run.out / f"dss.{split.target}.pt"
        _, result, scorer = train_dss(split, args, out)
    else:
        file = f"unisrec-{args.variant}"
        out = run.out / f"{file}.{split.target}.pt"
        _, result, scorer, pre = train_unisrec(split, args, out, run.pretrain_domain)
    report: dict[str, object] = {"model": file, "checkpoint": str(out)}
    if name == "unisrec":
        report["pretrain"] = None if pre is None else {
            "best_epoch": pre.best_epoch, "epoch_s": round(pre.epoch_s, 2), "zero_shot_valid": pre.valid}
    return report | {"best_epoch": result.best_epoch, "epoch_s": round(result.epoch_s, 2), "valid": result.valid,
                     "test": evaluate_ranking(scorer, split.test)}


def _start_guru(run: Any, args: CDSRecArgs, split: NextItemSplit) -> GURU | None:
    """CDSRec's starting GURU: --guru-checkpoint, or --pretrain-epochs of GURU training first, or none."""
    if run.guru_checkpoint is not None:
        guru, meta = checkpoint.load(run.guru_checkpoint)
        if not isinstance(guru, GURU) or meta.get("target") != split.target:
            raise ValueError(f"{run.guru_checkpoint}: not a GURU checkpoint for target {split.target!r}")
        return guru
    if run.pretrain_epochs > 0:  # CDSRecArgs extends GURUArgs: GURU's own options, with its own epochs
        gargs = GURUArgs(**{**{f: getattr(args, f) for f in args_fields(GURUArgs)}, "epochs": run.pretrain_epochs})
        guru, _, _ = train_guru(split, gargs, run.out / f"gur.{split.target}.pt")
        return guru
    return None


def _train_bridge(name: str, run: Any, args: Any, data: Interactions) -> dict[str, object]:
    """`cdrec train bridge ptupcdr|inductive ...`: cold-start split, train with selection on its valid users,
    save the bridges, report valid and test metrics."""
    from training.train_bridge import run as run_ptupcdr
    from training.train_bridge_inductive import run as run_inductive

    split = cold_start_split(data, run.source_domain, run.target_domain, run.beta, args.seed)
    if name == "bridge ptupcdr":
        if not data.has_ratings:
            raise ValueError(f"{run.data}: PTUPCDR needs explicit ratings; try `cdrec train bridge inductive`")
        args = replace(args, mf=replace(args.mf, seed=args.seed))  # the MF pretraining follows --seed
        report = run_ptupcdr(split, args, run.out)
    else:
        report = run_inductive(split, args, run.out)
    return {"model": name, **report}
