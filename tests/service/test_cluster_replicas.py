"""Two independent `cdrec serve` replicas on different ports, sharing one Redis Cluster and one artifacts root
(issue 17 item 4): neither says ready (/readyz 200) before its bundle is loaded; an event written through one is
read through the other; a publish (``current`` swapped) is picked up by both within the watch interval."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import httpx

from tests.cluster import RedisClusterServer
from tests.service.conftest import copy_artifacts, free_port
from tests.service.test_reload import add_version, point_current
from tests.service.test_server import cdrec

WATCH_S = 0.5


def wait_ready(proc: subprocess.Popen[str], base: str, timeout_s: float = 120) -> list[tuple[int, str | None]]:
    """Poll /readyz from the process' start until 200; every answer seen on the way (status, model_version)."""
    seen: list[tuple[int, str | None]] = []
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=base, timeout=5) as http:
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                r = http.get("/readyz")
                seen.append((r.status_code, r.json().get("model_version")))
                if r.status_code == 200:
                    return seen
            except httpx.TransportError:
                pass  # not listening yet: not ready either
            assert time.monotonic() < deadline, f"not ready in {timeout_s} s: {seen[-3:]}"
            time.sleep(0.02)


def test_two_replicas_share_the_cluster_and_both_pick_up_a_publish_within_the_watch_interval(
    redis_cluster: RedisClusterServer, service_artifacts: Path, tmp_path: Path
) -> None:
    root = copy_artifacts(service_artifacts, tmp_path / "artifacts")
    env = {
        "CDREC_REDIS__CLUSTER": "true",
        "CDREC_SERVICE__WATCH_S": str(WATCH_S),
        "CDREC_SERVICE__API_KEYS": json.dumps(["replica-key"]),
    }
    ports = [free_port(), free_port()]
    procs = [
        cdrec("serve", "--port", str(p), "--artifacts", str(root), "--redis-url", redis_cluster.url,
              "--log-level", "warning", env=env)
        for p in ports
    ]  # fmt: skip
    bases = [f"http://127.0.0.1:{p}" for p in ports]
    try:
        for proc, base in zip(procs, bases, strict=True):
            seen = wait_ready(proc, base)
            # ready only with a bundle: no 200 before it is loaded, and the first 200 names the served bundle
            assert all(status == 503 for status, _ in seen[:-1]) and seen[-1] == (200, "v1"), seen
        event = {"user_id": "u-replica", "domain": "music", "item_id": "m3"}
        r = httpx.post(f"{bases[0]}/v1/events", json=event, headers={"X-API-Key": "replica-key"})
        assert r.status_code == 200, r.text
        read = httpx.post(f"{bases[1]}/v1/recommend", json={"user_id": "u-replica", "domain": "music"}).json()
        assert read["strategy"] == "gur"  # the other replica reads the history from the shared cluster

        add_version(root, "v2")
        point_current(root, "v2")  # the publish: `current` swapped atomically
        published = time.monotonic()
        picked: dict[str, float] = {}
        while len(picked) < 2 and time.monotonic() - published < 30:
            for base in bases:
                if base not in picked and httpx.get(f"{base}/readyz").json()["model_version"] == "v2":
                    picked[base] = time.monotonic() - published
            time.sleep(0.05)
        assert set(picked) == set(bases), f"not every replica reloaded: {picked}"
        # within the watch interval plus the reload itself (loading a small bundle; generous for a busy CI box)
        assert all(t < WATCH_S + 10 for t in picked.values()), picked
        for base in bases:
            body = httpx.post(f"{base}/v1/recommend", json={"user_id": "u-replica", "domain": "music"}).json()
            assert body["model_version"] == "v2" and body["strategy"] == "gur"
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        errs = [proc.communicate(timeout=60)[1] for proc in procs]
    # a single-worker `cdrec serve` is uvicorn's own Server, which re-raises SIGTERM after its graceful shutdown
    assert all(proc.returncode in (0, -signal.SIGTERM) for proc in procs), ([p.returncode for p in procs], errs)
