"""The HTTP edge: orjson responses, the one error shape, and the guard middleware (body size, metrics).

Every error leaves as ``{"error": {"code", "message"}}``: the service's own errors (service.errors), Starlette's
404/405, request validation (malformed JSON -> 400 ``malformed_json``; unknown fields, wrong types, limits ->
422 ``invalid_request``) and, last resort, anything unexpected (500 ``internal``, logged, details withheld).

``Guard`` is a pure ASGI middleware (BaseHTTPMiddleware would cost a task per request): it refuses bodies over
``max_body_bytes`` before reading them when Content-Length says so, and while streaming otherwise, and records
each request's count and latency under its route template (``/v1/items/{item_id}/similar``, never the raw
path, so label cardinality stays bounded).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any, TypeVar

import orjson
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import CODES, PayloadTooLarge, ServiceError, UnsupportedMediaType
from service.metrics import Metrics

log = logging.getLogger("cdrec.service")


class ORJSONResponse(JSONResponse):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> ORJSONResponse:
    return ORJSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if isinstance(exc, ServiceError):
        return error(exc.status_code, exc.code, exc.message, exc.headers)
    code = CODES.get(exc.status_code, "error")
    return error(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    if any(e.get("type") == "json_invalid" for e in errors):
        return error(400, "malformed_json", "the request body is not valid JSON")
    parts = []
    for e in errors[:5]:
        where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return error(422, "invalid_request", "; ".join(parts) + more)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error(500, "internal", "internal error")


M = TypeVar("M", bound=BaseModel)


def require_json(request: Request) -> None:
    """A JSON body must say so: ``Content-Type: application/json`` (parameters allowed), else 415."""
    sent = request.headers.get("content-type", "")
    media = sent.split(";", 1)[0].strip().lower()
    if media != "application/json":
        shown = repr(sent) if sent else "none"
        raise UnsupportedMediaType(f"send the body as JSON with Content-Type: application/json (got {shown})")


async def parse_body(request: Request, model: type[M]) -> M:
    """``model`` validated straight from the body bytes (pydantic-core's JSON parser); errors answer like
    FastAPI's own body validation (415 without a JSON Content-Type, malformed JSON -> 400, anything else ->
    422)."""
    require_json(request)
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False, include_context=False)) from None


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI requestBody of a route that parses ``model`` itself (service.routes)."""
    schema = model.model_json_schema()  # nested models under local $defs: service.openapi hoists them
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)


class Guard:
    def __init__(self, app: ASGIApp, metrics: Metrics, max_body_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        limit = self.max_body_bytes

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            length = _content_length(scope)
            if length is not None and length > limit:
                too_big = error(413, "body_too_large", f"the body is {length} bytes; the limit is {limit}")
                await too_big(scope, receive, send_status)
                return
            received = 0

            async def limited() -> Message:
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > limit:
                        raise PayloadTooLarge(f"the body exceeds the limit of {limit} bytes")
                return message

            await self.app(scope, limited if scope["method"] in ("POST", "PUT", "PATCH") else receive, send_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.observe_request(template, scope["method"], status, time.perf_counter() - start)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
