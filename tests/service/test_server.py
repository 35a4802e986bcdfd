"""`cdrec serve`: refuses a bad bundle before listening, runs N workers on one port, stops cleanly; and the
embedded Redis keeps sequences across restarts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from tests.service.conftest import RedisServer, auth, copy_artifacts, free_port, make_settings
from tests.service.test_reload import add_version, point_current

ROOT = Path(__file__).resolve().parents[2]


def cdrec(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "core.cli", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_serve_refuses_a_bad_bundle_before_listening(service_artifacts: Path, tmp_path: Path) -> None:
    root = copy_artifacts(service_artifacts, tmp_path / "artifacts")
    add_version(root, "broken", corrupt="bridge.book__music.onnx")
    point_current(root, "broken")
    proc = cdrec("serve", "--artifacts", str(root), "--port", str(free_port()), "--redis-url", "redis://127.0.0.1:1")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert "refusing to start" in err and "bridge.book__music.onnx" in err and "sha256" in err


def test_serve_runs_two_workers_on_one_port_and_stops_on_sigterm(
    service_artifacts: Path, redis_server: RedisServer
) -> None:
    port = free_port()
    env = {"CDREC_SERVICE__API_KEYS": json.dumps(["cli-key"]), "CDREC_SERVICE__WATCH_S": "0"}
    proc = cdrec("serve", "--workers", "2", "--port", str(port), "--artifacts", str(service_artifacts),
                 "--redis-url", redis_server.url, "--log-level", "warning", env=env)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        with httpx.Client(base_url=base, timeout=5) as http:
            while True:
                assert proc.poll() is None, proc.communicate()[1]
                try:
                    metrics = http.get("/metrics").text
                    if metrics.count("cdrec_bundle_info{") >= 2:  # one series per live worker process
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "the workers did not come up"
                time.sleep(0.2)
            event = {"user_id": "u-cli", "domain": "music", "item_id": "m2"}
            assert http.post("/v1/events", json=event, headers={"X-API-Key": "cli-key"}).status_code == 200
            for _ in range(10):  # new connections: the kernel spreads them over both workers
                body = httpx.post(f"{base}/v1/recommend", json={"user_id": "u-cli", "domain": "music"}).json()
                assert body["strategy"] == "gur"
            assert "cdrec_http_requests_total" in http.get("/metrics").text
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err


def test_embedded_redis_keeps_sequences_across_restarts(service_artifacts: Path, tmp_path: Path) -> None:
    settings = make_settings(service_artifacts, None)
    settings.redis.data_dir = tmp_path / "redis"
    event = {"user_id": "u-embedded", "domain": "music", "item_id": "m5"}
    with TestClient(create_app(settings)) as c:
        assert c.get("/readyz").json()["redis"] == "up"
        assert c.post("/v1/events", json=event, headers=auth()).status_code == 200
    assert (tmp_path / "redis" / "cdrec.rdb").exists()
    with TestClient(create_app(settings)) as c:
        body = c.post("/v1/recommend", json={"user_id": "u-embedded", "domain": "music"}).json()
        assert body["strategy"] == "gur"


@pytest.mark.parametrize("workers", ["0", "x"])
def test_serve_rejects_bad_arguments(workers: str) -> None:
    proc = cdrec("serve", "--workers", workers)
    proc.communicate(timeout=60)
    assert proc.returncode == 2
