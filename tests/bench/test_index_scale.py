"""bench.index_scale: a small run measures every index kind with its recall against exact search, and the
extrapolation follows its stated law (bytes/item held, build linear in N, search grown per measured decade)."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

import bench.index_scale as ix


def test_a_small_run_reports_every_kind_with_its_bytes_and_recall() -> None:
    ns = argparse.Namespace(kinds=["flat", "ivf", "ivfpq"], min_recall=0.9, hnsw_m=16, hnsw_ef_construction=40,
                            pq_m=8, refine_k_factor=4, build_threads=1, noise=1.0, timed=10)
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((40, 16), dtype=np.float32)
    rows = ix.size_rows(4000, centres, ix.clustered(50, centres, 1.0, rng), ns)
    assert [r["index"] for r in rows] == ["flat", "ivf", "ivfpq", "ivfpq+refine"]
    by = {r["index"]: r for r in rows}
    assert by["flat"]["recall@10"] == 1.0 and by["flat"]["bytes_per_item"] == pytest.approx(16 * 4, rel=0.01)
    assert by["ivfpq"]["bytes_per_item"] < by["ivfpq+refine"]["bytes_per_item"] < by["flat"]["bytes_per_item"] + 8 + 1
    for r in rows:
        assert r["search_p50_ms"] > 0 and 0 <= r["recall@10"] <= 1 and r["short"] == (r["recall@10"] < 0.9)


def test_extrapolation_holds_bytes_grows_build_linearly_and_search_per_measured_decade() -> None:
    rows = [
        {"index": "flat", "items": 100_000, "bytes_per_item": 256.0, "build_s": 1.0, "search_p50_ms": 1.0},
        {"index": "flat", "items": 1_000_000, "bytes_per_item": 256.0, "build_s": 10.0, "search_p50_ms": 10.0},
        {"index": "ivf", "items": 100_000, "bytes_per_item": 265.0, "build_s": 1.0, "search_p50_ms": 0.2},
        {"index": "ivf", "items": 1_000_000, "bytes_per_item": 264.0, "build_s": 8.0, "search_p50_ms": 0.1},
    ]
    flat, ivf = ix.extrapolate(rows, 10_000_000)
    assert flat["build_s"] == pytest.approx(100.0) and flat["search_p50_ms"] == pytest.approx(100.0)
    assert flat["gib"] == pytest.approx(256 * 10_000_000 / 2**30)
    assert ivf["bytes_per_item"] == 264.0 and ivf["search_p50_ms"] == pytest.approx(0.1)  # never below 1x
