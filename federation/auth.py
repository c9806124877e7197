"""Hop-to-hop request authentication: the ``Authorization: GovNode ...`` header (SPEC §4).

The signature covers the canonical JSON of::

    {"method": "POST", "uri": "/federation/v1/messages", "origin": "370321",
     "destination": "370300", "ts": 1763800000000, "nonce": "...", "content": {...}}

* ``method`` is upper case; ``uri`` is the request target exactly as sent on the request line
  (raw, percent-encoded path plus ``?query``; the receiver must use the raw target, e.g. aiohttp's
  ``request.raw_path``, and the sender must not let its HTTP client re-quote it);
* ``ts`` is an integer (milliseconds) in the signed object and its decimal string in the header;
* ``content`` (the parsed JSON body) is present only when the request has a body; a body that is
  JSON ``null`` counts as no body.

This module checks the header's shape, destination, clock skew and signature. The node must also:
refuse a nonce already seen within the skew window (``REPLAY``), check that the origin's chain
verifies and pick the key from its *current* keys (``TrustStore.verify_keys_for`` without
``at_ms``), and answer 403 ``NOT_NEIGHBOUR`` when the origin is neither its parent nor a child.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

import nacl.signing

from federation.canonical import encode_canonical_json
from federation.certs import valid_node_id
from federation.errors import AuthError, CanonicalJSONError, SignatureError
from federation.signing import SigningKey, encode_b64, verify_signature

__all__ = [
    "MAX_SKEW_MS",
    "SCHEME",
    "AuthError",
    "AuthParams",
    "make_authorization",
    "parse_authorization",
    "request_signing_bytes",
    "verify_authorization",
]

SCHEME = "GovNode"
MAX_SKEW_MS = 300_000
_PARAM = re.compile(r'\s*([a-z]+)="([^"\\]*)"\s*')
_KEY_ID = re.compile(r"ed25519:[A-Za-z0-9_]+")
_TS = re.compile(r"[0-9]{1,16}")
_NONCE = re.compile(r"[A-Za-z0-9_-]{16,128}")
_REQUIRED = ("origin", "destination", "key", "ts", "nonce", "sig")


@dataclass(frozen=True)
class AuthParams:
    """The parsed ``Authorization: GovNode`` header."""

    origin: str
    destination: str
    key_id: str
    ts: int
    nonce: str
    sig: str


def request_signing_bytes(
    method: str, uri: str, origin: str, destination: str, ts: int, nonce: str, content: Any = None,
    *, content_json: bytes | None = None,
) -> bytes:
    """The canonical JSON a request signature covers.

    ``content_json``, when the caller holds it, is ``encode_canonical_json(content)`` (the body as sent or
    received): it is spliced in rather than encoded again. That is exact because ``content`` sorts before
    every other key of the signed object, so its encoding comes first, right after the opening brace.
    """
    signed: dict[str, Any] = {
        "method": method.upper(),
        "uri": uri,
        "origin": origin,
        "destination": destination,
        "ts": ts,
        "nonce": nonce,
    }
    if content is None:
        return encode_canonical_json(signed)
    if content_json is None:
        signed["content"] = content
        return encode_canonical_json(signed)
    return b'{"content":' + content_json + b"," + encode_canonical_json(signed)[1:]


def make_authorization(
    method: str,
    uri: str,
    origin: str,
    destination: str,
    key: SigningKey,
    content: Any = None,
    ts: int | None = None,
    nonce: str | None = None,
    *,
    content_json: bytes | None = None,
) -> str:
    """Return the ``Authorization`` header value for a request from ``origin`` to ``destination``
    (``content_json``: the body's canonical JSON when the caller already encoded it)."""
    ts = int(time.time() * 1000) if ts is None else ts
    nonce = secrets.token_urlsafe(18) if nonce is None else nonce  # 24 URL-safe chars
    if not _NONCE.fullmatch(nonce):
        raise ValueError("nonce must be 16-128 URL-safe characters")
    sig = encode_b64(key.sign(request_signing_bytes(method, uri, origin, destination, ts, nonce, content,
                                                    content_json=content_json)))
    return (
        f'{SCHEME} origin="{origin}",destination="{destination}",key="{key.key_id}",'
        f'ts="{ts}",nonce="{nonce}",sig="{sig}"'
    )


def parse_authorization(header: str | None) -> AuthParams:
    """Parse a header value; ``AuthError("UNAUTHENTICATED")`` when missing or malformed.

    Unknown parameters are ignored (room for later versions); duplicates are refused.
    """
    if not header:
        raise AuthError("UNAUTHENTICATED", "missing Authorization header")
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() != SCHEME.lower():
        raise AuthError("UNAUTHENTICATED", f"Authorization scheme must be {SCHEME}")
    params: dict[str, str] = {}
    for part in rest.split(","):
        match = _PARAM.fullmatch(part)
        if match is None:
            raise AuthError("UNAUTHENTICATED", "malformed Authorization header")
        name, value = match.groups()
        if name in params:
            raise AuthError("UNAUTHENTICATED", f"duplicate Authorization parameter {name}")
        params[name] = value
    missing = [name for name in _REQUIRED if name not in params]
    if missing:
        raise AuthError("UNAUTHENTICATED", f"Authorization lacks {', '.join(missing)}")
    for name in ("origin", "destination"):
        if not valid_node_id(params[name]):
            raise AuthError("UNAUTHENTICATED", f"Authorization {name} is not a node id")
    if not _KEY_ID.fullmatch(params["key"]):
        raise AuthError("UNAUTHENTICATED", "Authorization key is not an ed25519 key id")
    if not _TS.fullmatch(params["ts"]):
        raise AuthError("UNAUTHENTICATED", "Authorization ts is not integer milliseconds")
    if not _NONCE.fullmatch(params["nonce"]):
        raise AuthError("UNAUTHENTICATED", "Authorization nonce must be 16-128 URL-safe characters")
    return AuthParams(
        origin=params["origin"],
        destination=params["destination"],
        key_id=params["key"],
        ts=int(params["ts"]),
        nonce=params["nonce"],
        sig=params["sig"],
    )


def verify_authorization(
    params: AuthParams,
    method: str,
    uri: str,
    content: Any,
    verify_key: nacl.signing.VerifyKey,
    self_node: str,
    now_ms: int,
    max_skew_ms: int = MAX_SKEW_MS,
    *,
    content_json: bytes | None = None,
) -> None:
    """Check destination, clock skew and signature; raise ``AuthError`` on the first failure.

    ``verify_key`` is the origin's current key named by ``params.key_id``; ``content_json``, when given,
    is ``encode_canonical_json(content)`` already computed by the caller. Codes:
    ``UNAUTHENTICATED`` (addressed to another node), ``CLOCK_SKEW``, ``SIGNATURE_INVALID``.
    """
    if params.destination != self_node:
        raise AuthError("UNAUTHENTICATED", f"request is addressed to {params.destination}, not {self_node}")
    if abs(now_ms - params.ts) > max_skew_ms:
        raise AuthError(
            "CLOCK_SKEW",
            f"request time is {now_ms - params.ts} ms from this node's clock (limit {max_skew_ms})",
            {"skew_ms": now_ms - params.ts},
        )
    try:
        message = request_signing_bytes(
            method, uri, params.origin, params.destination, params.ts, params.nonce, content,
            content_json=content_json,
        )
    except CanonicalJSONError as exc:
        raise AuthError("SIGNATURE_INVALID", f"request body is not canonical JSON: {exc.message}") from None
    try:
        verify_signature(verify_key, message, params.sig)
    except SignatureError as exc:
        raise AuthError("SIGNATURE_INVALID", f"request signature of {params.origin}: {exc.message}") from None
