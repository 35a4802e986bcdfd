"""Failover on a real Redis Cluster, with the service configured for ``redis.wait_replicas=1``: a master is killed
(SIGKILL) under a bounded loop of requests; its replica is promoted (cluster-node-timeout 1 s); the service answers
degraded meanwhile (never a 5xx on reads; 503 = not acknowledged on writes, retried by the client with the same
event id) and recovers without a restart; every acknowledged event is there afterwards.

Acknowledged = 200 from the service, whose write pipeline ends each node's script calls with ``WAIT 1`` on the
same connection (service.adapters.redis_store): the test issues no WAIT of its own. While the promoted master has no
replica yet, its users' events cannot be acknowledged (WAIT 1 answers 0): 503 until the killed node is back,
rejoined as the new master's replica."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from core.redis_keys import seq_key
from service.app import create_app
from tests.cluster import RedisClusterServer
from tests.service.conftest import CLUSTER_URLS, auth, make_settings
from tests.service.test_event_ids import with_redis

USERS = [f"fo-{i}" for i in range(12)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServer]:
    c = RedisClusterServer(tmp_path_factory.mktemp("failover-cluster")).start()  # its own: a master dies here
    CLUSTER_URLS.add(c.url)
    yield c
    c.stop()


def test_a_killed_master_fails_over_with_degraded_answers_no_5xx_and_no_acknowledged_event_lost(
    cluster: RedisClusterServer, service_artifacts: Path
) -> None:
    victim_user = USERS[0]
    victim = cluster.master_of(seq_key(victim_user, "music"))
    on_victim = {u for u in USERS if cluster.master_of(seq_key(u, "music")) is victim}
    other = next(n for n in cluster.nodes if n is not victim)  # the service reaches the cluster through a live node
    acked: dict[str, list[str]] = {u: [] for u in USERS}
    steps: list[tuple[str, int, str]] = []  # (user written, its status, the victim's recommend strategy)
    settings = make_settings(service_artifacts, f"redis://127.0.0.1:{other.port}/0", redis_timeout_s=0.3)
    settings = with_redis(settings, cluster=True, wait_replicas=1, write_timeout_s=1.0)
    n = 0

    def step(c: TestClient) -> tuple[int, str]:
        nonlocal n
        n += 1
        user = USERS[n % len(USERS)]
        item = f"m{n % 40 + 1}"
        event = {"user_id": user, "domain": "music", "item_id": item, "event_id": f"e-{n}"}
        r = c.post("/v1/events", json=event, headers=auth())
        assert r.status_code in (200, 503), r.text  # 503: not acknowledged, the client retries
        if r.status_code == 200:
            acked[user].append(item)
        else:
            assert r.json()["error"]["code"] in ("outcome_unknown", "redis_unavailable"), r.text
        rec = c.post("/v1/recommend", json={"user_id": victim_user, "domain": "music", "k": 5})
        assert rec.status_code == 200, rec.text  # degraded, never a 5xx
        steps.append((user, r.status_code, rec.json()["strategy"]))
        return r.status_code, rec.json()["strategy"]

    def until(done: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s  # bounded: every wait of this test has a deadline
        while not done():
            assert time.monotonic() < deadline, f"{what} not within {timeout_s} s: last steps {steps[-8:]}"
            time.sleep(0.05)

    with TestClient(create_app(settings)) as c:
        for _ in range(40):  # warm: every user has history, the victim is served from it
            assert step(c)[0] == 200, steps[-1]
        assert steps[-1][2] == "gur"
        victim.kill()
        killed_at = len(steps)
        # 1. the replica is promoted and the client finds it by itself: the victim is served from history again
        until(lambda: step(c)[1] == "gur" and len(steps) > killed_at + 5, "read recovery after the failover")
        assert "popular" in {s for _, _, s in steps[killed_at:]}, "the outage was never seen (degraded expected)"
        promoted = cluster.master_of(seq_key(victim_user, "music"))
        assert promoted is not victim
        # 2. the promoted master has no replica: its users' events are not acknowledged (WAIT 1 answers 0)
        no_replica_at = len(steps)
        for _ in range(len(USERS)):
            step(c)
        assert all(code == 503 for u, code, _ in steps[no_replica_at:] if u in on_victim), steps[no_replica_at:]
        assert any(code == 200 for u, code, _ in steps[no_replica_at:] if u not in on_victim)
        # 3. the killed node comes back as the new master's replica: writes to its users are acknowledged again
        victim.restart()
        assert cluster.replica_of(promoted, timeout_s=30) is victim
        until(lambda: step(c)[0] == 200 and steps[-1][0] in on_victim, "acknowledged writes on the promoted master")
        for _ in range(12):  # and it stays recovered, without a restart of the service
            assert step(c) == (200, "gur"), steps[-1]
        assert c.get("/readyz").status_code == 200

    cluster.wait_ok()
    with cluster.client(decode_responses=True) as rc:
        for user, items in acked.items():
            stored = rc.lrange(seq_key(user, "music"), 0, -1)
            it = iter(stored)  # every acknowledged event is there, in order (max_len trims the oldest)
            kept = items[-len(stored) :] if stored else []
            assert all(x in it for x in kept), (user, items, stored)
    assert sum(map(len, acked.values())) > 40
    assert any(acked[u] for u in on_victim)
