"""Idempotent events on the real Redis: a client ``event_id`` makes a retried event a duplicate, the append is
one Lua script call per user (every key in the user's slot, no MULTI), and a write whose acknowledgement did not
come is answered 503 "may or may not have been stored" with Retry-After (issue 15 item 5)."""

from __future__ import annotations

import signal
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from redis.crc import key_slot

from core.redis_keys import event_key, seq_key
from core.settings import Settings
from service.adapters.append_script import append_call
from service.app import create_app
from service.ports import EventRecord
from tests.service.conftest import RedisServer, auth, make_settings
from tests.service.test_redis_outage import wait_for


def new_user() -> str:
    return f"u-{uuid.uuid4().hex[:12]}"


def with_redis(settings: Settings, **fields: Any) -> Settings:
    return settings.model_copy(update={"redis": settings.redis.model_copy(update=fields)})


def post(c: TestClient, events: list[dict[str, str]] | dict[str, str]) -> Any:
    return c.post("/v1/events", json=events, headers=auth())


def test_a_retried_event_with_the_same_event_id_is_not_appended_twice(
    client: TestClient, redis_server: RedisServer
) -> None:
    user = new_user()
    event = {"user_id": user, "domain": "music", "item_id": "m3", "event_id": "click-1"}
    first, again = post(client, event), post(client, event)
    assert first.json() == {"accepted": 1, "appended": 1, "duplicates": 0}
    assert again.status_code == 200 and again.json() == {"accepted": 1, "appended": 0, "duplicates": 1}
    assert redis_server.client().lrange(seq_key(user, "music"), 0, -1) == ["m3"]


def test_a_batch_counts_duplicates_within_itself_and_keeps_events_without_ids(
    client: TestClient, redis_server: RedisServer
) -> None:
    user = new_user()
    batch = [
        {"user_id": user, "domain": "music", "item_id": "m1", "event_id": "a"},
        {"user_id": user, "domain": "book", "item_id": "b2", "event_id": "b"},
        {"user_id": user, "domain": "music", "item_id": "m1", "event_id": "a"},
        {"user_id": user, "domain": "music", "item_id": "m1"},
        {"user_id": user, "domain": "music", "item_id": "m1"},
    ]
    assert post(client, batch).json() == {"accepted": 5, "appended": 4, "duplicates": 1}
    r = redis_server.client()
    assert r.lrange(seq_key(user, "music"), 0, -1) == ["m1", "m1", "m1"]
    assert r.lrange(seq_key(user, "book"), 0, -1) == ["b2"]


def test_the_dedup_marker_sits_in_the_users_slot_and_expires_after_the_window(
    client: TestClient, redis_server: RedisServer
) -> None:
    user = new_user()
    post(client, {"user_id": user, "domain": "music", "item_id": "m3", "event_id": "e-9"})
    r = redis_server.client()
    key = event_key(user, "e-9")
    assert key == f"cdrec:{{u:{user}}}:ev:e-9" and r.get(key) == "1"
    assert 86_300_000 < r.pttl(key) <= 86_400_000  # redis.event_dedup_s default: 24 h
    assert r.ttl(seq_key(user, "music")) == -1  # no user TTL by default: kept forever


def test_one_script_call_per_user_names_only_keys_of_that_users_slot() -> None:
    records = [EventRecord("music", "m1", "e1"), EventRecord("book", "b1"), EventRecord("music", "m2", "e2")]
    keys, args = append_call("u:42", records, 50, ["book", "music", "video"], 1000, 5000)
    assert len({key_slot(k.encode()) for k in keys}) == 1 and len(keys) == 2 + 1 + 3 + 2
    assert args[:5] == [50, 1000, 5000, 2, 4]


def test_the_script_is_sent_whole_when_the_server_lost_it(client: TestClient, redis_server: RedisServer) -> None:
    user = new_user()
    redis_server.client().script_flush()
    assert post(client, {"user_id": user, "domain": "music", "item_id": "m5", "event_id": "x"}).status_code == 200
    assert redis_server.client().lrange(seq_key(user, "music"), 0, -1) == ["m5"]


def test_a_wrong_type_list_refuses_that_users_events_writing_nothing_of_them(
    client: TestClient, redis_server: RedisServer
) -> None:
    user = new_user()
    r = redis_server.client()
    r.set(seq_key(user, "music"), "not a list")
    refused = post(client, {"user_id": user, "domain": "music", "item_id": "m5", "event_id": "w1"})
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "wrong_type_key"
    assert "WRONGTYPE" in refused.json()["error"]["message"]
    assert r.exists(event_key(user, "w1")) == 0  # checked before any write: a fixed key + retry appends it
    assert client.get("/readyz").status_code == 200


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.kill()


def test_an_unacknowledged_write_answers_unknown_outcome_and_its_retry_is_a_duplicate(
    service_artifacts: Path, own_redis: RedisServer
) -> None:
    settings = with_redis(make_settings(service_artifacts, own_redis.url), write_timeout_s=0.2, retry_after_s=2.0)
    user = new_user()
    event = {"user_id": user, "domain": "music", "item_id": "m4", "event_id": "pay-1"}
    with TestClient(create_app(settings)) as c:
        assert post(c, {"user_id": user, "domain": "music", "item_id": "m1"}).status_code == 200  # script loaded
        assert own_redis.proc is not None
        own_redis.proc.send_signal(signal.SIGSTOP)  # the write reaches the socket; Redis runs it once resumed
        try:
            lost = post(c, event)
        finally:
            own_redis.proc.send_signal(signal.SIGCONT)
        assert lost.status_code == 503 and lost.headers["Retry-After"] == "2"
        body = lost.json()["error"]
        assert body["code"] == "outcome_unknown" and "may or may not have been stored" in body["message"]
        assert "retry with the same event_id" in body["message"]
        wait_for(lambda: own_redis.client().llen(seq_key(user, "music")) == 2)  # it was stored after all
        retried = post(c, event)
        assert retried.json() == {"accepted": 1, "appended": 0, "duplicates": 1}
        assert own_redis.client().lrange(seq_key(user, "music"), 0, -1) == ["m1", "m4"]


def test_a_refused_connection_on_the_write_path_also_answers_503_with_retry_after(
    service_artifacts: Path, own_redis: RedisServer
) -> None:
    with TestClient(create_app(make_settings(service_artifacts, own_redis.url))) as c:
        own_redis.kill()
        r = post(c, {"user_id": new_user(), "domain": "music", "item_id": "m1", "event_id": "k"})
        assert r.status_code == 503 and "Retry-After" in r.headers
        assert "retry with the same event_id" in r.json()["error"]["message"]


def test_concurrent_retries_of_one_event_append_it_once(client: TestClient, redis_server: RedisServer) -> None:
    user = new_user()
    event = {"user_id": user, "domain": "music", "item_id": "m8", "event_id": "race"}
    results: list[int] = []
    answers: list[tuple[int, str]] = []

    def send() -> None:
        for _ in range(5):  # as a client does: an unknown outcome (503 + Retry-After) is retried, same event_id
            r = post(client, event)
            answers.append((r.status_code, r.text))
            if r.status_code != 503:
                break
        if r.status_code == 200:
            results.append(r.json()["appended"])

    threads = [threading.Thread(target=send) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and all(code in (200, 503) for code, _ in answers), answers
    # exactly once: one answer says appended (or none, when the storing call's answer was the unknown outcome)
    assert sorted(results) in ([0, 0, 0, 1], [0, 0, 0, 0]), answers
    assert redis_server.client().lrange(seq_key(user, "music"), 0, -1) == ["m8"]
