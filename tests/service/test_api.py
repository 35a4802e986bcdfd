"""The HTTP API end to end: real Redis, the exported ONNX graphs and FAISS index of bundle v1."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.redis_keys import seq_key
from tests.service.conftest import RedisServer, auth

MUSIC = [f"m{i}" for i in range(1, 41)]


def new_user() -> str:
    return f"u-{uuid.uuid4().hex[:12]}"


def post_events(client: TestClient, events: list[dict[str, str]]) -> None:
    r = client.post("/v1/events", json=events, headers=auth())
    assert r.status_code == 200, r.text
    assert r.json() == {"accepted": len(events), "appended": len(events), "duplicates": 0}


def recommend(client: TestClient, user: str, k: int = 10, **extra: object) -> dict[str, object]:
    r = client.post("/v1/recommend", json={"user_id": user, "domain": "music", "k": k, **extra})
    assert r.status_code == 200, r.text
    body: dict[str, object] = r.json()
    return body


def test_readyz_reports_the_bundle_version_and_redis_up(client: TestClient) -> None:
    r = client.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {
        "ready": True, "model_version": "v1", "redis": "up", "reload_error": None, "supervisor": None
    }
    assert client.get("/healthz").json() == {"status": "ok"}


def test_each_strategy_is_chosen_from_the_live_sequences(client: TestClient) -> None:
    user = new_user()
    first = recommend(client, user)
    assert (first["strategy"], first["degraded"], first["model_version"]) == ("popular", False, "v1")
    post_events(client, [{"user_id": user, "domain": "book", "item_id": "b5"}])
    assert recommend(client, user)["strategy"] == "bridge"
    post_events(client, [{"user_id": user, "domain": "music", "item_id": "m3"}])
    assert recommend(client, user)["strategy"] == "gur"


def test_events_are_stored_under_the_documented_key_oldest_first(client: TestClient, redis_server: RedisServer) -> None:
    user = new_user()
    post_events(client, [{"user_id": user, "domain": "music", "item_id": f"m{i}"} for i in (4, 2, 9)])
    assert redis_server.client().lrange(seq_key(user, "music"), 0, -1) == ["m4", "m2", "m9"]
    assert seq_key(user, "music") == f"cdrec:{{u:{user}}}:seq:music"


def test_a_single_event_object_is_accepted_as_well_as_a_batch(client: TestClient) -> None:
    user = new_user()
    r = client.post("/v1/events", json={"user_id": user, "domain": "music", "item_id": "m1", "ts": 1.5}, headers=auth())
    assert r.json() == {"accepted": 1, "appended": 1, "duplicates": 0}


def test_lists_are_trimmed_to_the_bundle_max_len(client: TestClient, redis_server: RedisServer) -> None:
    user = new_user()
    post_events(client, [{"user_id": user, "domain": "music", "item_id": m} for m in MUSIC[:30]])
    assert redis_server.client().lrange(seq_key(user, "music"), 0, -1) == MUSIC[10:30]  # max_len 20


def test_seen_items_are_excluded_and_can_be_kept_on_request(client: TestClient) -> None:
    user = new_user()
    seen = MUSIC[:35]
    post_events(client, [{"user_id": user, "domain": "music", "item_id": m} for m in seen])
    kept = set(MUSIC[15:35])  # the list holds the last 20
    body = recommend(client, user, k=10)
    ids = {i["item_id"] for i in body["items"]}  # type: ignore[attr-defined]
    assert len(ids) == 10 and not ids & kept
    body = recommend(client, user, k=40, exclude_seen=False)
    assert len(body["items"]) == 40  # type: ignore[arg-type]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seen=st.lists(st.sampled_from(MUSIC), max_size=20),
    exclude=st.lists(st.sampled_from(MUSIC), max_size=40),
    source=st.lists(st.sampled_from([f"b{i}" for i in range(1, 61)]), max_size=5),
    k=st.integers(1, 45),
)
def test_recommendations_are_sorted_unique_never_seen_never_excluded_and_k_long(
    client: TestClient, seen: list[str], exclude: list[str], source: list[str], k: int
) -> None:
    user = new_user()
    events = [{"user_id": user, "domain": "music", "item_id": m} for m in seen]
    events += [{"user_id": user, "domain": "book", "item_id": b} for b in source]
    if events:
        post_events(client, events)
    body = recommend(client, user, k=k, exclude=exclude)
    ids = [i["item_id"] for i in body["items"]]  # type: ignore[attr-defined]
    scores = [i["score"] for i in body["items"]]  # type: ignore[attr-defined]
    assert body["strategy"] == ("gur" if seen else "bridge" if source else "popular")
    assert scores == sorted(scores, reverse=True)
    assert len(set(ids)) == len(ids) and not set(ids) & (set(seen) | set(exclude))
    assert len(ids) == min(k, len(set(MUSIC) - set(seen) - set(exclude)))


def test_cold_start_lookup_answers_the_bridge_and_its_source_domain(client: TestClient) -> None:
    user = new_user()
    post_events(client, [{"user_id": user, "domain": "book", "item_id": "b7"}])
    r = client.get(f"/v1/users/{user}/cold-start", params={"domain": "music", "k": 4})
    body = r.json()
    assert r.status_code == 200 and body["strategy"] == "bridge" and body["source_domain"] == "book"
    assert len(body["items"]) == 4 and body["model_version"] == "v1"


def test_similar_items_come_from_the_index_vectors_without_the_item_itself(client: TestClient) -> None:
    r = client.get("/v1/items/m3/similar", params={"domain": "music", "k": 39})
    body = r.json()
    ids = [i["item_id"] for i in body["items"]]
    assert r.status_code == 200 and len(ids) == 39 and "m3" not in ids and len(set(ids)) == 39


def test_metrics_count_requests_per_route_and_strategy_and_name_the_bundle(client: TestClient) -> None:
    recommend(client, new_user())
    text = client.get("/metrics").text
    assert 'cdrec_bundle_info{version="v1"} 1.0' in text
    assert 'cdrec_http_requests_total{method="POST",route="/v1/recommend",status="200"}' in text
    assert 'cdrec_recommend_duration_seconds_count{degraded="false",route="/v1/recommend",strategy="popular"}' in text
    assert "cdrec_http_request_duration_seconds_bucket" in text and "cdrec_redis_up 1.0" in text


def test_openapi_documents_every_route(client: TestClient) -> None:
    paths = set(client.get("/openapi.json").json()["paths"])
    assert {
        "/v1/recommend",
        "/v1/events",
        "/v1/users/{user_id}/cold-start",
        "/v1/items/{item_id}/similar",
        "/v1/admin/reload",
        "/healthz",
        "/readyz",
    } <= paths


def test_responses_are_compact_orjson(client: TestClient) -> None:
    r = client.post("/v1/recommend", json={"user_id": new_user(), "domain": "music", "k": 2})
    assert r.headers["content-type"] == "application/json" and b": " not in r.content
    assert json.loads(r.content)["items"]


def test_bundle_fixture_is_the_exported_one(service_artifacts: Path) -> None:
    assert (service_artifacts / "current").resolve().name == "v1"
