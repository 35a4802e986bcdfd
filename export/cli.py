"""`cdrec export`: checkpoints -> a verified, versioned bundle; `cdrec export verify BUNDLE` re-checks one.

Examples:
    cdrec export --checkpoint runs/cdsrec.office.pt --bridge-checkpoint runs/bridge.art__office.pt \\
        --out artifacts
    cdrec export --checkpoint runs/sasrec.music.pt --data synthetic --out artifacts --index hnsw
    cdrec export --checkpoint runs/unisrec.office.pt --data DATA --added-items redis://localhost:6379/0
    cdrec export --checkpoint runs/dss.office.pt --out artifacts
    cdrec export --checkpoint runs/cdsrec.office.pt --data DATA --quantize int8 --out artifacts
    cdrec export verify artifacts/current

A DSS checkpoint (`cdrec train dss`) exports as a K-vector user encoder, output (batch, K, D), K and the max
score rule recorded in the manifest (export/dss.py); the service answers it with strategy `dss`.

A checkpoint (cdrec-checkpoint/2) carries the external item ids of every domain it reads, their interaction counts
(the popularity fallback) and a sample of real users' histories (the parity and the index recall inputs), so
`--data` is optional. Given, `--data` is the data the checkpoints were trained on: its ids must be the
checkpoints' (a mismatch names the first differing id), and all its users' histories feed the parity. A
checkpoint written before checkpoints carried their ids (cdrec-checkpoint/1) needs `--data` (or retraining).
A text model (UniSRec) also gets its text item graph, ``item_text.<domain>.onnx`` + its tokenizer, which the
service's ``POST /v1/items`` runs; ``--added-items`` folds the items added that way into the new bundle.
``--quantize int8`` also writes an int8 user encoder (export/quantize.py), served only when its NDCG@10 on the
validation split is within ``--max-ndcg-drop`` (1 %) of the fp32 graph's; the manifest records both either way.
Exit status: 0 published (or verified), 1 refused (parity, recall or verification failed), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from core.manifest import BundleError


def _export_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cdrec export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--checkpoint", type=Path, action="append", default=[], help="a user tower (repeatable)")
    p.add_argument("--bridge-checkpoint", type=Path, action="append", default=[], help="an inductive bridge")
    p.add_argument(
        "--data", help="optional: the training data, a path or `synthetic` (default: the checkpoints' own item ids)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of `--data synthetic` and of the parity inputs")
    p.add_argument("--out", type=Path, default=Path("artifacts"), help="artifacts root (default artifacts/)")
    p.add_argument("--version", help="bundle version (default: UTC time and git commit)")
    p.add_argument("--target-domain", help="for a checkpoint whose metadata does not name its target domain")
    p.add_argument("--source-domain", help="for a checkpoint whose metadata does not name its source domain")
    p.add_argument("--index", choices=["auto", "flat", "hnsw", "ivf"], default="auto")
    p.add_argument("--ann-above", type=int, default=100_000, help="auto: exact search up to this many items")
    p.add_argument("--min-recall", type=float, default=0.95, help="recall@10 an approximate index must reach")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--random-sequences", type=int, default=256)
    p.add_argument("--real-sequences", type=int, default=256)
    p.add_argument("--tolerance", type=float, default=1e-4, help="max |torch - onnxruntime|")
    p.add_argument("--min-overlap", type=float, default=0.99, help="top-10 overlap torch vs onnxruntime")
    p.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads")
    p.add_argument("--no-switch", action="store_true", help="publish without pointing `current` at it")
    p.add_argument(
        "--added-items",
        help="items the service added by text, to include: its Redis URL or a JSON file {domain: {item_id: text}}",
    )
    p.add_argument(
        "--quantize",
        choices=["int8"],
        help="also write an int8 user encoder, served when its validation NDCG@10 (needs --data) is within "
        "--max-ndcg-drop of fp32's",
    )
    p.add_argument("--max-ndcg-drop", type=float, default=0.01, help="relative NDCG@10 loss the int8 gate allows")
    return p


def _verify_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="cdrec export verify", description="Re-check a published bundle.")
    p.add_argument("bundle", type=Path, help="artifacts/<version> or artifacts/current")
    ns = p.parse_args(argv)
    from export.verify import verify

    try:
        m = verify(ns.bundle)
    except BundleError as exc:
        print(f"cdrec export verify: {exc}", file=sys.stderr)
        return 1
    graphs = {
        g.name: {"max_abs_diff": g.parity.max_abs_diff, "top10_overlap": g.parity.top10_overlap} for g in m.graphs
    }
    graphs |= {f"item_text.{d}": {"max_abs_diff": t.parity.max_abs_diff} for d, t in m.text_items.items()}
    print(json.dumps({"bundle": str(ns.bundle), "version": m.version, "ok": True, "graphs": graphs}, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["verify"]:
        return _verify_main(args[1:])
    ns = _export_parser().parse_args(args)
    if not ns.checkpoint and not ns.bridge_checkpoint:
        print("cdrec export: give at least one --checkpoint or --bridge-checkpoint", file=sys.stderr)
        return 2
    if ns.quantize and ns.data is None:
        print("cdrec export: --quantize needs --data (its gate scores the validation split)", file=sys.stderr)
        return 2

    import torch  # heavy imports only once the arguments are sane

    from export.bundle import (
        ExportOptions,
        check_checkpoint_ids,
        domains_from_checkpoints,
        domains_from_data,
        export_bundle,
        read_catalogue,
    )
    from export.index import IndexOptions
    from export.parity import ParityOptions
    from export.towers import ExportError, load_bridge, load_tower
    from training.data.interactions import DataError
    from training.data.source import load_data

    torch.set_num_threads(ns.threads)
    opts = ExportOptions(
        opset=ns.opset,
        index=IndexOptions(kind=ns.index, ann_above=ns.ann_above, min_recall=ns.min_recall),
        parity=ParityOptions(
            random_sequences=ns.random_sequences,
            real_sequences=ns.real_sequences,
            tolerance=ns.tolerance,
            min_overlap=ns.min_overlap,
            seed=ns.seed,
        ),
        threads=ns.threads,
        version=ns.version,
        switch_current=not ns.no_switch,
    )
    try:
        graphs = [load_tower(p, ns.target_domain, ns.source_domain) for p in ns.checkpoint]
        graphs += [load_bridge(p, ns.target_domain, ns.source_domain) for p in ns.bridge_checkpoint]
        paths = [*ns.checkpoint, *ns.bridge_checkpoint]
        if ns.data is None:  # the checkpoints carry their item ids, popularity and a sample of histories
            domains, data_name = domains_from_checkpoints(paths)
        else:  # the data gives the ids (checked against each checkpoint's), popularity and every history
            data = load_data(ns.data, seed=ns.seed)
            domains, data_name = domains_from_data(data), data.name
            for path in paths:
                items, _ = read_catalogue(path)
                if items is not None:  # a format-1 checkpoint: only its item counts can be checked (bundle.py)
                    check_checkpoint_ids(path, items, domains)
            if ns.quantize:
                from export.quantize import GateOptions, validation

                opts.gate = GateOptions(max_drop=ns.max_ndcg_drop)
                targets = {g.target_domain for g in graphs if g.kind == "user_encoder"}
                opts.quantize = {d: validation(data, d) for d in sorted(targets)}
        if ns.added_items:
            from export.added_items import read_added_items

            opts.added_items = read_added_items(ns.added_items, sorted(domains))
        bundle = export_bundle(graphs, ns.out, domains, opts, data_name=data_name)
    except (DataError, FileNotFoundError) as exc:
        print(f"cdrec export: {exc}", file=sys.stderr)
        return 2
    except (ExportError, BundleError) as exc:
        print(f"cdrec export: {exc}", file=sys.stderr)
        return 1
    from core.manifest import read_manifest

    m = read_manifest(bundle)
    summary = {
        "bundle": str(bundle),
        "current": opts.switch_current,
        "graphs": {
            g.name: g.parity.model_dump(include={"max_abs_diff", "top10_overlap", "passed"})
            | {"serving_variant": g.serving_variant}
            | ({} if g.quantized is None else {"int8_gate": g.quantized.model_dump(exclude={"method", "split"})})
            for g in m.graphs
        }
        | {f"item_text.{d}": t.parity.model_dump(include={"max_abs_diff", "passed"}) for d, t in m.text_items.items()},
        "indexes": {
            k: {"type": i.type, "count": i.count, "recall_at_10": i.recall_at_10, "params": i.params}
            for k, i in m.indexes.items()
        },
    }
    print(json.dumps(summary, indent=1))
    return 0
