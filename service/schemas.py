"""Request and response bodies of the HTTP API (DESIGN §6). Unknown fields are refused.

Structural limits live here; the ones from settings (k up to max_k, id lengths, batch and exclude sizes) are
checked by the Recommender's ``Limits`` so one Settings governs them. Responses are built as plain dicts and
encoded with orjson; these response models document them in the OpenAPI schema at /docs.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

# ids: no control characters (C0, DEL, C1); user ids also no braces, which would move the Redis hash tag. The
# lengths come from Settings (service.max_id_len): Limits checks them and service.openapi writes them in.
CONTROL_CHARS = r"\x00-\x1f\x7f-\x9f"
ID_PATTERN = rf"^[^{CONTROL_CHARS}]+$"
USER_ID_PATTERN = rf"^[^{CONTROL_CHARS}{{}}]+$"
CONTROL = re.compile(f"[{CONTROL_CHARS}]")


def _no_control(value: str) -> str:
    if CONTROL.search(value):
        raise ValueError("must not contain control characters")
    return value


def _user_id(value: str) -> str:
    if "{" in value or "}" in value:
        raise ValueError("must not contain '{' or '}' (they would move the user's Redis hash tag)")
    return _no_control(value)


# the pattern is documented; the validators say in words what is wrong
ItemId = Annotated[str, Field(min_length=1, json_schema_extra={"pattern": ID_PATTERN}), AfterValidator(_no_control)]
UserId = Annotated[str, Field(min_length=1, json_schema_extra={"pattern": USER_ID_PATTERN}), AfterValidator(_user_id)]


class _Body(BaseModel):
    # strict: `k: true` or `k: "5"` is refused, not read as 1 or 5 (a JSON number may still fill a float field)
    model_config = ConfigDict(extra="forbid", strict=True)


class RecommendRequest(_Body):
    user_id: UserId
    domain: str = Field(min_length=1)
    k: int = Field(10, ge=1, description="1..service.max_k")
    exclude_seen: bool = True
    exclude: list[ItemId] = Field(default_factory=list, description="external item ids never to recommend")


class EventIn(_Body):
    user_id: UserId
    domain: str = Field(min_length=1)
    item_id: ItemId
    ts: float | None = Field(None, ge=0, description="unix seconds (accepted; lists keep arrival order)")
    event_id: ItemId | None = Field(
        None,
        description="the client's id of this event (1..max_id_len characters): an event repeating a (user_id, "
        "event_id) seen within redis.event_dedup_s (default 24 h) is not appended again but counted as a "
        "duplicate, so a retry after a 503 or a lost answer is safe",
    )


MAX_ITEM_ID_CHARS = 128
MAX_TEXT_CHARS = 4000  # titles and attributes; the text encoder truncates to its max_tokens anyway
MAX_ITEMS_PER_REQUEST = 256


class ItemIn(_Body):
    item_id: ItemId = Field(max_length=MAX_ITEM_ID_CHARS, description="a new external item id")
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
    strategy: Literal["gur", "dss", "bridge", "popular"] = Field(
        description="gur: the user encoder's one vector; dss: multi-interest retrieval (a DSS encoder's K intent "
        "vectors, one batched search, items ranked by their best intent); bridge: cold start from the source "
        "domain; popular: the popularity fallback"
    )
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
    accepted: int = Field(description="events in the request, all valid")
    appended: int = Field(description="events appended to the user lists by this request")
    duplicates: int = Field(description="events skipped: their (user_id, event_id) was stored before")


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
