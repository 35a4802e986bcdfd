"""Export bench: onnxruntime vs torch latency of each exported graph, and FAISS index build time and recall.

    python -m bench.export                                  # serving-sized models (d 64, 2 layers, length 50)
    python -m bench.export --checkpoint runs/cdsrec.office.pt --bridge-checkpoint runs/bridge.art__office.pt \\
        --data ../shared/data/amazon_art_office_urllm

Without checkpoints it exports untrained serving-sized models on the synthetic data (latency does not depend
on training): SASRec, CDSRec and the inductive bridge where their modules exist. Every graph goes through
``export_bundle``, parity included, and is timed from the written bundle. Torch (inference_mode) and
onnxruntime (ORT_ENABLE_ALL) run on 1 thread each, interleaved call by call, at batch 1 and 64 on real users'
sequences at full length; the ratio is torch / onnxruntime from the same run. Indexes: flat, HNSW and IVF on
the bundle's real item vectors and on a 100k-item catalogue grown from them (clustered copies), recall@10
against exact search with the real users' vectors as queries, batch-1 search latency on 1 thread.
Writes docs/results.json (bench "export") and a table in docs/results.md.

``--variants`` runs only bench/export_variants.py's table instead (raw vs saved optimized vs int8 graph, full
length vs cut, NDCG@10 on valid and test), recorded as bench "export-variants".
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

from bench.results import record, update_json, update_markdown
from core.manifest import read_manifest
from core.sequence import encode_batch
from export import onnx_graph
from export.bundle import ExportOptions, domains_from_data, export_bundle
from export.index import IndexChoice, IndexOptions, build_index, recall_at_10
from export.parity import ParityOptions, run_ort, run_torch
from export.quantize import validation
from export.towers import Graph, MeanPoolBridge, bridge_graph, load_bridge, load_tower, tower_graph
from training.data.interactions import Interactions
from training.data.source import load_data
from training.models.sasrec import SASRec, SASRecConfig

BENCH = "export"


def default_graphs(data: Interactions, target: str, source: str, max_len: int) -> list[Graph]:
    n_t, n_s = data.n_items(target), data.n_items(source)
    meta = {"target": target, "source": source, "n_target_items": n_t, "data": data.name}
    torch.manual_seed(0)
    graphs = [tower_graph(SASRec(SASRecConfig(n_t, 64, 2, 2, 0.2, max_len)), {**meta, "model": "sasrec"})]
    try:
        from training.models.cdsrec import CDSRec, CDSRecConfig

        # the trainer's defaults (training/train_cdsrec.py CDSRecArgs): the dims and layers of the Art-Office
        # CDSRec the demo serves (d 64, GURU 2 layers, 2 heads, short-term encoder 2 layers)
        cds = CDSRec(CDSRecConfig(n_target=n_t, n_source=n_s, dim=64, layers=2, heads=2, max_len=max_len,
                                  short_layers=2))
        graphs = [tower_graph(cds, {**meta, "model": "cdsrec"})]  # one user encoder per domain: the CDSRec
    except ImportError:
        pass
    try:
        from training.models.bridge import InductiveBridge, InductiveBridgeConfig

        bridge: torch.nn.Module = InductiveBridge(
            InductiveBridgeConfig(n_s, n_t, dim=64, target_dim=64, max_len=max_len)
        )
        torch.nn.init.normal_(bridge.target_items, std=0.1)  # type: ignore[arg-type]
    except ImportError:
        bridge = MeanPoolBridge(n_s, graphs[0].item_vectors().new_zeros(n_t + 1, 64).normal_(), dim=64)
    bmeta = {**meta, "n_source_items": n_s, "max_len": max_len, "model": type(bridge).__name__}
    return [*graphs, bridge_graph(bridge.eval(), bmeta)]


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def latency(graph: Graph, sess: Any, feeds: dict[str, np.ndarray], repeats: int) -> dict[str, list[float]]:
    for _ in range(10):
        run_torch(graph, feeds), run_ort(sess, feeds)
    out: dict[str, list[float]] = {"torch": [], "onnxruntime": []}
    for _ in range(repeats):  # interleaved, so drift on a shared box hits both alike
        out["torch"].append(timed(lambda: run_torch(graph, feeds)))
        out["onnxruntime"].append(timed(lambda: run_ort(sess, feeds)))
    return out


def search_ms(index: faiss.Index, query: np.ndarray) -> float:
    start = time.perf_counter()
    index.search(query[None], 10)
    return (time.perf_counter() - start) * 1e3


def grow_catalogue(vectors: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` item vectors: each a real one plus Gaussian noise of the real vectors' per-dim spread (a mixture
    centred on the real items; a stress test of approximate search, not a claim about a real catalogue)."""
    base = vectors[rng.integers(0, len(vectors), n)]
    noise = rng.standard_normal(base.shape).astype(np.float32) * vectors.std(axis=0, keepdims=True)
    return np.ascontiguousarray(base + noise, dtype=np.float32)


