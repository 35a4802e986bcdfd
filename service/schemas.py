"""Request and response bodies of the HTTP API (DESIGN §6). Unknown fields are refused.

Structural limits live here; the ones from settings (k up to max_k, id lengths, batch and exclude sizes) are
checked by the Recommender's ``Limits`` so one Settings governs them. Responses are built as plain dicts and
encoded with orjson; these response models document them in the OpenAPI schema at /docs.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RecommendRequest(_Body):
    user_id: str = Field(min_length=1)
    domain: str = Field(min_length=1)
    k: int = Field(10, ge=1, description="1..service.max_k")
    exclude_seen: bool = True
    exclude: list[str] = Field(default_factory=list, description="external item ids never to recommend")


class EventIn(_Body):
    user_id: str = Field(min_length=1)
    domain: str = Field(min_length=1)
    item_id: str = Field(min_length=1)
    ts: float | None = Field(None, ge=0, description="unix seconds (accepted; lists keep arrival order)")


MAX_ITEM_ID_CHARS = 128
MAX_TEXT_CHARS = 4000  # titles and attributes; the text encoder truncates to its max_tokens anyway
MAX_ITEMS_PER_REQUEST = 256


class ItemIn(_Body):
    item_id: str = Field(min_length=1, max_length=MAX_ITEM_ID_CHARS, description="a new external item id")
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS, description="title and attributes")


class ItemsRequest(_Body):
    domain: str = Field(min_length=1)
    items: list[ItemIn] = Field(min_length=1, max_length=MAX_ITEMS_PER_REQUEST)


class ItemsResponse(BaseModel):
    domain: str
    added: list[str] = Field(description="ids added by this request, now retrievable")
    existing: list[str] = Field(description="ids already added earlier with the same text (a retry): unchanged")
    n_items: int = Field(description="items in the domain's catalogue now")
    model_version: str


class ScoredItem(BaseModel):
    item_id: str
    score: float


class RecommendResponse(BaseModel):
    user_id: str
    domain: str
    items: list[ScoredItem]
    strategy: Literal["gur", "bridge", "popular"]
    model_version: str
    degraded: bool = False
    cached: bool = Field(False, description="the user vector came from the refresh job's cache")


class ColdStartResponse(RecommendResponse):
    source_domain: str | None


class SimilarResponse(BaseModel):
    item_id: str
    domain: str
    items: list[ScoredItem]
    model_version: str


class EventsResponse(BaseModel):
    accepted: int


class ReadyResponse(BaseModel):
    ready: bool
    model_version: str
    redis: Literal["up", "down"]
    reload_error: str | None = Field(None, description="a short code (`bundle_refused`); the detail is in "
                                      "GET /v1/admin/status")
    supervisor: dict[str, Any] | None = Field(None, description="worker restarts and back-offs (cdrec serve "
                                              "--workers N); null with one process")


class StatusResponse(BaseModel):
    model_version: str
    bundle_path: str
    redis: Literal["up", "down"]
    reload_error: str | None = None
    supervisor: dict[str, Any] | None = None


class ReloadResponse(BaseModel):
    model_version: str
    previous: str
    changed: bool


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody
