"""`cdrec serve --workers 2` as real processes (issue 15, items 1-3 and 6): a dead worker is replaced on the
bundle its sibling serves even when `current` is bad, a worker dying young is restarted with a back-off while
the other keeps serving, workers die with a killed supervisor, a second server on the same port refuses, and a
worker accepts no connection before its lifespan finished."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from service.server import reuseport_socket
from tests.service.conftest import RedisServer, copy_artifacts, free_port
from tests.service.test_reload import add_version, point_current
from tests.service.test_server import cdrec

KEY = "supervisor-test-key"


def worker_pids(supervisor: int) -> set[int]:
    """The supervisor's worker processes (multiprocessing spawn children), from /proc."""
    out = set()
    for task in Path(f"/proc/{supervisor}/task").iterdir():
        for pid in (task / "children").read_text().split():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except FileNotFoundError:
                continue
            if b"spawn_main" in cmdline:
                out.add(int(pid))
    return out


def alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status  # a zombie is dead, only not yet reaped


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


class Served:
    """A `cdrec serve --workers 2` subprocess on a free port."""

    def __init__(self, artifacts: Path, redis_url: str, port: int | None = None, **env: str) -> None:
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        full = {"CDREC_SERVICE__API_KEYS": json.dumps([KEY]), "CDREC_SERVICE__WATCH_S": "0.3", **env}
        self.proc = cdrec("serve", "--workers", "2", "--port", str(self.port), "--artifacts", str(artifacts),
                          "--redis-url", redis_url, "--log-level", "warning", env=full)  # fmt: skip

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.base + path, headers={"X-API-Key": KEY}, timeout=5)

    def versions(self) -> list[str]:
        """The bundle version of every live worker (one cdrec_bundle_info series per worker process)."""
        lines = [line for line in self.get("/metrics").text.splitlines() if line.startswith("cdrec_bundle_info{")]
        return sorted(line.split('version="')[1].split('"')[0] for line in lines if line.endswith(" 1.0"))

    def up(self, n: int = 2) -> bool:
        assert self.proc.poll() is None, self.proc.communicate()[1]
        try:
            return len(self.versions()) == n and len(worker_pids(self.proc.pid)) == n
        except httpx.TransportError:
            return False

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=60)
        return err


@pytest.fixture
def served(service_artifacts: Path, redis_server: RedisServer, tmp_path: Path) -> Iterator[Served]:
    root = copy_artifacts(service_artifacts, tmp_path / "artifacts")
    s = Served(root, redis_server.url)
    try:
        wait_for(s.up, "the workers did not come up")
        yield s
    finally:
        s.stop()


def recommend_ok(s: Served, n: int = 10) -> bool:
    for _ in range(n):  # new connections: the kernel spreads them over the workers
        r = httpx.post(f"{s.base}/v1/recommend", json={"user_id": "u-sup", "domain": "music"}, timeout=5)
        assert r.status_code == 200, r.text
    return True


def test_a_replacement_worker_serves_the_siblings_bundle_when_current_is_bad_and_backs_off(served: Served) -> None:
    root = Path(served.get("/v1/admin/status").json()["bundle_path"]).parent
    add_version(root, "broken", corrupt="bridge.book__music.onnx")
    point_current(root, "broken")
    seen: list[dict[str, object]] = []  # each worker watches on its own: keep the answer of one that has looked

    def looked() -> bool:
        seen.append(served.get("/readyz").json())
        return seen[-1]["reload_error"] is not None

    wait_for(looked, "the watch did not look")
    ready = seen[-1]
    assert ready["reload_error"] == "bundle_refused"  # a code: no path, no library text
    assert str(root) not in json.dumps(ready) and "sha256" not in json.dumps(ready)

    victim, healthy = sorted(worker_pids(served.proc.pid))
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: victim not in worker_pids(served.proc.pid) and served.up(), "no replacement worker")
    assert served.versions() == ["v1", "v1"]  # the replacement started on v1, not on the bad `current`
    assert recommend_ok(served)

    # the replacement dies young, twice: restarted after a back-off, the healthy sibling never stopped
    for _ in range(2):
        (young,) = worker_pids(served.proc.pid) - {healthy}
        os.kill(young, signal.SIGKILL)
        wait_for(lambda: young not in worker_pids(served.proc.pid), "the killed worker stayed")  # noqa: B023
        assert served.proc.poll() is None and healthy in worker_pids(served.proc.pid)
        assert recommend_ok(served)
        wait_for(lambda: len(worker_pids(served.proc.pid)) == 2, "the worker that died young was not restarted")
    ready = served.get("/readyz").json()
    assert ready["ready"] is True and ready["supervisor"]["restarts"] >= 3, ready
    assert "cdrec_worker_restarts 3.0" in served.get("/metrics").text
    wait_for(served.up, "the last replacement did not come up")
    assert served.versions() == ["v1", "v1"] and healthy in worker_pids(served.proc.pid)
    assert "could not start" not in served.stop()


def test_workers_die_with_a_killed_supervisor_and_a_second_server_refuses_the_port(
    served: Served, service_artifacts: Path, redis_server: RedisServer
) -> None:
    second = Served(service_artifacts, redis_server.url, port=served.port)
    _, err = second.proc.communicate(timeout=120)
    assert second.proc.returncode == 1
    assert f"127.0.0.1:{served.port} is already in use" in err, err

    workers = worker_pids(served.proc.pid)
    assert len(workers) == 2
    served.proc.send_signal(signal.SIGKILL)
    served.proc.wait()
    wait_for(lambda: not any(alive(p) for p in workers), "orphan workers outlived the supervisor", timeout=30)
    with pytest.raises(httpx.ConnectError):
        httpx.get(served.base + "/healthz", timeout=2)


def test_a_worker_accepts_no_connection_before_its_lifespan_finished() -> None:
    port = free_port()
    release = threading.Event()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(release.wait, 60)  # a long replay of added items, say
        yield

    app = FastAPI(lifespan=lifespan)

    @app.get("/ping")
    async def ping() -> dict[str, bool]:
        return {"ok": True}

    sock = reuseport_socket("127.0.0.1", port)
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_level="warning", loop="asyncio"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]})
    thread.start()
    try:
        time.sleep(0.5)  # the lifespan is running (waiting on release)
        with pytest.raises(ConnectionRefusedError):  # not queued in a backlog nobody accepts from: refused
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        release.set()
        wait_for(lambda: server.started, "the server did not start")
        assert httpx.get(f"http://127.0.0.1:{port}/ping", timeout=5).json() == {"ok": True}
    finally:
        release.set()
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def test_serve_refuses_the_published_demo_key_outside_demo_mode(service_artifacts: Path) -> None:
    env = {"CDREC_SERVICE__API_KEYS": json.dumps(["change-me-demo-key"])}
    proc = cdrec("serve", "--artifacts", str(service_artifacts), "--port", str(free_port()), env=env)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "published default" in err and "CDREC_SERVICE__DEMO=true" in err, err
