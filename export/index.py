"""FAISS item indexes: exact inner product by default, HNSW or IVF for large catalogues, recall measured.

Index builds belong here, never in the service (PERFORMANCE.md). An approximate index is only accepted
with its recall@10 against exact search measured on the real item vectors with real user vectors as
queries; the smallest efSearch (HNSW) or nprobe (IVF) that reaches ``min_recall`` is chosen and stored with
the index (FAISS serialises both) and in the manifest.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Literal

import faiss
import numpy as np

from export.towers import ExportError

IndexChoice = Literal["auto", "flat", "hnsw", "ivf"]


@dataclass
class IndexOptions:
    kind: IndexChoice = "auto"
    ann_above: int = 100_000  # "auto" builds exact search up to this many items, HNSW above
    min_recall: float = 0.95  # recall@10 an approximate index must reach against exact search
    hnsw_m: int = 32
    hnsw_ef_construction: int = 200
    strict: bool = True  # False: keep the most accurate setting tried when none reaches min_recall (bench)


@dataclass
class BuiltIndex:
    index: faiss.Index
    type: Literal["flat", "hnsw", "ivf"]
    description: str
    params: dict[str, int] = field(default_factory=dict)
    recall_at_10: float = 1.0
    recall_queries: int = 0
    build_s: float = 0.0
    sweep: dict[int, float] = field(default_factory=dict)  # search parameter value -> recall@10


def top_k(index: faiss.Index, queries: np.ndarray, k: int = 10) -> np.ndarray:
    _, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, index.ntotal))
    return np.asarray(ids)


def overlap_at_k(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-row fraction of ``a``'s ids found in ``b``'s (both (Q, k) id arrays)."""
    return np.array([len(set(x.tolist()) & set(y.tolist())) / max(1, len(x)) for x, y in zip(a, b, strict=True)])


def recall_at_10(index: faiss.Index, exact: faiss.Index, queries: np.ndarray) -> float:
    return float(overlap_at_k(top_k(exact, queries), top_k(index, queries)).mean())


def build_index(vectors: np.ndarray, queries: np.ndarray, opts: IndexOptions) -> BuiltIndex:
    """Index ``vectors`` (N, D) for inner-product search; ``queries`` (Q, D) measure an approximate one."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = x.shape
    kind = opts.kind if opts.kind != "auto" else ("flat" if n <= opts.ann_above else "hnsw")
    start = time.perf_counter()
    exact = faiss.IndexFlatIP(d)
    exact.add(x)
    if kind == "flat":
        return BuiltIndex(exact, "flat", "IndexFlatIP", {}, 1.0, len(queries), time.perf_counter() - start)
    if len(queries) == 0:
        raise ExportError("an approximate index needs real user vectors to measure its recall (pass --data)")
    index: faiss.Index
    if kind == "hnsw":
        hnsw = faiss.IndexHNSWFlat(d, opts.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = opts.hnsw_ef_construction
        hnsw.add(x)
        index, build_s = hnsw, time.perf_counter() - start
        param, values = "efSearch", [16, 32, 64, 128, 160, 192, 256, 512, 1024]
        description = f"IndexHNSWFlat M={opts.hnsw_m} efConstruction={opts.hnsw_ef_construction}"

        def set_param(v: int) -> None:
            hnsw.hnsw.efSearch = v
    else:
        nlist = max(1, min(round(math.sqrt(n)), n // 39))  # FAISS wants ~39 training points per centroid
        ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.train(x)
        ivf.add(x)
        index, build_s = ivf, time.perf_counter() - start
        param = "nprobe"
        values = sorted({min(nlist, 2**i) for i in range(int(math.log2(nlist)) + 2)})
        description = f"IndexIVFFlat nlist={nlist}"

        def set_param(v: int) -> None:
            ivf.nprobe = v

    sweep: dict[int, float] = {}
    for value in values:
        set_param(value)
        sweep[value] = recall = recall_at_10(index, exact, queries)
        if recall >= opts.min_recall or (value == values[-1] and not opts.strict):
            return BuiltIndex(index, kind, description, {param: value}, recall, len(queries), build_s, sweep)
    raise ExportError(
        f"{kind} index: recall@10 {recall:.3f} < {opts.min_recall} even at {param}={values[-1]} "
        f"on {n} items; use --index flat or lower --min-recall"
    )
