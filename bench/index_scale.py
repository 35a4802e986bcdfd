"""Index scale bench: memory, build time, batch-1 search cost and recall@10 of flat, HNSW, IVF and IVF-PQ item
indexes at growing catalogue sizes, and their extrapolation to 10M items (docs/scaling.md reads it).

    python -m bench.index_scale [--sizes 100000 1000000] [--queries 1000]

Items are synthetic clustered 64-d vectors (items / ``--items-per-cluster`` Gaussian centres ~ N(0, 1), each item
a centre plus ``--noise`` x N(0, 1)); queries are drawn the same way (users sit near item clusters). flat, HNSW
and IVF are built by ``export.index.build_index``, exactly as ``cdrec export`` builds them, which picks the
smallest efSearch / nprobe that reaches ``--min-recall`` recall@10 against exact search. IVF-PQ (not offered by
``cdrec export``) is built here: the same nlist rule, ``--pq-m`` sub-quantizers of 8 bits, nprobe chosen the same
way; ``ivfpq+refine`` re-ranks its ``--refine-k-factor`` x 10 candidates from fp16 copies of the vectors. Bytes
per item are the serialized index size (``faiss.serialize_index``) over its item count, which is what a serving
process holds in memory. Builds use every core (as export does); search is timed at batch 1 on 1 thread (the
serving setting), median over ``--timed`` queries.

10M items do not fit this 2-core box in reasonable time: the last table extrapolates from the two largest sizes
measured, with bytes per item held at the largest size's and build and search time grown per decade by the
factor measured between those two sizes. It is labelled as extrapolated.
Writes docs/results.json (bench "index_scale") and a table in docs/results.md.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import faiss
import numpy as np

from bench.results import record, update_json, update_markdown
from export.index import IndexOptions, build_index, overlap_at_k, top_k

BENCH = "index_scale"
DATASET = "synthetic-clustered-64d"


def clustered(n: int, centres: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` vectors, each a random centre plus isotropic Gaussian noise of scale ``noise``."""
    picks = rng.integers(0, len(centres), n)
    out = centres[picks] + noise * rng.standard_normal((n, centres.shape[1]), dtype=np.float32)
    return np.ascontiguousarray(out, dtype=np.float32)


def search_p50_ms(index: faiss.Index, queries: np.ndarray) -> float:
    faiss.omp_set_num_threads(1)  # the serving setting (PERFORMANCE.md): batch-1 search on one thread
    index.search(queries[:10], 10)
    times = []
    for row in queries:
        start = time.perf_counter()
        index.search(row[None], 10)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def nbytes(index: faiss.Index) -> int:
    return int(faiss.serialize_index(index).size)


