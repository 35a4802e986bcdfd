"""bench.redis_memory: a small fill on real redis-servers (plain and cluster-enabled) measures at least the raw
bytes it stored per user, and every key kind has its MEMORY USAGE."""

from __future__ import annotations

import argparse

import bench.redis_memory as rm


def test_a_small_fill_measures_at_least_the_payload_on_both_servers() -> None:
    ns = argparse.Namespace(users=400, max_len=50, id_chars=10, catalogue=5000, dim=64, sample=20, no_progress=True)
    payload = 2 * ns.max_len * ns.id_chars + 4 * ns.dim
    for cluster in (False, True):
        row = rm.measure(ns, cluster)
        assert row["keys"] == 3 * ns.users, row
        assert row["bytes_per_user"] > payload, row
        assert row["seq:music"] > ns.max_len * ns.id_chars and row["emb"] > 4 * ns.dim, row
    assert rm.item_ids(3, 10) == ["B000000000", "B000000001", "B000000002"]  # letters: never stored as integers
