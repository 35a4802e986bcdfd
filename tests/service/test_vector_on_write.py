"""Vector on write (issue 16 item 3) on the real Redis, ONNX and FAISS: POST /v1/events encodes the users it
appended to and caches their vectors, so the next read takes the cached path; a vector whose fingerprint no
longer matches the lists is never served; the ack does not wait on a slow write path; off means reads encode."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from core.redis_keys import emb_key, seq_key, sequence_fingerprint, unpack_embedding
from core.settings import RedisSettings
from service.adapters.redis_store import RedisSequenceStore
from service.app import create_app
from service.bundle import load_bundle
from service.recommender import Event, Recommender
from tests.service.conftest import RedisServer, auth, make_settings

WAIT_S = 10.0  # the tests let the ack wait for the vector (a bound, never reached on a sane box)


def _raw(server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(server.url)  # bytes replies: a cached vector is not text


def _user() -> str:
    return f"vw-{uuid.uuid4().hex[:8]}"


def _events(user: str, items: list[str]) -> list[dict[str, str]]:
    return [{"user_id": user, "domain": "music", "item_id": i} for i in items]


def test_an_event_stores_the_users_vector_and_the_next_read_is_cached_with_the_live_answer(
    service_artifacts: Path, redis_server: RedisServer
) -> None:
    user, r = _user(), _raw(redis_server)
    on = make_settings(service_artifacts, redis_server.url, encode_on_write_wait_s=WAIT_S)
    off = make_settings(service_artifacts, redis_server.url, encode_on_write=False)
    read = {"user_id": user, "domain": "music", "k": 5}
    with TestClient(create_app(on)) as c:
        assert c.post("/v1/events", json=_events(user, ["m2", "m5", "m7"]), headers=auth()).status_code == 200
        cached = unpack_embedding(r.get(emb_key(user, "music")))
        assert cached is not None, "no vector written on the event"
        lists = {d: [x.decode() for x in r.lrange(seq_key(user, d), 0, -1)] for d in ("music", "book")}
        assert cached[0] == "v1" and cached[1] == sequence_fingerprint(lists, ["music", "book"])
        hot = c.post("/v1/recommend", json=read).json()
    assert hot["cached"] is True and hot["strategy"] == "gur"
    r.delete(emb_key(user, "music"))
    with TestClient(create_app(off)) as c:
        live = c.post("/v1/recommend", json=read).json()
        assert live["cached"] is False
        assert c.post("/v1/events", json=_events(user, ["m9"]), headers=auth()).status_code == 200
        assert r.get(emb_key(user, "music")) is None, "encode_on_write=false wrote a vector"
    assert [i["item_id"] for i in hot["items"]] == [i["item_id"] for i in live["items"]]
    for a, b in zip(hot["items"], live["items"], strict=True):
        assert a["score"] == pytest.approx(b["score"], rel=1e-4, abs=1e-5)


def test_a_vector_older_than_the_lists_is_never_served(service_artifacts: Path, redis_server: RedisServer) -> None:
    user, r = _user(), _raw(redis_server)
    with TestClient(create_app(make_settings(service_artifacts, redis_server.url, encode_on_write_wait_s=WAIT_S))) as c:
        c.post("/v1/events", json=_events(user, ["m2", "m3"]), headers=auth())
        assert r.get(emb_key(user, "music")) is not None
        r.rpush(seq_key(user, "music"), "m4")  # appended behind the service's back: the vector is stale now
        answer = c.post("/v1/recommend", json={"user_id": user, "domain": "music", "k": 5}).json()
        assert answer["cached"] is False and answer["strategy"] == "gur"
        seen = {"m2", "m3", "m4"}
        assert not seen & {i["item_id"] for i in answer["items"]}


class _GatedStore(RedisSequenceStore):
    """The real store whose vector-on-write write waits for a gate: a write path as slow as the test wants."""

    gate: asyncio.Event

    async def write_vectors(self, vectors: Any) -> None:
        await self.gate.wait()
        await super().write_vectors(vectors)


class _FailingStore(RedisSequenceStore):
    async def write_vectors(self, vectors: Any) -> None:
        raise ConnectionError("vector write refused")


def test_the_ack_does_not_wait_on_a_slow_write_path_and_reads_stay_correct_meanwhile(
    service_artifacts: Path, redis_server: RedisServer
) -> None:
    bundle = load_bundle(service_artifacts / "current")
    user, r = _user(), _raw(redis_server)

    async def scenario() -> None:
        store = _GatedStore.from_url(redis_server.url, RedisSettings(timeout_s=1.0))
        store.gate = asyncio.Event()
        rec = Recommender(bundle, store, encode_on_write=True, write_wait_s=0.01)
        try:
            async with asyncio.timeout(30):
                done = await rec.append([Event(user, "music", "m2"), Event(user, "music", "m6")])
                assert done.appended == 2  # acknowledged while the vector's write is still held at the gate
                assert r.get(emb_key(user, "music")) is None
                meanwhile = await rec.recommend(user, "music", 5)
                assert meanwhile.strategy == "gur" and not meanwhile.cached
                store.gate.set()
                assert await rec.drain_writes(20), "vector on write did not finish"
                assert rec.written_vectors == {"stored": 1, "failed": 0, "skipped": 0}
                after = await rec.recommend(user, "music", 5)
                assert after.cached and [i for i, _ in after.items] == [i for i, _ in meanwhile.items]
                assert [s for _, s in after.items] == pytest.approx([s for _, s in meanwhile.items], rel=1e-4)
        finally:
            await store.aclose()

    asyncio.run(scenario())


def test_a_failing_vector_write_loses_no_event(service_artifacts: Path, redis_server: RedisServer) -> None:
    bundle = load_bundle(service_artifacts / "current")
    user, r = _user(), _raw(redis_server)

    async def scenario() -> None:
        store = _FailingStore.from_url(redis_server.url, RedisSettings(timeout_s=1.0))
        rec = Recommender(bundle, store, encode_on_write=True, write_wait_s=WAIT_S)
        try:
            async with asyncio.timeout(30):
                assert (await rec.append([Event(user, "music", "m3")])).appended == 1
                assert await rec.drain_writes(20)
                assert rec.written_vectors["failed"] == 1
                assert not (await rec.recommend(user, "music", 5)).cached
        finally:
            await store.aclose()

    asyncio.run(scenario())
    assert r.lrange(seq_key(user, "music"), 0, -1) == [b"m3"]



def test_vector_writes_beyond_the_pending_bound_are_shed_and_the_events_still_stored(
    service_artifacts: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import service.recommender as recommender

    monkeypatch.setattr(recommender, "MAX_PENDING_VECTOR_WRITES", 1)
    bundle = load_bundle(service_artifacts / "current")
    first, second, r = _user(), _user(), _raw(redis_server)

    async def scenario() -> None:
        store = _GatedStore.from_url(redis_server.url, RedisSettings(timeout_s=1.0))
        store.gate = asyncio.Event()
        rec = Recommender(bundle, store, encode_on_write=True, write_wait_s=0.0)
        try:
            async with asyncio.timeout(30):
                await rec.append([Event(first, "music", "m2")])  # held at the gate: the one pending write
                assert (await rec.append([Event(second, "music", "m3")])).appended == 1
                assert rec.written_vectors["skipped"] == 1
                store.gate.set()
                assert await rec.drain_writes(20)
                assert rec.written_vectors["stored"] == 1
        finally:
            await store.aclose()

    asyncio.run(scenario())
    assert r.get(emb_key(first, "music")) is not None and r.get(emb_key(second, "music")) is None
    assert r.lrange(seq_key(second, "music"), 0, -1) == [b"m3"]


def test_a_dss_users_k_vectors_are_stored_on_write_and_the_cached_answer_is_the_live_one(
    dss_artifacts: Path, redis_server: RedisServer
) -> None:
    """Vector on write with a K-vector (DSS) encoder: all K * D floats are cached, read back as K queries."""
    user, r = _user(), _raw(redis_server)
    on = make_settings(dss_artifacts, redis_server.url, encode_on_write_wait_s=WAIT_S)
    off = make_settings(dss_artifacts, redis_server.url, encode_on_write=False)
    read = {"user_id": user, "domain": "music", "k": 6}
    intents = load_bundle(dss_artifacts / "current").encoders["music"].intents
    assert intents is not None and intents > 1
    with TestClient(create_app(on)) as c:
        assert c.post("/v1/events", json=_events(user, ["m2", "m5", "m7"]), headers=auth()).status_code == 200
        cached = unpack_embedding(r.get(emb_key(user, "music")))
        assert cached is not None and cached[2].size % intents == 0 and cached[2].size > intents
        hot = c.post("/v1/recommend", json=read).json()
    assert hot["cached"] is True and hot["strategy"] == "dss"
    r.delete(emb_key(user, "music"))
    with TestClient(create_app(off)) as c:
        live = c.post("/v1/recommend", json=read).json()
    assert live["cached"] is False and live["strategy"] == "dss"
    assert [i["item_id"] for i in hot["items"]] == [i["item_id"] for i in live["items"]]
