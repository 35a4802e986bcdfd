"""The OpenAPI document at /openapi.json (/docs): what the server enforces, built at app creation.

FastAPI's own document is post-processed once (``install_openapi``):

* request-body schemas that routes parse themselves (service.http ``json_body``) carry their nested models
  under local ``$defs``; those are hoisted into ``components/schemas`` and every ``#/$defs/X`` reference is
  rewritten, so the document has no dangling reference;
* the limits that come from Settings (service.recommender ``Limits``) are written into the request schemas
  and parameters: ``k`` 1..max_k, ids 1..max_id_len characters without control characters (and no ``{`` or
  ``}`` in user ids), ``exclude`` up to max_exclude ids, an events batch 1..max_batch;
* the API key: the ``ApiKey`` scheme (header ``X-API-Key``), required on the write routes and, with
  ``service.keys_on_reads``, on the read routes (optional there otherwise);
* a JSON body must come with ``Content-Type: application/json`` (415 otherwise), documented per body route.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from service.recommender import Limits
from service.schemas import ID_PATTERN, USER_ID_PATTERN

SCHEME = "ApiKey"
WRITE_ROUTES = ("/v1/events", "/v1/items", "/v1/admin/reload")
READ_ROUTES = ("/v1/recommend", "/v1/users/{user_id}/cold-start", "/v1/items/{item_id}/similar")
ID_FIELDS = ("user_id", "item_id", "event_id")


def install_openapi(app: FastAPI, limits: Limits, keys_on_reads: bool) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                description=app.description,
                routes=app.routes,
            )
            app.openapi_schema = finish(doc, limits, keys_on_reads)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def finish(doc: dict[str, Any], limits: Limits, keys_on_reads: bool) -> dict[str, Any]:
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for path, ops in doc["paths"].items():
        for op in ops.values():
            for param in op.get("parameters", []):
                _limit(param["name"], param["schema"], limits)
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            if body is not None:
                _limit_schema(body, limits)
                if path == "/v1/events":
                    for alt in body.get("anyOf", []):
                        if alt.get("type") == "array":
                            alt.update(minItems=1, maxItems=limits.max_batch)
                op["responses"].setdefault(
                    "415",
                    {"description": "the body is not sent as application/json", "content": _error_content(op)},
                )
            security = _security(path, keys_on_reads)
            if security is not None:
                op["security"] = security
    _hoist_defs(doc, schemas)
    components["securitySchemes"] = {
        SCHEME: {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "service.api_keys"}
    }
    return doc


def _security(path: str, keys_on_reads: bool) -> list[dict[str, list[str]]] | None:
    if path in WRITE_ROUTES or (keys_on_reads and path in READ_ROUTES):
        return [{SCHEME: []}]
    if path in READ_ROUTES:
        return [{}, {SCHEME: []}]  # a key is checked when one is presented
    return None


def _error_content(op: dict[str, Any]) -> dict[str, Any]:
    for status in ("422", "400"):
        if status in op["responses"]:
            content: dict[str, Any] = op["responses"][status]["content"]
            return content
    return {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}


def _limit_schema(schema: dict[str, Any], limits: Limits) -> None:
    """Write the Settings limits into a request schema, its alternatives, items and local $defs."""
    for name, prop in schema.get("properties", {}).items():
        _limit(name, prop, limits)
    for nested in (*schema.get("anyOf", ()), *schema.get("$defs", {}).values()):
        _limit_schema(nested, limits)
    if isinstance(schema.get("items"), dict):
        _limit_schema(schema["items"], limits)


def _limit(name: str, schema: dict[str, Any], limits: Limits) -> None:
    if name == "k":
        schema.update(type="integer", minimum=1, maximum=limits.max_k)
    elif name in ID_FIELDS:
        for alt in schema.get("anyOf", [schema]):  # event_id: string or null
            if alt.get("type") == "string":
                _limit_id(alt, limits, USER_ID_PATTERN if name == "user_id" else ID_PATTERN)
    elif name == "exclude":
        schema["maxItems"] = limits.max_exclude
        _limit_id(schema["items"], limits, ID_PATTERN)


def _limit_id(schema: dict[str, Any], limits: Limits, pattern: str) -> None:
    schema["minLength"] = 1
    schema["maxLength"] = min(schema.get("maxLength", limits.max_id_len), limits.max_id_len)
    schema["pattern"] = pattern


def _hoist_defs(node: Any, schemas: dict[str, Any]) -> None:
    """Move every local ``$defs`` into components/schemas and point its references there."""
    if isinstance(node, dict):
        for name, sub in node.pop("$defs", {}).items():
            _hoist_defs(sub, schemas)
            schemas.setdefault(name, sub)
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            node["$ref"] = "#/components/schemas/" + ref.removeprefix("#/$defs/")
        for value in node.values():
            _hoist_defs(value, schemas)
    elif isinstance(node, list):
        for value in node:
            _hoist_defs(value, schemas)
