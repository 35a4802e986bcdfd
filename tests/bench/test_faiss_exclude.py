"""bench.faiss_exclude: its workload's truth is the exact top 10 outside the exclusions, and a small run reports
every way (selector, deeper, auto) beside a plain search, with the recall each keeps."""

from __future__ import annotations

import argparse

import numpy as np

import bench.faiss_exclude as fe


def test_workload_truth_is_the_exact_top_10_outside_the_exclusions() -> None:
    rng = np.random.default_rng(1)
    vectors = fe.clustered(3000, 16, rng)
    queries, excludes, truths = fe.workload(vectors, 5, 40, rng)
    for q, ex, truth in zip(queries, excludes, truths, strict=True):
        assert len(ex) == 40 and not set(truth) & ex
        order = [int(r) for r in np.argsort(-(vectors @ q)) if int(r) not in ex]
        assert truth == order[:10]


def test_a_small_run_measures_both_ways_on_both_index_types() -> None:
    ns = argparse.Namespace(items=4000, dim=16, queries=20, rounds=1, exclude=[0, 30], kinds=["hnsw", "ivf"])
    rows = fe.run(ns)
    assert [(r["index"].split()[0], r["exclude"]) for r in rows] == [("hnsw", 0), ("hnsw", 30), ("ivf", 0),
                                                                     ("ivf", 30)]
    for r in rows:
        assert r["selector_us"] > 0 and r["deeper_us"] > 0 and r["ratio"] == r["deeper_us"] / r["selector_us"]
        assert r["plain_us"] > 0 and r["auto_vs_plain"] == r["auto_us"] / r["plain_us"]
        assert min(r["selector_recall"], r["deeper_recall"], r["auto_recall"]) >= 0.8, r
    assert fe.table(rows).count("\n") == len(rows) + 1
