"""Signed envelopes and tree routing (SPEC §6).

An envelope is signed by its origin; every relay adds its signature over the same, unchanged
bytes, so ``hop_count`` (the number of signers) is the path length so far. Seen-id tracking,
the hop limit, hop authentication and audit logging are the node's job.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping, Set
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from federation.canonical import check_canonical_value
from federation.certs import Millis, NodeId, Signatures, TrustStore
from federation.errors import CanonicalJSONError, EnvelopeError, SignatureError, TrustError, summary, validation_details
from federation.signing import SigningKey, sign_json, signed_bytes, verify_signed_json

__all__ = [
    "DEFAULT_TTL_MS",
    "KINDS",
    "Envelope",
    "EnvelopeError",
    "hop_count",
    "make_envelope",
    "new_ulid",
    "next_hop",
    "sign_envelope",
    "verify_envelope_origin",
]

KINDS = frozenset(
    {
        "service.call",
        "reply",
        "error",
        "application.submit",
        "application.update",
        "feedback.submit",
        "feedback.update",
        "data_request.submit",
        "data_request.update",
        "licence.verify",
        "list.hit",  # SPEC §17: hits on a list's entries, to their issuer (双反馈)
    }
)
_ANSWER_KINDS = frozenset({"reply", "error"})
DEFAULT_TTL_MS = 30_000

Ulid = Annotated[str, StringConstraints(pattern=r"^[0-7][0-9A-HJKMNP-TV-Z]{25}$")]


class Envelope(BaseModel):
    """Shape of an envelope. Any ``kind`` string passes here; :data:`KINDS` is checked separately."""

    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["envelope"]
    v: Annotated[int, Field(ge=1, le=1)]
    id: Ulid
    kind: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z_]*(\.[a-z][a-z_]*)*$", max_length=64)]
    origin: NodeId
    destination: NodeId
    sent_at: Millis
    expires_at: Millis
    in_reply_to: Ulid | None
    body: dict[str, Any]
    signatures: Signatures = {}
    unsigned: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Envelope:
        if self.expires_at <= self.sent_at:
            raise ValueError("expires_at must be after sent_at")
        if self.kind in KINDS and (self.kind in _ANSWER_KINDS) != (self.in_reply_to is not None):
            raise ValueError("in_reply_to is required for reply and error, and null for other kinds")
        return self


# Crockford's base32 (ULIDs' alphabet), two characters at a time: 10 bits a look-up.
_PAIRS = [a + b for a in "0123456789ABCDEFGHJKMNPQRSTVWXYZ" for b in "0123456789ABCDEFGHJKMNPQRSTVWXYZ"]
_SHIFTS = tuple(range(120, -1, -10))
_last = (0, 0)  # the time and random parts of the last ULID made here on the clock
_last_lock = threading.Lock()
# Random bytes read ahead, 10 an id: os.urandom gives up the interpreter lock for its system call, and
# getting it back took ~17 µs when another thread of the node was running (a worker's database writer,
# SQLite's connection threads), 3 % of a worker's samples under load. One read serves 400 ids.
_POOL_BYTES = 4000
_pool = b""
_pool_at = 0


def _after_fork() -> None:
    """A forked worker must not reuse its parent's bytes read ahead, nor count up from its parent's last id:
    two workers would make the same ids."""
    global _last, _pool, _pool_at
    _last, _pool, _pool_at = (0, 0), b"", 0


os.register_at_fork(after_in_child=_after_fork)


def new_ulid(now_ms: int | None = None) -> str:
    """A new ULID string (its time part is ``now_ms`` when given). Made on the clock, each is later than the
    one made before it in this process: within one millisecond the random part counts up (the ULID spec's
    monotonic mode), so ids ordered by value keep the order they were made in (the outbox sends by id).

    python-ulid made the same in 8.8 µs (its generator's policy objects and lock), 3 % of a routed call's
    time on the province's event loop; this takes about 3 µs. The 26 characters are 130 bits, two zero
    bits, 48 of time and 80 random, read ten at a time."""
    global _last, _pool, _pool_at
    with _last_lock:
        if _pool_at + 10 > len(_pool):
            _pool, _pool_at = os.urandom(_POOL_BYTES), 0
        rand = int.from_bytes(_pool[_pool_at:_pool_at + 10], "big")
        _pool_at += 10
        if now_ms is None:
            ms = time.time_ns() // 1_000_000
            last_ms, last_rand = _last
            if ms <= last_ms:
                ms, rand = last_ms, last_rand + 1
                if rand >> 80:  # 2**80 ids in one millisecond: take the next one
                    ms, rand = ms + 1, 0
            _last = (ms, rand)
        else:
            ms = now_ms
    v = ms << 80 | rand
    return "".join([_PAIRS[(v >> shift) & 1023] for shift in _SHIFTS])


def make_envelope(
    kind: str,
    origin: str,
    destination: str,
    body: dict[str, Any],
    ttl_ms: int = DEFAULT_TTL_MS,
    in_reply_to: str | None = None,
    now_ms: int | None = None,
) -> dict[str, Any]:
    """Build an unsigned envelope; ``EnvelopeError`` (``KIND_UNSUPPORTED``/``INVALID_INPUT``) when wrong."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    envelope = {
        "type": "envelope",
        "v": 1,
        "id": new_ulid(now_ms),
        "kind": kind,
        "origin": origin,
        "destination": destination,
        "sent_at": now_ms,
        "expires_at": now_ms + ttl_ms,
        "in_reply_to": in_reply_to,
        "body": body,
    }
    _check_shape(envelope)
    return envelope


