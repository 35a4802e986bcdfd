"""Parity before publishing (DESIGN §7.6): torch and onnxruntime must agree on the same inputs.

Random sequences (random lengths, all-padding rows included) and real users' histories, encoded by
core.sequence exactly as the service encodes them, are fed to the torch module and to the ONNX graph at
batch sizes 1 and 64 and at several sequence lengths (the last T columns of the encoded row: the most recent
items, as a shorter ``max_len`` would keep). Recorded: the largest |torch - ORT| over all of it, the top-10
overlap of the two sets of vectors searched through the bundle's own index, and whether an all-padding row
is finite.

``trim_difference`` measures whether a graph may be fed shorter inputs: ORT at full length against ORT on the
same rows cut by core.sequence.trim_padding (the leading all-padding columns dropped), rows one at a time
(each cut to its own length; all-padding rows to the shortest) and in batches of 64. Within the parity
tolerance, the manifest says ``trims_padding`` and the service cuts (relative positions and masked padding
make the CDSRec, SASRec and bridge towers exact up to float rounding; absolute positions would not be).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import faiss
import numpy as np
import onnxruntime as ort
import torch

from core.manifest import ParityReport
from core.sequence import encode_batch, trim_padding
from export.dss import merged_top_k
from export.index import overlap_at_k, top_k
from export.towers import Graph


@dataclass
class ParityOptions:
    random_sequences: int = 256
    real_sequences: int = 256
    batch_sizes: tuple[int, ...] = (1, 64)
    batch1_sequences: int = 32  # sequences also run one at a time (batch 1) at every length
    tolerance: float = 1e-4
    min_overlap: float = 0.99
    seed: int = 0


@dataclass
class Inputs:
    """Encoded sequences at full length: target (N, T) (None for a bridge) and source (N, S)."""

    target: np.ndarray | None
    source: np.ndarray
    n_random: int
    n_real: int


def random_inputs(graph: Graph, n: int, rng: np.random.Generator) -> Inputs:
    def block(n_items: int, max_len: int) -> np.ndarray:
        lengths = rng.integers(0, max_len + 1, n)
        lengths[: max(1, n // 16)] = 0  # some fully padded rows
        hist = [rng.integers(1, n_items + 1, int(k)) for k in lengths]
        return encode_batch(hist, max_len)

    source = block(graph.n_source_items or 1, graph.source_max_len)
    if graph.kind == "bridge":
        return Inputs(None, source, n, 0)
    assert graph.target_max_len is not None
    return Inputs(block(graph.n_target_items, graph.target_max_len), source, n, 0)


def real_inputs(graph: Graph, target_hist: Sequence[np.ndarray], source_hist: Sequence[np.ndarray]) -> Inputs:
    source = encode_batch(source_hist, graph.source_max_len)
    if graph.kind == "bridge":
        return Inputs(None, source, 0, len(source_hist))
    assert graph.target_max_len is not None
    return Inputs(encode_batch(target_hist, graph.target_max_len), source, 0, len(target_hist))


def concat(a: Inputs, b: Inputs) -> Inputs:
    target = None if a.target is None or b.target is None else np.concatenate([a.target, b.target])
    return Inputs(target, np.concatenate([a.source, b.source]), a.n_random + b.n_random, a.n_real + b.n_real)


def length_cases(graph: Graph) -> list[tuple[int, ...]]:
    """Input lengths to exercise: 1, 7, half and full, and for two inputs some unequal pairs."""

    def cut(m: int) -> list[int]:
        return sorted({min(m, t) for t in (1, 7, max(1, m // 2), m)})

    if graph.kind == "bridge":
        return [(s,) for s in cut(graph.source_max_len)]
    assert graph.target_max_len is not None
    t_max, s_max = graph.target_max_len, graph.source_max_len
    cases = [(t, min(t, s_max)) for t in cut(t_max)] + [(1, s_max), (t_max, min(7, s_max))]
    return list(dict.fromkeys(cases))


def _feeds(graph: Graph, inputs: Inputs, lengths: tuple[int, ...], rows: slice) -> dict[str, np.ndarray]:
    if graph.kind == "bridge":
        return {"source_seq": np.ascontiguousarray(inputs.source[rows, -lengths[0] :])}
    assert inputs.target is not None
    return {
        "target_seq": np.ascontiguousarray(inputs.target[rows, -lengths[0] :]),
        "source_seq": np.ascontiguousarray(inputs.source[rows, -lengths[1] :]),
    }


def trim_difference(graph: Graph, sess: ort.InferenceSession, inputs: Inputs, rows_alone: int = 64) -> float:
    """max |ORT(full length) - ORT(cut by trim_padding)| over ``inputs``: the first ``rows_alone`` rows one at a
    time, then every row in batches of 64 (inf when either side is not finite)."""
    n = len(inputs.source)
    full = tuple(x.shape[1] for x in (inputs.target, inputs.source) if x is not None)
    batches = [slice(i, i + 1) for i in range(min(n, rows_alone))] + [slice(i, i + 64) for i in range(0, n, 64)]
    worst = 0.0
    for rows in batches:
        feeds = _feeds(graph, inputs, full, rows)
        a, b = run_ort(sess, feeds), run_ort(sess, {k: trim_padding(v) for k, v in feeds.items()})
        if not (np.isfinite(a).all() and np.isfinite(b).all()):
            return float("inf")
        worst = max(worst, float(np.abs(a - b).max()))
    return worst


def run_torch(graph: Graph, feeds: dict[str, np.ndarray]) -> np.ndarray:
    with torch.inference_mode():
        args = [torch.from_numpy(feeds[k]) for k in ("target_seq", "source_seq") if k in feeds]
        return np.asarray(graph.module(*args).numpy(), dtype=np.float32)


def run_ort(sess: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> np.ndarray:
    return np.asarray(sess.run(None, feeds)[0], dtype=np.float32)


def check_parity(
    graph: Graph, sess: ort.InferenceSession, index: faiss.Index, inputs: Inputs, opts: ParityOptions
) -> ParityReport:
    n = len(inputs.source)
    worst = 0.0
    finite = True
    torch_vecs, ort_vecs = [], []
    cases = length_cases(graph)
    for lengths in cases:
        for batch in opts.batch_sizes:
            stop = n if batch > 1 else min(n, opts.batch1_sequences)
            for start in range(0, stop, batch):
                feeds = _feeds(graph, inputs, lengths, slice(start, min(start + batch, stop)))
                t, o = run_torch(graph, feeds), run_ort(sess, feeds)
                finite &= bool(np.isfinite(t).all() and np.isfinite(o).all())
                worst = max(worst, float(np.abs(t - o).max()) if finite else float("inf"))
                if batch > 1:
                    torch_vecs.append(t)
                    ort_vecs.append(o)
    pad_finite = True
    for lengths in cases:
        zeros = Inputs(
            None if inputs.target is None else np.zeros((1, lengths[0]), np.int64),
            np.zeros((1, lengths[-1]), np.int64),
            0,
            0,
        )
        feeds = _feeds(graph, zeros, lengths, slice(0, 1))
        pad_finite &= bool(np.isfinite(run_torch(graph, feeds)).all() and np.isfinite(run_ort(sess, feeds)).all())
    if torch_vecs:
        # K intent vectors per user (DSS): each user's top 10 by its best intent, so every vector counts
        rank = merged_top_k if torch_vecs[0].ndim == 3 else top_k
        overlap = overlap_at_k(rank(index, np.concatenate(torch_vecs)), rank(index, np.concatenate(ort_vecs)))
    else:
        overlap = np.zeros(1)
    mean_overlap, min_overlap = float(overlap.mean()), float(overlap.min())
    return ParityReport(
        passed=finite and pad_finite and worst <= opts.tolerance and mean_overlap >= opts.min_overlap,
        random_sequences=inputs.n_random,
        real_sequences=inputs.n_real,
        batch_sizes=list(opts.batch_sizes),
        lengths=[list(c) for c in cases],
        max_abs_diff=worst,
        tolerance=opts.tolerance,
        top10_overlap=mean_overlap,
        min_top10_overlap=min_overlap,
        required_overlap=opts.min_overlap,
        all_padding_finite=pad_finite,
    )
