"""Errors are values of one shape (SPEC §9), raised as typed exceptions and mapped in one middleware."""

from __future__ import annotations

from typing import Any

# SPEC §9: every code and the HTTP status it travels with.
STATUS_OF: dict[str, int] = {
    "INVALID_INPUT": 400,
    "UNDECRYPTABLE": 400,
    "UNAUTHENTICATED": 401,
    "SIGNATURE_INVALID": 401,
    "CLOCK_SKEW": 401,
    "REPLAY": 401,
    "FORBIDDEN": 403,
    "NOT_NEIGHBOUR": 403,
    "GRANT_REQUIRED": 403,
    "FIELD_NOT_GRANTED": 403,
    "SHARE_FORBIDDEN": 403,
    "REVOKED": 403,
    "NOT_FOUND": 404,
    "NODE_UNKNOWN": 404,
    "METHOD_NOT_ALLOWED": 405,
    "CONFLICT": 409,
    "TOO_LARGE": 413,
    "UNSUPPORTED_MEDIA_TYPE": 415,
    "KIND_UNSUPPORTED": 422,
    "RATE_LIMITED": 429,
    "INTERNAL": 500,
    "PEER_UNREACHABLE": 502,
    "UNAVAILABLE": 503,
    "PEER_TIMEOUT": 504,
}


class ApiError(Exception):
    """An error answered to the caller in the SPEC §9 shape."""

    code = "INVALID_INPUT"

    def __init__(self, message: str, details: Any = None, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            if code not in STATUS_OF:
                raise ValueError(f"unknown error code {code}")
            self.code = code
        self.message = message
        self.details = details

    @property
    def status(self) -> int:
        return STATUS_OF[self.code]

    def body(self, request_id: str | None) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message, "request_id": request_id}
        if self.details is not None:
            err["details"] = self.details
        return {"error": err}

    @classmethod
    def from_body(cls, body: Any, fallback_code: str = "PEER_UNREACHABLE") -> "ApiError":
        """Rebuild an error received from another node (its shape is checked, not trusted)."""
        err = body.get("error") if isinstance(body, dict) else None
        if isinstance(err, dict) and err.get("code") in STATUS_OF:
            return cls(str(err.get("message", "")), err.get("details"), code=err["code"])
        return cls("the peer answered with a malformed error", code=fallback_code)


class InvalidInput(ApiError):
    code = "INVALID_INPUT"


class Unauthenticated(ApiError):
    code = "UNAUTHENTICATED"


class Forbidden(ApiError):
    code = "FORBIDDEN"


class NotFound(ApiError):
    code = "NOT_FOUND"


class Conflict(ApiError):
    code = "CONFLICT"


class TooLarge(ApiError):
    code = "TOO_LARGE"


class GrantRequired(ApiError):
    code = "GRANT_REQUIRED"


class FieldNotGranted(ApiError):
    code = "FIELD_NOT_GRANTED"


class ShareForbidden(ApiError):
    code = "SHARE_FORBIDDEN"
