"""``redis.wait_replicas`` and ``redis.durability=fsync`` on the real Redis Cluster of tests/cluster.py (3 masters
+ 3 replicas, Redis 6.2): the service groups a batch's users by node and ends each node's pipeline with WAIT on
the same connection, so a 200 means every node's replica has its users' events; a slot that moves during a
write (ASK while it migrates, MOVED once it has) is followed without losing or doubling an event; ``fsync``
names the node that lacks ``appendfsync always``. The failover under load is test_cluster_failover.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from core.redis_keys import key_slot, seq_key
from core.settings import RedisSettings
from service.adapters.redis_store import RedisSequenceStore
from service.app import StartupError, create_app
from service.durability import DurabilityRefused
from service.ports import EventRecord, OutcomeUnknown
from tests.cluster import ClusterNode, RedisClusterServer
from tests.service.conftest import auth, make_settings
from tests.service.test_event_ids import with_redis


@pytest.fixture
def cluster(redis_cluster: RedisClusterServer) -> Iterator[RedisClusterServer]:
    redis_cluster.flushall()
    yield redis_cluster
    redis_cluster.flushall()


def users_on_every_master(cluster: RedisClusterServer, n: int = 12) -> list[str]:
    users = [f"dur-{i}" for i in range(n)]
    assert len({cluster.master_of(seq_key(u, "music")).port for u in users}) == 3  # the batch spans every node
    return users


def test_events_with_wait_replicas_1_are_answered_200_and_are_on_the_replica_of_every_node(
    cluster: RedisClusterServer, service_artifacts: Path
) -> None:
    users = users_on_every_master(cluster)
    settings = with_redis(make_settings(service_artifacts, cluster.url), wait_replicas=1, write_timeout_s=2.0)
    batch = [
        {"user_id": u, "domain": "music", "item_id": f"m{i + 1}", "event_id": f"e-{u}"} for i, u in enumerate(users)
    ]
    with TestClient(create_app(settings)) as c:
        r = c.post("/v1/events", json=batch, headers=auth())
        assert r.status_code == 200, r.text
        assert r.json()["appended"] == len(users)
        for i, user in enumerate(users):  # read at once from each master's replica: WAIT 1 said it has them
            key = seq_key(user, "music")
            assert cluster.replica_of(cluster.master_of(key)).read_as_replica(key) == [f"m{i + 1}"], user
        again = c.post("/v1/events", json=batch, headers=auth())  # a retry of the batch: stored once
        assert again.status_code == 200 and again.json()["duplicates"] == len(users)


def test_more_replicas_required_than_a_node_has_answer_outcome_unknown_and_the_retry_is_not_doubled(
    cluster: RedisClusterServer, service_artifacts: Path
) -> None:
    settings = with_redis(make_settings(service_artifacts, cluster.url), wait_replicas=2, write_timeout_s=0.5)
    event = {"user_id": "dur-short", "domain": "music", "item_id": "m3", "event_id": "e-1"}
    with TestClient(create_app(settings)) as c:
        for _ in range(2):
            r = c.post("/v1/events", json=event, headers=auth())
            assert r.status_code == 503 and "Retry-After" in r.headers, r.text
            assert r.json()["error"]["code"] == "outcome_unknown"
    with cluster.client(decode_responses=True) as rc:
        assert rc.lrange(seq_key("dur-short", "music"), 0, -1) == ["m3"]


def _slot_owner(node: ClusterNode, slot: int) -> int:
    with node.client() as c:
        for start, end, master, *_ in c.execute_command("CLUSTER SLOTS"):
            if int(start) <= slot <= int(end):
                return int(master[1])
    raise AssertionError(f"slot {slot} is not served according to {node.port}")


def _move_slot(cluster: RedisClusterServer, slot: int, src: ClusterNode, dst: ClusterNode) -> None:
    """Finish moving an empty (or migrated) ``slot`` to ``dst``; wait until every master agrees (bounded)."""
    dst_id = dst.node_id()
    for node in (dst, src):
        with node.client() as c:
            c.execute_command("CLUSTER SETSLOT", slot, "NODE", dst_id)
    masters = [n for n in cluster.nodes if n.proc is not None and n.client().execute_command("ROLE")[0] == "master"]
    deadline = time.monotonic() + 15
    while not all(_slot_owner(n, slot) == dst.port for n in masters):
        assert time.monotonic() < deadline, f"slot {slot} not moved to {dst.port} on every master within 15 s"
        time.sleep(0.05)


def test_a_write_during_and_after_a_slot_migration_follows_ask_and_moved_without_losing_or_doubling(
    cluster: RedisClusterServer,
) -> None:
    user, other = "dur-moving", "dur-still"
    key = seq_key(user, "music")
    slot = key_slot(key)
    src = cluster.master_of(key)
    dst = next(cluster.master_of(seq_key(f"dur-{i}", "music")) for i in range(99)
               if cluster.master_of(seq_key(f"dur-{i}", "music")) is not src)  # fmt: skip
    store = RedisSequenceStore.from_url(cluster.url, RedisSettings(cluster=True, wait_replicas=1, write_timeout_s=2.0))

    async def append(u: str, item: str, event_id: str | None = None) -> tuple[int, int]:
        done = await store.append({u: [EventRecord("music", item, event_id)]}, max_len=10)
        return done.appended, done.duplicates

    async def go() -> None:
        try:
            assert await append(other, "s1") == (1, 0)  # the client's slot map is loaded: src owns the slot
            with dst.client() as d, src.client() as s:  # the slot starts migrating (it holds no key yet)
                d.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", src.node_id())
                s.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", dst.node_id())
            # one key (no event_id): src answers ASK, the script runs on dst after ASKING, and WAIT there
            assert await append(user, "a1") == (1, 0)
            # two keys (list + event id), not all on dst yet: Redis answers TRYAGAIN having run nothing
            with pytest.raises(OutcomeUnknown, match="TryAgain"):
                await append(user, "a2", "e-a2")
            _move_slot(cluster, slot, src, dst)  # the client's map still names src: src answers MOVED
            assert await append(user, "a2", "e-a2") == (1, 0)  # the client's retry, once the slot has moved
            assert await append(user, "a2", "e-a2") == (0, 1)  # an acknowledged event retried is not doubled
        finally:
            await store.aclose()

    try:
        asyncio.run(go())
        with dst.client() as d:
            assert d.lrange(key, 0, -1) == ["a1", "a2"]  # on the new owner, once each
        assert cluster.replica_of(dst).read_as_replica(key) == ["a1", "a2"]  # and on its replica (WAIT 1)
    finally:  # give the slot back, empty, so the session's cluster is as it was
        cluster.flushall()
        if _slot_owner(src, slot) == src.port:  # the test stopped while the slot was migrating: end it
            _move_slot(cluster, slot, src, dst)
        with src.client() as s, dst.client() as d:
            s.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", dst.node_id())
            d.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", src.node_id())
        _move_slot(cluster, slot, dst, src)
        cluster.wait_ok()


@pytest.fixture
def fsync_everywhere(redis_cluster: RedisClusterServer) -> Iterator[RedisClusterServer]:
    """Every node of the session's cluster on ``appendonly yes`` + ``appendfsync always``, restored afterwards."""
    live = [n for n in redis_cluster.nodes if n.proc is not None]
    for node in live:
        with node.client() as c:
            c.config_set("appendonly", "yes")
            c.config_set("appendfsync", "always")
    try:
        yield redis_cluster
    finally:
        for node in live:
            with node.client() as c:
                c.config_set("appendfsync", "everysec")
                c.config_set("appendonly", "no")