def index_rows(vectors: np.ndarray, queries: np.ndarray, label: str, min_recall: float) -> list[dict[str, Any]]:
    rows = []
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    build_threads = faiss.omp_get_max_threads()
    kinds: tuple[IndexChoice, ...] = ("flat", "hnsw", "ivf")
    for kind in kinds:
        faiss.omp_set_num_threads(build_threads)  # builds use the machine, as `cdrec export` does
        built = build_index(vectors, queries, IndexOptions(kind=kind, min_recall=min_recall, strict=False))
        faiss.omp_set_num_threads(1)  # serving setting (PERFORMANCE.md): batch-1 search on one thread
        q = queries[: min(200, len(queries))]
        built.index.search(q[:10], 10)
        search = [search_ms(built.index, row) for row in q]
        rows.append(
            {
                "catalogue": label,
                "items": len(vectors),
                "index": built.description,
                "params": built.params,
                "build_s": built.build_s,
                "recall@10": recall_at_10(built.index, exact, queries),
                "short": built.recall_at_10 < min_recall,  # the largest setting tried still fell short
                "search_p50_ms": statistics.median(search),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, action="append", default=[])
    p.add_argument("--bridge-checkpoint", type=Path, action="append", default=[])
    p.add_argument("--data", default="synthetic")
    p.add_argument("--target-domain", default="music", help="for the default models")
    p.add_argument("--source-domain", default="book", help="for the default models")
    p.add_argument("--max-len", type=int, default=50)
    p.add_argument("--repeats", type=int, default=200, help="timed calls at batch 1 (a quarter at batch 64)")
    p.add_argument("--catalogue", type=int, default=100_000, help="size of the grown catalogue; 0 skips it")
    p.add_argument("--min-recall", type=float, default=0.95)
    p.add_argument("--no-write", action="store_true", help="print only; leave docs/ alone")
    p.add_argument(
        "--variants",
        action="store_true",
        help="only the serving graphs of each user encoder side by side (bench/export_variants.py): raw, saved "
        "optimized, int8; session and call times, max_len vs cut; NDCG@10 valid/test with --checkpoint",
    )
    ns = p.parse_args(argv)
    torch.set_num_threads(1)
    data = load_data(ns.data)
    graphs = [load_tower(c) for c in ns.checkpoint] + [load_bridge(c) for c in ns.bridge_checkpoint]
    graphs = graphs or default_graphs(data, ns.target_domain, ns.source_domain, ns.max_len)
    domains = domains_from_data(data)
    out = Path(tempfile.mkdtemp(prefix="cdrec-bench-export-"))
    opts = ExportOptions(parity=ParityOptions(), version="bench")
    if ns.variants and ns.checkpoint:  # the int8 gate, as `cdrec export --quantize int8` runs it
        opts.quantize = {g.target_domain: validation(data, g.target_domain) for g in graphs if g.kind == "user_encoder"}
    bundle = export_bundle(graphs, out, domains, opts, data.name)
    manifest = read_manifest(bundle)
    if ns.variants:
        return _variants(graphs, manifest, bundle, domains, data, ns, argv)

    records: list[dict[str, Any]] = []
    lat_lines = [
        "| graph | batch | torch p50 ms | onnxruntime p50 ms | torch / ort | ort p99 ms | parity max abs |",
        "|---|---|---|---|---|---|---|",
    ]
    queries: dict[str, list[np.ndarray]] = {}
    rng = np.random.default_rng(0)
    for g, spec in zip(graphs, manifest.graphs, strict=True):
        sess = onnx_graph.session(bundle / spec.file)
        tgt = domains[g.target_domain].histories
        src = domains[g.source_domain].histories if g.source_domain in domains else {}
        users = sorted(src if g.kind == "bridge" else tgt)
        pick = rng.choice(users, size=min(64, len(users)), replace=False)
        s = encode_batch([src.get(int(u), np.zeros(0, np.int64)) for u in pick], g.source_max_len)
        feeds64 = {"source_seq": s}
        if g.kind == "user_encoder":
            feeds64 = {"target_seq": encode_batch([tgt[int(u)] for u in pick], g.target_max_len or 1), **feeds64}
        queries.setdefault(spec.index, []).append(run_torch(g, feeds64))
        for batch in (1, 64):
            feeds = {k: np.ascontiguousarray(v[:batch]) for k, v in feeds64.items()}
            t = latency(g, sess, feeds, ns.repeats if batch == 1 else max(10, ns.repeats // 4))
            p50 = {k: statistics.median(v) for k, v in t.items()}
            p99 = float(np.percentile(t["onnxruntime"], 99))
            ratio = p50["torch"] / p50["onnxruntime"]
            lat_lines.append(
                f"| {spec.name} ({g.model}) | {batch} | {p50['torch']:.3f} | {p50['onnxruntime']:.3f} "
                f"| {ratio:.2f}x | {p99:.3f} | {spec.parity.max_abs_diff:.1e} |"
            )
            task = f"target={g.target_domain}"
            for runtime, ms in p50.items():
                records.append(record(BENCH, data.name, task, f"{spec.name}:{runtime}:b{batch}", "p50_ms", [ms]))
            records.append(
                record(BENCH, data.name, task, f"{spec.name}:onnxruntime:b{batch}", "ratio_vs_naive", [ratio])
            )

    idx_rows: list[dict[str, Any]] = []
    for key, ispec in manifest.indexes.items():
        vecs = faiss.read_index(str(bundle / ispec.file)).reconstruct_n(0, ispec.count)
        q = np.concatenate(queries[key])
        idx_rows += index_rows(vecs, q, f"{key} (real)", ns.min_recall)
        if ns.catalogue:
            idx_rows += index_rows(grow_catalogue(vecs, ns.catalogue, rng), q, f"{key} grown", ns.min_recall)
    idx_lines = [
        "| catalogue | items | index | search params | build s | recall@10 | search p50 ms (b1) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in idx_rows:
        idx_lines.append(
            f"| {r['catalogue']} | {r['items']} | {r['index']} | {json.dumps(r['params'])} | "
            f"{r['build_s']:.3f} | {r['recall@10']:.4f}{' (short)' if r['short'] else ''} | "
            f"{r['search_p50_ms']:.3f} |"
        )
        model = f"index:{r['catalogue']}:{r['index'].split()[0]}"
        for metric in ("build_s", "recall@10", "search_p50_ms"):
            records.append(record(BENCH, data.name, f"items={r['items']}", model, metric, [r[metric]]))

    device = f"torch {torch.__version__}, 1 thread each; ORT {manifest.libraries['onnxruntime']}"
    body = [
        *lat_lines,
        "",
        *idx_lines,
        "",
        f"(short): no efSearch / nprobe tried reached recall@10 {ns.min_recall}; `cdrec export` refuses that.",
        "Grown catalogues are real vectors plus noise: a stress test of approximate search.",
    ]
    return publish(BENCH, f"Export: {data.name} ({device})", argv, body, records, ns.no_write)


def publish(
    bench: str, title: str, argv: list[str] | None, body: list[str], records: list[dict[str, Any]], no_write: bool
) -> int:
    """Print the section (its title, the command, the body) and, unless ``no_write``, record it under ``bench``."""
    command = " ".join(["python -m bench.export", *(argv or sys.argv[1:])])
    text = "\n".join([f"## {title}", "", "```", command, "```", "", *body])
    print(text)
    if not no_write:
        update_json(bench, records)
        update_markdown(bench, text)
    return 0


def _variants(graphs: list[Graph], manifest: Any, bundle: Path, domains: Any, data: Interactions,
              ns: argparse.Namespace, argv: list[str] | None) -> int:
    from bench.export_variants import BENCH as VARIANTS
    from bench.export_variants import variant_section

    lines, records = variant_section(graphs, manifest, bundle, domains, data, ns.repeats, bool(ns.checkpoint))
    device = f"ORT {manifest.libraries['onnxruntime']}, 1 thread; load average {os.getloadavg()[0]:.2f} at the end"
    body = [
        "Median ms per onnxruntime call on real users' sequences (`cut`: leading padding dropped, as the service "
        "feeds a graph whose manifest says `trims_padding`); session: seconds to open the graph.",
        "",
        *lines,
    ]
    return publish(VARIANTS, f"Export: serving graph variants, {data.name} ({device})", argv, body, records,
                   ns.no_write)


if __name__ == "__main__":
    raise SystemExit(main())
