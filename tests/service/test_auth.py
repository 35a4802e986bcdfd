"""API keys: required on /v1/events and /v1/admin/*, optional on reads, compared in constant time, never logged."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from service.app import create_app
from service.auth import ApiKeys
from tests.service.conftest import API_KEY, RedisServer, make_settings

EVENT = {"user_id": "u-auth", "domain": "music", "item_id": "m1"}
READ = {"user_id": "u-auth", "domain": "music", "k": 3}


@pytest.fixture(scope="module")
def app_client(service_artifacts: Path, redis_server: RedisServer) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(service_artifacts, redis_server.url))) as c:
        yield c


@pytest.mark.parametrize("path", ["/v1/events", "/v1/admin/reload"])
def test_write_routes_refuse_a_missing_or_wrong_key(app_client: TestClient, path: str) -> None:
    for headers in ({}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
        r = app_client.post(path, json=EVENT, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"


@pytest.mark.parametrize("headers", [{"X-API-Key": API_KEY}, {"Authorization": f"Bearer {API_KEY}"}])
def test_write_routes_accept_the_key_in_either_header(app_client: TestClient, headers: dict[str, str]) -> None:
    assert app_client.post("/v1/events", json=EVENT, headers=headers).status_code == 200
    assert app_client.post("/v1/admin/reload", headers=headers).status_code == 200


def test_reads_need_no_key_but_a_wrong_one_is_refused(app_client: TestClient) -> None:
    assert app_client.post("/v1/recommend", json=READ).status_code == 200
    assert app_client.post("/v1/recommend", json=READ, headers={"X-API-Key": API_KEY}).status_code == 200
    assert app_client.post("/v1/recommend", json=READ, headers={"X-API-Key": "nope"}).status_code == 401


def test_reads_need_a_key_when_settings_say_so(service_artifacts: Path, redis_server: RedisServer) -> None:
    settings = make_settings(service_artifacts, redis_server.url, keys_on_reads=True)
    with TestClient(create_app(settings)) as c:
        assert c.post("/v1/recommend", json=READ).status_code == 401
        assert c.get("/v1/items/m1/similar?domain=music").status_code == 401
        assert c.post("/v1/recommend", json=READ, headers={"X-API-Key": API_KEY}).status_code == 200
        assert c.get("/healthz").status_code == 200  # probes stay open


def test_with_no_key_configured_the_write_routes_refuse_everyone(
    service_artifacts: Path, redis_server: RedisServer
) -> None:
    settings = make_settings(service_artifacts, redis_server.url, api_keys=[])
    with TestClient(create_app(settings)) as c:
        r = c.post("/v1/events", json=EVENT, headers={"X-API-Key": ""})
        assert r.status_code == 403 and "CDREC_SERVICE__API_KEYS" in r.json()["error"]["message"]
        assert c.post("/v1/recommend", json=READ).status_code == 200


def test_keys_never_reach_the_logs_or_the_responses(app_client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        bodies = [
            app_client.post("/v1/events", json=EVENT, headers={"X-API-Key": "guess-" + API_KEY}).text,
            app_client.post("/v1/events", json=EVENT, headers={"X-API-Key": API_KEY}).text,
        ]
    assert API_KEY not in caplog.text and not any(API_KEY in b for b in bodies)


def test_settings_hide_the_configured_keys_in_their_repr() -> None:
    settings = make_settings(Path("artifacts"), None)
    assert API_KEY not in repr(settings) and API_KEY not in str(settings.model_dump())


def test_every_configured_key_is_accepted_and_nothing_else() -> None:
    keys = ApiKeys([SecretStr("a" * 20), SecretStr("b" * 20), SecretStr("")])
    assert keys.valid("a" * 20) and keys.valid("b" * 20)
    assert not keys.valid("") and not keys.valid("a" * 19) and not keys.valid("a" * 21)
