"""HNSW search depth for the seen-filtered search: recall@10 and time per efSearch on the vectors bench.serve serves.

    python -m bench.hnsw_depth                      # the bench.serve HNSW bundle (exported by bench.serve if absent)
    python -m bench.hnsw_depth --users 1000 --ef 32 64 128 256

The export picks efSearch from the recall@10 of a PLAIN search (export/index.py, on 64 queries). What the service
runs is the seen-filtered search (service/adapters/faiss_index.py, ``exclusion="auto"``: k + |seen| deep, efSearch
raised to that depth when lower). Here, on bench.serve's bundle (100k items, its CDSRec user encoder, its
synthetic users; the same data bench.serve seeds into Redis), each of ``--users`` warm users is encoded by the
bundle's own encoder from its last 50 target and source items, its target history is excluded as the service
excludes it, and the service's ``FaissItemIndex`` searches k=10 at each ``--ef``; recall@10 is against the exact
(brute force over every stored vector) top 10 outside the same exclusions. The smallest efSearch reaching
``--min-recall`` (the export's own target, 0.95) is reported; microseconds are the median over ``--rounds`` of the
mean per search, one FAISS thread, batch 1. Writes docs/results.{json,md} (bench ``hnsw_depth``) unless --no-write.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.results import record, update_json, update_markdown
from bench.serve import ROOT, SOURCE, TARGET, build_bundles

BENCH = "hnsw_depth"


def users_and_vectors(ns: argparse.Namespace, bundle_dir: Path) -> tuple[Any, np.ndarray, list[set[int]]]:
    """The bundle, its user vectors for ``ns.users`` warm users, and each one's seen rows (the service's filter)."""
    from service.bundle import load_bundle
    from training.data.synthetic import synthetic_interactions

    bundle = load_bundle(bundle_dir, text_items=False)
    graph = bundle.encoders[TARGET]
    cats = bundle.catalogues
    data = synthetic_interactions(seed=0, n_users=ns.data_users, n_items=(ns.source_items, ns.items), n_topics=100)
    ids = {d: data.item_ids[d] for d in data.domains}
    target = {u: seq for u, (seq, _) in data.sequences(TARGET).items()}
    source = {u: seq for u, (seq, _) in data.sequences(SOURCE).items()}
    rng = np.random.default_rng(0)
    picked = sorted(target)
    picked = [picked[i] for i in rng.choice(len(picked), min(ns.users, len(picked)), replace=False)]
    vectors, seen = [], []
    for u in picked:
        seqs = {TARGET: [str(ids[TARGET][x]) for x in target[u][-50:]],
                SOURCE: [str(ids[SOURCE][x]) for x in source.get(u, [])[-50:]]}  # fmt: skip
        vectors.append(graph.encoder(graph.feeds(seqs, cats))[0])
        seen.append(set(cats[TARGET].known_rows(seqs[TARGET])))
    return bundle, np.stack(vectors).astype(np.float32), seen


def sweep(ns: argparse.Namespace, bundle_dir: Path, bundle: Any, vectors: np.ndarray, seen: list[set[int]]
          ) -> list[dict[str, Any]]:
    from service.adapters.faiss_index import FaissItemIndex, set_threads

    set_threads(1)
    from core.manifest import read_manifest

    spec = read_manifest(bundle_dir).indexes[bundle.encoders[TARGET].index]
    exact_vectors = FaissItemIndex(bundle_dir / spec.file, spec)._vectors
    truths = []
    for v, ex in zip(vectors, seen, strict=True):
        scores = exact_vectors @ v
        scores[list(ex)] = -np.inf
        top = np.argpartition(-scores, 9)[:10]
        truths.append(set(top.tolist()))
    indexes = {ef: FaissItemIndex(bundle_dir / spec.file, spec.model_copy(update={"params": {"efSearch": ef}}))
               for ef in ns.ef}  # fmt: skip
    times: dict[int, list[float]] = {ef: [] for ef in ns.ef}
    recall: dict[int, float] = {}
    plain: dict[int, float] = {}
    for _ in range(ns.rounds):
        for ef, index in indexes.items():  # interleaved: a load spike hits every depth alike
            start = time.perf_counter()
            got = [index.search(v, 10, ex)[0] for v, ex in zip(vectors, seen, strict=True)]
            times[ef].append((time.perf_counter() - start) / len(vectors) * 1e6)
            recall[ef] = statistics.fmean(len(set(g) & t) / 10 for g, t in zip(got, truths, strict=True))
    for ef, index in indexes.items():  # the export's own criterion: a plain search against the exact top 10
        _, ids = index._index.search(vectors, 10)
        exact = np.argsort(-(vectors @ exact_vectors.T), axis=1)[:, :10]
        plain[ef] = float(np.mean([len(set(a.tolist()) & set(b.tolist())) / 10 for a, b in zip(ids, exact,
                                                                                               strict=True)]))
    return [{"ef": ef, "us": statistics.median(times[ef]), "recall": recall[ef], "plain_recall": plain[ef]}
            for ef in ns.ef]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--source-items", type=int, default=20_000)
    p.add_argument("--data-users", dest="data_users", type=int, default=10_000, help="bench.serve's --users")
    p.add_argument("--users", type=int, default=1000, help="warm users measured (queries)")
    p.add_argument("--ef", type=int, nargs="+", default=[16, 32, 64, 96, 128, 160, 192, 256])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--min-recall", type=float, default=0.95, help="the export's recall@10 target (export/index.py)")
    p.add_argument("--cache", type=Path, default=ROOT / ".cdrec" / "bench-serve")
    p.add_argument("--no-write", action="store_true")
    ns = p.parse_args(argv)
    shown = " ".join(["python -m bench.hnsw_depth", *(sys.argv[1:] if argv is None else argv)])
    load_before = os.getloadavg()[0]
    build_ns = argparse.Namespace(items=ns.items, users=ns.data_users, source_items=ns.source_items, cache=ns.cache)
    bundle_dir = (build_bundles(build_ns, ["hnsw"])["hnsw"] / "current").resolve()
    bundle, vectors, seen = users_and_vectors(ns, bundle_dir)
    rows = sweep(ns, bundle_dir, bundle, vectors, seen)
    from core.manifest import read_manifest

    served = read_manifest(bundle_dir).indexes[bundle.encoders[TARGET].index].params.get("efSearch")
    best = next((r["ef"] for r in rows if r["recall"] >= ns.min_recall), None)
    lines = ["| efSearch | filtered recall@10 | plain recall@10 | µs per filtered search | × served |",
             "|---|---|---|---|---|"]  # fmt: skip
    at_served = next((r["us"] for r in rows if r["ef"] == served), None)
    for r in rows:
        mark = " (served)" if r["ef"] == served else (" (smallest >= target)" if r["ef"] == best else "")
        ratio = f"{r['us'] / at_served:.2f}" if at_served else ""
        lines.append(f"| {r['ef']}{mark} | {r['recall']:.4f} | {r['plain_recall']:.4f} | {r['us']:.0f} | {ratio} |")
    seen_n = statistics.fmean(len(s) for s in seen)
    text = "\n".join([
        "## HNSW search depth of the seen-filtered search (bench.serve's bundle)",
        "",
        f"`{shown}`. Load average before {load_before:.2f}, after {os.getloadavg()[0]:.2f}. {len(vectors)} warm users "
        f"of bench.serve's data, encoded by the bundle's user encoder; {seen_n:.1f} seen items excluded on average "
        "(the service's filter, `exclusion=auto`); k = 10, one FAISS thread, batch 1. Filtered recall@10 is against "
        "the exact top 10 outside the same exclusions; plain recall@10 (the export's criterion) without them. "
        f"The bundle serves efSearch {served}; the smallest reaching recall@10 >= {ns.min_recall} filtered: "
        f"{best if best is not None else 'none tried'}.",
        "",
        *lines,
    ])
    print(text)
    if not ns.no_write:
        dataset = f"synthetic({ns.items} items, {ns.data_users} users)"
        metrics = (("recall@10", "recall"), ("plain_recall@10", "plain_recall"), ("us", "us"))
        update_json(BENCH, [record(BENCH, dataset, f"target={TARGET}@seen-filtered", f"hnsw ef={r['ef']}", metric,
                                   [r[key]], split="loopback") for r in rows for metric, key in metrics])
        update_markdown(BENCH, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
