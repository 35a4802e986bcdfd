"""docs/scaling.md stays traced to its measurements: every bench it names has records in docs/results.json and a
section in docs/results.md, and the headline figures it quotes from the benches made for it (redis_memory,
serve_memory, index_scale) are the ones those records hold: rerun one and this fails until the plan follows.
bench.serve and bench.refresh are quoted with the date of their run, so other work may rerun them freely."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "scaling.md").read_text()


def records(bench: str) -> list[dict[str, Any]]:
    return [r for r in json.loads((ROOT / "docs" / "results.json").read_text()) if r["bench"] == bench]


def one(bench: str, **match: str) -> float:
    (r,) = [r for r in records(bench) if all(r[k] == v for k, v in match.items())]
    return float(r["mean"])


def test_every_bench_the_plan_names_has_records_and_a_results_section() -> None:
    named = set(re.findall(r"python -m bench\.(\w+)", DOC))
    assert {"redis_memory", "serve", "serve_memory", "refresh", "index_scale"} <= named
    results_md = (ROOT / "docs" / "results.md").read_text()
    for bench in named:
        assert records(bench), bench
        assert f"<!-- bench:{bench} -->" in results_md, bench


def test_the_headline_figures_are_the_recorded_ones() -> None:
    per_user = one("redis_memory", model="cluster", metric="bytes_per_user")
    assert f"**{per_user:,.0f} B**" in DOC
    worker = one("serve_memory", task="items=100000@workers=2", model="index:hnsw", metric="worker_base_mib")
    assert f"| {worker:,.0f} MiB |" in DOC
    for kind, name in (("hnsw", "HNSW M 32"), ("flat", "flat")):
        search = one("index_scale", task="items=1000000", model=f"index:{kind}", metric="search_p50_ms", split="test")
        line = next(x for x in DOC.splitlines() if x.startswith(f"| **1M** | {name} "))
        assert f"| {search:.3f} |" in line, (line, search)
    ten_m = one("index_scale", task="items=10000000", model="index:hnsw", metric="search_p50_ms", split="extrapolated")
    assert f"**{ten_m:.2f}**" in DOC
