"""Errors the service answers with, each an HTTP status and a stable ``code`` (DESIGN §6 error shape).

They subclass Starlette's HTTPException so that FastAPI re-raises them unchanged even from inside body
reading, and one handler (service.http) renders every one as ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException


class ServiceError(HTTPException):
    status = 500
    code = "internal"

    def __init__(self, message: str, code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(self.status, message, headers)
        self.code = code or type(self).code
        self.message = message


class BadRequest(ServiceError):
    status, code = 400, "bad_request"


class Unauthorized(ServiceError):
    status, code = 401, "unauthorized"


class Forbidden(ServiceError):
    status, code = 403, "forbidden"


class NotFound(ServiceError):
    status, code = 404, "not_found"


class Conflict(ServiceError):
    status, code = 409, "conflict"


class PayloadTooLarge(ServiceError):
    status, code = 413, "body_too_large"


class InvalidRequest(ServiceError):
    status, code = 422, "invalid_request"


class UnsupportedMediaType(ServiceError):
    status, code = 415, "unsupported_media_type"


class Unavailable(ServiceError):
    status, code = 503, "unavailable"


CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
    503: "unavailable",
}
