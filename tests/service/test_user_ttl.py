"""``redis.user_ttl_s`` on the real Redis (issue 15 item 10): every append refreshes the expiry of ALL the
user's lists and cached vectors, so an inactive user's data goes after the TTL and an active user keeps it."""

from __future__ import annotations

import uuid
from pathlib import Path

from fastapi.testclient import TestClient

from core.redis_keys import emb_key, event_key, seq_key
from service.app import create_app
from tests.service.conftest import RedisServer, auth, make_settings
from tests.service.test_event_ids import with_redis
from tests.service.test_redis_outage import wait_for


def test_an_append_refreshes_the_ttl_of_every_key_of_the_user(
    service_artifacts: Path, redis_server: RedisServer
) -> None:
    settings = with_redis(make_settings(service_artifacts, redis_server.url), user_ttl_s=100, event_dedup_s=50)
    user = f"u-{uuid.uuid4().hex[:8]}"
    r = redis_server.client()
    r.rpush(seq_key(user, "book"), "b1")  # written earlier, e.g. before the TTL was configured
    r.set(emb_key(user, "music"), b"v|f|")
    with TestClient(create_app(settings)) as c:
        event = {"user_id": user, "domain": "music", "item_id": "m2", "event_id": "t1"}
        assert c.post("/v1/events", json=event, headers=auth()).json()["appended"] == 1
    for key in (seq_key(user, "music"), seq_key(user, "book"), emb_key(user, "music")):
        assert 99_000 < r.pttl(key) <= 100_000, key
    assert 49_000 < r.pttl(event_key(user, "t1")) <= 50_000  # the dedup marker keeps its own window


def test_an_inactive_users_data_expires_and_they_are_served_as_new(
    service_artifacts: Path, redis_server: RedisServer
) -> None:
    settings = with_redis(make_settings(service_artifacts, redis_server.url), user_ttl_s=1, event_dedup_s=1)
    user = f"u-{uuid.uuid4().hex[:8]}"
    with TestClient(create_app(settings)) as c:
        c.post("/v1/events", json={"user_id": user, "domain": "music", "item_id": "m2"}, headers=auth())
        read = {"user_id": user, "domain": "music", "k": 3}
        pttl = redis_server.client().pttl(seq_key(user, "music"))
        assert pttl == -2 or 0 < pttl <= 1000  # -2: already gone (a slow box); never -1, kept forever
        wait_for(lambda: redis_server.client().exists(seq_key(user, "music")) == 0)
        assert c.post("/v1/recommend", json=read).json()["strategy"] == "popular"
