"""Serve memory bench: resident memory of a `cdrec serve` pod's processes (supervisor and workers) once ready,
per index kind, so deploy/ and docs/scaling.md size the API pods from a measurement.

    python -m bench.serve_memory [--items 100000] [--workers 2] [--index flat,hnsw]

The bundles are bench.serve's (the same cached exports: CDSRec + bridge on synthetic data, ``--items`` target
items); Redis is a throwaway redis-server seeded by bench.serve's seeder. The service starts with ``--workers``
independent processes; after /readyz answers and ``--requests`` recommendations have been served, VmRSS of the
supervisor and of each worker is read from /proc. A worker's RSS less its index's serialized bytes is the
per-worker base a pod pays whatever the catalogue (docs/scaling.md adds index bytes/item x items to it).
Writes docs/results.json (bench "serve_memory") and a table in docs/results.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import httpx

from bench.results import record, update_json, update_markdown
from bench.serve import ROOT, TARGET, build_bundles, free_port, seed_users, service_cmd, start_server, stop_server
from bench.serve_profile import start_redis

BENCH = "serve_memory"


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def measure(ns: argparse.Namespace, kind: str, root: Path, redis_url: str, n_warm: int) -> dict[str, Any]:
    port = free_port()
    env = {"CDREC_REDIS__TIMEOUT_S": "0.5"}
    proc = start_server(service_cmd(ns, root, port, redis_url), port, "/readyz", env)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            for i in range(ns.requests):  # touch what a request touches (encoder arenas, index pages, caches)
                body = {"user_id": f"w{i % max(1, n_warm)}", "domain": TARGET, "k": 10}
                assert client.post("/v1/recommend", json=body).status_code == 200
        # workers are the supervisor's children running Python (multiprocessing's helpers are children too)
        workers = [c for c in children(proc.pid) if b"python" in Path(f"/proc/{c}/cmdline").read_bytes()]
        rss = {c: rss_bytes(c) for c in workers}
        big = sorted(rss.values(), reverse=True)[: ns.workers]  # the serving workers: the helpers are small
        index_bytes = (root / "current" / f"items.{TARGET}.faiss").stat().st_size
        return {
            "index": kind,
            "items": ns.items,
            "index_mib": index_bytes / 2**20,
            "supervisor_mib": rss_bytes(proc.pid) / 2**20,
            "worker_mib": sum(big) / len(big) / 2**20,
            "worker_base_mib": (sum(big) / len(big) - index_bytes) / 2**20,
            "pod_mib": (rss_bytes(proc.pid) + sum(rss.values())) / 2**20,
        }
    finally:
        stop_server(proc)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=100_000, help="target-domain catalogue size")
    p.add_argument("--source-items", type=int, default=20_000)
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--index", default="flat,hnsw", help="index types, comma separated")
    p.add_argument("--requests", type=int, default=200, help="recommendations served before reading RSS")
    p.add_argument("--cache", type=Path, default=ROOT / ".cdrec" / "bench-serve", help="exported bundles")
    p.add_argument("--no-write", action="store_true", help="print only; leave docs/ alone")
    ns = p.parse_args(argv)
    argv_shown = sys.argv[1:] if argv is None else argv
    kinds = ns.index.split(",")
    roots = build_bundles(ns, kinds)
    redis_proc, redis_url = start_redis()
    try:
        n_warm = seed_users(redis_url, ns)["w"]
        rows = [measure(ns, k, roots[k], redis_url, n_warm) for k in kinds]
    finally:
        redis_proc.kill()
        redis_proc.wait()
    lines = [
        f"## Serve memory: {ns.items:,} items, {ns.workers} workers, after {ns.requests} recommendations",
        "",
        "```",
        " ".join(["python -m bench.serve_memory", *argv_shown]),
        "```",
        "",
        "VmRSS from /proc once ready. `worker base` = a serving worker's RSS less its index file's bytes: what a "
        f"worker costs whatever the catalogue. {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}.",
        "",
        "| index | items | index MiB | supervisor MiB | worker MiB | worker base MiB | pod total MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['index']} | {r['items']:,} | {r['index_mib']:.1f} | {r['supervisor_mib']:.0f} | "
            f"{r['worker_mib']:.0f} | {r['worker_base_mib']:.0f} | {r['pod_mib']:.0f} |"
        )
    text = "\n".join(lines)
    print(text)
    if not ns.no_write:
        records = [
            record(BENCH, "synthetic", f"items={r['items']}@workers={ns.workers}", f"index:{r['index']}", m, [r[m]])
            for r in rows
            for m in ("index_mib", "supervisor_mib", "worker_mib", "worker_base_mib", "pod_mib")
        ]
        update_json(BENCH, records)
        update_markdown(BENCH, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
