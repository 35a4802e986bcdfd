"""p99 at half the peak, variant against baseline in one run, with the server's own view of each request.

    python -m bench.serve_half                                       # gc.freeze off (before) vs on (now)
    python -m bench.serve_half --variant nofreeze:CDREC_SERVICE__GC_FREEZE=false --variant freeze: --rounds 3

Why p99 at half load is far above what queueing alone gives (issue 16, item 1): each ``--variant NAME:ENV=V,...``
is the warm service of bench/serve.py (same cached bundle, same Redis, same users) started with those
environment variables; all run side by side. The first variant's peak (wrk, ``--concurrency`` connections,
unpaced) sets the offered rate, half of it, which wrk then offers to every variant in turn (its ``delay`` hook,
exponential gaps), interleaved over ``--rounds``. Beside wrk's p50/p99 (client side: queueing in the kernel and
in wrk included) each row has the service's own view from its /metrics, diffed around the run: the p99 of the
time in the app (``cdrec_http_request_duration_seconds``, interpolated within its bucket), the share of requests
over 16 ms in the app, and the garbage collections of the workers (``cdrec_gc_pause_seconds``: how many full
collections, their summed pause). A GC pause stops the worker's event loop and its executor (GIL), so every
request in flight or arriving meanwhile waits it out. ``--mix`` adds, per variant and round, bench.serve's
read-only run and 10:1 read/write mix on the upper half of the warm users, back to back (the ratio of their
req/s; the variants share Redis, so one's events reach the others' users too). ``NAME@DIR`` runs that variant
from another source tree (``git archive <commit> | tar -x -C DIR``: the code before a change, same run).
``--closed 1,8,64`` adds each variant's unpaced (closed-loop) req/s at those concurrencies, every round, the
variants' order alternating between rounds, with the ratio to the first variant's. Writes
docs/results.{json,md} (bench ``serve-half``) unless --no-write.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench.results import record, update_json, update_markdown
from bench.serve import (
    ROOT,
    build_bundles,
    free_port,
    mix_rows,
    run_wrk,
    seed_users,
    service_cmd,
    start_server,
    stop_server,
)
from bench.serve_profile import start_redis

BENCH = "serve-half"
ROUTE = "/v1/recommend"


def scrape(url: str) -> dict[str, Any]:
    """The recommend route's latency buckets (le -> cumulative count) and the GC pauses, from /metrics."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=10).text
    buckets: dict[float, float] = {}
    gc_count: dict[str, float] = {}
    gc_sum: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "cdrec_http_request_duration_seconds_bucket" and s.labels.get("route") == ROUTE:
                le = float(s.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + s.value
            elif s.name == "cdrec_gc_pause_seconds_count":
                gc_count[s.labels["generation"]] = gc_count.get(s.labels["generation"], 0.0) + s.value
            elif s.name == "cdrec_gc_pause_seconds_sum":
                gc_sum[s.labels["generation"]] = gc_sum.get(s.labels["generation"], 0.0) + s.value
    return {"buckets": buckets, "gc_count": gc_count, "gc_sum": gc_sum}


def quantile(buckets: dict[float, float], q: float) -> float:
    """Seconds at quantile ``q`` of a cumulative histogram, linear within the bucket (inf: the last bound)."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0.0
    if total <= 0:
        return float("nan")
    want, lo, below = q * total, 0.0, 0.0
    for le in bounds:
        if buckets[le] >= want:
            if le == float("inf"):
                return lo
            return lo + (le - lo) * (want - below) / max(buckets[le] - below, 1e-9)
        lo, below = le, buckets[le]
    return lo


def server_view(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    diff = {le: n - before["buckets"].get(le, 0.0) for le, n in after["buckets"].items()}
    total = diff.get(float("inf"), 0.0)
    over = total - diff.get(0.016, 0.0)
    full = after["gc_count"].get("2", 0.0) - before["gc_count"].get("2", 0.0)
    paused = sum(after["gc_sum"].values()) - sum(before["gc_sum"].values())
    young = sum(after["gc_count"].get(g, 0.0) - before["gc_count"].get(g, 0.0) for g in ("0", "1"))
    return {"server_p50_ms": quantile(diff, 0.5) * 1e3, "server_p99_ms": quantile(diff, 0.99) * 1e3,
            "server_over_16ms": over / total if total else float("nan"), "gc_full": full, "gc_young": young,
            "gc_pause_ms": paused * 1e3}  # fmt: skip


def parse_variant(text: str) -> tuple[str, dict[str, str], Path]:
    """``NAME[@DIR]:ENV=VALUE,...``: DIR, a source tree to run the service from (e.g. ``git archive`` of an
    older commit), else this one."""
    head, _, spec = text.partition(":")
    name, _, where = head.partition("@")
    env = dict(pair.split("=", 1) for pair in spec.split(",") if pair)
    if not name:
        raise SystemExit(f"--variant {text!r}: NAME[@DIR]:ENV=VALUE,... (NAME required)")
    cwd = Path(where).resolve() if where else ROOT
    if not (cwd / "service" / "app.py").exists():
        raise SystemExit(f"--variant {text!r}: {cwd} holds no cdrec source tree (service/app.py)")
    return name, env, cwd


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--index", default="hnsw", choices=["hnsw", "flat"])
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--source-items", type=int, default=20_000)
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--duration", type=float, default=6.0, help="seconds per paced run (per variant and round)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--variant", action="append", default=None,
                   help="NAME:ENV=VALUE,... a service started with these env vars (repeat; the first sets the rate)")
    p.add_argument("--redis-timeout", type=float, default=0.05)
    p.add_argument("--cache", type=Path, default=ROOT / ".cdrec" / "bench-serve")
    p.add_argument("--mix", action="store_true", help="per variant and round also read-only vs the 10:1 mix")
    p.add_argument("--closed", default="", help="also each variant's unpaced req/s at these concurrencies (comma "
                   "separated, e.g. 1,8,64), every round, variants in alternating order; with the ratio to the first")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--section", help="record under bench serve-half-SECTION (its own docs section): the others stay")
    ns = p.parse_args(argv)
    closed = [int(c) for c in ns.closed.split(",") if c.strip()]
    argv_shown = list(sys.argv[1:] if argv is None else argv)
    variants = [parse_variant(v) for v in (ns.variant or ["gc-default:CDREC_SERVICE__GC_FREEZE=false", "gc-freeze:"])]
    load_before = os.getloadavg()[0]
    root = build_bundles(ns, [ns.index])[ns.index]
    redis_proc, redis_url = start_redis()
    procs = []
    rows: list[dict[str, Any]] = []
    try:
        users = seed_users(redis_url, ns)
        base_env = {"CDREC_SERVICE__WATCH_S": "2", "CDREC_SERVICE__API_KEYS": '["bench"]',
                    "CDREC_REDIS__TIMEOUT_S": str(ns.redis_timeout), "OMP_NUM_THREADS": "1"}  # fmt: skip
        urls = {}
        for name, env, cwd in variants:
            port = free_port()
            procs.append(start_server(service_cmd(ns, root, port, redis_url), port, "/readyz", {**base_env, **env},
                                      cwd))  # fmt: skip
            urls[name] = f"http://127.0.0.1:{port}"
        n = users["w"]
        for url in urls.values():  # warm-up: first calls allocate
            run_wrk(url, "POST", ROUTE, "w", n, 8, 1)
        first = next(iter(urls.values()))
        peak = run_wrk(first, "POST", ROUTE, "w", n, ns.concurrency, ns.duration)["req/s"]
        delay_ms = ns.concurrency * 1e3 / (peak / 2)
        print(f"peak {peak:.0f} req/s ({variants[0][0]}): offering {peak / 2:.0f}", file=sys.stderr)
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in urls}
        mixes: dict[str, list[float]] = {name: [] for name in urls}
        unpaced: dict[tuple[str, int], list[float]] = {(name, c): [] for name in urls for c in closed}
        for rnd in range(ns.rounds):
            order = list(urls.items()) if rnd % 2 == 0 else list(urls.items())[::-1]  # neither always goes first
            for c in closed:
                for name, url in order:
                    unpaced[(name, c)].append(run_wrk(url, "POST", ROUTE, "w", n, c, ns.duration)["req/s"])
                print("unpaced c=" + str(c) + ": " + ", ".join(f"{v} {unpaced[(v, c)][-1]:.0f}" for v in urls),
                      file=sys.stderr)
            for name, url in urls.items():
                if ns.mix:  # read-only then 10:1 on the same users, back to back (bench.serve's mix rows)
                    ro, mix = mix_rows(ns, ns.index, root, url, n, ns.concurrency)
                    mixes[name].append(mix["req/s"] / ro["req/s"])
                time.sleep(1.0)  # the previous run's requests still in flight (wrk stops, they finish) must not count
                before = scrape(url)
                r = run_wrk(url, "POST", ROUTE, "w", n, ns.concurrency, ns.duration, delay_ms)
                r.update(server_view(before, scrape(url)))
                runs[name].append(r)
                print(f"{name:16} {r['req/s']:6.0f} req/s p50 {r['p50_ms']:6.2f} p99 {r['p99_ms']:6.2f} ms | server "
                      f"p99 {r['server_p99_ms']:6.2f} ms, >16 ms {r['server_over_16ms']:.2%}, full GCs "
                      f"{r['gc_full']:.0f}, GC pause {r['gc_pause_ms']:.0f} ms", file=sys.stderr)  # fmt: skip
        for name, results in runs.items():
            row = {m: statistics.median(x[m] for x in results) for m in results[0]}
            env = next(e for v, e, _ in variants if v == name)
            ratio = statistics.median(mixes[name]) if mixes[name] else float("nan")
            cwd = next(c for v, _, c in variants if v == name)
            rows.append({"variant": name, "env": env, "offered": peak / 2, **row, "mix_ratio": ratio,
                         "source": "" if cwd == ROOT else str(cwd),
                         "unpaced": {c: statistics.median(unpaced[(name, c)]) for c in closed}})  # fmt: skip
    finally:
        for proc in procs:
            stop_server(proc)
        redis_proc.kill()
        redis_proc.wait()
    text = report(ns, argv_shown, rows, peak, load_before)
    print(text)
    if not ns.no_write:
        bench = f"{BENCH}-{ns.section}" if ns.section else BENCH
        dataset = f"synthetic({ns.items} items, {ns.users} users)"
        recs = [record(bench, dataset, f"target=music@half-peak@c={ns.concurrency}", f"{r['variant']}:{ns.index}",
                       metric, [r[key]], split="loopback")
                for r in rows for metric, key in (("req/s", "req/s"), ("p50_ms", "p50_ms"), ("p99_ms", "p99_ms"),
                                                  ("server_p99_ms", "server_p99_ms"), ("ratio_vs_read_only",
                                                                                       "mix_ratio"))
                if r[key] == r[key]]  # fmt: skip
        recs += [record(bench, dataset, f"target=music@c={c}", f"{r['variant']}:{ns.index}", "req/s", [v],
                        split="loopback") for r in rows for c, v in r["unpaced"].items()]  # fmt: skip
        update_json(bench, recs)
        update_markdown(bench, text)
    return 0


def report(ns: argparse.Namespace, argv: list[str], rows: list[dict[str, Any]], peak: float, load: float) -> str:
    lines = ["| variant | env | offered req/s | req/s | p50 ms | p99 ms | server p99 ms | server > 16 ms | full GCs | "
             "young GCs | GC pause ms | mix 10:1 / read-only |", "|" + "---|" * 12]  # fmt: skip
    for r in rows:
        env = " ".join(f"{k}={v}" for k, v in r["env"].items()) or "(defaults)"
        env += f" (source: {r['source']})" if r.get("source") else ""
        lines.append(f"| {r['variant']} | `{env}` | {r['offered']:.0f} | {r['req/s']:.0f} | {r['p50_ms']:.2f} | "
                     f"{r['p99_ms']:.2f} | {r['server_p99_ms']:.2f} | {r['server_over_16ms']:.2%} | "
                     f"{r['gc_full']:.0f} | {r['gc_young']:.0f} | {r['gc_pause_ms']:.0f} | "
                     f"{'' if r['mix_ratio'] != r['mix_ratio'] else format(r['mix_ratio'], '.2f')} |")  # fmt: skip
    if rows and rows[0]["unpaced"]:
        first = rows[0]["unpaced"]
        cs = list(first)
        lines += ["", f"Unpaced (closed loop, {ns.duration:g} s per run, medians of {ns.rounds} rounds in alternating "
                  f"variant order): req/s, and in brackets the ratio to {rows[0]['variant']}'s in the same run.", "",
                  "| variant | " + " | ".join(f"c={c}" for c in cs) + " |", "|" + "---|" * (len(cs) + 1)]  # fmt: skip
        for r in rows:
            cells = [f"{r['unpaced'][c]:.0f} ({r['unpaced'][c] / first[c]:.3f})" for c in cs]
            lines.append(f"| {r['variant']} | " + " | ".join(cells) + " |")
    return "\n".join([
        f"## Serve: p99 at half the peak, variants side by side ({ns.index}, {ns.items // 1000}k items, "
        f"{ns.workers} workers, wrk -t1 -c{ns.concurrency})",
        "",
        "```",
        " ".join(["python -m bench.serve_half", *argv]),
        "```",
        "",
        f"{os.cpu_count()} CPUs; load average before {load:.2f}, after {os.getloadavg()[0]:.2f} (a shared box: compare "
        f"rows of this table only). Peak of the first variant {peak:.0f} req/s; every variant is offered half of it "
        f"(wrk's delay hook, exponential gaps), {ns.duration:g} s per run, medians of {ns.rounds} interleaved rounds. "
        "`p50`/`p99`: wrk's (client side); `server p99`: time in the app from the service's own histogram "
        "(interpolated within its bucket); `full GCs` / `GC pause`: the workers' garbage collections during the runs "
        "(cdrec_gc_pause_seconds), which stop a worker's event loop and executor alike.",
        "",
        *lines,
    ])


if __name__ == "__main__":
    raise SystemExit(main())
