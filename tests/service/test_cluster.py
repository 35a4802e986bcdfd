"""The service, the refresh job, the demo seeder and `--added-items` against a real Redis Cluster (3 masters +
3 replicas, tests/cluster.py). Every API test of test_api.py runs here again unchanged, on the cluster."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.cluster import RedisCluster

from core.manifest import current_bundle
from core.redis_keys import (
    emb_key,
    item_texts_key,
    key_slot,
    refresh_pass_key,
    refresh_slot_key,
    seq_key,
)
from core.settings import RedisSettings
from service.adapters.redis_store import RedisSequenceStore
from service.bundle import ServingBundle, load_bundle
from service.ports import EventRecord
from service.refresh import RefreshJob, RefreshStats, main, make_job
from service.refresh_cluster import ClusterRefreshJob
from tests.cluster import ClusterAsServer, RedisClusterServer
from tests.service.conftest import RedisServer
from tests.service.test_api import *  # noqa: F403  # the same API assertions, on the cluster
from tests.service.test_refresh import DB, N_USERS, seed

EMB_MATCH = "cdrec:{u:*}:emb:music"


@pytest.fixture(scope="module")
def redis_server(redis_cluster: RedisClusterServer) -> Iterator[ClusterAsServer]:  # type: ignore[override]
    """Overrides conftest's single server for this module: test_api's tests (and `client`) use the cluster."""
    server = ClusterAsServer(redis_cluster)
    yield server
    server.close()


@pytest.fixture(scope="module")
def bundle(service_artifacts: Path) -> ServingBundle:
    return load_bundle(current_bundle(service_artifacts))


@pytest.fixture
def rc(redis_cluster: RedisClusterServer) -> Iterator[RedisCluster]:
    redis_cluster.flushall()
    client = redis_cluster.client()
    yield client
    client.close()
    redis_cluster.flushall()


def cluster_embs(rc: RedisCluster) -> dict[str, bytes]:
    keys = [k for k in rc.scan_iter(match=EMB_MATCH, count=1000, target_nodes=RedisCluster.PRIMARIES)]
    return {k.decode(): rc.get(k) for k in keys}


def test_refresh_on_a_cluster_writes_the_same_bytes_as_the_single_server_job(
    rc: RedisCluster, bundle: ServingBundle, redis_cluster: RedisClusterServer
) -> None:
    import redis as redis_mod

    users = seed(rc, bundle)
    job = make_job(rc, bundle, "music", batch_size=32)
    assert isinstance(job, ClusterRefreshJob)
    stats = job.run(progress=False)
    assert stats.finished and stats.encoded == stats.scanned == N_USERS and stats.batches > 1
    on_cluster = cluster_embs(rc)
    assert set(on_cluster) == {emb_key(u, "music") for u in users}
    # users spread over the three masters: the writes went per slot to each node
    assert len({redis_cluster.master_of(k).port for k in on_cluster}) == 3
    assert rc.get(refresh_pass_key("music")) is None
    assert all(rc.get(refresh_slot_key("music", key_slot(k))) is None for k in on_cluster)  # markers cleaned up
    job.close()

    single = RedisServer().start()
    try:
        sc = redis_mod.Redis(port=single.port, db=DB)
        seed(sc, bundle)
        RefreshJob(sc, bundle, "music", batch_size=32).run(progress=False)
        assert {k: sc.get(k) for k in on_cluster} == on_cluster
        sc.close()
    finally:
        single.kill()


def test_a_killed_cluster_pass_resumes_at_the_first_slot_not_stored(rc: RedisCluster, bundle: ServingBundle) -> None:
    seed(rc, bundle)
    job = ClusterRefreshJob(rc, bundle, "music", batch_size=16)

    def crash_after_three(stats: RefreshStats) -> None:
        if stats.batches == 3:
            raise KeyboardInterrupt  # killed between batches: three batches of slots and their markers are stored

    with pytest.raises(KeyboardInterrupt):
        job.run(on_batch=crash_after_three, progress=False)
    pass_id = rc.get(refresh_pass_key("music"))
    assert pass_id
    done = cluster_embs(rc)
    assert 16 * 3 <= len(done) < N_USERS
    assert all(rc.get(refresh_slot_key("music", key_slot(k))) == pass_id for k in done)  # marker beside its vectors
    slots_done = job.stored_cursor()
    assert slots_done > 0

    rest = job.run(progress=False)
    assert rest.resumed_from == slots_done and rest.finished
    assert len(done) + rest.scanned == N_USERS  # nothing stored before the kill is redone
    after = cluster_embs(rc)
    assert len(after) == N_USERS and {k: after[k] for k in done} == done
    assert rc.get(refresh_pass_key("music")) is None

    again = job.run(progress=False)  # a new pass: idempotent, the same bytes
    assert again.resumed_from == 0 and again.scanned == N_USERS and cluster_embs(rc) == after
    job.close()


def test_only_stale_on_a_cluster_skips_fresh_users(rc: RedisCluster, bundle: ServingBundle) -> None:
    users = seed(rc, bundle, n=80)
    job = ClusterRefreshJob(rc, bundle, "music", batch_size=64)
    job.run(progress=False)
    rc.rpush(seq_key(users[0], "music"), bundle.catalogues["music"].ids[0])
    stale = job.run(only_stale=True, progress=False)
    assert stale.encoded == 1 and stale.skipped == 79
    job.close()


def test_a_cluster_refresh_with_a_user_ttl_sets_it_on_every_vector(rc: RedisCluster, bundle: ServingBundle) -> None:
    users = seed(rc, bundle, n=60)
    job = ClusterRefreshJob(rc, bundle, "music", batch_size=16, ttl_s=3600)
    job.run(progress=False)
    ttls = [rc.ttl(emb_key(u, "music")) for u in users]
    assert all(3500 < t <= 3600 for t in ttls), ttls
    job.close()


def test_the_cli_refreshes_a_cluster(
    rc: RedisCluster, bundle: ServingBundle, service_artifacts: Path, redis_cluster: RedisClusterServer,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    seed(rc, bundle, n=50)
    args = ["--redis-url", redis_cluster.url, "--artifacts", str(service_artifacts), "--no-progress", "--cluster"]
    assert main(args) == 0
    assert "refresh music: 50 users scanned, 50 encoded" in capsys.readouterr().out


def test_cached_vectors_from_the_cluster_refresh_are_served(
    rc: RedisCluster, bundle: ServingBundle, redis_cluster: RedisClusterServer
) -> None:
    from service.recommender import Recommender

    users = seed(rc, bundle, n=30, seed=3)
    job = ClusterRefreshJob(rc, bundle, "music", batch_size=8)
    job.run(progress=False)
    job.close()
    store = RedisSequenceStore.from_url(redis_cluster.url, RedisSettings(cluster=True, timeout_s=1.0))

    async def answers() -> list[bool]:
        rec = Recommender(bundle, store)
        out = [(await rec.recommend(u, "music", 10)).cached for u in users]
        await store.aclose()
        return out

    assert all(asyncio.run(answers()))


def test_a_batch_of_events_for_users_on_every_node_is_appended_and_trimmed(
    rc: RedisCluster, redis_cluster: RedisClusterServer
) -> None:
    store = RedisSequenceStore.from_url(redis_cluster.url, RedisSettings(cluster=True))
    events = {
        f"user-{i}": [
            *(EventRecord("music", f"m{j}", f"e-m{j}") for j in range(i % 7 + 1)),
            EventRecord("book", "b1", "e-b1"),
        ]
        for i in range(60)
    }

    async def go() -> None:
        first = await store.append(events, max_len=4, domains=["music", "book"])
        again = await store.append(events, max_len=4, domains=["music", "book"])  # a retry: every id is known
        await store.append({"user-0": [EventRecord("music", "late")]}, max_len=4)
        assert (await store.read("user-0", ["music", "book"])) == {"music": ["m0", "late"], "book": ["b1"]}
        await store.aclose()
        n = sum(len(r) for r in events.values())
        assert (first.appended, first.duplicates) == (n, 0)
        assert (again.appended, again.duplicates) == (0, n)

    asyncio.run(go())
    assert len({redis_cluster.master_of(seq_key(u, "music")).port for u in events}) == 3
    for i, user in enumerate(events):
        if i:
            assert rc.lrange(seq_key(user, "music"), 0, -1) == [f"m{j}".encode() for j in range(i % 7 + 1)][-4:]


def test_item_texts_the_demo_seeder_and_added_items_work_on_a_cluster(
    rc: RedisCluster, redis_cluster: RedisClusterServer
) -> None:
    from demo.serve import seed as demo_seed
    from export.added_items import read_added_items

    store = RedisSequenceStore.from_url(redis_cluster.url, RedisSettings(cluster=True))

    async def go() -> tuple[dict[str, str], dict[str, str], int]:
        taken = await store.add_texts("office", {"x": "a pen", "y": "a desk"})
        texts, n = await store.read_texts("office"), await store.count_texts("office")
        await store.aclose()
        return taken, texts, n

    taken, texts, n = asyncio.run(go())
    assert taken == {} and texts == {"x": "a pen", "y": "a desk"} and n == 2
    assert read_added_items(redis_cluster.url, ["office", "art"], cluster=True) == {"office": texts, "art": {}}
    sequences = {f"d-{i}": {"music": [f"m{j}" for j in range(12)]} for i in range(40)}
    assert demo_seed(redis_cluster.url, sequences, max_len=5, cluster=True) == 40
    assert rc.lrange(seq_key("d-7", "music"), 0, -1) == [f"m{j}".encode() for j in range(7, 12)]
    assert rc.hlen(item_texts_key("office")) == 2


def test_a_slot_missing_from_the_cluster_clients_map_is_store_unavailable_not_an_unhandled_error() -> None:
    """redis-py's SlotNotCoveredError (its slot map lost a slot during a reshard or failover) is no RedisError: it
    must degrade the request like any unreachable Redis, never escape as a 500 (logic only: a pipeline stand-in)."""
    from redis.exceptions import SlotNotCoveredError

    from service.adapters.redis_store import RedisSequenceStore
    from service.ports import StoreUnavailable

    class UncoveredPipeline:
        async def execute(self, raise_on_error: bool = True) -> list[object]:
            raise SlotNotCoveredError("Slot 866 is not covered by the cluster.")

        async def reset(self) -> None:
            pass

    store = RedisSequenceStore(client=None)  # type: ignore[arg-type]  # _run only touches the pipeline
    with pytest.raises(StoreUnavailable) as info:
        asyncio.run(store._run(UncoveredPipeline(), 0.5))
    assert info.value.reason == "redis_unreachable" and "SlotNotCovered" in str(info.value)