def test_fsync_on_a_cluster_names_the_node_without_appendfsync_always_and_starts_once_every_node_has_it(
    fsync_everywhere: RedisClusterServer, service_artifacts: Path
) -> None:
    cluster = fsync_everywhere
    lacking = cluster.replica_of(cluster.master_of(seq_key("dur-f", "music")))  # a replica: it may become master
    with lacking.client() as c:
        c.config_set("appendfsync", "everysec")
    settings = with_redis(make_settings(service_artifacts, cluster.url), durability="fsync")
    with pytest.raises(StartupError) as info, TestClient(create_app(settings)):
        pass
    message = str(info.value)
    assert f"127.0.0.1:{lacking.port}" in message and "appendfsync everysec" in message
    assert sum(f"127.0.0.1:{n.port}" in message for n in cluster.nodes) == 1  # only that node is named
    assert "--appendfsync always" in message and "CDREC_REDIS__DURABILITY=reply" in message
    with lacking.client() as c:
        c.config_set("appendfsync", "always")
    with TestClient(create_app(settings)) as client:
        r = client.post("/v1/events", json={"user_id": "dur-f", "domain": "music", "item_id": "m2"}, headers=auth())
        assert r.status_code == 200, r.text


def test_a_refused_check_writes_nothing_and_says_why(redis_cluster: RedisClusterServer) -> None:
    store = RedisSequenceStore.from_url(redis_cluster.url, RedisSettings(cluster=True, durability="fsync"))

    async def go() -> None:
        try:
            with pytest.raises(DurabilityRefused, match="these nodes do not"):  # the cluster runs appendonly no
                await store.append({"dur-none": [EventRecord("music", "m1")]}, max_len=4)
        finally:
            await store.aclose()

    asyncio.run(go())
    with redis_cluster.client(decode_responses=True) as rc:
        assert rc.lrange(seq_key("dur-none", "music"), 0, -1) == []
