"""End-to-end encrypted envelope bodies (SPEC §15).

The origin encrypts an envelope's body for its destination with crypto_box over the X25519 forms of the
two nodes' Ed25519 keys; relays verify and countersign the ciphertext and never see the plain body.
crypto_box's key is shared by the pair, so the origin can open what it sent too (its outbox callbacks
read their own requests back).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import nacl.exceptions
import nacl.public
import nacl.signing
import nacl.utils

from federation import nesting
from federation.canonical import encode_canonical_json
from federation.errors import EnvelopeError
from federation.signing import SigningKey, decode_b64, encode_b64

ALGORITHM = "x25519-xsalsa20poly1305"
_FIELDS = frozenset({"enc", "to", "to_key", "from_key", "nonce", "ct"})


def is_sealed(body: Any) -> bool:
    return isinstance(body, Mapping) and body.get("enc") is not None


class Boxes:
    """The crypto_box keys this node shares with its peers, computed once per pair of keys: the X25519
    agreement costs about as much as an Ed25519 signature, the box itself a few microseconds."""

    def __init__(self) -> None:
        self._boxes: dict[tuple[str, bytes, str, str, bytes], nacl.public.Box] = {}

    def box(self, mine: SigningKey, peer: str, peer_key_id: str, peer_key: nacl.signing.VerifyKey) -> nacl.public.Box:
        cache_key = (mine.key_id, bytes(mine.verify_key), peer, peer_key_id, bytes(peer_key))
        box = self._boxes.get(cache_key)
        if box is None:
            if len(self._boxes) > 4096:  # peers and their keys are few; a bound keeps a bug from growing it
                self._boxes.clear()
            box = self._boxes[cache_key] = nacl.public.Box(mine.nacl_key.to_curve25519_private_key(),
                                                           peer_key.to_curve25519_public_key())
        return box


def seal(body: Mapping[str, Any], box: nacl.public.Box, *, to: str, to_key: str, from_key: str) -> dict[str, Any]:
    """The sealed form of `body` (its canonical JSON, encrypted with a random 24-byte nonce)."""
    nonce = nacl.utils.random(nacl.public.Box.NONCE_SIZE)
    ct = box.encrypt(encode_canonical_json(dict(body)), nonce).ciphertext
    return {"enc": ALGORITHM, "to": to, "to_key": to_key, "from_key": from_key,
            "nonce": encode_b64(nonce), "ct": encode_b64(ct)}


def sealed_fields(body: Mapping[str, Any]) -> tuple[str, str, str]:
    """(to, to_key, from_key) of a sealed body; UNDECRYPTABLE when it is not one this version reads."""
    if set(body) != _FIELDS or body.get("enc") != ALGORITHM:
        raise EnvelopeError("UNDECRYPTABLE", f"the body is not sealed with {ALGORITHM}")
    to, to_key, from_key = body["to"], body["to_key"], body["from_key"]
    if not all(isinstance(v, str) for v in (to, to_key, from_key, body["nonce"], body["ct"])):
        raise EnvelopeError("UNDECRYPTABLE", "the sealed body's fields must be strings")
    return to, to_key, from_key


def unseal(body: Mapping[str, Any], box: nacl.public.Box) -> dict[str, Any]:
    """The plain body; UNDECRYPTABLE when it was altered or sealed with other keys."""
    try:
        nonce, ct = decode_b64(body["nonce"]), decode_b64(body["ct"])
        if len(nonce) != nacl.public.Box.NONCE_SIZE:
            raise ValueError("bad nonce")
        plain = box.decrypt(ct, nonce)
        value = nesting.loads(plain.decode("utf-8"))  # NestingError is a ValueError: refused like any bad body
    except (ValueError, TypeError, nacl.exceptions.CryptoError):
        raise EnvelopeError("UNDECRYPTABLE", "the body cannot be decrypted with this node's keys") from None
    if not isinstance(value, dict):
        raise EnvelopeError("UNDECRYPTABLE", "the decrypted body is not an object")
    return value
