"""Every client mistake answers a 4xx with ``{"error": {"code", "message"}}``, never a 5xx."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from tests.service.conftest import RedisServer, auth, make_settings

OK = {"user_id": "u1", "domain": "music", "k": 5}
EVENT = {"user_id": "u1", "domain": "music", "item_id": "m1"}


@pytest.fixture(scope="module")
def strict(service_artifacts: Path, redis_server: RedisServer) -> Iterator[TestClient]:
    """Small limits, so each is easy to cross."""
    limits = {"max_k": 20, "max_batch": 3, "max_exclude": 2, "max_id_len": 16, "max_body_bytes": 2048}
    with TestClient(create_app(make_settings(service_artifacts, redis_server.url, **limits))) as c:
        yield c


JSON = {"content-type": "application/json"}
R, E, CS = "/v1/recommend", "/v1/events", "/v1/users/u1/cold-start"


def case(name: str, method: str, path: str, status: int, code: str, words: str, **kwargs: Any) -> Any:
    """One client mistake: the request, then the status, error code and words its message must hold."""
    return pytest.param(method, path, kwargs, status, code, words, id=name)


BAD = "invalid_request"
CASES = [
    case("malformed json", "POST", R, 400, "malformed_json", "not valid JSON", content=b'{"u', headers=JSON),
    case("body not an object", "POST", R, 422, BAD, "object", json=[OK]),
    case("empty body", "POST", R, 400, "malformed_json", "not valid JSON", content=b"", headers=JSON),
    case("empty events body", "POST", E, 400, "malformed_json", "not valid JSON", content=b"", headers=JSON),
    case("events body a string", "POST", E, 422, BAD, "object", json="m1"),
    case("unknown field", "POST", R, 422, BAD, "colour: Extra inputs", json={**OK, "colour": "red"}),
    case("missing field", "POST", R, 422, BAD, "domain: Field required", json={"user_id": "u1", "k": 5}),
    case("wrong type", "POST", R, 422, BAD, "user_id", json={**OK, "user_id": 7}),
    case("k zero", "POST", R, 422, BAD, "k", json={**OK, "k": 0}),
    case("k over max_k", "POST", R, 422, BAD, "between 1 and 20", json={**OK, "k": 21}),
    case("k not an int", "POST", R, 422, BAD, "k", json={**OK, "k": "many"}),
    case("user id too long", "POST", R, 422, BAD, "1 to 16", json={**OK, "user_id": "u" * 17}),
    case("empty user id", "POST", R, 422, BAD, "user_id", json={**OK, "user_id": ""}),
    case("brace in user id", "POST", R, 422, BAD, "'{' or '}'", json={**OK, "user_id": "a}b"}),
    case("exclude too long", "POST", R, 422, BAD, "at most 2", json={**OK, "exclude": ["m1", "m2", "m3"]}),
    case("exclude id too long", "POST", R, 422, BAD, "1 to 16", json={**OK, "exclude": ["m" * 17]}),
    case("unknown domain", "POST", R, 422, BAD, "'video' is not served", json={**OK, "domain": "video"}),
    case("domain without a model", "POST", R, 422, BAD, "'book' is not served", json={**OK, "domain": "book"}),
    case("cold start without domain", "GET", CS, 422, BAD, "domain: Field required"),
    case("cold start k over max", "GET", CS + "?domain=music&k=99", 422, BAD, "between 1 and 20"),
    case("cold start bad k", "GET", CS + "?domain=music&k=x", 422, BAD, "k"),
    case("cold start no bridge", "GET", CS + "?domain=book", 422, BAD, "not served"),
    case("similar without domain", "GET", "/v1/items/m1/similar", 422, BAD, "domain: Field required"),
    case("similar unknown domain", "GET", "/v1/items/m1/similar?domain=video", 422, BAD, "no item index"),
    case("similar unknown item", "GET", "/v1/items/zz/similar?domain=music", 404, "unknown_item", "'zz'"),
    case(
        "event unknown domain",
        "POST",
        E,
        422,
        "unknown_domain",
        "event 1: unknown domain 'video'",
        json=[EVENT, {**EVENT, "domain": "video"}],
    ),
    case(
        "event unknown item",
        "POST",
        E,
        422,
        "unknown_item",
        "unknown item 'm999' in domain 'music'",
        json={**EVENT, "item_id": "m999"},
    ),
    case("event missing item", "POST", E, 422, BAD, "item_id", json={"user_id": "u1", "domain": "music"}),
    case("event unknown field", "POST", E, 422, BAD, "rating", json={**EVENT, "rating": 5}),
    case("event negative ts", "POST", E, 422, BAD, "ts", json={**EVENT, "ts": -1}),
    case("batch too large", "POST", E, 422, BAD, "at most 3 events", json=[EVENT] * 4),
    case("empty batch", "POST", E, 422, BAD, "no events", json=[]),
    case("event user id too long", "POST", E, 422, BAD, "1 to 16", json={**EVENT, "user_id": "u" * 17}),
    case("body over the limit", "POST", E, 413, "body_too_large", "limit is 2048", json=[EVENT] * 60),
    case("unknown route", "GET", "/v2/recommend", 404, "not_found", "Not Found"),
    case("wrong method", "GET", R, 405, "method_not_allowed", "Method Not Allowed"),
]


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "code", "words"), CASES)
def test_client_mistakes_answer_4xx_with_the_error_shape(
    strict: TestClient, method: str, path: str, kwargs: dict[str, Any], status: int, code: str, words: str
) -> None:
    kwargs = dict(kwargs)  # the parameter is shared between runs: do not mutate it
    headers = {**auth(), **kwargs.pop("headers", {})}
    r = strict.request(method, path, headers=headers, **kwargs)
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    assert words in body["error"]["message"]


def test_a_chunked_body_over_the_limit_is_refused_while_streaming(strict: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"user_id": "u1", "domain": "music", "exclude": ["'
        for _ in range(100):
            yield b"x" * 100

    r = strict.post("/v1/recommend", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"


def test_limits_at_their_edge_are_accepted(strict: TestClient) -> None:
    r = strict.post("/v1/recommend", json={**OK, "user_id": "u" * 16, "k": 20, "exclude": ["m1", "m2"]})
    assert r.status_code == 200 and len(r.json()["items"]) == 20
    assert strict.post("/v1/events", json=[EVENT] * 3, headers=auth()).json()["accepted"] == 3
