"""Excluding a user's seen items in an approximate FAISS search: FAISS' own selector, searching deeper, and the
service's default (``auto``: deeper while efSearch covers the depth, else the selector), beside a plain search.

    python -m bench.faiss_exclude [--items 100000] [--dim 64] [--queries 300] [--rounds 3]

The service's ``FaissItemIndex`` (service/adapters/faiss_index.py) on the index the export builds (export/index.py: HNSW
with efSearch, IVF with nprobe, each chosen for recall@10 >= 0.95 on these queries), over clustered synthetic
item vectors. Each query is an item vector plus noise, like a user vector near what the user interacted with;
its exclusions are half drawn from its own exact top max(200, |exclusions|) (seen items sit near the user, the
hard case) and half at random. Per exclusion count: microseconds per batch-1 ``search(k=10)`` (median of
per-round means, rounds interleaved between the ways, one FAISS thread) and recall@10 against the exact top 10
outside the exclusions (brute force over every vector). ``plain`` is the same queries searched without any
exclusion, in the same rounds: ``auto / plain`` is what excluding costs. ``deeper / selector`` is the ratio of
those two ways' times measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from bench.results import record, update_json, update_markdown
from core.manifest import IndexSpec
from export.index import IndexOptions, build_index
from service.adapters.faiss_index import Exclusion, FaissItemIndex, set_threads

BENCH = "faiss_exclude"
WAYS: tuple[Exclusion, ...] = ("selector", "deeper", "auto")


def clustered(n: int, dim: int, rng: np.random.Generator, clusters: int = 256) -> np.ndarray:
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + 0.5 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def workload(vectors: np.ndarray, n_queries: int, n_exclude: int, rng: np.random.Generator
             ) -> tuple[np.ndarray, list[set[int]], list[list[int]]]:
    """Queries, their exclusions and the exact top 10 outside them."""
    picks = rng.choice(len(vectors), n_queries, replace=False)
    queries = vectors[picks] + 0.3 * rng.standard_normal((n_queries, vectors.shape[1])).astype(np.float32)
    excludes, truths = [], []
    for q in queries:
        scores = vectors @ q
        near = np.argsort(-scores)[: max(200, n_exclude)]
        ex = set(rng.choice(near, n_exclude // 2, replace=False).tolist())
        while len(ex) < n_exclude:
            ex.add(int(rng.integers(0, len(vectors))))
        excludes.append(ex)
        order = np.argsort(-scores)
        truths.append([int(r) for r in order[: 10 + n_exclude] if int(r) not in ex][:10])
    return queries, excludes, truths


def measure(index: FaissItemIndex, queries: np.ndarray, excludes: list[set[int]]) -> tuple[float, list[list[int]]]:
    """Mean microseconds per search over the queries, and the rows each returned."""
    rows = []
    start = time.perf_counter()
    for q, ex in zip(queries, excludes, strict=True):
        rows.append(index.search(q, 10, ex)[0])
    return (time.perf_counter() - start) / len(queries) * 1e6, rows


def run(ns: argparse.Namespace) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    set_threads(1)
    vectors = clustered(ns.items, ns.dim, rng)
    tune = vectors[rng.choice(ns.items, 500, replace=False)] + 0.3 * rng.standard_normal((500, ns.dim)).astype(
        np.float32)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ns.kinds:
            built = build_index(vectors, tune, IndexOptions(kind=kind, strict=False))
            path = Path(tmp) / f"{kind}.faiss"
            faiss.write_index(built.index, str(path))
            spec = IndexSpec(domain="bench", file=path.name, ids_file="ids.json", type=built.type,
                             description=built.description, metric="inner_product", dim=ns.dim, count=ns.items,
                             params=built.params, recall_at_10=built.recall_at_10,
                             recall_queries=built.recall_queries, build_s=built.build_s)
            indexes = {way: FaissItemIndex(path, spec, exclusion=way) for way in WAYS}
            for n_exclude in ns.exclude:
                queries, excludes, truths = workload(vectors, ns.queries, n_exclude, rng)
                times: dict[str, list[float]] = {way: [] for way in (*WAYS, "plain")}
                recall: dict[str, float] = {}
                nothing = [set()] * len(excludes)
                for _ in range(ns.rounds):
                    us, _ = measure(indexes["auto"], queries, nothing)
                    times["plain"].append(us)
                    for way in WAYS:
                        us, got = measure(indexes[way], queries, excludes)
                        times[way].append(us)
                        recall[way] = statistics.fmean(len(set(g) & set(t)) / 10 for g, t in
                                                       zip(got, truths, strict=True))
                row = {"index": f"{kind} {built.params}", "exclude": n_exclude,
                       **{f"{way}_us": statistics.median(times[way]) for way in (*WAYS, "plain")},
                       **{f"{way}_recall": recall[way] for way in WAYS}}
                row["ratio"] = row["deeper_us"] / row["selector_us"]
                row["auto_vs_plain"] = row["auto_us"] / row["plain_us"]
                rows.append(row)
                print(f"{row['index']} exclude {n_exclude}: plain {row['plain_us']:.0f} us, selector "
                      f"{row['selector_us']:.0f} us (recall {row['selector_recall']:.3f}), deeper "
                      f"{row['deeper_us']:.0f} us (recall {row['deeper_recall']:.3f}), auto {row['auto_us']:.0f} us "
                      "(recall "
                      f"{row['auto_recall']:.3f}), deeper / selector {row['ratio']:.2f}, auto / plain "
                      f"{row['auto_vs_plain']:.2f}", flush=True)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| index | excluded | plain us | selector us | deeper us | auto us | deeper / selector | auto / plain | "
             "selector recall@10 | deeper recall@10 | auto recall@10 |", "|" + "---|" * 11]
    lines += [f"| {r['index']} | {r['exclude']} | {r['plain_us']:.0f} | {r['selector_us']:.0f} | {r['deeper_us']:.0f} "
              f"| {r['auto_us']:.0f} | {r['ratio']:.2f} | {r['auto_vs_plain']:.2f} | {r['selector_recall']:.3f} | "
              f"{r['deeper_recall']:.3f} | {r['auto_recall']:.3f} |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--queries", type=int, default=300)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--exclude", type=int, nargs="+", default=[0, 5, 50, 200, 1000])
    p.add_argument("--kinds", nargs="+", choices=["hnsw", "ivf"], default=["hnsw", "ivf"])
    ns = p.parse_args(argv)
    command = ("python -m bench.faiss_exclude " + shlex.join(argv if argv is not None else sys.argv[1:])).rstrip()
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    rows = run(ns)
    text = table(rows)
    minutes = (time.perf_counter() - start) / 60
    print(text, f"total {minutes:.1f} min", sep="\n\n")
    update_json(BENCH, [record(BENCH, "synthetic-clustered", f"items={ns.items}@exclude={r['exclude']}",
                               f"{r['index']} {way}", metric, [r[f"{way}_{key}"]])
                        for r in rows for way in WAYS for metric, key in (("us", "us"), ("recall@10", "recall"))]
                + [record(BENCH, "synthetic-clustered", f"items={ns.items}@exclude={r['exclude']}",
                          f"{r['index']} plain", "us", [r["plain_us"]]) for r in rows])
    update_markdown(BENCH, "\n".join([
        "## Excluding seen items in an approximate index: FAISS' selector against searching deeper",
        "",
        f"Load average before {load_before:.2f}, after {os.getloadavg()[0]:.2f} (a shared box: compare ratios "
        "within this table). `auto` is the service's default (FaissItemIndex): deeper while the depth k + "
        "|excluded| fits in efSearch (IVF: 256), else the selector; recall@10 is against the exact (brute-force) "
        "top 10 outside the exclusions.",
        "",
        f"`{command}` ({minutes:.1f} min). {ns.items:,} clustered synthetic item vectors (dim {ns.dim}), "
        f"{ns.queries} queries per row, one FAISS thread, batch 1, k = 10; half of each query's exclusions "
        "come from its own exact top max(200, |exclusions|). "
        "Times are the median over rounds of the mean per search; `deeper / selector` is their ratio in this run.",
        "",
        text,
    ]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
