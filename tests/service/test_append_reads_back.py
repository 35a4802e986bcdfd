"""The append script answers the lists vector on write encodes from (issue 16, item 2), on a real Redis 6.2 and
on the real Redis Cluster of tests/cluster.py: one round trip per write, the lists exactly as that atomic append
left them (trimmed, duplicates skipped), so the Recommender never re-reads them."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import redis

from core.manifest import current_bundle
from core.redis_keys import emb_key, seq_key, sequence_fingerprint, unpack_embedding
from core.settings import RedisSettings
from service.adapters.redis_store import RedisSequenceStore
from service.bundle import load_bundle
from service.ports import EventRecord
from service.recommender import Event, Recommender
from tests.cluster import RedisClusterServer
from tests.service.conftest import RedisServer

BOUND_S = 30  # every scenario finishes well within it on a sane box; past it the test fails saying so


def _user() -> str:
    return f"rb-{uuid.uuid4().hex[:8]}"


async def _bounded(coro: Any) -> Any:
    try:
        async with asyncio.timeout(BOUND_S):
            return await coro
    except TimeoutError:
        raise AssertionError(f"the store did not answer within {BOUND_S} s") from None


def test_append_answers_the_lists_it_left_trimmed_and_unchanged_by_a_duplicate(redis_server: RedisServer) -> None:
    user = _user()
    r = redis.Redis.from_url(redis_server.url, decode_responses=True)
    r.rpush(seq_key(user, "book"), "b1", "b2")

    async def go() -> None:
        store = RedisSequenceStore.from_url(redis_server.url, RedisSettings(timeout_s=1.0))
        try:
            events = {user: [EventRecord("music", f"m{i}", f"e{i}") for i in range(1, 6)]}
            done = await _bounded(store.append(events, 3, ["music", "book"], read=["music", "book"]))
            assert (done.appended, done.duplicates) == (5, 0)
            assert done.lists == {user: {"music": ["m3", "m4", "m5"], "book": ["b1", "b2"]}}
            again = await _bounded(store.append(events, 3, ["music", "book"], read=["music"]))
            assert (again.appended, again.duplicates) == (0, 5)
            assert again.lists == {user: {"music": ["m3", "m4", "m5"]}}
            plain = await _bounded(store.append({user: [EventRecord("music", "m9")]}, 3, ["music", "book"]))
            assert plain.lists is None  # nothing asked back: the reply is the counts alone
        finally:
            await store.aclose()

    asyncio.run(go())
    assert r.lrange(seq_key(user, "music"), 0, -1) == ["m4", "m5", "m9"]


class _CountingStore(RedisSequenceStore):
    """The real store, counting vector-on-write's separate re-reads."""

    rereads = 0

    async def read_many(self, users: Any, domains: Any) -> dict[str, dict[str, list[str]]]:
        self.rereads += 1
        return await super().read_many(users, domains)


def test_vector_on_write_encodes_from_the_appends_own_answer_without_a_second_read(
    service_artifacts: Path, redis_server: RedisServer
) -> None:
    bundle = load_bundle(current_bundle(service_artifacts))
    user = _user()
    r = redis.Redis.from_url(redis_server.url)
    r.rpush(seq_key(user, "book"), "b1")

    async def go() -> None:
        store = _CountingStore.from_url(redis_server.url, RedisSettings(timeout_s=1.0))
        rec = Recommender(bundle, store, encode_on_write=True, write_wait_s=BOUND_S)
        try:
            done = await _bounded(rec.append([Event(user, "music", "m2"), Event(user, "music", "m6")]))
            assert done.appended == 2
            assert await rec.drain_writes(BOUND_S), "vector on write did not finish"
            assert rec.written_vectors["stored"] == 1
            assert store.rereads == 0, "vector on write re-read the lists the append had answered"
            answer = await _bounded(rec.recommend(user, "music", 5))
            assert answer.cached and answer.strategy == "gur"
        finally:
            await store.aclose()

    asyncio.run(go())
    cached = unpack_embedding(r.get(emb_key(user, "music")))
    assert cached is not None
    lists = {"music": ["m2", "m6"], "book": ["b1"]}
    assert cached[1] == sequence_fingerprint(lists, ["music", "book"])


def test_a_cluster_append_answers_each_users_lists_from_its_own_node(redis_cluster: RedisClusterServer) -> None:
    redis_cluster.flushall()
    users = [f"rbc-{i}" for i in range(24)]
    assert len({redis_cluster.master_of(seq_key(u, "music")).port for u in users}) == 3  # every node answers some

    async def go() -> None:
        store = RedisSequenceStore.from_url(redis_cluster.url, RedisSettings(cluster=True, timeout_s=1.0))
        try:
            events = {u: [EventRecord("music", f"m{i}", f"e-{u}"), EventRecord("music", "m0")] for i, u in
                      enumerate(users)}  # fmt: skip
            done = await _bounded(store.append(events, 50, ["music", "book"], read=["music", "book"]))
            assert done.appended == 2 * len(users)
            assert done.lists == {u: {"music": [f"m{i}", "m0"], "book": []} for i, u in enumerate(users)}
        finally:
            await store.aclose()

    try:
        asyncio.run(go())
    finally:
        redis_cluster.flushall()
