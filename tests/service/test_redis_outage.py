"""Degraded, not down: Redis killed or slow -> popularity flagged degraded, readiness flips, then recovers."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from core.redis_keys import seq_key
from service.app import create_app
from tests.service.conftest import RedisServer, auth, make_settings

READ = {"user_id": "u-out", "domain": "music", "k": 5, "exclude": ["m7"]}


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.kill()


def wait_for(predicate: object, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_redis_killed_mid_test_answers_degraded_flips_readiness_and_recovers_on_restart(
    service_artifacts: Path, own_redis: RedisServer
) -> None:
    with TestClient(create_app(make_settings(service_artifacts, own_redis.url, redis_timeout_s=None))) as c:
        event = {"user_id": "u-out", "domain": "music", "item_id": "m2"}
        assert c.post("/v1/events", json=event, headers=auth()).status_code == 200
        assert c.post("/v1/recommend", json=READ).json()["strategy"] == "gur"

        own_redis.kill()
        for _ in range(3):  # the first request finds Redis gone; the next skip it for retry_after_s
            r = c.post("/v1/recommend", json=READ)
            body = r.json()
            assert r.status_code == 200 and body["strategy"] == "popular" and body["degraded"] is True
            assert len(body["items"]) == 5 and "m7" not in {i["item_id"] for i in body["items"]}
        cold = c.get("/v1/users/u-out/cold-start", params={"domain": "music"}).json()
        assert cold["degraded"] is True and cold["strategy"] == "popular"
        ready = c.get("/readyz")
        assert ready.status_code == 503 and ready.json()["redis"] == "down" and ready.json()["ready"] is False
        refused = c.post("/v1/events", json=event, headers=auth())
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "outcome_unknown"
        metrics = c.get("/metrics").text
        assert 'cdrec_fallbacks_total{reason="redis_unreachable"}' in metrics and "cdrec_redis_up 0.0" in metrics

        own_redis.start()  # same port, empty (no persistence)
        wait_for(lambda: c.get("/readyz").status_code == 200)
        assert c.post("/v1/events", json=event, headers=auth()).status_code == 200
        body = c.post("/v1/recommend", json=READ).json()
        assert body["degraded"] is False and body["strategy"] == "gur"


def test_slow_redis_answers_degraded_within_the_timeout(service_artifacts: Path, own_redis: RedisServer) -> None:
    settings = make_settings(service_artifacts, own_redis.url, redis_timeout_s=None)
    assert settings.redis.timeout_s <= 0.1
    with TestClient(create_app(settings)) as c:
        blocker = threading.Thread(target=lambda: own_redis.client().execute_command("DEBUG", "SLEEP", "1.0"))
        blocker.start()
        time.sleep(0.1)  # the server is now busy for a second
        start = time.perf_counter()
        body = c.post("/v1/recommend", json=READ).json()
        elapsed = time.perf_counter() - start
        blocker.join()
        assert body["degraded"] is True and body["strategy"] == "popular"
        assert elapsed < 0.6, f"a slow Redis held the request {elapsed:.2f} s"
        assert 'cdrec_fallbacks_total{reason="redis_timeout"}' in c.get("/metrics").text
        wait_for(lambda: c.get("/readyz").status_code == 200)
        assert c.post("/v1/recommend", json=READ).json()["degraded"] is False


def test_the_service_starts_and_answers_degraded_when_redis_is_down_from_the_start(
    service_artifacts: Path, own_redis: RedisServer
) -> None:
    own_redis.kill()
    with TestClient(create_app(make_settings(service_artifacts, own_redis.url, redis_timeout_s=None))) as c:
        assert c.get("/readyz").status_code == 503
        assert c.post("/v1/recommend", json=READ).json()["degraded"] is True
        own_redis.start()
        wait_for(lambda: c.get("/readyz").status_code == 200)


def test_one_slow_read_degrades_that_request_only_not_the_next_second(
    service_artifacts: Path, own_redis: RedisServer
) -> None:
    settings = make_settings(service_artifacts, own_redis.url, redis_timeout_s=None)
    settings.redis.retry_after_s = 30.0  # were one slow read to open the circuit, the next request would skip
    with TestClient(create_app(settings)) as c:
        c.post("/v1/events", json={"user_id": "u-out", "domain": "music", "item_id": "m2"}, headers=auth())
        blocker = threading.Thread(target=lambda: own_redis.client().execute_command("DEBUG", "SLEEP", "0.3"))
        blocker.start()
        time.sleep(0.05)
        assert c.post("/v1/recommend", json=READ).json()["degraded"] is True
        blocker.join()
        after = c.post("/v1/recommend", json=READ).json()
        assert after["degraded"] is False and after["strategy"] == "gur"
        assert "cdrec_redis_up 1.0" in c.get("/metrics").text


def test_a_wrong_type_key_degrades_its_user_only_and_never_opens_the_circuit(
    service_artifacts: Path, own_redis: RedisServer
) -> None:
    settings = make_settings(service_artifacts, own_redis.url)
    settings.redis.retry_after_s = 30.0
    with TestClient(create_app(settings)) as c:
        own_redis.client().set(seq_key("u-bad", "music"), "a string, not a list")
        c.post("/v1/events", json={"user_id": "u-out", "domain": "music", "item_id": "m2"}, headers=auth())
        for _ in range(30):  # more than the breaker's minimum calls, all of them "failing"
            bad = c.post("/v1/recommend", json={**READ, "user_id": "u-bad"}).json()
            assert bad["degraded"] is True and bad["strategy"] == "popular"
        good = c.post("/v1/recommend", json=READ).json()
        assert good["degraded"] is False and good["strategy"] == "gur"
        assert 'cdrec_fallbacks_total{reason="redis_bad_key"}' in c.get("/metrics").text
        assert c.get("/readyz").status_code == 200