def ivf_nlist(n: int) -> int:
    """The nlist rule of export.index (≈ √N, ≥ 39 training points per centroid)."""
    return max(1, min(round(math.sqrt(n)), n // 39))


def sweep_nprobe(
    index: faiss.Index, set_nprobe: Callable[[int], None], nlist: int, queries: np.ndarray, exact: np.ndarray,
    min_recall: float,
) -> tuple[int, float]:
    """The smallest power-of-two nprobe whose recall@10 reaches ``min_recall`` (else the largest tried)."""
    recall, value = 0.0, 1
    for value in sorted({min(nlist, 2**i) for i in range(int(math.log2(nlist)) + 2)}):
        set_nprobe(value)
        recall = float(overlap_at_k(exact, top_k(index, queries)).mean())
        if recall >= min_recall:
            break
    return value, recall


def ivfpq_rows(x: np.ndarray, queries: np.ndarray, exact: np.ndarray, ns: argparse.Namespace) -> list[dict[str, Any]]:
    n, d = x.shape
    nlist = ivf_nlist(n)
    start = time.perf_counter()
    ivfpq = faiss.IndexIVFPQ(faiss.IndexFlatIP(d), d, nlist, ns.pq_m, 8, faiss.METRIC_INNER_PRODUCT)
    ivfpq.train(x[: min(n, max(nlist * 64, 65_536))])  # a sample (x is in random order): 39+ points per centroid
    ivfpq.add(x)
    pq_build = time.perf_counter() - start
    rows = []

    def set_pq(v: int) -> None:
        ivfpq.nprobe = v

    nprobe, recall = sweep_nprobe(ivfpq, set_pq, nlist, queries, exact, ns.min_recall)
    rows.append({"index": "ivfpq", "description": f"IndexIVFPQ nlist={nlist} m={ns.pq_m}x8",
                 "params": {"nprobe": nprobe}, "build_s": pq_build, "recall@10": recall,
                 "bytes_per_item": nbytes(ivfpq) / n, "search_p50_ms": search_p50_ms(ivfpq, queries[: ns.timed])})

    faiss.omp_set_num_threads(ns.build_threads)
    start = time.perf_counter()
    fine = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    fine.add(x)  # FAISS wants both filled alike: the base already holds x, so only the fp16 copies are added
    refine = faiss.IndexRefine(ivfpq, fine)
    refine.k_factor = ns.refine_k_factor
    refine_build = pq_build + time.perf_counter() - start
    nprobe, recall = sweep_nprobe(refine, set_pq, nlist, queries, exact, ns.min_recall)
    rows.append({"index": "ivfpq+refine", "description": f"IVFPQ m={ns.pq_m} + fp16 re-rank x{ns.refine_k_factor}",
                 "params": {"nprobe": nprobe}, "build_s": refine_build, "recall@10": recall,
                 "bytes_per_item": (nbytes(ivfpq) + nbytes(fine)) / n,
                 "search_p50_ms": search_p50_ms(refine, queries[: ns.timed])})
    return rows


def size_rows(n: int, centres: np.ndarray, queries: np.ndarray, ns: argparse.Namespace) -> list[dict[str, Any]]:
    rng = np.random.default_rng(n)
    x = clustered(n, centres, ns.noise, rng)
    faiss.omp_set_num_threads(ns.build_threads)
    exact_index = faiss.IndexFlatIP(x.shape[1])
    exact_index.add(x)
    exact = top_k(exact_index, queries)
    del exact_index
    rows: list[dict[str, Any]] = []
    for kind in ns.kinds:
        print(f"[index_scale] {n:,} items: building {kind} ...", file=sys.stderr, flush=True)
        faiss.omp_set_num_threads(ns.build_threads)
        if kind == "ivfpq":
            rows += ivfpq_rows(x, queries, exact, ns)
            continue
        opts = IndexOptions(kind=kind, min_recall=ns.min_recall, hnsw_m=ns.hnsw_m,
                            hnsw_ef_construction=ns.hnsw_ef_construction, strict=False)
        built = build_index(x, queries, opts)
        rows.append({"index": kind, "description": built.description, "params": built.params,
                     "build_s": built.build_s, "recall@10": built.recall_at_10,
                     "bytes_per_item": nbytes(built.index) / n,
                     "search_p50_ms": search_p50_ms(built.index, queries[: ns.timed])})
        del built
    for r in rows:
        r["items"] = n
        r["short"] = r["recall@10"] < ns.min_recall
    return rows


def extrapolate(rows: list[dict[str, Any]], target: int) -> list[dict[str, Any]]:
    """Per index, from the two largest sizes measured: bytes/item of the largest; build time linear in N (adding
    dominates; HNSW's N log N makes this a floor); search time grown per decade by the factor measured between
    the two sizes (at least 1: each size's efSearch / nprobe was chosen for the same recall, so the factor
    carries the deeper search a bigger catalogue needs)."""
    out = []
    for kind in dict.fromkeys(r["index"] for r in rows):
        mine = sorted((r for r in rows if r["index"] == kind), key=lambda r: r["items"])
        if len(mine) < 2:
            continue
        a, b = mine[-2], mine[-1]
        per_decade = max(1.0, b["search_p50_ms"] / a["search_p50_ms"]) ** (1 / math.log10(b["items"] / a["items"]))
        out.append({"index": kind, "items": target, "bytes_per_item": b["bytes_per_item"],
                    "gib": b["bytes_per_item"] * target / 2**30, "build_s": b["build_s"] * target / b["items"],
                    "search_per_decade": per_decade,
                    "search_p50_ms": b["search_p50_ms"] * per_decade ** math.log10(target / b["items"]),
                    "from": f"{a['items']:,} -> {b['items']:,}"})
    return out


def report(ns: argparse.Namespace, rows: list[dict[str, Any]], ext: list[dict[str, Any]], load: str) -> str:
    lines = [
        f"## Index scale: {DATASET} ({ns.items_per_cluster} items per cluster, noise {ns.noise}), "
        f"recall target {ns.min_recall}",
        "",
        "```",
        " ".join(["python -m bench.index_scale", *ns.argv]),
        "```",
        "",
        f"faiss {faiss.__version__}; builds on {ns.build_threads} threads, search batch 1 on 1 thread "
        f"(median of {ns.timed} queries), recall@10 vs exact over {ns.queries} queries. {load}",
        "",
        "| items | index | built as | search params | bytes/item | build s | recall@10 | search p50 ms (b1) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        params = ", ".join(f"{k} {v}" for k, v in r["params"].items()) or "-"
        lines.append(
            f"| {r['items']:,} | {r['index']} | {r['description']} | {params} | {r['bytes_per_item']:.1f} | "
            f"{r['build_s']:.1f} | {r['recall@10']:.3f}{' (short)' if r['short'] else ''} | "
            f"{r['search_p50_ms']:.3f} |"
        )
    if ext:
        lines += [
            "",
            f"Extrapolated to {ext[0]['items']:,} items, NOT measured: bytes/item of the largest size; build time "
            "linear in N (a floor for HNSW, N log N); search time grown per decade by the factor measured between "
            "the two sizes named (each at the recall target, so deeper search is included; at least 1x):",
            "",
            "| items | index | from | bytes/item | index GiB | build s | search × per decade | search p50 ms (b1) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for e in ext:
            lines.append(
                f"| {e['items']:,} | {e['index']} | {e['from']} | {e['bytes_per_item']:.1f} | {e['gib']:.2f} | "
                f"{e['build_s']:.0f} | {e['search_per_decade']:.2f} | {e['search_p50_ms']:.3f} |"
            )
    lines += ["", "(short): no nprobe / efSearch tried reached the recall target; the most accurate one is shown."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--kinds", nargs="+", default=["flat", "hnsw", "ivf", "ivfpq"],
                   choices=["flat", "hnsw", "ivf", "ivfpq"], help="ivfpq adds its re-ranked variant too")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--items-per-cluster", type=int, default=100, help="clusters = items / this, per size")
    p.add_argument("--noise", type=float, default=1.0, help="item spread around its centre (centres ~ N(0, 1))")
    p.add_argument("--queries", type=int, default=1000, help="queries for recall@10")
    p.add_argument("--timed", type=int, default=200, help="queries timed at batch 1")
    p.add_argument("--min-recall", type=float, default=0.95)
    p.add_argument("--hnsw-m", type=int, default=IndexOptions.hnsw_m)
    p.add_argument("--hnsw-ef-construction", type=int, default=IndexOptions.hnsw_ef_construction)
    p.add_argument("--pq-m", type=int, default=32, help="IVF-PQ sub-quantizers (bytes per code)")
    p.add_argument("--refine-k-factor", type=int, default=4)
    p.add_argument("--build-threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--extrapolate-to", type=int, default=10_000_000)
    p.add_argument("--no-write", action="store_true", help="print only; leave docs/ alone")
    ns = p.parse_args(argv)
    ns.argv = sys.argv[1:] if argv is None else argv
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    rows = []
    for n in sorted(ns.sizes):
        # a bigger catalogue has more topics, not denser ones: with a fixed cluster count IVF's nlist (√N) would
        # meet the data's own clusters at some size and search there would look unrealistically cheap
        rng = np.random.default_rng(0)
        centres = rng.standard_normal((max(1, n // ns.items_per_cluster), ns.dim), dtype=np.float32)
        rows += size_rows(n, centres, clustered(ns.queries, centres, ns.noise, rng), ns)
    minutes = (time.perf_counter() - start) / 60
    load = (f"{os.cpu_count()} CPUs; load average before {load_before:.2f}, after {os.getloadavg()[0]:.2f} (the box "
            f"is shared: compare within this table); {minutes:.1f} min.")
    ext = extrapolate(rows, ns.extrapolate_to)
    text = report(ns, rows, ext, load)
    print(text)
    if not ns.no_write:
        records = []
        for r in rows:
            for metric in ("bytes_per_item", "build_s", "recall@10", "search_p50_ms"):
                records.append(record(BENCH, DATASET, f"items={r['items']}", f"index:{r['index']}", metric,
                                      [r[metric]]))
        for e in ext:
            for metric in ("bytes_per_item", "build_s", "search_p50_ms"):
                records.append(record(BENCH, DATASET, f"items={e['items']}", f"index:{e['index']}", metric,
                                      [e[metric]], split="extrapolated"))
        update_json(BENCH, records)
        update_markdown(BENCH, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
