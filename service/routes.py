"""The routes (DESIGN §6): thin handlers that validate, call the Recommender and encode with orjson.

Collaborators come in through ``Annotated[..., Depends()]``; every dependency is ``async def`` so none of them
hops to the thread pool. Read routes check an API key only when one is presented or settings require it;
``/v1/events``, ``/v1/items`` and ``/v1/admin/*`` always require one (service.auth).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import TypeAdapter, ValidationError
from starlette.responses import PlainTextResponse, Response

from service.auth import ApiKeys
from service.durability import DurabilityRefused
from service.errors import Conflict, Unavailable
from service.http import ORJSONResponse, json_body, parse_body, require_json
from service.items import ItemAdder, NewItem
from service.metrics import Metrics
from service.ports import BadKey, OutcomeUnknown, StoreUnavailable
from service.recommender import Event, Recommendation, Recommender
from service.reloader import BundleManager, ReloadRefused
from service.schemas import (
    ColdStartResponse,
    ErrorResponse,
    EventIn,
    EventsResponse,
    ItemsRequest,
    ItemsResponse,
    ReadyResponse,
    RecommendRequest,
    RecommendResponse,
    ReloadResponse,
    SimilarResponse,
    StatusResponse,
)
from service.supervision import supervisor_state


@dataclass
class Services:
    """What the lifespan opened, shared by every request of one app."""

    recommender: Recommender
    manager: BundleManager
    keys: ApiKeys
    metrics: Metrics
    items: ItemAdder
    state_dir: Path | None = None  # the supervisor's, under `cdrec serve --workers N` (service.supervision)


async def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


Svc = Annotated[Services, Depends(services)]


async def read_access(request: Request, svc: Svc) -> None:
    svc.keys.check_read(request)


async def write_access(request: Request, svc: Svc) -> None:
    svc.keys.require(request)


ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": ErrorResponse} for s in (400, 401, 403, 404, 409, 413, 422, 503)
}
# ids may contain "/": the path routes take the rest of the path up to their suffix, so "/v1/users/a/b/cold-start"
# (or "a%2Fb", percent-encoded) reaches user "a/b"
ID_IN_PATH = "an id may contain '/': send it raw or percent-encoded (%2F)"
router = APIRouter(responses=ERRORS)
reads = APIRouter(dependencies=[Depends(read_access)], responses=ERRORS)
writes = APIRouter(dependencies=[Depends(write_access)], responses=ERRORS)


def _items(r: Recommendation) -> list[dict[str, Any]]:
    return [{"item_id": item, "score": score} for item, score in r.items]


def _answered(svc: Services, route: str, r: Recommendation, start: float) -> None:
    svc.metrics.answered(route, r.strategy, r.degraded, r.fallback, time.perf_counter() - start)
    svc.metrics.redis_up.set(1 if svc.recommender.health.up else 0)


@router.post(
    "/v1/recommend",
    response_model=RecommendResponse,
    openapi_extra={"requestBody": json_body(RecommendRequest)},
)
async def recommend(request: Request, svc: Svc) -> Response:
    # the hot route: the body is parsed by pydantic-core straight from the bytes, and the key checked here,
    # which costs ~35 µs less per request than FastAPI's body parameter and a router dependency (bench/serve.py)
    start = time.perf_counter()
    svc.keys.check_read(request)
    body = await parse_body(request, RecommendRequest)
    r = await svc.recommender.recommend(body.user_id, body.domain, body.k, body.exclude_seen, body.exclude)
    _answered(svc, "/v1/recommend", r, start)
    return ORJSONResponse(
        {
            "user_id": body.user_id,
            "domain": body.domain,
            "items": _items(r),
            "strategy": r.strategy,
            "model_version": r.model_version,
            "degraded": r.degraded,
            "cached": r.cached,
        }
    )


@reads.get("/v1/users/{user_id:path}/cold-start", response_model=ColdStartResponse, description=ID_IN_PATH)
async def cold_start(
    user_id: str, svc: Svc, domain: Annotated[str, Query(min_length=1)], k: Annotated[int, Query(ge=1)] = 10
) -> Response:
    start = time.perf_counter()
    r = await svc.recommender.cold_start(user_id, domain, k)
    _answered(svc, "/v1/users/{user_id}/cold-start", r, start)
    return ORJSONResponse(
        {
            "user_id": user_id,
            "domain": domain,
            "source_domain": r.source_domain,
            "items": _items(r),
            "strategy": r.strategy,
            "model_version": r.model_version,
            "degraded": r.degraded,
        }
    )


@reads.get("/v1/items/{item_id:path}/similar", response_model=SimilarResponse, description=ID_IN_PATH)
async def similar(
    item_id: str, svc: Svc, domain: Annotated[str, Query(min_length=1)], k: Annotated[int, Query(ge=1)] = 10
) -> Response:
    r = await svc.recommender.similar(item_id, domain, k)
    return ORJSONResponse({"item_id": item_id, "domain": domain, "items": _items(r), "model_version": r.model_version})


_EVENTS = TypeAdapter(list[EventIn])
_EVENT_SCHEMA = EventIn.model_json_schema()
_EVENTS_BODY = {
    "required": True,
    "content": {"application/json": {"schema": {"anyOf": [_EVENT_SCHEMA, {"type": "array", "items": _EVENT_SCHEMA}]}}},
}


@writes.post(
    "/v1/events",
    response_model=EventsResponse,
    openapi_extra={"requestBody": _EVENTS_BODY},
    responses={200: {"model": EventsResponse}, 422: {"model": ErrorResponse}},
)
async def events(request: Request, svc: Svc) -> Response:
    """One event object or a JSON array of them; answered once Redis acknowledged every one."""
    require_json(request)
    raw = await request.body()
    if raw.lstrip()[:1] == b"[":
        try:
            batch = _EVENTS.validate_json(raw)
        except ValidationError as exc:
            raise RequestValidationError(exc.errors(include_url=False, include_context=False)) from None
    else:
        batch = [await parse_body(request, EventIn)]
    try:
        done = await svc.recommender.append([Event(e.user_id, e.domain, e.item_id, e.event_id) for e in batch])
    except BadKey as exc:
        raise Conflict(
            f"{exc.detail}; nothing of that user was stored (other users' events of the batch may have been: retry"
            " with the same event_id after fixing the key)",
            "wrong_type_key",
        ) from exc
    except OutcomeUnknown as exc:
        svc.metrics.redis_up.set(0)
        raise Unavailable(
            f"events may or may not have been stored ({exc.reason}): retry with the same event_id",
            "outcome_unknown",
            _retry_after(svc),
        ) from exc
    except StoreUnavailable as exc:
        svc.metrics.redis_up.set(0)
        raise Unavailable(
            f"events not stored: Redis is unavailable ({exc.reason})", "redis_unavailable", _retry_after(svc)
        ) from exc
    except DurabilityRefused as exc:
        raise Unavailable(f"events not stored: {exc}", "durability_refused") from exc
    return ORJSONResponse({"accepted": len(batch), "appended": done.appended, "duplicates": done.duplicates})


def _retry_after(svc: Services) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(svc.recommender.health.policy.open_s)))}


@writes.post(
    "/v1/items",
    response_model=ItemsResponse,
    openapi_extra={"requestBody": json_body(ItemsRequest)},
    responses={200: {"model": ItemsResponse}, 409: {"model": ErrorResponse}, 422: {"model": ErrorResponse}},
)
async def add_items(request: Request, svc: Svc) -> Response:
    """New items by their text, retrievable once this answers (service.items: 409 for an id that exists, or for
    a domain without a text item encoder in the serving bundle)."""
    body = await parse_body(request, ItemsRequest)
    try:
        done = await svc.items.add(body.domain, [NewItem(i.item_id, i.text) for i in body.items])
    except StoreUnavailable as exc:
        svc.metrics.redis_up.set(0)
        raise Unavailable(f"items not added: Redis is unavailable ({exc.reason})", "redis_unavailable") from exc
    if done.added:
        svc.metrics.items_added.labels(done.domain).inc(len(done.added))
    return ORJSONResponse(
        {
            "domain": done.domain,
            "added": done.added,
            "existing": done.existing,
            "n_items": done.n_items,
            "model_version": done.model_version,
        }
    )


@writes.post("/v1/admin/reload", response_model=ReloadResponse)
async def reload(svc: Svc) -> Response:
    try:
        done = await svc.manager.reload()
    except ReloadRefused as exc:
        version = svc.recommender.bundle.version
        raise Conflict(f"bundle refused, still serving {version}: {exc}", "bundle_refused") from exc
    return ORJSONResponse({"model_version": done.version, "previous": done.previous, "changed": done.changed})


@router.get("/healthz")
async def healthz() -> Response:
    return ORJSONResponse({"status": "ok"})


@router.get("/readyz", response_model=ReadyResponse)
async def readyz(svc: Svc) -> Response:
    up = await svc.recommender.check_store()
    svc.metrics.redis_up.set(1 if up else 0)
    body = {
        "ready": up,
        "model_version": svc.recommender.bundle.version,
        "redis": "up" if up else "down",
        "reload_error": svc.manager.error_code,
        # restarts and back-offs of the sibling workers: informative, this worker is ready either way
        "supervisor": supervisor_state(svc.state_dir),
    }
    return ORJSONResponse(body, status_code=200 if up else 503)


@writes.get("/v1/admin/status", response_model=StatusResponse)
async def admin_status(svc: Svc) -> Response:
    """What /readyz leaves out: the bundle's path and the full text of the last reload error (key required)."""
    up = await svc.recommender.check_store()
    return ORJSONResponse(
        {
            "model_version": svc.recommender.bundle.version,
            "bundle_path": str(svc.manager.serving_path),
            "redis": "up" if up else "down",
            "reload_error": svc.manager.last_error,
            "supervisor": supervisor_state(svc.state_dir),
        }
    )


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"description": "Prometheus text exposition format 0.0.4"}},
)
async def metrics(svc: Svc) -> Response:
    return Response(svc.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


for sub in (reads, writes):
    router.include_router(sub)
