"""The int8 variant of a user tower (issue 16) and the gate that decides whether a bundle serves it.

``quantize_int8`` runs onnxruntime's dynamic quantization (``quantize_dynamic``: MatMul weights stored as int8,
activations quantized per call) on the fp32 graph, then saves onnxruntime's optimized graph of the result at
the portable level, as the fp32 graph is saved (export/onnx_graph.py). Signed int8 weights: on our AVX-512
CPUs they ran faster than uint8, which was slower than fp32 at batch 1.

The gate (``gate``) measures NDCG@10 of the fp32 and the int8 graph, both through onnxruntime, on the
VALIDATION split (leave-one-out in time order: predict each user's second-to-last target item from what came
before it; model selection never looks at test), full ranking over every target item with the user's history
excluded and ties counted against the target (training/evaluation.py's protocol, which export may not import).
The int8 graph is written into the bundle, and served, only when its NDCG@10 is within ``max_drop`` (1 %,
relative) of fp32's and its top-10 lists through the bundle's index overlap fp32's by ``min_overlap`` on the
parity inputs: a quantized graph is never within the fp32 parity's 1e-4 of torch, so it is compared with the
fp32 graph at a tolerance that matches quantization, and the manifest records both figures.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import faiss
import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import QuantType, quantize_dynamic

from core.manifest import QuantizedSpec
from core.sequence import encode_batch, trim_padding
from export.index import overlap_at_k, top_k
from export.onnx_graph import LOADED_LEVEL, save_optimized, session
from export.parity import Inputs, _feeds, run_ort
from export.towers import Graph

if TYPE_CHECKING:
    from training.data.interactions import Interactions


@dataclass
class Validation:
    """Validation examples of one target domain: predict ``targets[i]`` from the histories before it."""

    target_hist: Sequence[np.ndarray]  # model item ids, oldest first
    source_hist: Sequence[np.ndarray]
    targets: np.ndarray  # (N,) model item ids


def validation(data: Interactions, target: str) -> Validation:
    """The validation examples of ``target`` from the trainers' own leave-one-out split."""
    from training.data.splits import leave_one_out

    valid = leave_one_out(data, target).valid
    return Validation(valid.target_hist, valid.source_hist, valid.targets)


@dataclass
class GateOptions:
    max_drop: float = 0.01  # relative NDCG@10 loss allowed against fp32 on the validation split
    min_overlap: float = 0.9  # top-10 overlap with fp32 through the bundle's index, on the parity inputs
    max_users: int = 5000  # validation users scored (all when fewer)


@contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """quantize_dynamic logs advice ("consider pre-processing") and every tensor it leaves in float on the root
    logger; the gate's figures say whether the result is good, so that noise is dropped for the call."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_int8(src: Path, dst: Path, threads: int = 1) -> None:
    """``src`` (an fp32 graph) -> ``dst``: int8 dynamic quantization, then onnxruntime's optimized graph of it."""
    with tempfile.TemporaryDirectory() as tmp, _quiet_root_logger():
        raw = Path(tmp) / "int8.onnx"
        quantize_dynamic(str(src), str(raw), weight_type=QuantType.QInt8)
        save_optimized(raw, dst, threads)


def ndcg_at_10(sess: ort.InferenceSession, items: np.ndarray, valid: Validation, max_len: int) -> float:
    """Mean NDCG@10 of the graph's user vectors scored against ``items`` ((N + 1, D), row 0 padding)."""
    out = []
    for start in range(0, len(valid.targets), 256):
        rows = slice(start, start + 256)
        feeds = {
            "target_seq": trim_padding(encode_batch(valid.target_hist[rows], max_len)),
            "source_seq": trim_padding(encode_batch(valid.source_hist[rows], max_len)),
        }
        scores = np.asarray(sess.run(None, feeds)[0], np.float32) @ items.T  # (B, N + 1)
        scores[:, 0] = -np.inf
        targets = valid.targets[rows]
        for b, hist in enumerate(valid.target_hist[rows]):
            seen = hist[hist != targets[b]]
            scores[b, seen] = -np.inf  # the service excludes seen items; a repeat of the target still counts
        mine = scores[np.arange(len(targets)), targets][:, None]
        rank = (scores >= mine).sum(axis=1) - 1  # ties against the target
        out.append(np.where(rank < 10, 1.0 / np.log2(rank + 2), 0.0))
    return float(np.concatenate(out).mean()) if out else 0.0


def compare(graph: Graph, fp32: ort.InferenceSession, other: ort.InferenceSession, index: faiss.Index,
            inputs: Inputs) -> tuple[float, float]:
    """(max |fp32 - other|, mean top-10 overlap through ``index``) on the parity inputs at full length, batch 64."""
    full = tuple(x.shape[1] for x in (inputs.target, inputs.source) if x is not None)
    a, b = [], []
    for start in range(0, len(inputs.source), 64):
        feeds = _feeds(graph, inputs, full, slice(start, start + 64))
        a.append(run_ort(fp32, feeds))
        b.append(run_ort(other, feeds))
    x, y = np.concatenate(a), np.concatenate(b)
    return float(np.abs(x - y).max()), float(overlap_at_k(top_k(index, x), top_k(index, y)).mean())


def gate(
    graph: Graph,
    bundle: Path,
    file: str,
    fp32: ort.InferenceSession,
    index: faiss.Index,
    inputs: Inputs,
    valid: Validation,
    opts: GateOptions,
    threads: int = 1,
) -> QuantizedSpec:
    """Write ``<graph>.int8.onnx`` from ``bundle/file``, measure it against ``fp32`` (the served fp32 session);
    keep the file only when it passes (see the module docstring)."""
    assert graph.target_max_len is not None
    name = f"{graph.name}.int8.onnx"
    quantize_int8(bundle / file, bundle / name, threads)
    int8 = session(bundle / name, threads, LOADED_LEVEL)
    diff, overlap = compare(graph, fp32, int8, index, inputs)
    n = len(valid.targets)
    pick = np.sort(np.random.default_rng(0).choice(n, size=min(n, opts.max_users), replace=False))
    sub = Validation([valid.target_hist[i] for i in pick], [valid.source_hist[i] for i in pick], valid.targets[pick])
    vecs = graph.item_vectors().detach().numpy()
    items = np.concatenate([np.zeros((1, vecs.shape[1]), np.float32), vecs])  # row 0: padding, never ranked
    base = ndcg_at_10(fp32, items, sub, graph.target_max_len)
    quant = ndcg_at_10(int8, items, sub, graph.target_max_len)
    passed = quant >= base * (1 - opts.max_drop) and overlap >= opts.min_overlap
    if not passed:
        (bundle / name).unlink()  # the bundle carries only what may serve; the manifest keeps the figures
    return QuantizedSpec(
        method="int8-dynamic",
        file=name if passed else None,
        split="valid",
        users=len(pick),
        ndcg10_fp32=base,
        ndcg10_quantized=quant,
        max_drop=opts.max_drop,
        max_abs_diff_vs_fp32=diff,
        top10_overlap_vs_fp32=overlap,
        required_overlap=opts.min_overlap,
        passed=passed,
    )
