"""One exception hierarchy for the protocol library.

Every error carries a ``code`` from SPEC §9 (or a protocol-level code the node maps to one),
a human-readable ``message`` and optional machine-readable ``details``.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError


class FederationError(Exception):
    """Base of every error raised by ``federation``."""

    def __init__(self, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r}, {self.message!r})"


class CanonicalJSONError(FederationError, ValueError):
    """A value cannot be encoded as canonical JSON; ``path`` locates it (e.g. ``$.body.items[2]``)."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__("INVALID_INPUT", f"{path}: {message}", {"path": path})
        self.path = path


class SignatureError(FederationError, ValueError):
    """A signed object does not verify (missing signature, unknown key id, bad base64, bad signature)."""

    def __init__(self, message: str, details: Any = None) -> None:
        super().__init__("SIGNATURE_INVALID", message, details)


class TrustError(FederationError):
    """A certificate chain or revocation is not acceptable.

    Codes: ``UNKNOWN``, ``EXPIRED``, ``SIGNATURE_INVALID``, ``REVOKED``, ``BROKEN_CHAIN``, and
    ``INVALID_INPUT`` for a malformed certificate or revocation.
    """


class AuthError(FederationError):
    """Hop-to-hop request authentication failed (``UNAUTHENTICATED``, ``CLOCK_SKEW``, ``SIGNATURE_INVALID``)."""


class EnvelopeError(FederationError):
    """An envelope is refused (``INVALID_INPUT``, ``KIND_UNSUPPORTED``, ``EXPIRED``,
    ``SIGNATURE_INVALID``, ``REVOKED``)."""


def validation_details(exc: ValidationError) -> list[dict[str, str]]:
    """Turn a pydantic ``ValidationError`` into ``[{"field": "a.b", "message": "..."}]`` for ``details``."""
    return [
        {"field": ".".join(str(step) for step in error["loc"]) or "$", "message": error["msg"]}
        for error in exc.errors(include_url=False)
    ]


def summary(details: list[dict[str, str]]) -> str:
    """One line naming each bad field, for an error message."""
    return "; ".join(f"{item['field']}: {item['message']}" for item in details)
