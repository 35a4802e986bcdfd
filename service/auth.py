"""API keys: required on writes (/v1/events, /v1/admin/*), optional on reads (settings).

A key comes in ``X-API-Key`` or ``Authorization: Bearer <key>``. It is compared with every configured key in
constant time (hmac.compare_digest, no early exit), and neither the given key nor a configured one is ever
logged or echoed. No configured key = the write routes refuse everyone (403), never open by default. A key
presented on a read is checked even when reads need none: a wrong key is a client mistake worth telling.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from pydantic import SecretStr
from starlette.requests import Request

from service.errors import Forbidden, Unauthorized


class ApiKeys:
    def __init__(self, keys: Sequence[SecretStr], on_reads: bool = False) -> None:
        self._keys = [k.get_secret_value().encode() for k in keys if k.get_secret_value()]
        self.on_reads = on_reads

    @property
    def configured(self) -> bool:
        return bool(self._keys)

    def valid(self, key: str) -> bool:
        given = key.encode()
        ok = False
        for known in self._keys:
            ok |= hmac.compare_digest(given, known)
        return ok

    @staticmethod
    def presented(request: Request) -> str | None:
        key = request.headers.get("x-api-key")
        if key is None:
            auth = request.headers.get("authorization", "")
            scheme, _, value = auth.partition(" ")
            key = value.strip() if scheme.lower() == "bearer" else None
        return key

    def require(self, request: Request) -> None:
        if not self._keys:
            raise Forbidden("this route needs an API key and none is configured (CDREC_SERVICE__API_KEYS)")
        key = self.presented(request)
        if key is None:
            raise Unauthorized("an API key is required: send it in the X-API-Key header")
        if not self.valid(key):
            raise Unauthorized("the API key is not valid")

    def check_read(self, request: Request) -> None:
        key = self.presented(request)
        if key is None and not self.on_reads:
            return
        self.require(request)