def sign_envelope(envelope: Mapping[str, Any], node: str, key: SigningKey, *, message: bytes | None = None) -> dict[str, Any]:
    """Return a copy of ``envelope`` with ``node``'s signature added (origin or relay); ``message`` is its
    signed bytes when the caller holds them (a relay has them from checking the origin's signature)."""
    return sign_json(envelope, node, key, message=message)


def verify_envelope_origin(envelope: Mapping[str, Any], trust: TrustStore, now_ms: int, *,
                           checked: bool = False) -> bytes:
    """Check shape, kind, expiry and the origin's signature; return the envelope's signed bytes (what
    every signature on it covers, for the relays' signatures and the caller's own).

    ``checked=True``: the envelope is known to be inside the canonical JSON domain (it was parsed from a
    body already checked), so that check is not repeated.

    The keys are those of the origin's certificate that were valid when the envelope was sent (SPEC §3:
    an old key still verifies what was signed before its ``expired_at``), so an envelope that waited in
    an outbox while its origin rotated its key is still delivered; a revoked key verifies nothing it
    signed at or after its revocation.

    Raises ``EnvelopeError`` with code ``INVALID_INPUT`` (shape), ``KIND_UNSUPPORTED``, ``EXPIRED``
    (``now_ms >= expires_at``), ``REVOKED`` (origin revoked) or ``SIGNATURE_INVALID`` (the origin's
    chain does not verify, or its signature is missing or bad; ``details.trust`` holds the
    ``TrustError`` code when the chain failed).
    """
    _check_shape(envelope, canonical_checked=checked)
    origin = envelope["origin"]
    if now_ms >= envelope["expires_at"]:
        raise EnvelopeError("EXPIRED", f"envelope {envelope['id']} expired at {envelope['expires_at']}")
    try:
        keys = trust.verify_keys_for(origin, at_ms=envelope["sent_at"], now_ms=now_ms)
    except TrustError as exc:
        code = "REVOKED" if exc.code == "REVOKED" else "SIGNATURE_INVALID"
        raise EnvelopeError(code, f"origin {origin}: {exc.message}", {"trust": exc.code}) from None
    message = signed_bytes(envelope, checked=True)
    try:
        verify_signed_json(envelope, origin, keys, message=message)
    except SignatureError as exc:
        raise EnvelopeError("SIGNATURE_INVALID", f"envelope {envelope['id']}: {exc.message}") from None
    return message


def hop_count(envelope: Mapping[str, Any]) -> int:
    """Number of nodes that signed the envelope so far (origin and relays)."""
    return len(envelope.get("signatures") or {})


def next_hop(
    self_node: str,
    destination: str,
    children_subtrees: Mapping[str, Set[str]],
    parent: str | None,
    known_nodes: Set[str],
) -> str | None:
    """Where to send an envelope for ``destination`` next; None means ``NODE_UNKNOWN``.

    Itself when it is the destination; the child whose subtree holds the destination; else the
    parent when the destination is a known node; None when the destination is unknown here
    (no point sending it up) or there is no parent to ask.
    """
    if destination == self_node:
        return self_node
    for child in sorted(children_subtrees):
        if destination == child or destination in children_subtrees[child]:
            return child
    if destination not in known_nodes:
        return None
    return parent


def _check_shape(envelope: Mapping[str, Any], canonical_checked: bool = False) -> None:
    try:
        Envelope.model_validate(envelope, strict=True)
        if not canonical_checked:
            check_canonical_value(envelope)
    except ValidationError as exc:
        details = validation_details(exc)
        raise EnvelopeError("INVALID_INPUT", f"malformed envelope: {summary(details)}", details) from None
    except CanonicalJSONError as exc:
        raise EnvelopeError("INVALID_INPUT", f"envelope is not canonical JSON: {exc.message}", exc.details) from None
    if envelope["kind"] not in KINDS:
        raise EnvelopeError("KIND_UNSUPPORTED", f"envelope kind {envelope['kind']!r} is not supported")
