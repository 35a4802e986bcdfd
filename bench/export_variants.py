"""Part of bench/export.py (``--variants``): the serving graphs of one exported user tower, side by side.

    python -m bench.export --variants --checkpoint runs/cdsrec.office.pt --data ../shared/data/amazon_art_office_urllm

For each one-vector user encoder of the bundle, the graphs the service could open, in one run, interleaved
call by call on 1 thread: the raw fp32 graph at ORT_ENABLE_ALL (what workers opened before issue 16), the
optimized fp32 graph export saves (opened with optimization off), and the int8 variant (export/quantize.py,
quantized here whatever the export's gate decided). Per graph: session creation time, onnxruntime time per
call at batch 1 and 8 on real users' sequences fed at full ``max_len`` and cut by core.sequence.trim_padding
(what the service feeds when the manifest says ``trims_padding``), and, with a trained checkpoint on real data,
NDCG@10 of each graph through onnxruntime on the validation split (the one export's gate reads) and on test
(reported beside it, never used to decide), and the node count of each graph as onnxruntime runs it. Records
go to docs/results.json under bench ``export-variants``.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from bench.results import record
from core.manifest import Manifest
from core.sequence import encode_batch, trim_padding
from export import onnx_graph
from export.bundle import DomainItems
from export.quantize import quantize_int8
from export.towers import Graph
from training.data.interactions import Interactions
from training.data.splits import leave_one_out
from training.evaluation import evaluate_ranking, two_domain_scorer

BENCH = "export-variants"


class OrtTower(torch.nn.Module):
    """An onnxruntime session as the (target_seq, source_seq) tower training.evaluation scores."""

    def __init__(self, sess: ort.InferenceSession, items: torch.Tensor) -> None:
        super().__init__()
        self.sess, self.items = sess, items

    def forward(self, target_seq: torch.Tensor, source_seq: torch.Tensor) -> torch.Tensor:
        feeds = {"target_seq": target_seq.numpy(), "source_seq": source_seq.numpy()}
        return torch.from_numpy(np.asarray(self.sess.run(None, feeds)[0], np.float32))

    def item_vectors(self) -> torch.Tensor:
        return self.items


def _nodes(path: Path, level: str) -> str:
    """The node count of the graph onnxruntime runs (optimized at ``level``) and its most frequent op types:
    at batch 1 the call cost is mostly per-node overhead, not arithmetic (the shape bookkeeping of the traced
    dynamic axes: Unsqueeze, Gather, Concat, Slice, Reshape, Shape)."""
    with tempfile.TemporaryDirectory() as tmp:
        options = onnx_graph._options(level, 1)
        options.optimized_model_filepath = str(Path(tmp) / "run.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        ops = Counter(n.op_type for n in onnx.load(str(Path(tmp) / "run.onnx")).graph.node)
    top = ", ".join(f"{op} {n}" for op, n in ops.most_common(8))
    return f"{sum(ops.values())} nodes ({top}, ...)"


def _session_s(path: Path, level: str, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        onnx_graph.session(path, 1, level)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def variant_section(
    graphs: list[Graph],
    manifest: Manifest,
    bundle: Path,
    domains: dict[str, DomainItems],
    data: Interactions,
    repeats: int,
    ndcg: bool,
) -> tuple[list[str], list[dict[str, Any]]]:
    lines = [
        "| graph | variant | session s | b1 ms, max_len | b1 ms, cut | b8 ms, max_len | b8 ms, cut "
        "| valid NDCG@10 | test NDCG@10 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    records: list[dict[str, Any]] = []
    tmp = Path(tempfile.mkdtemp(prefix="cdrec-bench-variants-"))
    rng = np.random.default_rng(0)
    for g, spec in zip(graphs, manifest.graphs, strict=True):
        if g.kind != "user_encoder" or g.intents is not None or g.target_max_len is None:
            continue
        quantize_int8(bundle / spec.file, tmp / f"{spec.name}.int8.onnx")
        paths = {
            "fp32 raw, ORT_ENABLE_ALL": (bundle / spec.file, "ORT_ENABLE_ALL"),
            "fp32 saved optimized": (bundle / (spec.optimized_file or spec.file), onnx_graph.LOADED_LEVEL),
            "int8 saved optimized": (tmp / f"{spec.name}.int8.onnx", onnx_graph.LOADED_LEVEL),
        }
        sessions = {v: onnx_graph.session(p, 1, level) for v, (p, level) in paths.items()}
        created = {v: _session_s(p, level) for v, (p, level) in paths.items()}
        tgt, src = domains[g.target_domain].histories, domains[g.source_domain or ""].histories
        users = rng.choice(np.asarray(sorted(tgt)), size=min(256, len(tgt)), replace=False)
        t = encode_batch([tgt[int(u)] for u in users], g.target_max_len)
        s = encode_batch([src.get(int(u), np.zeros(0, np.int64)) for u in users], g.source_max_len)
        times: dict[tuple[str, int, bool], list[float]] = {}
        for _ in range(max(1, repeats // 64)):
            for batch in (1, 8):
                for start in range(0, len(users) - batch + 1, batch):
                    full = {"target_seq": t[start : start + batch], "source_seq": s[start : start + batch]}
                    for cut in (False, True):
                        feeds = {k: trim_padding(v) for k, v in full.items()} if cut else full
                        for v, sess in sessions.items():  # interleaved: drift on a shared box hits all alike
                            t0 = time.perf_counter()
                            sess.run(None, feeds)
                            times.setdefault((v, batch, cut), []).append((time.perf_counter() - t0) * 1e3)
        quality: dict[str, dict[str, float]] = {v: {} for v in sessions}
        if ndcg:
            split = leave_one_out(data, g.target_domain)
            items = torch.from_numpy(np.concatenate([np.zeros((1, g.item_vectors().shape[1]), np.float32),
                                                     g.item_vectors().numpy()]))
            for v, sess in sessions.items():
                scorer = two_domain_scorer(OrtTower(sess, items), g.target_max_len, g.n_target_items)
                for name in ("valid", "test"):
                    quality[v][name] = evaluate_ranking(scorer, getattr(split, name))["NDCG@10"]
        task = f"target={g.target_domain}"
        for v in sessions:
            p50 = {(b, c): statistics.median(times[(v, b, c)]) for b in (1, 8) for c in (False, True)}
            q = quality[v]
            lines.append(
                f"| {spec.name} | {v} | {created[v]:.3f} | {p50[(1, False)]:.3f} | {p50[(1, True)]:.3f} "
                f"| {p50[(8, False)]:.3f} | {p50[(8, True)]:.3f} "
                f"| {q.get('valid', float('nan')):.4f} | {q.get('test', float('nan')):.4f} |"
            )
            model = f"{spec.name}:{v}"
            records.append(record(BENCH, data.name, task, f"{model}:session", "p50_ms", [created[v] * 1e3]))
            for (b, c), ms in p50.items():
                records.append(record(BENCH, data.name, task, f"{model}:b{b}:{'cut' if c else 'max_len'}",
                                      "p50_ms", [ms]))
            for name, value in q.items():
                records.append(record(BENCH, data.name, task, model, "NDCG@10", [value], split=name))
        lines.append("")
        lines += [f"- {v}: {_nodes(p, level)}" for v, (p, level) in paths.items()]
        gate = spec.quantized
        if gate is not None:
            lines.append(
                f"\nexport's int8 gate ({gate.split}, {gate.users} users): NDCG@10 fp32 {gate.ndcg10_fp32:.4f}, "
                f"int8 {gate.ndcg10_quantized:.4f} (allowed drop {gate.max_drop:.0%}), top-10 overlap "
                f"{gate.top10_overlap_vs_fp32:.3f} (required {gate.required_overlap}): "
                f"{'passed, int8 serves' if gate.passed else 'failed, fp32 serves'}"
            )
    return lines, records
