"""The OpenAPI document says what the server enforces, and the server parses strictly (issue 15 item 9)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from tests.service.conftest import RedisServer, auth, make_settings

READ = {"user_id": "u-spec", "domain": "music", "k": 5}


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for v in node.values() for r in refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in refs(v)]
    return []


@pytest.fixture(scope="module")
def spec(service_artifacts: Path) -> dict[str, Any]:
    app = create_app(make_settings(service_artifacts, None, max_k=20, max_batch=7, max_id_len=32))
    doc: dict[str, Any] = app.openapi()
    return doc


def test_every_reference_resolves_in_the_document(spec: dict[str, Any]) -> None:
    found = refs(spec)
    assert "#/components/schemas/ItemIn" in found and "$defs" not in json.dumps(spec)
    for ref in found:
        assert ref.startswith("#/components/schemas/") and ref.split("/")[-1] in spec["components"]["schemas"], ref


def test_metrics_is_documented_as_plain_text(spec: dict[str, Any]) -> None:
    assert list(spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]


def test_the_settings_limits_are_in_the_schema(spec: dict[str, Any]) -> None:
    body = spec["paths"]["/v1/recommend"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert (body["properties"]["k"]["minimum"], body["properties"]["k"]["maximum"]) == (1, 20)
    assert body["properties"]["user_id"]["maxLength"] == 32 and "{}" in body["properties"]["user_id"]["pattern"]
    assert "\\x00-\\x1f" in body["properties"]["exclude"]["items"]["pattern"]
    events = spec["paths"]["/v1/events"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    batch = next(alt for alt in events["anyOf"] if alt.get("type") == "array")
    assert (batch["minItems"], batch["maxItems"]) == (1, 7)
    params = {p["name"]: p["schema"] for p in spec["paths"]["/v1/users/{user_id}/cold-start"]["get"]["parameters"]}
    assert params["k"]["maximum"] == 20 and params["user_id"]["maxLength"] == 32
    assert spec["components"]["schemas"]["ItemIn"]["properties"]["item_id"]["maxLength"] == 32


def test_the_api_key_scheme_is_required_on_writes_and_optional_on_reads(spec: dict[str, Any]) -> None:
    assert spec["components"]["securitySchemes"]["ApiKey"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "service.api_keys",
    }
    assert spec["paths"]["/v1/events"]["post"]["security"] == [{"ApiKey": []}]
    assert spec["paths"]["/v1/admin/reload"]["post"]["security"] == [{"ApiKey": []}]
    assert spec["paths"]["/v1/recommend"]["post"]["security"] == [{}, {"ApiKey": []}]
    assert "security" not in spec["paths"]["/healthz"]["get"]


def test_a_json_body_without_a_json_content_type_is_refused_with_415(client: TestClient) -> None:
    for path, headers in (("/v1/recommend", {}), ("/v1/events", auth())):
        sent = {**headers, "content-type": "text/plain"}
        r = client.post(path, content=json.dumps(READ).encode(), headers=sent)
        assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type", path
        assert "application/json" in r.json()["error"]["message"]
    ok = client.post(
        "/v1/recommend", content=json.dumps(READ), headers={"content-type": "application/json; charset=utf-8"}
    )
    assert ok.status_code == 200


@pytest.mark.parametrize(
    ("change", "named"),
    [({"k": True}, "k"), ({"k": "5"}, "k"), ({"exclude_seen": 1}, "exclude_seen"), ({"user_id": "a\x01b"}, "user_id")],
)
def test_wrong_json_types_and_control_characters_are_refused(
    client: TestClient, change: dict[str, Any], named: str
) -> None:
    r = client.post("/v1/recommend", json={**READ, **change})
    assert r.status_code == 422 and named in r.json()["error"]["message"]


def test_control_characters_in_path_and_event_ids_are_refused(client: TestClient) -> None:
    r = client.get("/v1/users/a%07b/cold-start", params={"domain": "music"})
    assert r.status_code == 422 and "control characters" in r.json()["error"]["message"]
    event = {"user_id": "u", "domain": "music", "item_id": "m1", "event_id": "e\n1"}
    assert client.post("/v1/events", json=event, headers=auth()).status_code == 422


def test_ids_containing_a_slash_are_reachable_on_the_path_routes(client: TestClient, redis_server: RedisServer) -> None:
    user = "tenant/a/u-1"
    assert (
        client.post("/v1/events", json={"user_id": user, "domain": "book", "item_id": "b5"}, headers=auth()).json()[
            "appended"
        ]
        == 1
    )
    for path in ("/v1/users/tenant/a/u-1/cold-start", "/v1/users/tenant%2Fa%2Fu-1/cold-start"):
        r = client.get(path, params={"domain": "music", "k": 3})
        assert r.status_code == 200 and r.json()["user_id"] == user and r.json()["strategy"] == "bridge", path
