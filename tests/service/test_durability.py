"""``redis.durability`` and ``redis.wait_replicas`` on real redis-servers (issue 15 item 7): ``fsync`` on the
6.2 server here needs ``appendfsync always`` (checked at start, refused otherwise, naming the fix); WAIT with a
real replica, and an unknown outcome when fewer replicas acknowledge. WAITAOF (Redis >= 7.2) is chosen by
version: its command and reply handling are tested as functions, since no 7.2 server is available here. The same
on a Redis Cluster (per node): tests/service/test_cluster_durability.py."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from core.redis_keys import seq_key
from service.app import StartupError, create_app
from service.durability import Durability, DurabilityRefused, use_waitaof, use_waitaof_per_node
from tests.service.conftest import RedisServer, auth, make_settings
from tests.service.test_event_ids import with_redis


def event(user: str, item: str = "m3") -> dict[str, str]:
    return {"user_id": user, "domain": "music", "item_id": item, "event_id": f"e-{item}"}


def server(*extra: str) -> RedisServer:
    return RedisServer(extra=extra).start()


@pytest.fixture
def fsync_always(tmp_path: Path) -> Iterator[RedisServer]:
    s = server("--appendonly", "yes", "--appendfsync", "always", "--dir", str(tmp_path))
    yield s
    s.kill()


def test_fsync_on_a_server_with_appendfsync_always_acknowledges_what_survives_kill_9(
    service_artifacts: Path, fsync_always: RedisServer
) -> None:
    settings = with_redis(make_settings(service_artifacts, fsync_always.url), durability="fsync")
    user = f"u-{uuid.uuid4().hex[:8]}"
    with TestClient(create_app(settings)) as c:
        r = c.post("/v1/events", json=event(user), headers=auth())
        assert r.status_code == 200 and r.json()["appended"] == 1
    fsync_always.kill()  # SIGKILL right after the acknowledgement: no shutdown save
    fsync_always.start()
    assert fsync_always.client().lrange(seq_key(user, "music"), 0, -1) == ["m3"]


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (("--appendonly", "no"), "--appendonly yes --appendfsync always"),
        (("--appendonly", "yes", "--appendfsync", "everysec"), "--appendfsync always"),
    ],
)
def test_fsync_refuses_to_start_on_a_server_that_cannot_give_it_naming_the_fix(
    service_artifacts: Path, tmp_path: Path, options: tuple[str, ...], named: str
) -> None:
    s = server(*options, "--dir", str(tmp_path))
    try:
        settings = with_redis(make_settings(service_artifacts, s.url), durability="fsync")
        with pytest.raises(StartupError) as info, TestClient(create_app(settings)):
            pass
        assert named in str(info.value) and "CDREC_REDIS__DURABILITY=reply" in str(info.value)
    finally:
        s.kill()


def test_reply_durability_needs_nothing_of_the_server(service_artifacts: Path, redis_server: RedisServer) -> None:
    with TestClient(create_app(make_settings(service_artifacts, redis_server.url))) as c:
        assert c.post("/v1/events", json=event(f"u-{uuid.uuid4().hex[:8]}"), headers=auth()).status_code == 200


@pytest.fixture
def primary_and_replica(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer]]:
    primary = server("--dir", str(tmp_path))
    (tmp_path / "replica").mkdir()
    replica = server("--replicaof", "127.0.0.1", str(primary.port), "--dir", str(tmp_path / "replica"))  # its RDB
    try:
        deadline = time.monotonic() + 20
        while primary.client().info("replication").get("connected_slaves", 0) < 1:
            assert time.monotonic() < deadline, "the replica did not connect"
            time.sleep(0.05)
        yield primary, replica
    finally:
        replica.kill()
        primary.kill()


def test_wait_replicas_acknowledges_once_the_replica_has_the_write(
    service_artifacts: Path, primary_and_replica: tuple[RedisServer, RedisServer]
) -> None:
    primary, replica = primary_and_replica
    settings = with_redis(make_settings(service_artifacts, primary.url), wait_replicas=1, write_timeout_s=2.0)
    user = f"u-{uuid.uuid4().hex[:8]}"
    with TestClient(create_app(settings)) as c:
        assert c.post("/v1/events", json=event(user), headers=auth()).json()["appended"] == 1
        assert replica.client().lrange(seq_key(user, "music"), 0, -1) == ["m3"]  # already there: WAIT said so


def test_fewer_replicas_than_required_answer_an_unknown_outcome_and_the_retry_is_deduplicated(
    service_artifacts: Path, primary_and_replica: tuple[RedisServer, RedisServer]
) -> None:
    primary, _ = primary_and_replica
    settings = with_redis(make_settings(service_artifacts, primary.url), wait_replicas=2, write_timeout_s=0.5)
    user = f"u-{uuid.uuid4().hex[:8]}"
    with TestClient(create_app(settings)) as c:
        r = c.post("/v1/events", json=event(user), headers=auth())
        assert r.status_code == 503 and "Retry-After" in r.headers
        assert r.json()["error"]["code"] == "outcome_unknown"
        assert "may or may not have been stored" in r.json()["error"]["message"]
        again = c.post("/v1/events", json=event(user), headers=auth())
        assert again.status_code == 503  # still one replica short; the event is stored once all the same
    assert primary.client().lrange(seq_key(user, "music"), 0, -1) == ["m3"]


def test_waitaof_is_used_from_redis_7_2_and_needs_only_the_aof() -> None:
    assert use_waitaof("fsync", (7, 2, 4), {"appendonly": "yes", "appendfsync": "everysec"}) is True
    assert use_waitaof("fsync", (7, 0, 15), {"appendonly": "yes", "appendfsync": "always"}) is False
    assert use_waitaof("reply", (6, 2, 14), {}) is False
    with pytest.raises(DurabilityRefused, match="--appendonly yes"):
        use_waitaof("fsync", (7, 4, 0), {"appendonly": "no", "appendfsync": "everysec"})


def test_the_wait_command_and_its_reply() -> None:
    fsync = Durability("fsync", 1, 800)
    assert fsync.command(waitaof=True) == ("WAITAOF", 1, 1, 800)
    assert fsync.command(waitaof=False) == ("WAIT", 1, 800)
    assert Durability("fsync", 0, 800).command(waitaof=False) is None
    assert Durability("reply", 0, 800).command(waitaof=True) is None
    assert Durability("reply", 2, 800).command(waitaof=False) == ("WAIT", 2, 800)
    assert fsync.short([1, 1]) is None and fsync.short(1) is None
    assert fsync.short([0, 1]) == "the write was not fsynced to the AOF in time"
    assert fsync.short([1, 0]) == "0 of 1 replicas acknowledged in time"


def test_fsync_on_a_cluster_is_given_per_node_and_the_refusal_names_every_node_that_cannot() -> None:
    always = {"appendonly": "yes", "appendfsync": "always"}
    everysec = {"appendonly": "yes", "appendfsync": "everysec"}
    nodes = {"a:1": ((7, 2, 4), everysec), "b:2": ((6, 2, 14), always)}
    assert use_waitaof_per_node("fsync", nodes) == {"a:1": True, "b:2": False}  # WAITAOF where the node has it
    nodes |= {"c:3": ((6, 2, 14), everysec), "d:4": ((7, 4, 0), {"appendonly": "no"})}
    with pytest.raises(DurabilityRefused) as info:
        use_waitaof_per_node("fsync", nodes)
    message = str(info.value)
    assert "c:3 (Redis 6.2.14: appendfsync everysec, appendonly yes)" in message
    assert "d:4 (Redis 7.4.0: appendonly no)" in message
    assert "a:1" not in message and "b:2" not in message
